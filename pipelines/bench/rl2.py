"""``metarl bench rl2``: RL² meta-trained and scored on cells of the RL² paper's Tables 1 and 2.

Duan et al. 2016, https://arxiv.org/abs/1611.02779. Per cell, for every training seed: an
:class:`~metarl.algos.rl2.RL2` agent is meta-trained for a fixed number of PPO iterations on
freshly sampled tasks (a stream seeded apart from the test instances), then plays one trial on
each of ``--instances`` test instances with a fresh hidden state. The test instances are exactly
the evaluation instances of ``metarl bench baselines`` (same seed derivation), and the baseline
rows (Gittins / UCB1 / TS for bandits, PSRL for MDPs, with Random and the Oracle for scale) come
from :mod:`pipelines.bench.baselines` on those same instances; their tuned hyperparameters are
chosen on separate tuning instances, and nothing here is tuned on the test instances.

Intervals are mean ± 1.96 standard errors over instances. With several seeds a ``RL2 mean`` row
averages each instance's return over the seeds. A cell counts as "at or above the paper" when our
RL² mean, rounded to the paper's one decimal, is at least the paper's RL² figure.

Budget: the defaults (:func:`bandit_config`, :data:`MDP_CONFIG`, :func:`default_iterations`)
are sized for one CPU thread: one seed of a cell takes about 1 minute (n = 10 bandits) to 8
minutes (n = 100 and 500 bandits: the 500-pull cells are played by the 100-pull cells' models,
:data:`BANDIT_TRAIN_PULLS`), 35 minutes for the MDP cells (one model trained on 10-episode
trials, 2000 iterations, plays all five: :data:`MDP_TRAIN_EPISODES`). The paper
trained for far longer, so this is what RL² reaches with that compute, not its ceiling. On a
GPU, ``--bandit`` / ``--mdp`` replace settings (e.g. ``meta_batch_size=1024 hidden_size=256``:
8 × the trials at about the CPU's seconds per iteration) and ``--time-budget`` bounds the
training time; ``benchmarks/rl2/README.md`` ("What was tried", the ``gpu/`` rows) has what that
reached.
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from metarl.algos.rl2 import RL2, RL2Config
from metarl.config import from_mapping, to_dict
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench.baselines import (
    HEADER,
    Row,
    _seed,
    bandit_cell,
    format_row,
    load_reference,
    mdp_cell,
    parse_cells,
)

DEFAULT_CELLS = ("10x5", "10x10", "10")
"""The short-trial cells: bandit n=10 k=5 and k=10 (about a minute each on one CPU thread),
tabular MDP n=10 (about 35 minutes; ``--iterations 200``: 3 minutes, 145.0 instead of 156.2)."""

BANDIT_CONFIG = RL2Config(hidden_size=64, meta_batch_size=128, trials_per_task=8, lr=6e-3,
                          entropy_coef=0.02)
"""Bandit cells with n = 10 pulls: 1024 trials per iteration, full BPTT. Longer trials use
:func:`bandit_config`. Learning rate 6e-3: on 100x5 (120 iterations, train trial return) 1e-3
reached 63, 3e-3 72, 6e-3 75 and 1e-2 75; on 10x5 6e-3 reached in 200 iterations what 1e-3
reached in 300. GAE lambda 0.95 instead of the paper's 0.3 was no better (70 at 3e-3), an
entropy bonus of 0.05 stopped learning, 0.005 changed little, a 128-wide GRU neither."""


def bandit_config(num_pulls: int) -> RL2Config:
    """The bandit configuration for trials of ``num_pulls`` pulls.

    Rewards are scaled by ``10 / n`` for the value targets (with unscaled rewards the value
    loss of a 100-pull trial swamped the policy gradient under the 0.5 gradient-norm clip:
    100x5 stayed at the random 50 for 180 iterations; with 0.1 it reached 67 by then). Trials
    per iteration shrink as trials grow (1024 / 512 / 256 for n = 10 / 100 / 500), and trials
    of more than 100 steps back-propagate through chunks of 100.

    Trials longer than 10 pulls learn from the arms' expected rewards
    (``reward_signal="expected"``: the pulled arm's success probability in place of the 0/1
    draw, in training only) with long-horizon credit (GAE λ 0.8, discount 0.999): what an
    exploratory pull is worth shows up tens to hundreds of pulls later, which λ 0.3 and
    discount 0.99 left to the critic to guess, and without the draws' noise the longer returns
    stay usable. Seed 0, the bench's instances and budget (before → after): 100x5 76.6 → 77.5,
    100x10 79.4 → 81.4, 100x50 80.0 → 81.3 (300 iterations), 500x5 331.9 → 378.2 (150).
    Each part alone did not do it: the expected rewards with λ 0.3 gave 100x10 77.7 and
    500x50 337.3 (at 150 iterations); λ 0.95 with the sampled rewards 100x10 79.0; λ 0.95
    with the expected ones 100x10 80.4 at 300 iterations (82.1 at 600) but 100x50 only 59 at
    200 (entropy stuck high) (screen ``expected-reward-cpu``).

    They also read reward-coded inputs with bilinear heads (``inputs="reward_code"``,
    ``head="bilinear"``: an arm's successes sum linearly in the GRU's input), at the same
    seconds per iteration. Seed 0 / 1 / 2, 600 iterations, before → after
    (screen ``encoding-cpu``): 100x50 83.0 / 83.8 / 83.2 → 84.05 / 84.25 / 83.29, its
    500x50 434.9 / 439.9 / 443.5 → 443.3 / 442.9 / 445.2; seed 0: 100x10 82.4 → 82.6 (there by
    300 iterations), 500x10 432.6 → 435.9, 100x5 77.8 → 77.3, 500x5 403.2 → 405.7.

    Tried on the 100-pull models and not kept (screen ``wide-cpu``, 600 iterations):
    a 128-wide GRU, at twice the seconds per iteration (three seeds) — 100x10 81.7 (64 wide:
    82.3), its 500x10 430.9 (433.4); 100x50 83.0 (83.3), 500x50 440.3 (439.4); 1024 trials per
    iteration instead of 512 (seed 0, 1.4 × the seconds per iteration): 100x10 82.6 (82.4),
    500x10 433.3 (432.6), ahead at 300 iterations (82.6 vs 81.4) but not at 600; and
    (screen ``schedule-cpu``, seed 0) the rate dropped to 1e-3 for the last 150
    iterations: 100x10 82.3 (82.4), 100x50 83.3 (83.0).
    """
    if num_pulls <= 10:
        return BANDIT_CONFIG
    return dataclasses.replace(
        BANDIT_CONFIG, reward_scale=10.0 / num_pulls,
        trials_per_task=4 if num_pulls <= 100 else 2,
        bptt_length=0 if num_pulls <= 100 else 100,
        reward_signal="expected", gae_lambda=0.8, discount=0.999,
        inputs="reward_code", head="bilinear")


MDP_CONFIG = RL2Config(hidden_size=128, meta_batch_size=64, trials_per_task=4, lr=3e-3,
                       bptt_length=0, discount=0.9, reward_scale=0.1, inputs="pair_code",
                       head="bilinear", lr_drop_at=1600, lr_drop_to=1e-3,
                       reward_signal="expected", trial_clock=True)
"""MDP cells: 256 trials per iteration, back-propagation through the whole trial, the learning
rate 3e-3 dropped to 1e-3 after 1600 iterations (only n = 10 trains that long). Rewards
scaled by 0.1 for the value targets (with the paper's 0.99 and unscaled rewards the value loss
swamped the policy gradient and nothing was learned in this budget); discount 0.9, with which
learning started several times sooner than with 0.99 (on our own validation tasks).

