"""Hand-designed baselines and oracles for the RL² task families, batched over instances.

:mod:`metarl.baselines.bandit`: Random, Greedy, ε-greedy, UCB1, Thompson sampling, the Gittins
index policy and the exact Bayes-optimal value, for Bernoulli bandits.
:mod:`metarl.baselines.tabular`: Random, Greedy / ε-greedy, PSRL, the myopic Bayes rule and the
value-iteration oracle, for random tabular MDPs.
"""

from __future__ import annotations

from metarl.baselines.bandit import (
    UCB1,
    EpsilonGreedy,
    Gittins,
    RandomPolicy,
    ThompsonSampling,
    bayes_optimal_value,
    gittins_index_table,
    run_bandit,
)
from metarl.baselines.tabular import (
    EpsilonGreedyAgent,
    MyopicBayesAgent,
    OracleAgent,
    PSRLAgent,
    RandomAgent,
    TabularStats,
    run_tabular,
)

__all__ = [
    "UCB1",
    "EpsilonGreedy",
    "EpsilonGreedyAgent",
    "Gittins",
    "MyopicBayesAgent",
    "OracleAgent",
    "PSRLAgent",
    "RandomAgent",
    "RandomPolicy",
    "TabularStats",
    "ThompsonSampling",
    "bayes_optimal_value",
    "gittins_index_table",
    "run_bandit",
    "run_tabular",
]
