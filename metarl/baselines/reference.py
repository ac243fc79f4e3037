"""The classic (non-meta) baselines of a family, scored the way evaluate scores learners.

For the RL² families the hand-designed algorithms of the literature are the yardstick a
meta-learner must beat: on the bandit family one episode is one trial of ``n`` pulls, so a
baseline's score is its mean trial return; on the tabular-MDP family a baseline plays a trial of
``num_episodes`` episodes and its score is the mean return per episode. Families without such
baselines return an empty dict. Hyperparameters are fixed, sensible values (the RL² paper's
tuned ones for its mid-size cells); ``metarl bench baselines`` tunes them per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metarl.baselines.bandit import (
    UCB1,
    EpsilonGreedy,
    Gittins,
    RandomPolicy,
    ThompsonSampling,
    run_bandit,
)
from metarl.baselines.tabular import (
    EpsilonGreedyAgent,
    PSRLAgent,
    RandomAgent,
    TabularAgent,
    run_tabular,
)
from metarl.envs.bandit import BanditFamily
from metarl.envs.tabular_mdp import TabularMDPFamily
from metarl.tasks import TaskFamily


def _bandit_policies(num_pulls: int) -> dict[str, Any]:
    discount = 0.9 if num_pulls <= 10 else 0.99 if num_pulls <= 100 else 0.999
    return {"random_arm": RandomPolicy(), "greedy": EpsilonGreedy(0.0),
            "eps_greedy": EpsilonGreedy(0.1), "ucb1": UCB1(0.2), "thompson": ThompsonSampling(),
            "gittins": Gittins(discount=discount, max_pulls=max(num_pulls, 10))}


def reference_returns(family: TaskFamily, tasks: Sequence[dict[str, Any]], seeds: Sequence[int],
                      device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-task mean episode return of each classic baseline, averaged over ``seeds``."""
    out: dict[str, list[np.ndarray]] = {}
    if isinstance(family, BanditFamily):
        probs = torch.tensor([t["probs"] for t in tasks], dtype=torch.float64, device=device)
        n = family.config.num_pulls
        for seed in seeds:
            for name, policy in _bandit_policies(n).items():
                rewards = run_bandit(policy, probs, n, torch.Generator(device).manual_seed(seed))
                out.setdefault(name, []).append(rewards.sum(1).cpu().numpy())
    elif isinstance(family, TabularMDPFamily):
        agents: dict[str, TabularAgent] = {"random_action": RandomAgent(),
                                           "eps_greedy": EpsilonGreedyAgent(0.1),
                                           "psrl": PSRLAgent()}
        for seed in seeds:
            for name, agent in agents.items():
                env = family.make_env(list(tasks), num_envs=1, device=device)
                returns = run_tabular(agent, env, family.config.num_episodes,
                                      torch.Generator(device).manual_seed(seed))
                out.setdefault(name, []).append(returns.mean(1).cpu().numpy())
    return {name: np.mean(values, axis=0) for name, values in out.items()}
