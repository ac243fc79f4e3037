"""Training RL² for a cell of ``metarl bench rl2``: seeds, worker processes, checkpoints.

One model per training seed, trained for a fixed number of PPO iterations on freshly sampled
tasks (a stream seeded apart from the test instances); optionally resumed from and saved to a
checkpoint file, trained several seeds at a time in processes of their own, or kept at the
check that scored best on the tuning instances (``select_every``). Each path gives the same
weights as one uninterrupted training in one process.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from metarl.algos.rl2 import RL2, RL2Config
from metarl.config import to_dict
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench.baselines import _seed
from pipelines.bench.rl2.params import VALIDATION_INSTANCES

Family = BanditFamily | TabularMDPFamily


@dataclasses.dataclass(frozen=True)
class Validation:
    """A cell a model plays, as ``select_every`` scores it: the cell's tuning instances.

    Those are the split ``bench baselines`` tunes its baselines on (Gittins' discount, UCB's
    constant, ε), drawn apart from the test instances the table scores.
    """

    family: Family
    episodes_per_trial: int
    tasks: list[dict]
    seed: int
    """Of the evaluation generator: every check plays the same rollouts' random numbers."""
    steps: int
    """Pulls (bandit) or episodes (MDP) per trial: the score is the return per step."""

    def score(self, algo: RL2, device: str) -> float:
        """The model's mean return per pull or episode on these instances."""
        returns = algo.evaluate(self.tasks, torch.Generator(device).manual_seed(self.seed),
                                family=self.family, episodes_per_trial=self.episodes_per_trial)
        return float(returns.mean()) / self.steps


@dataclasses.dataclass(frozen=True)
class Training:
    """What RL² of a cell trains on: a family, its trial length and the seeds' keys.

    A cell's own family by default; a cell longer than ``bandit_train_pulls`` /
    ``mdp_train_episodes`` trains on the shorter cell's family instead, with that cell's seeds,
    settings and checkpoint file, so its training is the shorter cell's, step for step.
    """

    family: Family
    episodes_per_trial: int
    keys: tuple[int, ...]
    """Seed keys: training seed ``s`` is ``_seed(10, *keys, s)``."""
    cell: str
    """The cell trained on, as ``--checkpoints`` names its files (``bandit-100x5``)."""
    note: str = ""
    """Said after the iterations in the table (e.g. ``on 100 pulls``)."""
    alternate: tuple[tuple[Family, int], ...] = ()
    """Further families and trial lengths trained on in turn with the first, one iteration
    each (``mdp_train_episodes: [10, 25]``); none by default. Only the trial length may
    differ: the tasks are still drawn by the first family's sampler."""
    validation: tuple[Validation, ...] = ()
    """The cells the model plays, scored on their tuning instances every ``select_every``
    iterations."""
    select_every: int | None = None
    """Check every this many iterations (and at the last) and keep the weights that scored
    best, their mean return per step over ``validation``; ``None``: keep the last weights."""

    def seed(self, s: int) -> int:
        """The RL² seed of training seed ``s`` (weights, tasks, rollouts)."""
        return _seed(10, *self.keys, s)

    @property
    def on(self) -> str:
        """The note as it follows the iterations in a row or a progress line (`` on 100 pulls``)."""
        return f" {self.note}" if self.note else ""


def validation_cells(table: str, cell: tuple[int, int], trains_like: Any, instance_seed: int,
                     reference: dict[tuple[str, int, int, str], float]
                     ) -> tuple[Validation, ...]:
    """The cells ``select_every`` scores the model trained for ``cell`` on.

    ``cell`` is ``(n, k)`` (``(n, 0)`` for an MDP cell): the paper's cells of its table that
    ``trains_like`` (a cell -> its training) maps to the same training as ``cell``, and
    ``cell`` itself — whichever cells a run selects, so that a cell's numbers do not depend on
    the cells run beside it.
    """
    paper = {(n, k) for t, n, k, method in reference if t == table and method == "RL2"}
    cells = sorted({c for c in paper if trains_like(c) == trains_like(cell)} | {cell})
    out = []
    for n, k in cells:
        if table == "bandit":
            family: Family = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
            rng, steps, episodes = _seed(instance_seed, 1, n, k, 1), n, 1
        else:
            family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
            rng, steps, episodes = _seed(instance_seed, 3, n, 1), n, n
        tasks = family.sample(VALIDATION_INSTANCES, np.random.default_rng(rng))
        out.append(Validation(family, episodes, tasks, _seed(12, instance_seed, n, k), steps))
    return tuple(out)


