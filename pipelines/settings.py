"""The pipeline's configuration: ``params.yaml`` parsed into validated, frozen dataclasses.

One section per stage, mirroring params.yaml one to one. Loading fails with a
:class:`~metarl.config.ConfigError` naming the dotted key and the value.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metarl.algos import registry
from metarl.algos.maml import MAMLConfig
from metarl.config import ConfigError, check, check_range, from_mapping, to_dict
from metarl.envs.bandit import BanditFamilyConfig
from metarl.envs.cartpole import CartPoleFamilyConfig
from metarl.envs.metaworld_tasks import MetaWorldML1FamilyConfig
from metarl.envs.mujoco_tasks import (
    AntDirFamilyConfig,
    CheetahDirFamilyConfig,
    CheetahVelFamilyConfig,
)
from metarl.envs.nav2d import Nav2DFamilyConfig
from metarl.envs.pendulum import PendulumFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamilyConfig
from metarl.families import FAMILIES

MAX_TASKS = 100_000
"""Most tasks per split (a task set is one JSON file, read whole)."""
MAX_ITERATIONS = 1_000_000
"""Most meta-iterations of training or of one tuning trial."""
MAX_TRIALS = 10_000
"""Most tuning trials."""
MAX_WIDTH = 4096
"""Widest hidden layer (MLP or GRU)."""
MAX_LAYERS = 16
"""Most hidden layers of the MLP."""
MAX_BATCH_STEPS = 20_000_000
"""Most env steps held in memory by one rollout batch (about 2-3 GiB with its tensors on this
2-core, 24 GiB machine)."""
CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):"
                         r"(?P<secret>[^/@\s]+)@")
"""``scheme://user:secret@`` in a URI."""
SAMPLERS = ("tpe", "random", "cmaes")
"""``tune.sampler``: Optuna's TPE, random search, or CMA-ES (needs the ``cmaes`` package and
at least two searched keys)."""
PRUNERS = ("median", "successive_halving", "none")
"""``tune.pruner``: Optuna's median pruner, successive halving, or no pruning."""


@dataclass(frozen=True)
class TaskSection:
    """``task``: which family, its ranges, and the split sizes."""

    family: str = "cartpole"
    """Task family name (``cartpole``, ``bandit``, ``tabular_mdp``, ``nav2d``, ``pendulum``;
    with MuJoCo: ``cheetah_vel``, ``cheetah_dir``, ``ant_dir``; with Meta-World:
    ``metaworld_ml1``)."""
    seed: int = 0
    """Seed of the task sets; each split gets its own child seed."""
    num_train: int = 100
    """Training tasks."""
    num_val: int = 20
    """Validation tasks (tuning only)."""
    num_test: int = 20
    """Held-out test tasks (evaluation only)."""
    cartpole: CartPoleFamilyConfig = field(default_factory=CartPoleFamilyConfig)
    """Ranges of the cartpole family."""
    nav2d: Nav2DFamilyConfig = field(default_factory=Nav2DFamilyConfig)
    """Goal box, clip, horizon and reward of the nav2d family (MAML's 2D navigation)."""
    pendulum: PendulumFamilyConfig = field(default_factory=PendulumFamilyConfig)
    """Ranges of the pendulum family (Pendulum-v1 with varied mass, length, gravity)."""
    bandit: BanditFamilyConfig = field(default_factory=BanditFamilyConfig)
    """Arms and pulls of the bandit family (RL²'s Bernoulli bandits)."""
    tabular_mdp: TabularMDPFamilyConfig = field(default_factory=TabularMDPFamilyConfig)
    """Sizes and priors of the tabular_mdp family (RL²'s random MDPs)."""
    cheetah_vel: CheetahVelFamilyConfig = field(default_factory=CheetahVelFamilyConfig)
    """Target-velocity HalfCheetah (MAML/PEARL; needs MuJoCo)."""
    cheetah_dir: CheetahDirFamilyConfig = field(default_factory=CheetahDirFamilyConfig)
    """Forward/backward HalfCheetah (MAML; needs MuJoCo)."""
    ant_dir: AntDirFamilyConfig = field(default_factory=AntDirFamilyConfig)
    """Direction-following Ant (PEARL; needs MuJoCo)."""
    metaworld_ml1: MetaWorldML1FamilyConfig = field(default_factory=MetaWorldML1FamilyConfig)
    """Meta-World ML1: one manipulation task, official train/test goals (needs Meta-World)."""

    def __post_init__(self) -> None:
        check(self.family in FAMILIES, "family", self.family,
              f"unknown family; choose one of {sorted(FAMILIES)}")
        for split in ("train", "val", "test"):
            n = getattr(self, f"num_{split}")
            check(n >= 1, f"num_{split}", n, "a split needs at least one task")

    def family_config(self) -> Any:
        """The config dataclass of the chosen family."""
        return getattr(self, self.family)


