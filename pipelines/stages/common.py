"""What several stages share: loading task sets and checkpoints, picking the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metarl.algos.base import probe_env
from metarl.algos.registry import Algorithm
from metarl.checkpoint import load_learner, read_config
from metarl.config import ConfigError
from metarl.families import make_family
from metarl.tasks import TaskFamily, TaskSet
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig


class StageError(RuntimeError):
    """A stage cannot run: its message names the file or value and how to fix it."""


def family(config: PipelineConfig) -> TaskFamily:
    """The configured task family."""
    return make_family(config.task.family, config.task.family_config())


def check_action_space(algo: Algorithm, fam: TaskFamily, config: PipelineConfig) -> None:
    """Refuse a family whose actions the chosen algorithm does not support (before work)."""
    try:
        algo.check_family(probe_env(fam).discrete, config.task.family)
    except ConfigError as err:
        raise StageError(str(err)) from None


def device(config: PipelineConfig) -> str:
    """``train.device`` resolved (``auto`` → CUDA when present)."""
    if config.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise StageError("train.device='cuda': no CUDA device here; use 'cpu' or 'auto'")
    return config.train.device


def load_task_set(paths: Paths, split: str, config: PipelineConfig,
                  fam: TaskFamily | None = None) -> TaskSet:
    """Read and verify ``data/tasks/<split>.json`` for the configured family.

    Beyond the file's own checks (schema, hash, finite values) its ``family`` and ``split``
    must be the ones it is read for, and every task must be valid for the family
    (:meth:`TaskSet.check`), so a rehashed file with a negative mass fails here, on one line.

    ``fam``: the configured family when the caller has built it already.

    Raises:
        StageError: naming the file, the field and the value.

    """
    path = paths.task_set(split)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StageError(f"{path}: task file missing; run `metarl stage tasks` "
                         "(or `dvc repro`) first") from None
    try:
        task_set = TaskSet.from_json(text, source=str(path))
    except (ValueError, KeyError, TypeError) as err:
        raise StageError(str(err)) from None
    if task_set.family != config.task.family:
        raise StageError(f"{path}: family={task_set.family!r} but task.family="
                         f"{config.task.family!r}; regenerate with `metarl stage tasks`")
    if task_set.split != split:
        raise StageError(f"{path}: split={task_set.split!r} but it is read as the {split} "
                         "split; regenerate with `metarl stage tasks`")
    try:
        task_set.check(fam or family(config), source=str(path))
    except ConfigError as err:
        raise StageError(str(err)) from None
    return task_set


def checkpoint_files(paths: Paths, name: str) -> tuple[Path, Path]:
    """``models/<name>.pt`` and its config JSON.

    The config is ``models/<name>.json`` when the learner has its own (every algorithm and the
    oracle), else the shared ``models/config.json`` (the MLP baselines).
    """
    own = paths.models / f"{name}.json"
    return paths.models / f"{name}.pt", own if own.exists() else paths.models / "config.json"


def load_checkpoint(paths: Paths, name: str) -> tuple[Any, dict[str, Any]]:
    """The learner saved as ``models/<name>.pt`` and its config JSON."""
    weights, config_path = checkpoint_files(paths, name)
    for p in (config_path, weights):
        if not p.exists():
            raise StageError(f"{p}: checkpoint missing; run `metarl stage train` first")
    config = read_config(config_path)
    return load_learner(weights, config), config


def relative(path: Path, paths: Paths) -> str:
    """``path`` relative to the project root, for messages and logs."""
    try:
        return str(path.relative_to(paths.root))
    except ValueError:
        return str(path)