def train_seed(table: str, cell: str, s: int, train: Training, obs_dim: int,
               num_actions: int, config: RL2Config, iterations: int, device: str,
               progress: TextIO, time_budget: float | None, checkpoints: Path | None
               ) -> tuple[RL2, int, str]:
    """Train (or resume) seed ``s`` of ``train``: the agent, its iterations and how it stopped.

    The last is said after the iterations in the table: `` (resumed at 300)``, `` (time budget
    60 s)`` or nothing.
    """
    start = time.perf_counter()
    seed = train.seed(s)
    algo = RL2(train.family, obs_dim, num_actions, train.episodes_per_trial, config,
               seed=seed, device=device)
    path = None if checkpoints is None else checkpoints / f"{train.cell}-s{s}.pt"
    resumed, best = resume(algo, path, config, seed, device) if path is not None else (0, None)
    if resumed:
        print(f"  {table} {cell} seed {s}: resumed at iteration {resumed} from {path}",
              file=progress, flush=True)
    on = train.on
    done, stopped = resumed, ""
    turns = [(train.family, train.episodes_per_trial), *train.alternate]
    every = train.select_every if train.validation else None
    best = best if every else None  # a file's best is kept only while selecting
    label = f"  {table} {cell} seed {s}"
    for i in range(resumed, iterations):
        # in turn: the iteration's count picks the trials, so a resumed run goes on in step
        algo.family, algo.episodes_per_trial = turns[i % len(turns)]
        stats = algo.train_step()
        done = i + 1
        if every and done % every == 0:
            best = _select(algo, train, done, best, device, label, progress)
        elapsed = time.perf_counter() - start
        if done % max(1, iterations // 5) == 0:
            print(f"  {table} {cell} seed {s}: iteration {done}/{iterations}{on}, train "
                  f"trial return {stats['trial_return']:.2f}, {elapsed:.0f} s",
                  file=progress, flush=True)
        if time_budget is not None and elapsed >= time_budget and done < iterations:
            stopped = f" (time budget {time_budget:.0f} s)"
            print(f"  {table} {cell} seed {s}: stopped at iteration {done}{stopped}, train "
                  f"trial return {stats['trial_return']:.2f}", file=progress, flush=True)
            break
    algo.family, algo.episodes_per_trial = turns[0]
    if every and (best is None or best["last"] != done):
        best = _select(algo, train, done, best, device, label, progress)
    if path is not None:
        save_training(algo, path, config, seed, device, done, best)
    since = f" (resumed at {resumed})" if resumed else ""
    kept = ""
    if every and best is not None:
        algo.model.load_state_dict(best["model"])
        kept = (f", kept it {best['iteration']} (best of {best['checks']} checks on tuning "
                "instances)")
    return algo, done, f"{since}{stopped}{kept}"


def train_in_workers(table: str, cell: str, seeds: Sequence[int], train: Training,
                     obs_dim: int, num_actions: int, config: RL2Config, iterations: int,
                     device: str, time_budget: float | None, checkpoints: Path | None,
                     workers: int) -> dict[int, tuple[RL2, int, str, float]]:
    """Train ``seeds`` as :func:`train_seed` does, ``workers`` at a time.

    Each seed trains in a process of its own (spawned, one torch thread: on a 2-core machine
    two such processes run at full speed side by side, where one process with two threads
    gains little) exactly as :func:`train_seed` would here: same seed, tasks and minibatches,
    so the same weights. Workers print their progress on this process's stderr. Returns per
    seed the agent (rebuilt here with the trained weights), its iterations, the note, and the
    seconds its training took in the worker.
    """
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=torch.set_num_threads,
            initargs=(1,)) as pool:
        futures = {s: pool.submit(_train_worker, table, cell, s, train, obs_dim, num_actions,
                                  config, iterations, device, time_budget, checkpoints)
                   for s in seeds}
        done = {s: future.result() for s, future in futures.items()}
    out = {}
    for s, (weights, iters, how, seconds) in done.items():
        algo = RL2(train.family, obs_dim, num_actions, train.episodes_per_trial, config,
                   seed=train.seed(s), device=device)
        algo.model.load_state_dict(weights)
        algo.iteration = iters
        out[s] = (algo, iters, how, seconds)
    return out


