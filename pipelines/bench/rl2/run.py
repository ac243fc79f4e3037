"""``metarl bench rl2``'s run: per cell, train RL² per seed, score it, add the baselines.

Each cell's models play one trial on each of ``instances`` test instances with a fresh hidden
state: the evaluation instances of ``metarl bench baselines`` (same seed derivation), whose
baseline rows (Gittins / UCB1 / TS for bandits, PSRL / Myopic-Bayes for MDPs, Random and the
Oracle for scale) come from :mod:`pipelines.bench.baselines` on those same instances. Nothing
is tuned on the test instances.
"""

from __future__ import annotations

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
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench.baselines import (
    Row,
    _seed,
    bandit_cell,
    load_reference,
    mdp_cell,
    parse_cells,
)
from pipelines.bench.rl2.params import (
    BANDIT_TRAIN_PULLS,
    DEFAULT_CELLS,
    MDP_TRAIN_EPISODES,
    check_options,
    mdp_training_lengths,
    training_pulls,
    with_overrides,
)
from pipelines.bench.rl2.presets import bandit_config, default_iterations, mdp_config
from pipelines.bench.rl2.table import CellRun, finish, print_header, report, results_json
from pipelines.bench.rl2.train import Training, train_in_workers, train_seed, validation_cells

BANDIT_BASELINES = ("Random", "Gittins", "UCB1", "TS", "Bayes-optimal", "Oracle")
MDP_BASELINES = ("Random", "PSRL", "Myopic-Bayes", "Oracle")

REUSED = "cell's model (trained above)"
"""How a row played by another cell's model ends its setting (``the 100x5 cell's model ...``;
the cell's :attr:`~.table.CellRun.played_by` names it)."""