BASELINE_ALGORITHM = "maml"
"""The section whose network, batch sizes and step sizes the pretrained and from-scratch
baselines use, whichever algorithm is chosen (so every algorithm faces the same baselines)."""


@dataclass(frozen=True)
class AlgoSection:
    """``algo``: which meta-learner, and one section of hyperparameters per algorithm.

    ``algo.<name>`` holds the config of each algorithm of the registry
    (:mod:`metarl.algos.registry`); a section left out takes that config's defaults.
    """

    name: str = "maml"
    """Algorithm name, one of the registry's (``maml``: an initialisation adapted by gradient
    steps; ``rl2``: a recurrent policy that adapts in context, across a trial's episodes)."""
    sections: dict[str, Any] = field(default_factory=dict)
    """Algorithm name → its config (the ``algo.<name>`` sections; not a key itself)."""
    family_overrides: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per task family and algorithm, keys that replace the common values when that family is
    chosen (e.g. ``nav2d: {maml: {init_std: 3.0, inner_lr: 0.1}}``)."""

    @classmethod
    def from_params(cls, data: Any, prefix: str = "algo") -> AlgoSection:
        """Build from the ``algo`` mapping: ``name``, ``family_overrides``, one section each."""
        check(isinstance(data, dict), prefix, data, "expected a mapping of keys")
        known = registry.algorithms()
        rest = dict(data)
        name = rest.pop("name", "maml")
        check(isinstance(name, str), f"{prefix}.name", name, "expected a string")
        overrides = rest.pop("family_overrides", None) or {}
        check(isinstance(overrides, dict), f"{prefix}.family_overrides", overrides,
              "expected a mapping from family to algorithm to keys")
        sections: dict[str, Any] = {}
        for key, value in rest.items():
            check(key in known, f"{prefix}.{key}", value, "unknown key; valid keys here: "
                  f"['family_overrides', 'name'] and the algorithms {list(known)}")
            sections[key] = from_mapping(known[key].config_cls, value, prefix=f"{prefix}.{key}")
        try:
            return cls(name=name, sections=sections, family_overrides=overrides)
        except ConfigError as err:
            raise err.with_prefix(prefix) from None

    def __post_init__(self) -> None:
        known = registry.algorithms()
        check(self.name in known, "name", self.name,
              f"unknown algorithm; choose one of {list(known)}")
        sections = {n: self.sections.get(n) or a.config_cls() for n, a in known.items()}
        object.__setattr__(self, "sections", sections)
        for fam, per_algo in self.family_overrides.items():
            check(fam in FAMILIES, f"family_overrides.{fam}", per_algo,
                  f"unknown family; choose among {sorted(FAMILIES)}")
            check(isinstance(per_algo, dict), f"family_overrides.{fam}", per_algo,
                  "expected a mapping from algorithm name to its keys, e.g. {maml: {...}}")
            for algo, overrides in per_algo.items():
                key = f"family_overrides.{fam}.{algo}"
                check(algo in known, key, overrides,
                      f"unknown algorithm; choose one of {list(known)}")
                check(isinstance(overrides, dict), key, overrides,
                      "expected a mapping of algorithm keys")
                from_mapping(known[algo].config_cls,
                             {**dataclasses.asdict(sections[algo]), **overrides}, prefix=key)

    def __getattr__(self, item: str) -> Any:
        """``algo.<name>``: the section of a registered algorithm."""
        sections = self.__dict__.get("sections") or {}
        if item in sections:
            return sections[item]
        raise AttributeError(item)

    @property
    def chosen(self) -> Any:
        """The chosen algorithm's config."""
        return self.sections[self.name]

    @property
    def algorithm(self) -> registry.Algorithm:
        """The chosen algorithm's registry entry."""
        return registry.get(self.name)

    @property
    def baselines(self) -> MAMLConfig:
        """The config the pretrained and from-scratch baselines are built from."""
        return self.sections[BASELINE_ALGORITHM]  # type: ignore[no-any-return]

    def identity(self) -> dict[str, Any]:
        """What defines a training run: the chosen algorithm, its section and the baselines'."""
        return {"name": self.name, self.name: to_dict(self.chosen),
                BASELINE_ALGORITHM: to_dict(self.baselines)}

    def to_params(self) -> dict[str, Any]:
        """The params.yaml form: ``name``, each section, ``family_overrides``."""
        return {"name": self.name, **{n: to_dict(c) for n, c in self.sections.items()},
                "family_overrides": self.family_overrides}

    def replaced(self, name: str, overrides: dict[str, Any], prefix: str) -> AlgoSection:
        """A copy with keys of section ``name`` replaced (validated, named by ``prefix``)."""
        if not overrides:
            return self
        section = self.sections[name]
        merged = {**dataclasses.asdict(section), **overrides}
        new = from_mapping(type(section), merged, prefix=prefix)
        return dataclasses.replace(self, sections={**self.sections, name: new})


