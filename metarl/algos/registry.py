"""The algorithm registry: one entry per meta-learner, the only place that knows them by name.

An algorithm is one file (its config dataclass, its training loop, its learner) plus one call
to :func:`register` at the bottom of that file, plus its ``algo.<name>`` section of
params.yaml. Everything else — the stages, checkpoints, tuning, the registry's gate, serving —
asks this registry and never compares algorithm names::

    register(Algorithm(
        name="maml", config_cls=MAMLConfig, train=..., save=..., load=..., episodes=...,
        search_space={"inner_lr": "inner_lr", "outer_lr": "outer_lr"}))

The built-in algorithms register themselves when :func:`algorithms` (or :func:`get`) is first
called, and so do installed plugins: every module named by an entry point of the group
``metarl.algorithms`` (``[project.entry-points."metarl.algorithms"] mine = "mypkg.mine"`` in a
package's pyproject.toml) is imported then, so ``dvc repro`` and ``metarl stage`` see it. In a
notebook or a test, calling :func:`register` before the stages run is enough (README: "Add
your own algorithm").
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from metarl.algos.base import MetaLearner
from metarl.config import ConfigError
from metarl.logging import MetricLogger
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume

BUILTIN = ("metarl.algos.maml", "metarl.algos.reptile", "metarl.algos.rl2",
           "metarl.algos.es_maml", "metarl.algos.maml_q", "metarl.algos.pearl",
           "metarl.algos.mql")
"""Modules whose import registers the built-in algorithms."""
ENTRY_POINTS = "metarl.algorithms"
"""The entry-point group of algorithm plugins (each names a module that calls register)."""

ACTION_SPACES = frozenset({"discrete", "continuous"})


@dataclass(frozen=True)
class TrainContext:
    """Everything a training run needs besides the algorithm's own config.

    Attributes:
        family: the task family.
        train_set: the training tasks.
        num_iterations: meta-iterations.
        seed: seeds every random number of the run.
        device: torch device.
        episodes_per_trial: the episodes of a trial the evaluator plays (adaptation steps
            + 1): what an in-context learner trains on; gradient learners may ignore it.
        logger: receives the metrics of every iteration.
        hook: ``hook(iteration, learner)`` after each iteration (may raise to stop: pruning).
        resume: continue from a saved state and save as it goes (:mod:`metarl.training`).

    """

    family: TaskFamily
    train_set: TaskSet
    num_iterations: int
    seed: int
    device: str
    episodes_per_trial: int
    logger: MetricLogger | None = None
    hook: Callable[[int, MetaLearner], None] | None = None
    resume: Resume | None = None


class Trained(Protocol):
    """What :attr:`Algorithm.train` returns: it yields the learner to evaluate."""

    def learner(self) -> MetaLearner:
        """The meta-trained learner."""
        ...


@dataclass(frozen=True)
class Algorithm:
    """One meta-learner, as the pipeline sees it.

    Attributes:
        name: its ``algo.name`` and the name of its ``algo.<name>`` params section.
        config_cls: the config dataclass of that section (validated on load).
        train: ``train(config, context) -> Trained``.
        save: ``save(trained, weights_path) -> dict``: writes the weights (a plain tensor dict,
            :func:`metarl.checkpoint.save_params`) and returns the JSON config that
            :attr:`load` rebuilds the learner from (it must hold ``learner: name`` and
            ``obs_dim``).
        load: ``load(weights_path, checkpoint_config) -> MetaLearner`` (weights only: never
            unpickle).
        episodes: ``episodes(config, num_iterations, episodes_per_trial)``: the episodes a
            training run uses, the budget the pretrained baseline gets too.
        search_space: config key → the ``tune`` range it is searched in, log-uniform
            (``inner_lr`` or ``outer_lr``).
        batch_factors: ``batch_factors(config, episodes_per_trial)``: the (key, value) factors
            whose product times the horizon is the env steps of one rollout batch (checked
            against the machine's limit before any work).
        action_spaces: the action spaces it supports (``discrete``, ``continuous``).
        step_note: what "adaptation step k" means for it, for reports ("" for gradient steps).
        summary: one line for help texts.

    """

    name: str
    config_cls: type
    train: Callable[[Any, TrainContext], Trained]
    save: Callable[[Any, Path], dict[str, Any]]
    load: Callable[[Path, dict[str, Any]], MetaLearner]
    episodes: Callable[[Any, int, int], int]
    search_space: Mapping[str, str] = field(default_factory=dict)
    batch_factors: Callable[[Any, int], Sequence[tuple[str, int]]] = lambda c, t: ()
    action_spaces: frozenset[str] = ACTION_SPACES
    step_note: str = ""
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"name={self.name!r}: an algorithm name must be an identifier")
        bad = [k for k, v in self.search_space.items() if v not in ("inner_lr", "outer_lr")]
        if bad:
            raise ValueError(f"search_space: {bad} must map to 'inner_lr' or 'outer_lr'")
        if not self.action_spaces or not self.action_spaces <= ACTION_SPACES:
            raise ValueError(f"action_spaces={set(self.action_spaces)}: a non-empty subset "
                             f"of {sorted(ACTION_SPACES)}")

    def check_family(self, discrete: bool, family_name: str) -> None:
        """Refuse a family whose action space this algorithm does not support.

        Raises:
            ConfigError: naming ``algo.name``.

        """
        space = "discrete" if discrete else "continuous"
        if space not in self.action_spaces:
            raise ConfigError("algo.name", self.name, f"supports {sorted(self.action_spaces)} "
                              f"actions, but {family_name}'s are {space}; choose another "
                              "algorithm or family")


_REGISTRY: dict[str, Algorithm] = {}
_loaded = False


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` (replacing one of the same name); returns it."""
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def unregister(name: str) -> None:
    """Remove ``name`` (a user's algorithm, e.g. at the end of a test)."""
    _REGISTRY.pop(name, None)


def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm by name (the built-ins first)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
            importlib.import_module(entry.value.split(":")[0])
    return dict(_REGISTRY)


def get(name: str, key: str = "algo.name") -> Algorithm:
    """The algorithm called ``name``.

    Raises:
        ConfigError: naming ``key`` and the registered names.

    """
    known = algorithms()
    if name not in known:
        raise ConfigError(key, name, f"unknown algorithm; choose one of {list(known)}")
    return known[name]