Trained = dict[tuple[str, int], tuple[RL2, int, str, str]]
"""The models a run trained so far, by training cell and seed: the agent, its iterations, its
note and the cell that trained it."""


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

    Args:
        tables: ``bandit``, ``mdp`` or ``all``; restricts ``cells``.
        cells: ``NxK`` bandit cells and ``N`` MDP cells (default :data:`DEFAULT_CELLS`).
        seeds: training seeds (one model each).
        instances: test instances per cell.
        iterations: training iterations per seed (default: the presets',
            :func:`~.presets.default_iterations`).
        instance_seed: base seed of the test instances (as ``bench baselines --seed``).
        device: torch device.
        out: where the table goes (default stdout).
        progress: where per-seed training progress goes (default stderr).
        json_path: also write :func:`~.table.results_json` there, atomically.
        bandit_overrides: RL² settings replacing the presets' in the bandit cells
            (``pipelines/bench/presets/rl2_bandit.yaml``).
        mdp_overrides: likewise for the MDP cells (``rl2_mdp.yaml``).
        time_budget: seconds of training per seed and cell, then stop early (none by default).
        checkpoints: a folder holding one training state per cell and seed
            (``bandit-500x5-s0.pt``, ``mdp-10-s0.pt``), written after training; a later run
            with the same settings resumes from it, up to ``iterations`` in all (so a long
            cell can be trained in several runs, e.g. under a per-call time limit).
        mdp_seeds: the MDP cells' training seeds (default ``seeds``).
        bandit_train_pulls: bandit cells with more pulls train on trials of this many
            (:func:`~.params.training_pulls`: the shorter cell's family, seeds, settings,
            iterations and checkpoint file) and are scored on their own; ``None``: each on
            its own.
        mdp_train_episodes: likewise for the MDP cells (episodes per training trial);
            ``None``: each on its own; a list: trials of each length in turn
            (:func:`~.params.mdp_training_lengths`).
        json_dir: also write each cell's results alone to ``json_dir/<table>-<cell>.json``
            (what ``--combine`` reads), atomically.
        bandit_select_every: every this many training iterations (and at the last) score
            the model on the tuning instances of the paper's cells it plays (and of the cell
            run) and keep the best weights (mean return per pull); ``None``: keep the last.
        mdp_select_every: likewise for the MDP cells (return per episode).
        workers: train a cell's seeds this many at a time, each in a process of its own
            with one torch thread (the same models as one after another). The rows' seconds
            are each seed's own; a cell's wall-clock line is the time it took.

    Raises:
        ValueError: a bad option (:func:`~.params.check_options`), named.
        ConfigError: a bad RL² setting in the overrides.

    """
    check_options(tables, seeds, instances, iterations, time_budget, bandit_train_pulls,
                  mdp_train_episodes, (bandit_select_every, mdp_select_every), workers)
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
    # validated on the 10-step presets with no cell of the family too
    bandit_configs = {m: with_overrides(bandit_config(m), bandit_overrides, "bandit")
                      for m in {10, *(training_pulls(n, bandit_train_pulls) for n, _ in bandit)}}
    mdp_configs = {m: with_overrides(mdp_config(m), mdp_overrides, "mdp") for m in {
        10, *(mdp_training_lengths(n, mdp_train_episodes)[0] for n in mdp)}}
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
    print_header(settings, out)
    runs: list[CellRun] = []
    reached = {"bandit": [0, 0], "mdp": [0, 0]}
    trained: Trained = {}
    for n, k in bandit:
        start = time.perf_counter()
        family = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
        test = family.sample(instances, np.random.default_rng(_seed(instance_seed, 1, n, k, 0)))
        paper = reference.get(("bandit", n, k, "RL2"))
        m = training_pulls(n, bandit_train_pulls)
        training = Training(
            BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=m)), 1,
            (instance_seed, m, k), f"bandit-{m}x{k}", "" if m == n else f"on {m} pulls",
            validation=() if not bandit_select_every else validation_cells(
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
        report(runs[-1], reached, out)
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
            validation=() if not mdp_select_every else validation_cells(
                "mdp", (n, 0), lambda c: mdp_training_lengths(c[0], mdp_train_episodes),
                instance_seed, reference),
            select_every=mdp_select_every)
        cell_rows, parallel, played_by = _rl2_rows(
            "mdp", f"n={n}", mdp_family, c.num_states, c.num_actions, n, mdp_configs[m],
            iterations or default_iterations("mdp", m), test, mdp_seeds, (instance_seed, n),
            paper, device, progress, time_budget, checkpoints, training, trained, workers)
        base_start = time.perf_counter()
        cell_rows += [r for r in mdp_cell(n, instances, instance_seed, device, reference)
                      if r.method in MDP_BASELINES]
        runs.append(CellRun("mdp", str(n), cell_rows, base_start - start,
                            time.perf_counter() - base_start, parallel, played_by))
        report(runs[-1], reached, out)
    rows = finish(runs, reached, settings, out, json_path)
    if json_dir is not None:
        from pipelines.io import atomic_write_json

        for run in runs:
            alone = {"bandit": [0, 0], "mdp": [0, 0]}
            report(run, alone, io.StringIO())
            atomic_write_json(Path(json_dir) / f"{run.table}-{run.cell}.json",
                              results_json([run], alone, settings))
    return rows


def _rl2_rows(table: str, cell: str, family: BanditFamily | TabularMDPFamily,
              obs_dim: int, num_actions: int, episodes_per_trial: int, config: RL2Config,
              iterations: int, test_tasks: list[dict], seeds: Sequence[int], keys: tuple[int, ...],
              paper: float | None, device: str, progress: TextIO,
              time_budget: float | None, checkpoints: Path | None, train: Training,
              trained: Trained | None = None,
              workers: int = 1) -> tuple[list[Row], int, str | None]:
    """RL² rows of one cell: per seed, train (or resume, or reuse) and score.

    ``train`` is what the cell's model trains on (its own trials, or a shorter cell's, or
    several lengths in turn) and how it is selected. A cell that trains on the same cell as
    an earlier one in ``trained`` (a long bandit cell on the shorter cell's trials; a longer
    MDP cell) is played by that model, not trained again. ``workers`` > 1 trains the seeds
    still to train that many at a time (:func:`~.train.train_in_workers`). Returns the rows,
    how many seeds trained at a time (1: one after another, or none) and the cell whose model,
    trained earlier in this run, played this one (``None``: trained here).
    """
    short = cell.replace("n=", "").replace(" k=", "x")  # as --cells names it
    rows, per_seed, played_by = [], [], None
    todo = [s for s in seeds if trained is None or (train.cell, s) not in trained]
    parallel = min(workers, len(todo)) if len(todo) > 1 else 1
    ready = (train_in_workers(table, cell, todo, train, obs_dim, num_actions, config,
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
                algo, done, how = train_seed(table, cell, s, train, obs_dim, num_actions,
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


def _summary(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width (1.96 standard errors) over instances."""
    return float(values.mean()), 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))