The GRU reads each reward in the slot of the ``(s, a)`` pair it was earned in
(``inputs="pair_code"``) and both heads are bilinear in the current state and the GRU state
(``head="bilinear"``): with the paper's encoding and linear heads these cells reached 119.4
(n = 10) and 298.9 (n = 25) in 200 iterations, with them 136.3 and 379.5 (same seed and
budget; the pair code alone: 119.2 on n = 10). The paper's encoding stays available
(``--mdp inputs=paper head=linear``).

Gradients flow through the whole trial (``bptt_length=0``): truncated at one episode (10 steps,
the default until 2026-11-23) they never reached the steps that wrote what a later episode
reads, and the cells learned several times slower at the same seconds per iteration — seed 0,
n = 10: 134.4 / 140.4 / 143.9 after 200 / 400 / 800 iterations truncated, 145.0 / 151.1 /
154.3 / 155.1 after 200 / 400 / 800 / 1200 whole; n = 25: 384.8 → 410.9 in 200 iterations
(screen ``mdp-cpu``). For the 500-pull bandits whole-trial gradients were no better
(150 iterations, seed 0: 500x5 341.5 vs 331.9, inside the seeds' spread; 500x50 358.1 vs 366.1)
and 1.6-1.8× slower, so the bandits keep their chunks of 100.

The value targets and advantages use the expected reward of each step's ``(s, a)`` pair
(``reward_signal="expected"``; the GRU still reads the noisy reward): the reward noise (standard
deviation 1, as wide as the prior over the means) no longer enters the returns. Seed 0, 200
iterations, n = 10: 145.0 → 148.8.

The drop: at a constant 3e-3 n = 10 stalled at 154.3 / 155.1 / 154.8 after 800 / 1200 / 1600
iterations (seed 0); 400 more at 1e-3 reached 156.2, the paper's figure (its gradient noise no
longer swamped the last gains).