def _train_worker(table: str, cell: str, s: int, train: Training, obs_dim: int,
                  num_actions: int, config: RL2Config, iterations: int, device: str,
                  time_budget: float | None, checkpoints: Path | None
                  ) -> tuple[dict[str, torch.Tensor], int, str, float]:
    """:func:`train_seed` in a worker process: the weights (on the CPU), iterations, note, s."""
    start = time.perf_counter()
    algo, done, how = train_seed(table, cell, s, train, obs_dim, num_actions, config,
                                 iterations, device, sys.stderr, time_budget, checkpoints)
    weights = {k: v.detach().cpu() for k, v in algo.model.state_dict().items()}
    return weights, done, how, time.perf_counter() - start


def _select(algo: RL2, train: Training, done: int, best: dict[str, Any] | None, device: str,
            label: str, progress: TextIO) -> dict[str, Any]:
    """Score ``algo`` on ``train.validation``: the best checkpoint so far (``select_every``).

    The score is the mean over the cells of the return per pull or episode, on each cell's
    tuning instances with the same evaluation seed at every check: a like-for-like comparison.
    """
    score = float(np.mean([v.score(algo, device) for v in train.validation]))
    checks = 1 if best is None else best["checks"] + 1
    if best is None or score > best["score"]:
        best = {"score": score, "iteration": done,
                "model": {k: v.detach().clone() for k, v in algo.model.state_dict().items()}}
    best = {**best, "checks": checks, "last": done}
    print(f"{label}: iteration {done}, tuning-instance score {score:.4f} per step (best "
          f"{best['score']:.4f}, iteration {best['iteration']})", file=progress, flush=True)
    return best


BEFORE_THEY_EXISTED = {"inputs": "paper", "head": "linear", "lr_drop_at": 0,
                       "lr_drop_to": 1e-4, "trial_clock": False, "reward_signal": "sampled"}
"""RL² settings added after the first checkpoint files, with the value that trained as the
code did before the setting existed: a file that does not name one was trained with it."""
RETIRED = {"critic": "shared"}
"""Settings older files name that RL2Config no longer has, with the value that trained as
RL² does now (a file naming another value is refused)."""


def resume(algo: RL2, path: Path, config: RL2Config, seed: int, device: str
           ) -> tuple[int, dict[str, Any] | None]:
    """Load ``path`` (from :func:`save_training`) into ``algo``: iterations run, best so far.

    The best is ``select_every``'s best checkpoint (``None`` without one); (0, None) when
    there is no such file. A file written with other RL² settings, seed or device type is
    refused: training on from it would mix two configurations under one row (and a CUDA
    generator's state does not fit a CPU one).
    """
    if not path.exists():
        return 0, None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["config"] = {**BEFORE_THEY_EXISTED, **{
        k: v for k, v in saved["config"].items() if RETIRED.get(k, object()) != v}}
    wanted = to_dict(config)
    changed = sorted(k for k in {*wanted, *saved["config"]}
                     if wanted.get(k) != saved["config"].get(k))
    here = torch.device(device).type
    # Files written before the device was recorded: a CUDA generator's state is 16 bytes (seed
    # and offset), a CPU one's thousands.
    saved.setdefault("device", "cuda" if saved["state"]["generator"].numel() <= 16 else "cpu")
    if changed or saved["seed"] != seed or saved["device"] != here:
        what = ", ".join(f"{k}={saved['config'].get(k)!r} there, {wanted.get(k)!r} here"
                         for k in changed) or (
            f"seed {saved['seed']} there, {seed} here" if saved["seed"] != seed
            else f"device {saved['device']} there, {here} here")
        raise ValueError(f"--checkpoints: {path} was trained with other settings ({what}); "
                         "pass the same settings, or move the file away to start afresh")
    algo.load_training_state(saved["state"])
    algo.iteration = int(saved["iterations"])  # files written before the state counted them
    return algo.iteration, saved.get("best")


def save_training(algo: RL2, path: Path, config: RL2Config, seed: int, device: str,
                  iterations: int, best: dict[str, Any] | None = None) -> None:
    """Write ``algo``'s training state to ``path`` atomically (a later run resumes from it).

    With ``select_every``'s best checkpoint so far when there is one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": to_dict(config), "seed": seed, "device": torch.device(device).type,
                "iterations": iterations, "state": algo.training_state(),
                **({} if best is None else {"best": best})}, tmp)
    tmp.replace(path)
