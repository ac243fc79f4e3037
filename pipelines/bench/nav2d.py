"""``metarl bench nav2d``: the gradient meta-learners side by side on MAML's 2D navigation.

Every algorithm of the comparison (MAML, Reptile, ES-MAML: whichever are registered) goes
through the registry's one door — its ``train`` with a :class:`~metarl.algos.registry.TrainContext`
and its learner — on the same protocol, with the **same budget in env steps**:

* MAML's setting (Finn et al. 2017, section 5.3; what ``metarl bench maml`` runs): goals uniform
  in ``[-0.5, 0.5]^2``, reward minus the distance, horizon 100, velocity clipped to ±0.1.
  Training goals are drawn from a pool of 20,000 (effectively fresh every meta-iteration, as in
  the paper); 40 validation goals choose the hyperparameters (``--split val``); 40 test goals,
  never used for a choice, give the table.
* Each algorithm trains for as many meta-iterations as its configuration's env steps per
  iteration allow within ``--budget`` (the registry's ``episodes`` × the horizon, a goal
  reached early ending an episode sooner, so the steps used are measured and printed).
* The final checkpoint is scored with the meta-test evaluator: the mean return on the test
  goals before and after 1..K policy-gradient adaptation steps (20 episodes per step, the
  evaluator's seeds), and the normalised score, random 0 (uniform actions) and the
  straight-to-goal oracle 1, with 95% bootstrap intervals over goals × training seeds
  (:mod:`pipelines.stats`) and the IQM.
* Timing is the training's wall-clock (one torch thread), without the evaluations:
  seconds per meta-iteration and env-steps/s.

``--protocol es_maml`` runs the ES-MAML paper's navigation instead (Song et al. 2019: goals in
``[-1, 1]^2``, reward minus the squared distance, horizon 100, 50 training and 50 test goals,
a linear policy), beside the others in the same table format.

The configurations (:data:`CONFIGS`) were chosen on the validation goals; the module's
``benchmarks/nav2d/README.md`` records what was tried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.algos import registry
from metarl.algos.base import RandomLearner
from metarl.algos.registry import TrainContext
from metarl.baselines.oracles import oracle_returns
from metarl.config import from_mapping, to_dict
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adaptation_curve, normalized
from metarl.tasks import TaskSet, sample_task_sets
from pipelines import stats
from pipelines.bench.budget import StepCounter, iterations_within
from pipelines.bench.maml import BENCH_CONFIG as MAML_CONFIG

EVAL_EPISODES = 20
"""Episodes per goal per adaptation step at evaluation (the paper's 20 trajectories)."""


@dataclass(frozen=True)
class Protocol:
    """A navigation benchmark: the goal distribution and its splits."""

    name: str
    family: Nav2DFamilyConfig
    num_train: int
    num_val: int
    num_test: int
    description: str


PROTOCOLS = {
    "maml": Protocol("maml", Nav2DFamilyConfig(), 20_000, 40, 40,
                     "MAML's 2D navigation: goals in [-0.5, 0.5]^2, -distance, horizon 100"),
    "es_maml": Protocol("es_maml", Nav2DFamilyConfig(goal_low=-1.0, goal_high=1.0,
                                                     reward="squared_distance"), 50, 50, 50,
                        "ES-MAML's navigation: goals in [-1, 1]^2, -squared distance, "
                        "horizon 100, 50 train / 50 test goals"),
}


def comparison(protocol: str) -> dict[str, Any]:
    """The comparison of ``protocol``: algorithm → its config (the registered algorithms)."""
    known = registry.algorithms()
    out: dict[str, dict[str, Any]] = {"maml": {}, "es_maml": {}}
    out["maml"]["maml"] = MAML_CONFIG
    if "reptile" in known:
        out["maml"]["reptile"] = known["reptile"].config_cls(
            hidden_sizes=(32, 32), init_std=3.0, inner_lr=0.1, num_inner_steps=1 + 2,
            outer_lr=0.01, optimizer="adam", meta_batch_size=20, episodes_per_task=20)
    if "es_maml" in known:
        es = known["es_maml"].config_cls
        out["maml"]["es_maml"] = es(hidden_sizes=(32, 32), init_std=3.0, inner_lr=0.1,
                                    population_size=8, sigma=0.1, outer_lr=0.05,
                                    meta_batch_size=10, episodes_per_task=10)
        # the paper's navigation: a linear policy, K = 20 hill-climbing queries
        out["es_maml"]["es_maml"] = es(hidden_sizes=(), init_std=3.0, adaptation="hill_climb",
                                       num_queries=20, population_size=8, sigma=0.1,
                                       outer_lr=0.05, meta_batch_size=10, episodes_per_task=10,
                                       inner_lr=0.1)
    return out[protocol]


def env_steps_per_iteration(name: str, config: Any, horizon: int, trial: int) -> int:
    """The env steps one meta-iteration may use: the registry's episodes × the horizon."""
    return registry.get(name).episodes(config, 1, trial) * horizon


@dataclass(frozen=True)
class Row:
    """One algorithm's results over the training seeds."""

    name: str
    iterations: int
    env_steps: float
    seconds: float
    returns: np.ndarray
    """``[seeds, K+1, goals]`` mean returns per goal before and after each step."""
    normalized: np.ndarray
    """The same, normalised (random 0, oracle 1)."""

    @property
    def env_steps_per_s(self) -> float:
        """Training env-steps per second of training wall-clock."""
        return self.env_steps / self.seconds

    @property
    def seconds_per_iteration(self) -> float:
        """Training wall-clock per meta-iteration (mean over seeds)."""
        return self.seconds / (self.iterations * self.returns.shape[0])


def run_algorithm(name: str, config: Any, family: Nav2DFamily, train: TaskSet,
                  goals: list[dict[str, float]], budget: int, seeds: list[int],
                  num_adapt_steps: int, yardsticks: tuple[float, float],
                  progress: Callable[[str], None] = print) -> Row:
    """Train ``name`` on ``budget`` env steps per seed, score its final checkpoint on ``goals``."""
    algo = registry.get(name)
    iterations = iterations_within(algo, config, budget, family.max_steps, num_adapt_steps + 1)
    returns, steps, seconds = [], 0.0, 0.0
    for seed in seeds:
        counter = StepCounter(budget, f"{name} seed {seed}")
        context = TrainContext(family=family, train_set=train, num_iterations=iterations,
                               seed=seed, device="cpu", episodes_per_trial=num_adapt_steps + 1,
                               logger=counter)
        start = time.perf_counter()
        try:
            learner = algo.train(config, context).learner()
        finally:
            counter.close()
        seconds += time.perf_counter() - start
        steps += counter.env_steps
        returns.append(adaptation_curve(learner, family, goals, num_adapt_steps, EVAL_EPISODES,
                                        seed))
        progress(f"  {name} seed {seed}: {iterations} iterations, "
                 f"{counter.env_steps:,.0f} env steps, {time.perf_counter() - start:.1f} s")
    curve = np.stack(returns)
    return Row(name, iterations, steps, seconds, curve,
               np.asarray(normalized(curve, yardsticks[0], yardsticks[1])))


def yardsticks(family: Nav2DFamily, goals: list[dict[str, float]], seed: int
               ) -> tuple[float, float]:
    """Mean return of uniform random actions and of the straight-to-goal oracle on ``goals``."""
    random_return = adaptation_curve(RandomLearner(), family, goals, 0, EVAL_EPISODES, seed)[0]
    return float(random_return.mean()), float(oracle_returns(family, goals).mean())


def table(rows: list[Row], protocol: Protocol, split: str, budget: int, seeds: list[int],
          oracle: tuple[float, float]) -> str:
    """The comparison as a fixed-width table (what the command prints and DVC keeps)."""
    k_max = rows[0].returns.shape[1] - 1
    head = (f"{'algorithm':<9} | {'iters':>5} | {'env steps':>11} | {'s/iter':>6} | "
            f"{'env-steps/s':>11} | " + " | ".join(f"{f'return k={k}':>21}"
                                                   for k in range(k_max + 1))
            + f" | {f'normalised k={k_max}':>21} | {'IQM':>5}")
    lines = [f"{protocol.description}; {split} goals ({rows[0].returns.shape[2]}); budget "
             f"{budget:,} env steps per seed; seeds {seeds}; random {oracle[0]:.1f}, oracle "
             f"{oracle[1]:.2f}; mean [95% bootstrap interval over goals x seeds]", head,
             "-" * len(head)]
    for row in rows:
        cells = []
        for k in range(k_max + 1):
            est = stats.mean_interval(row.returns[:, k], stats.generator())
            cells.append(f"{est.value:7.1f} [{est.ci_low:6.1f}, {est.ci_high:6.1f}]")
        norm = stats.mean_interval(row.normalized[:, k_max], stats.generator())
        iqm = stats.iqm(row.normalized[:, k_max])
        lines.append(f"{row.name:<9} | {row.iterations:>5} | {row.env_steps / len(seeds):>11,.0f}"
                     f" | {row.seconds_per_iteration:>6.3f} | {row.env_steps_per_s:>11,.0f} | "
                     + " | ".join(f"{c:>21}" for c in cells)
                     + f" | {norm.value:6.3f} [{norm.ci_low:5.3f}, {norm.ci_high:5.3f}]"
                       f" | {iqm:5.3f}")
    lines.append("env steps: per seed, as used (a goal reached ends an episode early); s/iter "
                 "and env-steps/s: training only, one torch thread")
    return "\n".join(lines)


def bench_nav2d(algorithms: list[str] | None = None, protocol: str = "maml",
                budget: int = 8_000_000, seeds: tuple[int, ...] = (0, 1, 2),
                num_adapt_steps: int = 3, split: str = "test",
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Run the comparison; print and return the table and the rows.

    Raises:
        ValueError: an unknown protocol, split or algorithm (naming the value).

    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: choose one of {list(PROTOCOLS)}")
    if split not in ("val", "test"):
        raise ValueError(f"--split {split!r}: choose val (to choose settings) or test")
    configs = comparison(protocol)
    names = algorithms or list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ValueError(f"--algorithms {unknown}: not in protocol {protocol!r}'s comparison "
                         f"({list(configs)})")
    extra = [n for n in (overrides or {}) if n not in names]
    if extra:
        raise ValueError(f"--set {extra[0]}.*: {extra[0]!r} is not one of the algorithms run "
                         f"({names})")
    for name, changes in (overrides or {}).items():  # checked before anything trains
        configs[name] = from_mapping(type(configs[name]), {**to_dict(configs[name]), **changes},
                                     f"--set {name}")
    torch.set_num_threads(1)
    proto = PROTOCOLS[protocol]
    family = Nav2DFamily(proto.family)
    sets = sample_task_sets(family, {"train": proto.num_train, "val": proto.num_val,
                                     "test": proto.num_test}, 0)
    goals = list(sets[split].tasks)
    marks = yardsticks(family, goals, 0)
    print(f"{proto.description}: {', '.join(names)}, {budget:,} env steps each per seed, "
          f"seeds {list(seeds)}, scored on the {split} goals", flush=True)
    rows = [run_algorithm(name, configs[name], family, sets["train"], goals, budget,
                          list(seeds), num_adapt_steps, marks) for name in names]
    text = table(rows, proto, split, budget, list(seeds), marks)
    print(text)
    return {"table": text, "rows": rows, "random_return": marks[0], "oracle_return": marks[1]}