The observation carries a trial clock (``trial_clock``: the fraction of the trial's episodes
already played), so the n = 10 model plays 25 to 100 episodes on its own schedule, stretched,
as the 100-pull bandit model plays 500 pulls; without one it played past the end it had
learned. Seed 0, 2000 iterations, n = 10 / 25 / 50 / 75 / 100: 157.6 / 435.8 / 920.3 / 1400.5 /
1905.8 without, 157.1 / 437.7 / 926.5 / 1411.0 / 1921.4 with it, at the same seconds
(screen ``mdp-clock-cpu``)."""


def default_iterations(table: str, n: int) -> int:
    """Training iterations per seed and cell.

    Bandits: 400 for n = 10 (about 0.1 s each on one CPU thread), 600 for n = 100 (about
    0.8 s; with the expected-reward defaults 300 → 600 took seed 0 from 77.5 / 81.3 to 77.9 /
    83.0 on 100x5 / 100x50, and their models from 400.6 / 421.8 to 403.2 / 434.9 on 500x5 /
    500x50, screen ``curriculum-cpu``), 150 for n = 500 (about 2 s; only with
    ``bandit_train_pulls`` null, else the 500-pull cells train on 100 pulls); MDP cells:
    2000 at n = 10 (about 1 s each, 35 min: the 1600 of :data:`MDP_CONFIG`'s learning rate,
    then 400 at the dropped one), 200 for longer trials (about 2.7 s each at n = 25, growing
    linearly with n; only with ``mdp_train_episodes`` set to them or null). A model trained on
    several trial lengths in turn (``mdp_train_episodes: [10, 25]``) runs its first length's
    iterations: 2000 for ``[10, 25]``, about 1.9 s each (the 10- and 25-episode ones' mean).
    """
    if table == "mdp":
        return 2000 if n <= 10 else 200
    return 400 if n <= 10 else 600 if n <= 100 else 150

BANDIT_TRAIN_PULLS = 100
"""Bandit cells with more pulls than this train on trials of this many pulls (same arms).

The bandit's observation is the fraction of the trial played (``t / n``), so a policy trained
on 100-pull trials plays a 500-pull trial on the same schedule, stretched, and did better than
one trained on the 500-pull trials themselves with the same or more compute. Seed 0, the
bench's instances (screen ``curriculum-cpu``): the 100-pull cells' models (300
iterations, 3.5 minutes on one thread) score 400.6 / 429.6 / 421.8 on 500x5 / 500x10 / 500x50,
where 150 iterations on 500-pull trials (6 minutes) reached 378.2 / 395.4 / 379.0 and 300 (12
minutes) 390.2 / 399.1 / 414.0; training the 100-pull model on at 500 pulls lowered it (500x50:
421.8 → 417.6 after 50 iterations at lr 6e-3, → 412.2 at 1e-3; 500x10: 429.6 → 424.5).
With 600 iterations on 100 pulls, three seeds (``benchmarks/rl2/table.txt``): 404.2 / 433.4 /
439.4, each at or above the paper's RL² (401.6 / 432.5 / 438.9)."""


def training_pulls(num_pulls: int, train_pulls: int | None = BANDIT_TRAIN_PULLS) -> int:
    """The trial length RL² trains on for a bandit cell of ``num_pulls`` pulls.

    ``num_pulls`` itself unless ``train_pulls`` is set and shorter (``None``: every cell
    trains on its own trial length).
    """
    return num_pulls if train_pulls is None else min(num_pulls, train_pulls)


MDP_TRAIN_EPISODES = 10
"""MDP cells with more episodes than this are played by the model trained on trials of this
many episodes (the 10 cell's: seeds, settings, 2000 iterations, checkpoint file).

With the trial clock (:data:`MDP_CONFIG`) that model plays a longer trial on its own schedule,
stretched, as the bandit models do. Three seeds (``benchmarks/rl2/table.txt``): 157.1 / 436.4
/ 922.3 / 1411.5 / 1922.4 on n = 10 / 25 / 50 / 75 / 100; a clocked model trained on
25-episode trials for the whole schedule, 2.6 × the compute, scored 158.4 / 437.1 / 923.0 /
1409.7 / 1926.3 (three seeds, screen ``mdp-clock-cpu``), and 200 iterations on each
cell's own trials (before the clock) had reached 417.2 / 812.6 / 1235.1 on n = 25 / 50 / 75."""


BANDIT_BASELINES = ("Random", "Gittins", "UCB1", "TS", "Bayes-optimal", "Oracle")
MDP_BASELINES = ("Random", "PSRL", "Myopic-Bayes", "Oracle")


REUSED = "cell's model (trained above)"
"""How a row played by another cell's model ends its setting (``the 100x5 cell's model ...``;
the cell's :attr:`CellRun.played_by` names it)."""


VALIDATION_INSTANCES = 200
"""Tuning instances per cell that ``select_every`` scores a model on (as few as keep a check
under a few seconds: its picks compare checkpoints on the same instances and seeds)."""


@dataclasses.dataclass(frozen=True)
class Validation:
    """A cell a model plays, as ``select_every`` scores it: the cell's tuning instances.

    Those are the split ``bench baselines`` tunes its baselines on (Gittins' discount, UCB's
    constant, ε), drawn apart from the test instances the table scores.
    """

    family: BanditFamily | TabularMDPFamily
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

    A cell's own family by default; a bandit cell longer than ``bandit_train_pulls`` trains on
    the shorter cell's family instead (:func:`training_pulls`), with that cell's seeds, settings
    and checkpoint file, so its training is the shorter cell's, step for step.
    """

    family: BanditFamily | TabularMDPFamily
    episodes_per_trial: int
    keys: tuple[int, ...]
    """Seed keys: training seed ``s`` is ``_seed(10, *keys, s)``."""
    cell: str
    """The cell trained on, as ``--checkpoints`` names its files (``bandit-100x5``)."""
    note: str = ""
    """Said after the iterations in the table (e.g. ``on 100 pulls``)."""
    alternate: tuple[tuple[BanditFamily | TabularMDPFamily, int], ...] = ()
    """Further families and trial lengths trained on in turn with the first, one iteration
    each (the MDP cells' ``mdp_train_episodes: [10, 25]``); none by default. Only the trial
    length may differ: the tasks are still drawn by the first family's sampler."""
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


def mdp_training_lengths(num_episodes: int,
                         train_episodes: int | Sequence[int] | None) -> tuple[int, ...]:
    """The trial lengths RL² trains on for an MDP cell of ``num_episodes`` episodes.

    ``None``: the cell's own. A number ``m``: trials of ``min(num_episodes, m)`` episodes (a
    longer cell is played by the ``m``-episode model). A list: a cell at least as long as its
    first length trains on trials of each listed length in turn (one model for all such
    cells); a shorter cell on its own. A list of one length is that number.
    """
    if train_episodes is None:
        return (num_episodes,)
    lengths = (train_episodes,) if isinstance(train_episodes, int) else tuple(train_episodes)
    if len(lengths) <= 1:
        return (min(num_episodes, *lengths),)
    return lengths if num_episodes >= lengths[0] else (num_episodes,)


def _validation(table: str, cell: tuple[int, int], trains_like: Any, instance_seed: int,
                reference: dict[tuple[str, int, int, str], float]) -> tuple[Validation, ...]:
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
            family: BanditFamily | TabularMDPFamily = BanditFamily(
                BanditFamilyConfig(num_arms=k, num_pulls=n))
            rng, steps, episodes = _seed(instance_seed, 1, n, k, 1), n, 1
        else:
            family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
            rng, steps, episodes = _seed(instance_seed, 3, n, 1), n, n
        tasks = family.sample(VALIDATION_INSTANCES, np.random.default_rng(rng))
        out.append(Validation(family, episodes, tasks, _seed(12, instance_seed, n, k), steps))
    return tuple(out)


def _check_train_lengths(option: str, value: int | Sequence[int] | None, unit: str) -> None:
    """A training-length option: null, a number >= 1 or (episodes only) a rising list of them."""
    if value is None:
        return
    listed: list[Any] = list(value) if isinstance(value, list | tuple) else [value]
    how = ("to train each cell on its own length: null in a params file, 0 on the command "
           "line")
    if not listed:
        raise ValueError(f"{option} []: give at least one length ({how})")
    for length in listed:
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"{option} {value!r}: must be >= 1 ({unit} per training trial); "
                             f"{how}")
    if listed != sorted(set(listed)):
        raise ValueError(f"{option} {value!r}: list each length once, shortest first (the "
                         "first is the shortest cell the model plays), e.g. 10,25")


def _rl2_rows(table: str, cell: str, family: BanditFamily | TabularMDPFamily,
              obs_dim: int, num_actions: int, episodes_per_trial: int, config: RL2Config,
              iterations: int, test_tasks: list[dict], seeds: Sequence[int], keys: tuple[int, ...],
              paper: float | None, device: str, progress: TextIO,
              time_budget: float | None, checkpoints: Path | None, train: Training,
              trained: dict[tuple[str, int], tuple[RL2, int, str, str]] | None = None,
              workers: int = 1) -> tuple[list[Row], int, str | None]:
    """RL² rows of one cell: per seed, train (or resume, or reuse) and score.

    ``train`` is what the cell's model trains on (its own trials, or a shorter cell's, or
    several lengths in turn) and how it is selected. ``trained`` holds the models this run
    trained so far, by training cell and seed, with their iterations, note and the cell that
    trained them: a cell that trains on the same cell as an earlier one (a long bandit cell
    on the shorter cell's trials; a longer MDP cell) is played by that model, not trained
    again. ``workers`` > 1 trains the seeds still to train that many at a time, each in a
    process of its own (:func:`_train_in_workers`): the same models as one after another.
    Returns the rows, how many seeds trained at a time (1: one after another, or none) and
    the cell whose model, trained earlier in this run, played this one (``None``: trained here).
    """
    short = cell.replace("n=", "").replace(" k=", "x")  # as --cells names it
    rows, per_seed, played_by = [], [], None
    todo = [s for s in seeds if trained is None or (train.cell, s) not in trained]
    parallel = min(workers, len(todo)) if len(todo) > 1 else 1
    ready = (_train_in_workers(table, cell, todo, train, obs_dim, num_actions, config,
                               iterations, device, time_budget, checkpoints, parallel)
             if parallel > 1 else {})
    for s in seeds:
        start, before = time.perf_counter(), 0.0
        if trained is not None and (train.cell, s) in trained:
            algo, done, how, name = trained[(train.cell, s)]
            print(f"  {table} {cell} seed {s}: the {name} cell's model, trained above",
                  file=progress, flush=True)
            what, timed = f"{done} it{train.on}{how}: the {name} {REUSED}", "eval"
            played_by = name
        else:
            if s in ready:  # trained in a worker: its own seconds count for this seed
                algo, done, how, before = ready[s]
            else:
                algo, done, how = _train_seed(table, cell, s, train, obs_dim, num_actions,
                                              config, iterations, device, progress,
                                              time_budget, checkpoints)
            if trained is not None:
                trained[(train.cell, s)] = (algo, done, how, short)
            what, timed = f"{done} it{train.on}{how}", "train+eval"
        returns = algo.evaluate(test_tasks, torch.Generator(device).manual_seed(
            _seed(11, *keys, s)), family=family, episodes_per_trial=episodes_per_trial)
        per_seed.append(returns)
        mean, half = _summary(returns)
        seconds = before + time.perf_counter() - start
        rows.append(Row(table, cell, f"RL2 s{s}", mean, half, paper,
                        f"{what}, {seconds:.0f} s {timed}"))
    if len(seeds) > 1:
        mean, half = _summary(np.mean(per_seed, axis=0))
        rows.append(Row(table, cell, "RL2 mean", mean, half, paper, f"{len(seeds)} seeds"))
    return rows, parallel, played_by


def _train_seed(table: str, cell: str, s: int, train: Training, obs_dim: int,
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
    resumed, best = _resume(algo, path, config, seed, device) if path is not None else (0, None)
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
        _save_training(algo, path, config, seed, device, done, best)
    since = f" (resumed at {resumed})" if resumed else ""
    kept = ""
    if every and best is not None:
        algo.model.load_state_dict(best["model"])
        kept = (f", kept it {best['iteration']} (best of {best['checks']} checks on tuning "
                "instances)")
    return algo, done, f"{since}{stopped}{kept}"


def _train_in_workers(table: str, cell: str, seeds: Sequence[int], train: Training,
                      obs_dim: int, num_actions: int, config: RL2Config, iterations: int,
                      device: str, time_budget: float | None, checkpoints: Path | None,
                      workers: int) -> dict[int, tuple[RL2, int, str, float]]:
    """Train ``seeds`` as :func:`_train_seed` does, ``workers`` at a time.

    Each seed trains in a process of its own (spawned, one torch thread: on a 2-core machine
    two such processes run at full speed side by side, where one process with two threads
    gains little) exactly as :func:`_train_seed` would here: same seed, tasks and minibatches,
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
    """:func:`_train_seed` in a worker process: the weights (on the CPU), iterations, note, s."""
    start = time.perf_counter()
    algo, done, how = _train_seed(table, cell, s, train, obs_dim, num_actions, config,
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


def _resume(algo: RL2, path: Path, config: RL2Config, seed: int, device: str
            ) -> tuple[int, dict[str, Any] | None]:
    """Load ``path`` (from :func:`_save_training`) into ``algo``: iterations run, best so far.

    The best is ``select_every``'s best checkpoint (``None`` without one); (0, None) when
    there is no such file. A file written with other RL² settings, seed or device type is
    refused: training on from it would mix two configurations under one row (and a CUDA
    generator's state does not fit a CPU one). A setting the file does not name is one added to
    :class:`RL2Config` after it was written, so it was trained with that setting's default.
    """
    if not path.exists():
        return 0, None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    saved["config"] = {**to_dict(RL2Config()), **saved["config"]}
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


def _save_training(algo: RL2, path: Path, config: RL2Config, seed: int, device: str,
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


def _summary(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))


@dataclasses.dataclass(frozen=True)
class BenchRL2Params:
    """``metarl bench rl2 --params FILE``: the bench's options as a YAML file (DVC params).

    ``benchmarks/rl2/params.yaml`` holds them for ``dvc exp run benchmarks/rl2/dvc.yaml``.
    """

    table: str = "all"
    """``bandit``, ``mdp`` or ``all``."""
    cells: tuple[str, ...] = DEFAULT_CELLS
    """``NxK`` bandit cells and ``N`` MDP cells."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds, one model each."""
    mdp_seeds: tuple[int, ...] | None = None
    """Training seeds of the MDP cells (each costs 10 to 45 minutes on one CPU thread, a
    bandit cell's seed 1 to 5); null: ``seeds``."""
    iterations: int | None = None
    """PPO iterations per seed (null: :func:`default_iterations`)."""
    instances: int = 1000
    """Test instances per cell."""
    instance_seed: int = 0
    """Seed of the test instances (as ``bench baselines --seed``)."""
    device: str = "cpu"
    """Torch device."""
    time_budget: float | None = None
    """Seconds of training per seed and cell: stop early (before ``iterations``) once spent;
    null: no limit. The table's note says how many iterations ran."""
    bandit_train_pulls: int | None = BANDIT_TRAIN_PULLS
    """Bandit cells with more pulls train on trials of this many pulls (the same arms; the
    shorter cell's seeds and settings) and are scored on their own; null: every cell trains
    on its own trial length."""
    bandit_select_every: int | None = None
    """Every this many training iterations of a bandit model (and at its last), score it on
    the tuning instances of the cells it plays and keep the best weights; null: the last."""
    mdp_select_every: int | None = None
    """Likewise for the MDP models."""
    mdp_train_episodes: int | tuple[int, ...] | None = MDP_TRAIN_EPISODES
    """Likewise for the MDP cells (:data:`MDP_TRAIN_EPISODES`): longer cells are played by the
    model trained on trials of this many episodes; null: every cell trains on its own; a list
    (``[10, 25]``): every cell at least as long as the first is played by one model trained on
    trials of each listed length in turn, one iteration each (:func:`mdp_training_lengths`).
    ``[10, 25]`` (2000 iterations, 1.9x the time, before the trial clock) scored 158.4 / 436.2 /
    918.1 / 1396.6 / 1898.8 on n = 10 to 100 (seed 0), the 10-episode model 157.6 / 435.8 /
    920.3 / 1400.5 / 1905.8 (seed 1 likewise under it on the long rows;
    screen ``mdp-mixed-cpu``)."""
    workers: int = 1
    """Seeds of a cell trained at a time, one process and torch thread each (the same
    models as one after another); ``--workers`` replaces it."""
    runs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """For ``benchmarks/rl2/dvc.yaml`` only (the bench ignores it): its stages, each a group of
    cells run in one process (``--cells``), so that cells sharing a trained model train it
    once, e.g. ``{bandit: {k5: "100x5 500x5"}}``."""
    bandit: dict[str, Any] = dataclasses.field(default_factory=dict)
    """RL² settings (keys of :class:`~metarl.algos.rl2.RL2Config`) that replace
    :func:`bandit_config`'s in every bandit cell, e.g. ``{meta_batch_size: 512}``."""
    mdp: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Likewise for the MDP cells (replacing :data:`MDP_CONFIG`'s)."""


def with_overrides(config: RL2Config, overrides: dict[str, Any] | None, key: str) -> RL2Config:
    """``config`` with the RL² settings in ``overrides`` replaced, validated.

    Raises:
        ConfigError: an unknown setting or a bad value, named ``<key>.<setting>``.

    """
    if not overrides:
        return config
    return from_mapping(RL2Config, {**to_dict(config), **overrides}, prefix=key)


def parse_overrides(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """``KEY=VALUE`` command-line items as a mapping.

    Numbers are read as numbers (``3e-3`` too), anything else as a YAML scalar.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE, e.g. meta_batch_size=512")
        value: Any
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError as err:
                    raise ValueError(f"{option} {item!r}: cannot read the value {text!r} "
                                     f"({str(err).splitlines()[0]})") from None
        out[name] = value
    return out


def read_params(path: Path) -> BenchRL2Params:
    """The bench's options from a YAML file; a bad key or value names itself.

    ``cells`` may also be a mapping ``{bandit: [10x5, ...], mdp: ["10", ...]}`` (as
    ``benchmarks/rl2/params.yaml``, whose DVC stages run each family's list apart).
    """
    import yaml

    from metarl.config import ConfigError, from_mapping

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("--params", str(path), f"cannot read the YAML file ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("cells"), dict):
        groups = data["cells"]
        for family, listed in groups.items():
            if family not in ("bandit", "mdp") or not isinstance(listed, list | None):
                raise ConfigError(f"cells.{family}", listed, "expected the lists cells.bandit "
                                  "(NxK cells) and cells.mdp (N cells)")
        data = {**data, "cells": [str(c) for family in ("bandit", "mdp")
                                  for c in groups.get(family) or ()]}
    return from_mapping(BenchRL2Params, data)


@dataclasses.dataclass(frozen=True)
class CellRun:
    """One cell's rows (RL² per seed, their mean with several seeds, the baselines) and times."""

    table: str
    """``bandit`` or ``mdp``."""
    cell: str
    """``10x5`` or ``10``: the name ``--cells`` takes."""
    rows: list[Row]
    rl2_seconds: float
    """Wall-clock of RL²'s training and scoring, all seeds."""
    baseline_seconds: float
    workers: int = 1
    """Seeds trained at a time (``--workers``, capped at the seeds this cell trained)."""
    played_by: str | None = None
    """The cell (``--cells`` name) whose model, trained earlier in the run, played this one:
    its wall-clock is evaluation only, the training counted in that cell's line."""


def results_json(runs: Sequence[CellRun], reached: dict[str, list[int]],
                 settings: dict[str, Any]) -> dict[str, object]:
    """The table as nested numbers (DVC metrics), with what ``--combine`` needs to reprint it.

    Per cell (``"bandit n=10 k=5"``): RL² (the mean over seeds, 95% half-width), the paper's RL²,
    our baselines and the wall-clock, then every printed row (a list: DVC's metrics tables skip
    it); the count of cells at or above the paper; the run's settings.
    """
    cells: dict[str, dict[str, object]] = {}
    for run in runs:
        cell = cells.setdefault(f"{run.table} {run.rows[0].cell}",
                                {"paper_rl2": run.rows[0].paper})
        for row in run.rows:
            if row.method.startswith("RL2"):
                cell["rl2"], cell["rl2_half_width"] = row.ours, row.half_width  # last: mean
            else:
                cell[row.method] = row.ours
        cell["wall_clock_s"] = {"rl2": round(run.rl2_seconds, 1),
                                "baselines": round(run.baseline_seconds, 1)}
        cell["train_workers"] = run.workers
        cell["played_by"] = run.played_by
        cell["rows"] = [dataclasses.asdict(row) for row in run.rows]
    return {"cells": cells,
            "at_or_above_paper": {"bandit": reached["bandit"][0],
                                  "bandit_cells": reached["bandit"][1],
                                  "mdp": reached["mdp"][0], "mdp_cells": reached["mdp"][1]},
            "settings": settings}


def bench_rl2(tables: str = "all", cells: Sequence[str] | None = None,
              seeds: Sequence[int] = (0,), instances: int = 1000, iterations: int | None = None,
              instance_seed: int = 0, device: str = "cpu", out: TextIO | None = None,
              progress: TextIO | None = None, json_path: Path | None = None,
              bandit_overrides: dict[str, Any] | None = None,
              mdp_overrides: dict[str, Any] | None = None,
              time_budget: float | None = None, checkpoints: Path | None = None,
              mdp_seeds: Sequence[int] | None = None,
              bandit_train_pulls: int | None = BANDIT_TRAIN_PULLS,
              mdp_train_episodes: int | Sequence[int] | None = MDP_TRAIN_EPISODES,
              json_dir: Path | None = None, bandit_select_every: int | None = None,
              mdp_select_every: int | None = None, workers: int = 1) -> list[Row]:
    """Train and score RL² on the selected cells, print the table, return its rows.

    With ``json_path``, also write :func:`results_json` there (atomically).

    Args:
        tables: ``bandit``, ``mdp`` or ``all``; restricts ``cells``.
        cells: ``NxK`` bandit cells and ``N`` MDP cells (default :data:`DEFAULT_CELLS`).
        seeds: training seeds (one model each).
        instances: test instances per cell.
        iterations: training iterations per seed (default :func:`default_iterations`).
        instance_seed: base seed of the test instances (as ``bench baselines --seed``).
        device: torch device.
        out: where the table goes (default stdout).
        progress: where per-seed training progress goes (default stderr).
        json_path: where to write the results as JSON (none by default).
        bandit_overrides: RL² settings replacing the defaults' in the bandit cells (see
            :class:`BenchRL2Params`).
        mdp_overrides: likewise for the MDP cells.
        time_budget: seconds of training per seed and cell, then stop early (none by default).
        checkpoints: a folder holding one training state per cell and seed
            (``bandit-500x5-s0.pt``, ``mdp-10-s0.pt``), written after training; a later run
            with the same settings resumes from it, up to ``iterations`` in all (so a long
            cell can be trained in several runs, e.g. under a per-call time limit).
        mdp_seeds: the MDP cells' training seeds (default ``seeds``).
        bandit_train_pulls: bandit cells with more pulls train on trials of this many
            (:func:`training_pulls`: the shorter cell's family, seeds, settings, iterations
            and checkpoint file) and are scored on their own; ``None``: each on its own.
        mdp_train_episodes: likewise for the MDP cells (episodes per training trial,
            default :data:`MDP_TRAIN_EPISODES`); ``None``: each on its own; a list: trials of
            each length in turn (:func:`mdp_training_lengths`).
        bandit_select_every: every this many training iterations (and at the last) score
            the model on the tuning instances of the paper's cells it plays (and of the cell
            run), :data:`VALIDATION_INSTANCES` each, and keep the best weights (mean return per
            pull); ``None`` (the default): keep the last.
        mdp_select_every: likewise for the MDP cells (return per episode).
        json_dir: also write each cell's :func:`results_json` alone to
            ``json_dir/<table>-<cell>.json`` (what ``--combine`` reads), atomically.
        workers: train a cell's seeds this many at a time, each in a process of its own
            with one torch thread (the same models as one after another; 2 on a 2-core
            machine). The rows' seconds are each seed's own; a cell's wall-clock line is
            the time it took.

    Raises:
        ValueError: bad ``tables``, ``cells``, ``seeds``, ``instances``, ``iterations``,
            ``bandit_train_pulls`` or ``workers``.
        ConfigError: a bad RL² setting in the overrides.

    """
    _check_options(tables, seeds, instances, iterations, time_budget)
    if bandit_train_pulls is not None and not isinstance(bandit_train_pulls, int):
        raise ValueError(f"--bandit-train-pulls {bandit_train_pulls!r}: one number of pulls "
                         "(a list of lengths is for --mdp-train-episodes only)")
    _check_train_lengths("--bandit-train-pulls", bandit_train_pulls, "pulls")
    _check_train_lengths("--mdp-train-episodes", mdp_train_episodes, "episodes")
    for option, every in (("--bandit-select-every", bandit_select_every),
                          ("--mdp-select-every", mdp_select_every)):
        if every is not None and (not isinstance(every, int) or isinstance(every, bool)
                                  or every < 1):
            raise ValueError(f"{option} {every!r}: must be >= 1 (training iterations between "
                             "checks); to keep the last weights: null in a params file, 0 on "
                             "the command line")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"--workers {workers!r}: must be >= 1 (seeds trained at a time, one "
                         "process and torch thread each; 1: one after another)")
    if mdp_train_episodes is not None and not isinstance(mdp_train_episodes, int):
        listed = list(mdp_train_episodes)  # as the JSON settings hold it; [10] is 10
        mdp_train_episodes = listed[0] if len(listed) == 1 else listed
    mdp_seeds = list(seeds if mdp_seeds is None else mdp_seeds)
    if not mdp_seeds:
        raise ValueError("--mdp-seeds: give at least one training seed")
    if not cells:
        cells = [c for c in DEFAULT_CELLS
                 if tables == "all" or (tables == "bandit") == ("x" in c)]
    bandit, mdp = parse_cells(cells, tables)
    bandit_configs = {m: with_overrides(bandit_config(m), bandit_overrides, "bandit")
                      for m in {10, *(training_pulls(n, bandit_train_pulls) for n, _ in bandit)}
                      }  # validated with no bandit cell too
    mdp_config = with_overrides(MDP_CONFIG, mdp_overrides, "mdp")
    out, progress = out or sys.stdout, progress or sys.stderr
    torch.set_num_threads(1)
    reference = load_reference()
    settings = {"instances": instances, "instance_seed": instance_seed, "device": device,
                "bandit_seeds": list(seeds) if bandit else [],
                "mdp_seeds": mdp_seeds if mdp else [],
                "iterations": iterations, "time_budget": time_budget,
                "bandit_train_pulls": bandit_train_pulls if bandit else None,
                "mdp_train_episodes": mdp_train_episodes if mdp else None,
                "bandit_select_every": bandit_select_every if bandit else None,
                "mdp_select_every": mdp_select_every if mdp else None,
                "bandit": dict(bandit_overrides or {}) if bandit else {},
                "mdp": dict(mdp_overrides or {}) if mdp else {}}
    _print_header(settings, out)
    runs: list[CellRun] = []
    reached = {"bandit": [0, 0], "mdp": [0, 0]}
    trained: dict[tuple[str, int], tuple[RL2, int, str, str]] = {}
    for n, k in bandit:
        start = time.perf_counter()
        family = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
        test = family.sample(instances, np.random.default_rng(_seed(instance_seed, 1, n, k, 0)))
        paper = reference.get(("bandit", n, k, "RL2"))
        m = training_pulls(n, bandit_train_pulls)
        training = Training(
            BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=m)), 1,
            (instance_seed, m, k), f"bandit-{m}x{k}", "" if m == n else f"on {m} pulls",
            validation=() if not bandit_select_every else _validation(
                "bandit", (n, k), lambda c: (training_pulls(c[0], bandit_train_pulls), c[1]),
                instance_seed, reference),
            select_every=bandit_select_every)
        cell_rows, parallel, played_by = _rl2_rows(
            "bandit", f"n={n} k={k}", family, 1, k, 1, bandit_configs[m],
            iterations or default_iterations("bandit", m), test, seeds, (instance_seed, n, k),
            paper, device, progress, time_budget, checkpoints, training, trained, workers)
        base_start = time.perf_counter()
        cell_rows += [r for r in bandit_cell(n, k, instances, instance_seed, device, reference)
                      if r.method in BANDIT_BASELINES]
        runs.append(CellRun("bandit", f"{n}x{k}", cell_rows, base_start - start,
                            time.perf_counter() - base_start, parallel, played_by))
        _report(runs[-1], reached, out)
    for n in mdp:
        start = time.perf_counter()
        mdp_family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
        test = mdp_family.sample(instances,
                                 np.random.default_rng(_seed(instance_seed, 3, n, 0)))
        paper = reference.get(("mdp", n, 0, "RL2"))
        c = mdp_family.config
        lengths = mdp_training_lengths(n, mdp_train_episodes)
        m = lengths[0]
        families = [TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=x)) for x in lengths]
        training = Training(
            families[0], m, (instance_seed, m), "mdp-" + "+".join(map(str, lengths)),
            "" if lengths == (n,) else f"on {'/'.join(map(str, lengths))} episodes"
            + (" alternating" if len(lengths) > 1 else ""),
            tuple(zip(families[1:], lengths[1:], strict=True)),
            validation=() if not mdp_select_every else _validation(
                "mdp", (n, 0), lambda c: mdp_training_lengths(c[0], mdp_train_episodes),
                instance_seed, reference),
            select_every=mdp_select_every)
        cell_rows, parallel, played_by = _rl2_rows(
            "mdp", f"n={n}", mdp_family, c.num_states, c.num_actions, n, mdp_config,
            iterations or default_iterations("mdp", m), test, mdp_seeds, (instance_seed, n),
            paper, device, progress, time_budget, checkpoints, training, trained, workers)
        base_start = time.perf_counter()
        cell_rows += [r for r in mdp_cell(n, instances, instance_seed, device, reference)
                      if r.method in MDP_BASELINES]
        runs.append(CellRun("mdp", str(n), cell_rows, base_start - start,
                            time.perf_counter() - base_start, parallel, played_by))
        _report(runs[-1], reached, out)
    rows = _finish(runs, reached, settings, out, json_path)
    if json_dir is not None:
        from pipelines.io import atomic_write_json

        for run in runs:
            alone = {"bandit": [0, 0], "mdp": [0, 0]}
            _report(run, alone, io.StringIO())
            atomic_write_json(Path(json_dir) / f"{run.table}-{run.cell}.json",
                              results_json([run], alone, settings))
    return rows


SHARED_SETTINGS = ("instances", "instance_seed", "device")
"""Settings every cell of one table must share (the header line states them once); the cells
of one family also share their RL² settings and seeds (``bandit`` / ``bandit_seeds``, ...)."""
TABLE_SETTINGS = {"bandit": ("bandit_train_pulls", "bandit_select_every"),
                  "mdp": ("mdp_train_episodes", "mdp_select_every")}
"""Further settings the cells of one family share."""


def combine(cells: Sequence[str] | None, folder: Path, out: TextIO | None = None,
            json_path: Path | None = None) -> list[Row]:
    """Print one table from cells run apart (``--json FOLDER/<table>-<cell>.json`` each).

    What ``benchmarks/rl2/dvc.yaml`` does: one DVC stage per cell (so a cell's settings or
    seeds rerun that cell alone), then this. The cells come in the order of ``cells`` (default
    :data:`DEFAULT_CELLS`); with
    ``json_path``, the combined :func:`results_json` goes there (atomically).

    Raises:
        ValueError: a cell's file is missing or not a ``bench rl2 --json`` file of that one
            cell, or the files disagree on a setting the table states once.

    """
    import json

    bandit, mdp = parse_cells(cells or DEFAULT_CELLS, "all")
    names = [("bandit", f"{n}x{k}") for n, k in bandit] + [("mdp", str(n)) for n in mdp]
    out = out or sys.stdout
    runs: list[CellRun] = []
    settings: dict[str, Any] = {}
    for table, cell in names:
        path = _cell_file(Path(folder), f"{table}-{cell}.json")
        try:
            data = json.loads(path.read_text())
            (entry,) = data["cells"].values()
            rows = [Row(**row) for row in entry["rows"]]
            run_settings = data["settings"]
            played_by = entry.get("played_by")  # absent in files written before 2026-12-06
            if not isinstance(played_by, str | None):
                raise TypeError(f"played_by {played_by!r} is not a cell name")
            run = CellRun(table, cell, rows, float(entry["wall_clock_s"]["rl2"]),
                          float(entry["wall_clock_s"]["baselines"]),
                          int(entry.get("train_workers", 1)), played_by)
        except FileNotFoundError:
            raise ValueError(f"--combine: no {path}; run the cell first: metarl bench rl2 "
                             f"--cells {cell} --json {path}") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"--combine: {path} is not the `metarl bench rl2 --json` file of "
                             f"cell {cell} alone ({type(err).__name__}: {err})") from None
        if rows[0].table != table or rows[0].cell != _row_cell(table, cell):
            raise ValueError(f"--combine: {path} holds cell {rows[0].table} {rows[0].cell}, "
                             f"not {table} {cell}")
        for key in (*SHARED_SETTINGS, table, f"{table}_seeds", *TABLE_SETTINGS[table]):
            if key in settings and settings[key] != run_settings.get(key):
                raise ValueError(
                    f"--combine: {path} was run with {key}={run_settings.get(key)!r}, an "
                    f"earlier cell with {key}={settings[key]!r}; rerun the cells with one "
                    "setting")
            settings[key] = run_settings.get(key)
        runs.append(run)
    for table in ("bandit", "mdp"):
        settings.setdefault(table, {})
        settings.setdefault(f"{table}_seeds", [])
    _print_header(settings, out)
    reached = {"bandit": [0, 0], "mdp": [0, 0]}
    for run in runs:
        _report(run, reached, out)
    return _finish(runs, reached, settings, out, json_path)


