"""Task families (distributions over task parameters) and task sets (seeded, hashed files).

A family samples task parameters and builds batched environments for them. A task set is a
fixed list of tasks for one split, stored as JSON with a schema version and a content hash;
training and evaluation only ever read task sets, so nothing is sampled behind the user's back.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from metarl.config import ConfigError, check
from metarl.envs.base import BatchedEnv

SCHEMA_VERSION = 1


class TaskFamily(Protocol):
    """A named distribution over tasks that can build batched environments.

    A family whose optimum has a closed form also has ``oracle_returns(tasks) -> [N]``, the
    expected episode return of the best policy that knows each task; every stage reads the
    oracle through :func:`metarl.baselines.oracles.oracle_returns`, which also covers the
    families whose oracle is a policy to roll out.
    """

    @property
    def name(self) -> str:
        """Family name, e.g. ``cartpole``."""
        ...

    max_steps: int

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """Draw ``num_tasks`` task parameter dicts."""
        ...

    def make_env(
        self, tasks: list[dict[str, float]], num_envs: int, device: torch.device | str = "cpu"
    ) -> BatchedEnv:
        """A batched env over ``tasks`` with ``num_envs`` episodes each."""
        ...

    def check_task(self, task: dict[str, Any]) -> None:
        """Verify that ``task`` is a task this family can build an environment for.

        Checks that the task has exactly the fields :meth:`sample` writes, that each has the
        right type and lies in the *physically valid* range (a mass > 0, a probability in
        [0, 1], ...), not the configured sampling range: held-out tasks may deliberately lie
        outside it. Every task :meth:`sample` draws passes.

        Raises:
            ConfigError: keyed by the field (``pole_mass``, ``probs[2]``); the caller
                prefixes it with the task's place, e.g. ``tasks[3].pole_mass``.

        """
        ...


@dataclass(frozen=True)
class TaskSet:
    """A fixed list of tasks for one split of one family.

    Attributes:
        family: family name, e.g. ``cartpole``.
        split: ``train``, ``val`` or ``test``.
        seed: seed it was sampled with.
        tasks: the task parameter dicts.

    """

    family: str
    split: str
    seed: int
    tasks: tuple[dict[str, float], ...]

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of family, split and tasks (first 16 hex digits)."""
        payload = json.dumps({"family": self.family, "split": self.split,
                              "tasks": list(self.tasks)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.tasks)

    def to_json(self) -> str:
        """The file form: schema version, hash and tasks."""
        return json.dumps({"schema_version": SCHEMA_VERSION, "family": self.family,
                           "split": self.split, "seed": self.seed,
                           "content_hash": self.content_hash, "tasks": list(self.tasks)},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<task set>") -> TaskSet:
        """Parse and verify a task-set file.

        Raises:
            ValueError: the file is not valid JSON, has another schema version, is empty,
                or its content does not match its recorded hash (it was edited or truncated).

        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err}); regenerate it with "
                             "`metarl stage tasks`") from None
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            version = data.get("schema_version") if isinstance(data, dict) else None
            raise ValueError(f"{source}: schema_version={version!r}, expected {SCHEMA_VERSION}; "
                             "regenerate it with `metarl stage tasks`")
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ValueError(f"{source}: tasks={tasks!r}: expected a non-empty list")
        missing = [k for k in ("family", "split", "seed", "content_hash") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}; regenerate it with "
                             "`metarl stage tasks`")
        task_set = cls(family=str(data["family"]), split=str(data["split"]),
                       seed=int(data["seed"]), tasks=tuple(tasks))
        if task_set.content_hash != data.get("content_hash"):
            raise ValueError(f"{source}: content_hash={data.get('content_hash')!r} does not match "
                             f"the tasks ({task_set.content_hash}); the file was modified — "
                             "regenerate it with `metarl stage tasks`")
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise ValueError(f"{source}: tasks[{i}]={task!r}: expected a mapping of task "
                                 "fields; regenerate it with `metarl stage tasks`")
            for name, value in task.items():
                if not _finite(value):
                    raise ValueError(f"{source}: tasks[{i}].{name}={value!r}: expected finite "
                                     "numbers or (nested) non-empty lists of them")
        return task_set

    def check(self, family: TaskFamily, source: str = "<task set>") -> None:
        """Verify every task against ``family`` (:meth:`TaskFamily.check_task`).

        Raises:
            TaskSetError: naming ``source``, the task and field (``tasks[3].pole_mass``), the
                value and what is wrong with it, on one line.

        """
        for i, task in enumerate(self.tasks):
            where = f"tasks[{i}]"
            if not isinstance(task, dict):
                raise TaskSetError(source, where, task, "expected a mapping of task fields")
            try:
                family.check_task(task)
            except ConfigError as err:
                raise TaskSetError(source, f"{where}.{err.key}", err.value,
                                   err.message) from None


class TaskSetError(ConfigError):
    """A task of a task-set file is invalid for its family.

    Its message reads ``<source>: tasks[3].pole_mass=-0.1: must be > 0 (a mass, kg); regenerate
    the file with `metarl stage tasks` or fix the value``.

    Attributes:
        source: the file (or other origin) of the task set.

    """

    def __init__(self, source: str, key: str, value: object, message: str) -> None:
        super().__init__(key, value, message)
        self.source = source
        self.args = (f"{source}: {key}={value!r}: {message}; regenerate the file with "
                     "`metarl stage tasks` or fix the value",)


def _finite(value: object) -> bool:
    """A finite number, or a non-empty (nested) list of them (bandit probabilities, MDP tables)."""
    if isinstance(value, list):
        return bool(value) and all(_finite(v) for v in value)
    return isinstance(value, int | float) and math.isfinite(value)


def sample_task_sets(
    family: TaskFamily, sizes: dict[str, int], seed: int
) -> dict[str, TaskSet]:
    """Sample disjoint, independently seeded splits (one child seed per split)."""
    children = np.random.SeedSequence(seed).spawn(len(sizes))
    out = {}
    for (split, size), child in zip(sizes.items(), children, strict=True):
        check(size >= 1, f"num_{split}", size, "a split needs at least one task")
        rng = np.random.default_rng(child)
        # A family with its own official splits (Meta-World ML1) samples per split.
        sample_split = getattr(family, "sample_split", None)
        tasks = (sample_split(split, size, rng) if sample_split is not None
                 else family.sample(size, rng))
        out[split] = TaskSet(family.name, split, seed, tuple(tasks))
    return out