@dataclass(frozen=True)
class TrainSection:
    """``train``: meta-training budget."""

    num_iterations: int = 40
    """Meta-iterations."""
    seed: int = 0
    """Seed of parameters, task batches and rollouts."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto`` (CUDA when present)."""
    checkpoint_every: int = 5
    """Write the whole training state to ``train_state/`` every this many iterations (and at
    the end of each phase), so a killed stage resumes there; 0: never."""

    def __post_init__(self) -> None:
        check(self.num_iterations >= 1, "num_iterations", self.num_iterations, "must be >= 1")
        check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every,
              "must be >= 0 (0: no training state)")
        check(self.device in ("cpu", "cuda", "auto"), "device", self.device,
              "choose cpu, cuda or auto")


@dataclass(frozen=True)
class TuneSection:
    """``tune``: Optuna search over the inner and outer step sizes (validation tasks only)."""

    n_trials: int = 6
    """Trials in total (a re-run resumes the study and runs only the missing ones; 0 skips)."""
    num_iterations: int = 12
    """Meta-iterations per trial."""
    eval_every: int = 4
    """Report the validation return to the pruner every this many iterations."""
    episodes_per_task: int = 10
    """Episodes per validation task when scoring a trial."""
    seed: int = 0
    """Seed of the sampler (the trial after *k* finished ones: ``seed + k``) and of every
    trial's training."""
    sampler: str = "tpe"
    """How trials are sampled: ``tpe`` (Optuna's TPE), ``random`` or ``cmaes`` (CMA-ES, for
    two or more searched keys: MAML's inner and outer step sizes)."""
    pruner: str = "median"
    """How unpromising trials stop early at the ``eval_every`` reports: ``median`` (below the
    median of earlier trials at the same step, after 2 trials), ``successive_halving`` or
    ``none``."""
    storage: str = "tuning/study.journal"
    """Journal file path (relative to the project, and inside it; from a temporary or queued
    experiment's copy, the project's own journal, as for ``tracking.uri``) or a database URL
    (e.g. postgresql://...). ``METARL_TUNE_STORAGE``, when set, replaces it: put a database's
    credentials there, never here."""
    n_workers: int = 1
    """Worker processes the stage runs on this machine, each with one torch thread, sharing
    the study (more join from any machine with ``metarl tune-worker``). The trial after *k*
    created ones is sampled with ``seed + k`` whatever the worker, so a random search gives the
    same trials with any number of workers; TPE and CMA-ES after their random start see the
    trials finished so far, which then depends on timing."""
    inner_lr: tuple[float, float] = (0.1, 1.0)
    """Log-uniform search range of ``algo.maml.inner_lr`` (MAML only)."""
    outer_lr: tuple[float, float] = (1e-3, 1e-2)
    """Log-uniform search range of the meta-learning rate: ``algo.maml.outer_lr``, or
    ``algo.rl2.lr`` for RL²."""

    def __post_init__(self) -> None:
        check(self.n_trials >= 0, "n_trials", self.n_trials, "must be >= 0")
        check(isinstance(self.n_workers, int) and self.n_workers >= 1, "n_workers",
              self.n_workers, "must be an integer >= 1")
        check(self.num_iterations >= 1, "num_iterations", self.num_iterations, "must be >= 1")
        check(self.eval_every >= 1, "eval_every", self.eval_every, "must be >= 1")
        check(self.episodes_per_task >= 2, "episodes_per_task", self.episodes_per_task,
              "must be >= 2")
        check_range("inner_lr", self.inner_lr, positive=True)
        check_range("outer_lr", self.outer_lr, positive=True)
        check_no_credentials("storage", self.storage, "METARL_TUNE_STORAGE")
        check(self.sampler in SAMPLERS, "sampler", self.sampler,
              f"unknown sampler; choose one of {list(SAMPLERS)}")
        check(self.pruner in PRUNERS, "pruner", self.pruner,
              f"unknown pruner; choose one of {list(PRUNERS)}")


