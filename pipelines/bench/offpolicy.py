"""``metarl bench offpolicy``: PEARL and meta-Q-learning against the on-policy meta-learners.

PEARL's claim (Rakelly et al. 2019) is sample efficiency: 20–100× fewer meta-training env steps
than MAML, ProMP and RL² for the same meta-test return. This bench measures it on PEARL's own
protocols, every algorithm through the registry's one door (its ``train`` with a
:class:`~metarl.algos.registry.TrainContext`, its learner played by the meta-test evaluator):

* ``point_sparse`` — PEARL's sparse point robot: nav2d with goals on the upper unit semicircle,
  reward 1 within 0.2 of the goal else 0, horizon 20; 80 training goals, 20 validation goals
  (the settings are chosen on them, ``--split val``) and 20 test goals for the table.
* ``point_dense`` — PEARL's dense point robot: goals in ``[-1, 1]^2``, minus the distance,
  horizon 20 (same splits).
* ``cheetah_vel`` — HalfCheetah-Vel as PEARL runs it: target velocity in ``[0, 3]``, horizon
  200, 100 training / 30 validation / 30 test tasks (needs MuJoCo).

Each algorithm trains on the same budget of env steps per seed (``--budget``); during training
the learner is scored at ``--points`` budgets spread log-evenly up to it (one evaluation seed, the
test or validation split), which gives the learning curve **against meta-training env steps**;
the final checkpoint is scored with every evaluation seed. Scoring is the meta-test evaluator's:
``--episodes`` rounds of context, each ``rounds_of`` episodes (1 for the learners that infer
the task from a few episodes — PEARL, MQL, RL² — and MAML's 20 trajectories per policy-gradient
step for the gradient learners), the return and (sparse robot) the success rate after each.

The table gives per algorithm the iterations, env steps and wall-clock used, the return after
0..N rounds and the success rate at the final checkpoint with 95% bootstrap intervals over tasks
× seeds (:mod:`pipelines.stats`), and **steps to match**: the fewest env steps at which the
algorithm's curve reached the best on-policy algorithm's final return, with the ratio to that
algorithm's budget (PEARL's claim is the ratio).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.algos import registry
from metarl.algos.registry import TrainContext
from metarl.config import from_mapping, to_dict
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adapt_to_tasks
from metarl.families import make_family
from metarl.tasks import TaskFamily, TaskSet, sample_task_sets
from pipelines import stats
from pipelines.bench.budget import StepCounter, iterations_within

ON_POLICY = ("maml", "rl2", "reptile", "es_maml")
"""The algorithms PEARL's claim is measured against (whichever of them run)."""


