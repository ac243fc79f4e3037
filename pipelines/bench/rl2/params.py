"""The options of ``metarl bench rl2``: defaults, checks, the params file, RL² overrides.

``benchmarks/rl2/params.yaml`` holds them for ``dvc repro benchmarks/rl2/dvc.yaml``; the
command line's options mirror them (``metarl bench rl2 --help``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metarl.algos.rl2 import RL2Config
from metarl.config import ConfigError, from_mapping, to_dict

DEFAULT_CELLS = ("10x5", "10x10", "10")
"""The short-trial cells: bandit n=10 k=5 and k=10 (about a minute each on one CPU thread),
tabular MDP n=10 (about 35 minutes; ``--iterations 200``: 3 minutes)."""

BANDIT_TRAIN_PULLS = 100
"""Bandit cells with more pulls than this are played by the model trained on trials of this
many pulls (same arms). The policy sees the fraction of the trial played (``t / n``), so it
plays a 500-pull trial on the same schedule, stretched, and beat training on 500-pull trials
with the same or more compute (``benchmarks/rl2/README.md``, ``curriculum-cpu/``)."""

MDP_TRAIN_EPISODES = 10
"""MDP cells with more episodes than this are played by the model trained on trials of this
many episodes (the 10 cell's seeds, settings, iterations and checkpoint file); with the trial
clock it plays a longer trial on its own schedule, as the bandit models do. A model trained on
longer trials for the whole schedule scored the same at 2.6 × the compute (README,
``mdp-clock-cpu/``)."""

VALIDATION_INSTANCES = 200
"""Tuning instances per cell that ``select_every`` scores a model on (as few as keep a check
under a few seconds: its picks compare checkpoints on the same instances and seeds)."""


def training_pulls(num_pulls: int, train_pulls: int | None = BANDIT_TRAIN_PULLS) -> int:
    """The trial length RL² trains on for a bandit cell of ``num_pulls`` pulls.

    ``num_pulls`` itself unless ``train_pulls`` is set and shorter (``None``: every cell
    trains on its own trial length).
    """
    return num_pulls if train_pulls is None else min(num_pulls, train_pulls)


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


def _check_count(option: str, value: Any, meaning: str, then: str = "") -> None:
    """A count option: an integer >= 1 (``meaning`` says what it counts)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{option} {value!r}: must be >= 1 ({meaning}){then}")


def check_options(tables: str, seeds: Sequence[int], instances: int, iterations: int | None,
                  time_budget: float | None, bandit_train_pulls: int | None,
                  mdp_train_episodes: int | Sequence[int] | None,
                  select_every: tuple[int | None, int | None], workers: int) -> None:
    """Refuse a bad option of :func:`~pipelines.bench.rl2.bench_rl2`, naming it.

    ``select_every`` is ``(bandit_select_every, mdp_select_every)``.

    Raises:
        ValueError: naming the option, its value and what it takes.

    """
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
    if bandit_train_pulls is not None and not isinstance(bandit_train_pulls, int):
        raise ValueError(f"--bandit-train-pulls {bandit_train_pulls!r}: one number of pulls "
                         "(a list of lengths is for --mdp-train-episodes only)")
    _check_train_lengths("--bandit-train-pulls", bandit_train_pulls, "pulls")
    _check_train_lengths("--mdp-train-episodes", mdp_train_episodes, "episodes")
    for option, every in zip(("--bandit-select-every", "--mdp-select-every"), select_every,
                             strict=True):
        if every is not None:
            _check_count(option, every, "training iterations between checks",
                         "; to keep the last weights: null in a params file, 0 on the command "
                         "line")
    _check_count("--workers", workers, "seeds trained at a time, one process and torch thread "
                 "each; 1: one after another")


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
    """PPO iterations per seed (null: the presets', :func:`~.presets.default_iterations`)."""
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
    trials of each listed length in turn, one iteration each (:func:`mdp_training_lengths`)."""
    workers: int = 1
    """Seeds of a cell trained at a time, one process and torch thread each (the same
    models as one after another); ``--workers`` replaces it."""
    runs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """For ``benchmarks/rl2/dvc.yaml`` only (the bench ignores it): its stages, each a group of
    cells run in one process (``--cells``), so that cells sharing a trained model train it
    once, e.g. ``{bandit: {k5: "100x5 500x5"}}``."""
    bandit: dict[str, Any] = dataclasses.field(default_factory=dict)
    """RL² settings (keys of :class:`~metarl.algos.rl2.RL2Config`) that replace the bandit
    presets' in every bandit cell, e.g. ``{meta_batch_size: 512}``."""
    mdp: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Likewise for the MDP cells (replacing the MDP presets')."""


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