def _cell_file(folder: Path, name: str) -> Path:
    """``folder/name``, or the one file of that name in a subfolder of ``folder``.

    A subfolder holds a run of several cells (``--json-dir folder/<group>``); with none,
    ``folder/name`` (the caller says it is missing).

    Raises:
        ValueError: several subfolders hold one.

    """
    if (folder / name).exists():
        return folder / name
    found = sorted(folder.glob(f"*/{name}"))
    if len(found) > 1:
        raise ValueError(f"--combine: {', '.join(map(str, found))} all hold {name}; keep one")
    return found[0] if found else folder / name


def _finish(runs: list[CellRun], reached: dict[str, list[int]], settings: dict[str, Any],
            out: TextIO, json_path: Path | None) -> list[Row]:
    """Print the count line, write the JSON (atomically) if asked; all the rows."""
    print(f"cells at or above the paper's RL² (ours rounded to 0.1): "
          f"{reached['bandit'][0]}/{reached['bandit'][1]} bandit, "
          f"{reached['mdp'][0]}/{reached['mdp'][1]} MDP", file=out, flush=True)
    if json_path is not None:
        from pipelines.io import atomic_write_json

        atomic_write_json(Path(json_path), results_json(runs, reached, settings))
    return [row for run in runs for row in run.rows]