@dataclass(frozen=True)
class Protocol:
    """A benchmark task: the family, its splits and each algorithm's settings on it."""

    name: str
    description: str
    family: Callable[[], TaskFamily]
    num_train: int
    num_val: int
    num_test: int
    budget: int
    """The default env steps per algorithm and seed."""
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Algorithm → the keys of its config that differ from the embedded defaults here."""


def _sparse_point() -> TaskFamily:
    return Nav2DFamily(Nav2DFamilyConfig(goals="semicircle", reward="sparse",
                                         goal_tolerance=0.0, max_steps=20))


def _dense_point() -> TaskFamily:
    return Nav2DFamily(Nav2DFamilyConfig(goal_low=-1.0, goal_high=1.0, goal_tolerance=0.0,
                                         max_steps=20))


def _cheetah_vel() -> TaskFamily:
    from metarl.envs.mujoco_tasks import CheetahVelFamilyConfig

    return make_family("cheetah_vel", CheetahVelFamilyConfig(velocity=(0.0, 3.0),
                                                             max_steps=200))


_POINT_ON_POLICY: dict[str, dict[str, Any]] = {
    "maml": {"hidden_sizes": (64, 64), "init_std": 1.0, "inner_lr": 0.1, "outer_lr": 0.01,
             "num_outer_steps": 2, "meta_batch_size": 20, "episodes_per_task": 20},
    "rl2": {},
}

PROTOCOLS: dict[str, Protocol] = {
    "point_sparse": Protocol(
        "point_sparse", "PEARL's sparse point robot: goals on the unit semicircle, reward 1 "
        "within 0.2, horizon 20", _sparse_point, 80, 20, 20, 2_000_000,
        {**_POINT_ON_POLICY}),
    "point_dense": Protocol(
        "point_dense", "PEARL's dense point robot: goals in [-1, 1]^2, -distance, horizon 20",
        _dense_point, 80, 20, 20, 2_000_000, {**_POINT_ON_POLICY}),
    "cheetah_vel": Protocol(
        "cheetah_vel", "PEARL's HalfCheetah-Vel: target velocity in [0, 3], horizon 200",
        _cheetah_vel, 100, 30, 30, 2_000_000, {}),
}

ROUND_EPISODES = {"maml": 20, "reptile": 20, "es_maml": 20}
"""Episodes per round of context for the gradient learners (MAML's 20 trajectories per
step); every other learner gets one episode per round."""


def round_episodes(name: str) -> int:
    """Episodes per round of context the evaluator gives ``name``."""
    return ROUND_EPISODES.get(name, 1)


@dataclass
class Curve:
    """One training seed's evaluations: ``(env steps, returns [K+1, N], success or None)``."""

    points: list[tuple[float, np.ndarray, np.ndarray | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One algorithm's results over the training seeds."""

    name: str
    iterations: int
    env_steps: float
    """Env steps per seed, as used."""
    seconds: float
    """Training wall-clock per seed (the evaluations excluded)."""
    returns: np.ndarray
    """``[seeds, K+1, tasks]`` at the final checkpoint, every evaluation seed averaged."""
    success: np.ndarray | None
    """``[seeds, K+1, tasks]`` success rates (sparse robot), else None."""
    curves: list[Curve]

    def curve_mean(self) -> list[tuple[float, float]]:
        """``(env steps, mean final-round return over tasks and seeds)`` per evaluation point."""
        count = min(len(c.points) for c in self.curves)
        return [(float(np.mean([c.points[i][0] for c in self.curves])),
                 float(np.mean([c.points[i][1][-1].mean() for c in self.curves])))
                for i in range(count)]


def steps_to_reach(row: Row, target: float) -> float | None:
    """The fewest env steps at which ``row``'s mean curve reached ``target`` (None: never)."""
    for steps, value in row.curve_mean():
        if value >= target:
            return steps
    return None


def evaluation_points(budget: int, per_iteration: list[int], points: int) -> list[int]:
    """The iterations (1-based counts) after which to evaluate: ``points`` log-even budgets."""
    total = np.cumsum(per_iteration)
    marks = np.geomspace(max(total[0], budget / 100), budget, points)
    its = sorted({int(np.searchsorted(total, m, side="left")) + 1 for m in marks})
    return [min(i, len(per_iteration)) for i in its]


def run_algorithm(name: str, config: Any, family: TaskFamily, train: TaskSet,
                  tasks: list[dict[str, Any]], budget: int, seeds: list[int], rounds: int,
                  eval_seeds: list[int], points: int,
                  progress: Callable[[str], None] = print) -> Row:
    """Train ``name`` on ``budget`` env steps per seed; score it along the way and at the end."""
    algo = registry.get(name)
    algo.check_family(family.make_env(tasks[:1], 1).discrete, "this protocol")
    trial = rounds + 1
    iterations = iterations_within(algo, config, budget, family.max_steps, trial)
    per_it = [algo.episodes(config, i + 1, trial) * family.max_steps
              - algo.episodes(config, i, trial) * family.max_steps for i in range(iterations)]
    marks = set(evaluation_points(budget, per_it, points))
    episodes = round_episodes(name)
    returns, successes, curves = [], [], []
    steps_used, seconds = 0.0, 0.0
    for seed in seeds:
        counter, curve = StepCounter(budget, f"{name} seed {seed}"), Curve()
        paused = [0.0]

        def hook(it: int, learner: Any, counter: StepCounter = counter, curve: Curve = curve,
                 paused: list[float] = paused) -> None:
            if it + 1 in marks and it + 1 < iterations:
                start = time.perf_counter()
                run = adapt_to_tasks(learner, family, tasks, rounds, episodes, eval_seeds[0])
                curve.points.append((counter.env_steps, run.returns, run.success))
                paused[0] += time.perf_counter() - start

        context = TrainContext(family=family, train_set=train, num_iterations=iterations,
                               seed=seed, device="cpu", episodes_per_trial=trial,
                               logger=counter, hook=hook)
        start = time.perf_counter()
        try:
            learner = algo.train(config, context).learner()
        finally:
            counter.close()
        seconds += time.perf_counter() - start - paused[0]
        steps_used += counter.env_steps
        runs = [adapt_to_tasks(learner, family, tasks, rounds, episodes, s) for s in eval_seeds]
        final = np.mean([r.returns for r in runs], axis=0)
        rates = [r.success for r in runs if r.success is not None]
        success = np.mean(rates, axis=0) if rates else None
        curve.points.append((counter.env_steps, final, success))
        returns.append(final)
        successes.append(success)
        curves.append(curve)
        progress(f"  {name} seed {seed}: {iterations} iterations, {counter.env_steps:,.0f} env "
                 f"steps, return after {rounds} rounds {final[-1].mean():.2f}, "
                 f"{time.perf_counter() - start:.1f} s")
    success_arr = None if successes[0] is None else np.stack(successes)  # type: ignore[arg-type]
    return Row(name, iterations, steps_used / len(seeds), seconds / len(seeds),
               np.stack(returns), success_arr, curves)


def _cell(values: np.ndarray, digits: int = 2) -> str:
    est = stats.mean_interval(values, stats.generator())
    return f"{est.value:.{digits}f} [{est.ci_low:.{digits}f}, {est.ci_high:.{digits}f}]"


def table(rows: list[Row], protocol: Protocol, split: str, budget: int, seeds: list[int],
          budgets: Mapping[str, int] | None = None) -> str:
    """The comparison as a fixed-width table (what the command prints and DVC keeps)."""
    rounds = rows[0].returns.shape[1] - 1
    on_policy = [r for r in rows if r.name in ON_POLICY]
    target_row = max(on_policy, key=lambda r: float(r.returns[:, -1].mean()), default=None)
    target = None if target_row is None else float(target_row.returns[:, -1].mean())
    head = (f"{'algorithm':<9} | {'ep/round':>8} | {'iters':>5} | {'env steps':>11} | "
            f"{'train s':>8} | " + " | ".join(f"{f'return r={k}':>21}" for k in (0, rounds))
            + f" | {f'success r={rounds}':>21} | {'steps to match':>14} | {'ratio':>6}")
    own = "".join(f", {n}: {b:,}" for n, b in (budgets or {}).items())
    lines = [f"{protocol.description}; {split} tasks ({rows[0].returns.shape[2]}); budget "
             f"{budget:,} env steps per seed{own}; seeds {seeds}; return after r rounds of "
             "context "
             "(r x ep/round episodes); mean [95% bootstrap interval over tasks x seeds]",
             head, "-" * len(head)]
    for row in rows:
        success = ("—" if row.success is None else _cell(row.success[:, -1]))
        reach = None if target is None else steps_to_reach(row, target)
        ratio = ("—" if reach is None or target_row is None or row is target_row
                 else f"{target_row.env_steps / reach:.1f}x")
        lines.append(f"{row.name:<9} | {round_episodes(row.name):>8} | {row.iterations:>5} | "
                     f"{row.env_steps:>11,.0f} | {row.seconds:>8.1f} | "
                     + " | ".join(f"{_cell(row.returns[:, k]):>21}" for k in (0, rounds))
                     + f" | {success:>21} | "
                     + f"{'never' if reach is None else f'{reach:,.0f}':>14} | {ratio:>6}")
    if target_row is not None:
        lines.append(f"steps to match: the fewest training env steps at which the mean curve "
                     f"reached {target_row.name}'s final return ({target:.2f}), the best "
                     "on-policy one; ratio: that algorithm's budget / those steps")
    lines.append("train s: training wall-clock per seed without the evaluations, one torch "
                 "thread")
    return "\n".join(lines)


def curves_csv(rows: list[Row]) -> str:
    """Every evaluation point: algorithm, seed index, env steps, return (and success) per round."""
    rounds = rows[0].returns.shape[1] - 1
    head = ["algorithm", "seed", "env_steps", *[f"return_r{k}" for k in range(rounds + 1)],
            *[f"success_r{k}" for k in range(rounds + 1)]]
    out = [",".join(head)]
    for row in rows:
        for s, curve in enumerate(row.curves):
            for steps, ret, success in curve.points:
                vals = [f"{v:.4f}" for v in ret.mean(-1)]
                succ = ([f"{v:.4f}" for v in success.mean(-1)] if success is not None
                        else [""] * (rounds + 1))
                out.append(",".join([row.name, str(s), f"{steps:.0f}", *vals, *succ]))
    return "\n".join(out) + "\n"


def configs_for(protocol: Protocol, names: list[str],
                overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """Each algorithm's config on ``protocol``.

    Its embedded defaults, then the protocol's keys, then ``overrides`` (checked, naming
    ``--set ALGO``).
    """
    out: dict[str, Any] = {}
    for name in names:
        algo = registry.get(name, key="--algorithms")
        values = {**to_dict(algo.config_cls()), **protocol.configs.get(name, {}),
                  **(overrides or {}).get(name, {})}
        out[name] = from_mapping(algo.config_cls, values, f"--set {name}")
    return out


def plot_curves(rows: list[Row], doc: Mapping[str, Any], path: Path) -> None:
    """Each row's mean curve (:meth:`Row.curve_mean`) as a PNG at ``path``."""
    from pipelines.plots import plot_learning_curves

    proto = PROTOCOLS[str(doc["protocol"])]
    rounds = rows[0].returns.shape[1] - 1
    plot_learning_curves({r.name: r.curve_mean() for r in rows}, path,
                         f"{proto.description}; {doc['split']} tasks, seeds {doc['seeds']}",
                         f"return after {rounds} rounds of context")


def rows_json(rows: list[Row], protocol: str, split: str, budget: int, seeds: list[int],
              budgets: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The rows and how they were run, as JSON (what :func:`combine` reads back)."""
    def arr(a: np.ndarray | None) -> Any:
        return None if a is None else a.tolist()

    return {"protocol": protocol, "split": split, "budget": budget, "seeds": seeds,
            "budgets": dict(budgets or {}),
            "rows": [{"name": r.name, "iterations": r.iterations, "env_steps": r.env_steps,
                      "seconds": r.seconds, "returns": arr(r.returns), "success": arr(r.success),
                      "curves": [[[p[0], arr(p[1]), arr(p[2])] for p in c.points]
                                 for c in r.curves]} for r in rows]}


def _rows_from_json(doc: dict[str, Any]) -> list[Row]:
    def arr(a: Any) -> np.ndarray | None:
        return None if a is None else np.asarray(a, dtype=float)

    return [Row(r["name"], int(r["iterations"]), float(r["env_steps"]), float(r["seconds"]),
                np.asarray(r["returns"], dtype=float), arr(r["success"]),
                [Curve([(float(p[0]), np.asarray(p[1], dtype=float), arr(p[2])) for p in c])
                 for c in r["curves"]]) for r in doc["rows"]]


def combine(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One table from runs made apart (each a :func:`rows_json`), e.g. one algorithm per job.

    Raises:
        ValueError: the runs differ in protocol, split or seeds.

    """
    if not documents:
        raise ValueError("--combine: give at least one JSON file of `bench offpolicy --json`")
    first = documents[0]
    for doc in documents[1:]:
        for key in ("protocol", "split", "seeds"):
            if doc[key] != first[key]:
                raise ValueError(f"--combine: the runs differ in {key} ({first[key]!r} vs "
                                 f"{doc[key]!r}); combine runs of one protocol, split and seeds")
    rows = [row for doc in documents for row in _rows_from_json(doc)]
    budget = max(int(doc["budget"]) for doc in documents)
    budgets = {r.name: int(doc.get("budgets", {}).get(r.name, doc["budget"]))
               for doc in documents for r in _rows_from_json(doc)}
    own = {name: b for name, b in budgets.items() if b != budget}
    text = table(rows, PROTOCOLS[first["protocol"]], first["split"], budget, first["seeds"],
                 own)
    print(text)
    return {"table": text, "curves": curves_csv(rows), "rows": rows,
            "json": rows_json(rows, first["protocol"], first["split"], budget, first["seeds"],
                              own)}


def bench_offpolicy(algorithms: list[str] | None = None, protocol: str = "point_sparse",
                    budget: int | None = None, seeds: tuple[int, ...] = (0, 1, 2),
                    rounds: int = 3, split: str = "test", eval_seeds: tuple[int, ...] = (0, 1, 2),
                    points: int = 6, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    budgets: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Run the comparison; print and return the table, the curves and the rows.

    ``budgets`` gives some algorithms a budget of their own (e.g. the off-policy ones a tenth
    of the on-policy budget, to see whether they match it with that much less data).

    Raises:
        ValueError: an unknown protocol, split or algorithm (naming the value).

    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: choose one of {list(PROTOCOLS)}")
    if split not in ("val", "test"):
        raise ValueError(f"--split {split!r}: choose val (to choose settings) or test")
    known = registry.algorithms()
    names = algorithms or [n for n in ("pearl", "mql", "rl2", "maml") if n in known]
    extra = [n for n in (overrides or {}) if n not in names]
    if extra:
        raise ValueError(f"--set {extra[0]}.*: {extra[0]!r} is not one of the algorithms run "
                         f"({names})")
    proto = PROTOCOLS[protocol]
    configs = configs_for(proto, names, overrides)  # checked before anything trains
    budget = proto.budget if budget is None else budget
    if budget < 1 or rounds < 1 or points < 1:
        raise ValueError(f"--budget={budget}, --episodes={rounds}, --points={points}: each "
                         "must be >= 1")
    budgets = dict(budgets or {})
    bad = [f"{n}={b}" for n, b in budgets.items() if n not in names or b < 1]
    if bad:
        raise ValueError(f"--budget-of {bad[0]}: give NAME=STEPS with NAME one of {names} and "
                         "STEPS >= 1")
    torch.set_num_threads(1)
    family = proto.family()
    sets = sample_task_sets(family, {"train": proto.num_train, "val": proto.num_val,
                                     "test": proto.num_test}, 0)
    tasks = list(sets[split].tasks)
    print(f"{proto.description}: {', '.join(names)}, {budget:,} env steps each per seed, "
          f"seeds {list(seeds)}, scored on the {split} tasks", flush=True)
    rows = [run_algorithm(name, configs[name], family, sets["train"], tasks,
                          budgets.get(name, budget), list(seeds), rounds, list(eval_seeds),
                          points) for name in names]
    text = table(rows, proto, split, budget, list(seeds), budgets)
    print(text)
    return {"table": text, "curves": curves_csv(rows), "rows": rows,
            "json": rows_json(rows, protocol, split, budget, list(seeds), budgets)}