@dataclass(frozen=True)
class EvaluateSection:
    """``evaluate``: the meta-test protocol on held-out tasks."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Evaluation seeds (start states and action noise); every learner sees the same ones."""
    num_adapt_steps: int = 3
    """Adaptation steps K: the curve has returns after 0..K steps."""
    episodes_per_task: int = 20
    """Episodes per task per rollout."""

    @property
    def episodes_per_trial(self) -> int:
        """The episodes the evaluator plays on a task: before adaptation and after each step.

        The one rule for an in-context learner's trial length (it trains on such trials).
        """
        return self.num_adapt_steps + 1

    def __post_init__(self) -> None:
        check(len(self.seeds) >= 1, "seeds", self.seeds, "give at least one seed")
        check(self.num_adapt_steps >= 1, "num_adapt_steps", self.num_adapt_steps, "must be >= 1")
        check(self.episodes_per_task >= 2, "episodes_per_task", self.episodes_per_task,
              "must be >= 2")


@dataclass(frozen=True)
class RegisterSection:
    """``register``: the MLflow registry and the promotion gate."""

    model_name: str = ""
    """Registered model name; empty means ``metarl-<task.family>-<algo.name>``, so each
    family/algorithm pair has its own champion."""
    margin: float = 0.02
    """Promote to @champion only if the lower end of the bootstrap interval of the mean
    per-task difference, new model minus champion (both evaluated now on the same test tasks
    and seeds; for a first version: minus the best baseline), is above this. Normalised units
    where the family has a closed-form oracle, else return units."""
    confidence: float = 0.95
    """Confidence level of that interval."""

    def __post_init__(self) -> None:
        check(self.model_name == self.model_name.strip(), "model_name", self.model_name,
              "remove the surrounding spaces")
        check(self.margin >= 0, "margin", self.margin, "must be >= 0")
        check(0.5 <= self.confidence < 1, "confidence", self.confidence, "must be in [0.5, 1)")