def _row_cell(table: str, cell: str) -> str:
    """``10x5`` → ``n=10 k=5``, ``10`` → ``n=10``: the cell as the table's rows name it."""
    return "n=" + cell.replace("x", " k=") if table == "bandit" else f"n={cell}"


def _print_header(settings: dict[str, Any], out: TextIO) -> None:
    bandit, mdp = settings["bandit_seeds"], settings["mdp_seeds"]
    seeds = (f"{bandit or mdp}" if not (bandit and mdp) or bandit == mdp
             else f"{bandit} (bandit), {mdp} (MDP)")
    print(f"RL² (Duan et al. 2016) on Tables 1-2 cells: {settings['instances']} test instances "
          f"per cell (those of `metarl bench baselines --seed {settings['instance_seed']}`), "
          f"training seeds {seeds}, torch threads 1, device {settings['device']}", file=out)
    if bandit and settings.get("bandit_train_pulls"):
        m = settings["bandit_train_pulls"]
        print(f"bandit cells: RL² trains on trials of at most {m} pulls (a longer cell is "
              f"played by the {m}-pull cell's model)", file=out)
    m = settings.get("mdp_train_episodes") if mdp else None
    if isinstance(m, int):
        print(f"MDP cells: RL² trains on trials of at most {m} episodes (a longer cell is "
              f"played by the {m}-episode cell's model)", file=out)
    elif m:
        listed = ", ".join(map(str, m[:-1])) + f" and {m[-1]}"
        print(f"MDP cells: RL² trains on trials of {listed} episodes in turn, one iteration "
              f"each (every cell of {m[0]} episodes or more is played by that one model)",
              file=out)
    for name, key in (("bandit", "bandit"), ("MDP", "mdp")):
        if settings.get(f"{key}_select_every"):
            print(f"{name} cells: RL² keeps, of checks every {settings[f'{key}_select_every']} "
                  f"training iterations, the weights that scored best on the tuning instances "
                  f"({VALIDATION_INSTANCES} per cell it plays, apart from the test instances)",
                  file=out)
        if settings.get(key):
            print(f"{name} cells: RL² settings {settings[key]} (in place of the defaults')",
                  file=out)
    print(HEADER, file=out)
    print("-" * len(HEADER), file=out, flush=True)


