"""``metarl bench rl2``: RL² meta-trained and scored on cells of the RL² paper's Tables 1 and 2.

Duan et al. 2016, https://arxiv.org/abs/1611.02779. Per cell and training seed an
:class:`~metarl.algos.rl2.RL2` agent is meta-trained for a fixed number of PPO iterations, then
plays each test instance of ``metarl bench baselines`` once, beside those baselines. Modules:

- :mod:`.presets`: the RL² settings and iterations per trial length, read from
  ``pipelines/bench/presets/rl2_bandit.yaml`` and ``rl2_mdp.yaml``;
- :mod:`.params`: the bench's options (``--params FILE``, ``--bandit KEY=VALUE``, checks);
- :mod:`.train`: training seeds, in worker processes, from and to checkpoints;
- :mod:`.run`: :func:`bench_rl2`, the cells' rows;
- :mod:`.table`: the printed table, its JSON and ``--combine``.

The presets are sized for one CPU thread: one seed of a cell takes about 1 minute (10-pull
bandits), 8 minutes (100 pulls; the 500-pull cells are played by those models) or 35 minutes
(the MDP model trained on 10-episode trials, which plays all five MDP cells). The paper trained
far longer, so this is what RL² reaches with that compute, not its ceiling.
``benchmarks/rl2/README.md`` has the table, the GPU runs and what was tried.
"""

from pipelines.bench.rl2.params import (
    BANDIT_TRAIN_PULLS,
    DEFAULT_CELLS,
    MDP_TRAIN_EPISODES,
    VALIDATION_INSTANCES,
    BenchRL2Params,
    mdp_training_lengths,
    parse_overrides,
    read_params,
    training_pulls,
    with_overrides,
)
from pipelines.bench.rl2.presets import bandit_config, default_iterations, mdp_config
from pipelines.bench.rl2.run import bench_rl2
from pipelines.bench.rl2.table import CellRun, combine, results_json

__all__ = [
    "BANDIT_TRAIN_PULLS",
    "DEFAULT_CELLS",
    "MDP_TRAIN_EPISODES",
    "VALIDATION_INSTANCES",
    "BenchRL2Params",
    "CellRun",
    "bandit_config",
    "bench_rl2",
    "combine",
    "default_iterations",
    "mdp_config",
    "mdp_training_lengths",
    "parse_overrides",
    "read_params",
    "results_json",
    "training_pulls",
    "with_overrides",
]