@dataclass(frozen=True)
class TrackingSection:
    """``tracking``: where MLflow writes."""

    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI (relative SQLite paths are relative to the project and must stay
    inside it; from a ``dvc exp run --temp`` or queued experiment's temporary copy, relative to
    the project it was started from). ``MLFLOW_TRACKING_URI``, when set, replaces it: put a
    server's credentials there, never here (params.yaml values end up in dvc.lock and
    MLflow)."""
    experiment: str = "metarl"
    """Experiment name."""
    artifact_location: str = "mlartifacts"
    """Artifact root for a new experiment (relative paths are relative to the project, as for
    ``uri``, and must stay inside it). A copied or moved project's SQLite store is pointed at
    its own copy of this folder (see :func:`pipelines.tracking.relocate_artifacts`)."""

    def __post_init__(self) -> None:
        check_no_credentials("uri", self.uri, "MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class PipelineConfig:
    """All of params.yaml."""

    task: TaskSection = field(default_factory=TaskSection)
    algo: AlgoSection = field(default_factory=AlgoSection)
    train: TrainSection = field(default_factory=TrainSection)
    tune: TuneSection = field(default_factory=TuneSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    register: RegisterSection = field(default_factory=RegisterSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    allow_paths_outside_project: bool = False
    """Let ``tune.storage``, the SQLite path of ``tracking.uri`` and
    ``tracking.artifact_location`` be absolute paths outside the project (by default every
    path stays inside it, so a params file cannot write elsewhere)."""

    def __post_init__(self) -> None:
        check_sizes(self)
        check_sampler(self)

    @property
    def model_name(self) -> str:
        """The registered model name (``register.model_name`` or the family/algo default)."""
        return self.register.model_name or f"metarl-{self.task.family}-{self.algo.name}"

    def with_algo_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """A copy with ``algo.<name>.<key>`` values replaced (e.g. tuned step sizes)."""
        name = self.algo.name
        return dataclasses.replace(self, algo=self.algo.replaced(name, overrides,
                                                                 f"algo.{name}"))


def default_params() -> dict[str, Any]:
    """Every key of params.yaml with its embedded default: what a key left out takes.

    params.yaml holds the default run's sections only (the chosen family's, MAML's); the other
    families' and algorithms' defaults live in their config dataclasses, and this is them.
    """
    return to_dict(PipelineConfig())


def section_defaults(*sections: str) -> dict[str, Any]:
    """The embedded defaults of dotted ``sections``, nested under their paths as in params.yaml.

    ``section_defaults("task.nav2d")`` is ``{"task": {"nav2d": {...}}}``; ``algo.rl2``,
    ``tune`` or a single key (``tune.storage``) work the same way.

    Raises:
        ConfigError: a section that params.yaml cannot have, naming the valid ones there.

    """
    defaults = default_params()
    out: dict[str, Any] = {}
    for section in sections:
        value: Any = defaults
        parts = section.split(".")
        for i, part in enumerate(parts):
            where = ".".join(parts[:i])
            if not isinstance(value, dict):
                raise ConfigError("section", section, f"{where} is a value ({value!r}), not a "
                                  "section")
            if part not in value:
                raise ConfigError("section", section, "params.yaml has no such section; valid "
                                  f"{f'under {where}: ' if where else 'ones: '}{sorted(value)}")
            value = value[part]
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def load_config(path: Path | str) -> PipelineConfig:
    """Read and validate ``params.yaml``.

    Raises:
        ConfigError: unreadable or malformed YAML, an unknown key, or a bad value.

    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError("params", str(path), f"cannot read the file ({err.strerror})") from None
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("params", str(path), f"malformed YAML{where}; fix the syntax") from None
    if duplicate is not None:
        raise ConfigError(duplicate[0], "<twice>", f"{path}: the key appears again at line "
                          f"{duplicate[1]}; keep one (YAML would silently take the last)")
    if data is None:
        raise ConfigError("params", str(path), "the file is empty; start from the project's "
                          "params.yaml (every section is documented there)")
    config = from_mapping(PipelineConfig, data)
    # every algorithm's section, not only the chosen one: the baselines are built from one
    algo = config.algo
    for name, overrides in algo.family_overrides.get(config.task.family, {}).items():
        algo = algo.replaced(name, overrides, f"algo.family_overrides.{config.task.family}.{name}")
    return dataclasses.replace(config, algo=algo)


def _duplicate_key(node: yaml.Node | None, path: str = "") -> tuple[str, int] | None:
    """The dotted path and line of the first key that a YAML mapping repeats, if any."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            if key in seen:
                return key, key_node.start_mark.line + 1
            seen.add(key)
            found = _duplicate_key(value_node, key)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, f"{path}[{i}]")
            if found:
                return found
    return None


def redact(text: str) -> str:
    """``text`` with the secret of every ``scheme://user:secret@`` replaced by ``***``."""
    return CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def check_no_credentials(key: str, uri: str, variable: str) -> None:
    """Refuse a secret in a params.yaml URI (it would land in dvc.lock, MLflow and logs).

    Raises:
        ConfigError: naming the key and the redacted value, and the variable to use instead.

    """
    if CREDENTIALS.search(uri):
        raise ConfigError(key, redact(uri), "credentials in params.yaml end up in dvc.lock, "
                          f"MLflow params and logs; remove them and set {variable} in the "
                          "environment instead")


def _at_most(key: str, value: int, limit: int, what: str) -> None:
    check(value <= limit, key, value, f"more {what} than this machine can hold (at most "
          f"{limit:,}); lower it")


def _horizon(config: PipelineConfig) -> tuple[str, int]:
    """The chosen family's steps per episode (``task.<family>.max_steps`` or its like)."""
    fam_config = config.task.family_config()
    for name in ("max_steps", "num_pulls", "horizon"):
        if hasattr(fam_config, name):
            return f"task.{config.task.family}.{name}", int(getattr(fam_config, name))
    return "task", 1