def _check_options(tables: str, seeds: Sequence[int], instances: int, iterations: int | None,
                   time_budget: float | None) -> None:
    if tables not in ("bandit", "mdp", "all"):
        raise ValueError(f"--table {tables!r}: choose bandit, mdp or all")
    if instances < 2:
        raise ValueError(f"--instances {instances}: need at least 2 for an interval")
    if not seeds:
        raise ValueError("--seeds: give at least one training seed")
    if iterations is not None and iterations < 1:
        raise ValueError(f"--iterations {iterations}: must be >= 1")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"--time-budget {time_budget}: must be > 0 seconds")


def _report(run: CellRun, reached: dict[str, list[int]], out: TextIO) -> None:
    """Print a cell's rows and wall-clock; count it against the paper's RL² figure."""
    for row in run.rows:
        print(format_row(row), file=out)
    seeds = "all seeds"
    if run.played_by is not None:
        seeds = ("all seeds, evaluation only: training is counted in the "
                 f"{_row_cell(run.table, run.played_by)} cell's line")
    elif run.workers > 1:
        seeds = f"all seeds, trained {run.workers} at a time"
    print(f"  wall-clock: RL² {run.rl2_seconds:.0f} s ({seeds}), baselines "
          f"{run.baseline_seconds:.0f} s", file=out, flush=True)
    ours = [r for r in run.rows if r.method.startswith("RL2")][-1]
    if ours.paper is not None:
        reached[run.table][1] += 1
        reached[run.table][0] += int(round(ours.ours, 1) >= ours.paper)