def check_sizes(config: PipelineConfig) -> None:
    """Refuse sizes that cannot fit this machine, before any work (see ``MAX_*``).

    Raises:
        ConfigError: naming the key, the value and the limit.

    """
    t = config.task
    for split in ("train", "val", "test"):
        _at_most(f"task.num_{split}", getattr(t, f"num_{split}"), MAX_TASKS, "tasks")
    _at_most("train.num_iterations", config.train.num_iterations, MAX_ITERATIONS, "iterations")
    _at_most("tune.num_iterations", config.tune.num_iterations, MAX_ITERATIONS, "iterations")
    _at_most("tune.n_trials", config.tune.n_trials, MAX_TRIALS, "trials")
    for name, section in config.algo.sections.items():  # every network's widths
        widths = getattr(section, "hidden_sizes", None) or ()
        _at_most(f"algo.{name}.hidden_sizes", len(widths), MAX_LAYERS, "layers")
        for i, width in enumerate(widths):
            _at_most(f"algo.{name}.hidden_sizes[{i}]", width, MAX_WIDTH, "units")
        if isinstance(getattr(section, "hidden_size", None), int):
            _at_most(f"algo.{name}.hidden_size", section.hidden_size, MAX_WIDTH, "units")
    horizon_key, horizon = _horizon(config)
    trial = config.evaluate.episodes_per_trial
    baselines = config.algo.baselines
    batches: list[tuple[tuple[str, int], ...]] = [
        (("algo.maml.meta_batch_size", baselines.meta_batch_size),
         ("algo.maml.episodes_per_task", baselines.episodes_per_task)),
        (("task.num_test", t.num_test), ("evaluate.episodes_per_task",
                                         config.evaluate.episodes_per_task)),
        tuple(config.algo.algorithm.batch_factors(config.algo.chosen, trial)),
    ]
    for factors in batches:
        if not factors:
            continue
        steps = horizon
        for _, value in factors:
            steps *= value
        if steps > MAX_BATCH_STEPS:
            names = " x ".join(k for k, _ in factors) + f" x {horizon_key}"
            values = " x ".join(str(v) for _, v in factors) + f" x {horizon}"
            raise ConfigError(factors[0][0], factors[0][1], f"{names} = {values} = {steps:,} "
                              f"env steps in one rollout batch, more than this machine can "
                              f"hold (at most {MAX_BATCH_STEPS:,}); lower one of them")


def check_sampler(config: PipelineConfig) -> None:
    """Refuse ``tune.sampler: cmaes`` where CMA-ES cannot run, before any work.

    Raises:
        ConfigError: the ``cmaes`` package is missing, or the chosen algorithm searches fewer
            than two keys (CMA-ES needs a search space of two dimensions or more).

    """
    if config.tune.sampler != "cmaes" or config.tune.n_trials == 0:
        return
    import importlib.util

    searched = list(config.algo.algorithm.search_space)
    check(len(searched) >= 2, "tune.sampler", "cmaes", f"CMA-ES needs two or more searched "
          f"keys; algo.name={config.algo.name!r} searches {searched}: use tpe or random")
    check(importlib.util.find_spec("cmaes") is not None, "tune.sampler", "cmaes",
          "Optuna's CMA-ES sampler needs the cmaes package: `pip install cmaes`")


def load_project_config(params_path: Path | str, root: Path) -> PipelineConfig:
    """:func:`load_config`, then :func:`check_paths` for the project at ``root``."""
    config = load_config(params_path)
    check_paths(config, root)
    return config


def check_paths(config: PipelineConfig, root: Path) -> None:
    """Keep the configured file paths inside the project at ``root`` (see the field's doc).

    Raises:
        ConfigError: naming the key and the path.

    """
    paths = [("tune.storage", config.tune.storage, os.environ.get("METARL_TUNE_STORAGE")),
             ("tracking.artifact_location", config.tracking.artifact_location, None)]
    prefix = "sqlite:///"
    uri = config.tracking.uri
    if uri.startswith(prefix) and not os.environ.get("MLFLOW_TRACKING_URI"):
        paths.append(("tracking.uri", uri, None))
    root = root.resolve()
    for key, value, from_env in paths:
        raw = value
        for local in (prefix, "file://"):
            if value.startswith(local):
                raw = value[len(local):]
        if from_env or "://" in raw:
            continue  # a database or server URL, or set in the environment by the user
        target = Path(raw)
        inside = (target if target.is_absolute() else root / target).resolve()
        if inside.is_relative_to(root):
            continue
        if target.is_absolute() and config.allow_paths_outside_project:
            continue
        hint = ("set allow_paths_outside_project: true in params.yaml to allow an absolute "
                "path outside it" if target.is_absolute() else
                "use a path inside the project (or an absolute one with "
                "allow_paths_outside_project: true)")
        raise ConfigError(key, value, f"points outside the project {root}; {hint}")
