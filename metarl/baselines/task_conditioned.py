"""The task-conditioned policy: the reference for families without a closed-form optimum.

MAML's and PEARL's papers bound their continuous-control results by an "oracle": a policy that
is *told* the task (the target velocity, the direction, the goal) and so never needs to adapt.
For ``cheetah_vel``, ``cheetah_dir``, ``ant_dir`` and ``metaworld_ml1`` there is no optimal
return in closed form, so the pipeline trains one: multi-task PPO on an env whose observation
carries the task's parameters (:class:`TaskConditionedFamily`), and evaluate normalises with its
return on the test tasks. It is an upper bound only as far as its training goes: it gets the
same number of episodes as the other learners (see the train stage), and it is reported as
``oracle_kind: task-conditioned`` beside its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metarl.baselines.oracles import oracle_returns
from metarl.envs.base import BatchedEnv
from metarl.tasks import TaskFamily


def has_closed_form_oracle(family: TaskFamily, tasks: Sequence[dict[str, Any]]) -> bool:
    """Whether ``family`` knows its optimal return (False: NaN, train the oracle instead)."""
    return bool(np.isfinite(oracle_returns(family, list(tasks[:1]))).all())


def task_features(family: TaskFamily, task: dict[str, Any]) -> list[float]:
    """The numbers that identify ``task``.

    The family's own ``task_features(task)`` if it has one, else every numeric value of the
    task dict (sorted by key, lists and nested lists flattened, e.g. a tabular MDP's reward
    table and transition tensor).

    Raises:
        ValueError: the task has no numeric values.

    """
    own = getattr(family, "task_features", None)
    if own is not None:
        return [float(v) for v in own(task)]
    out: list[float] = []
    for key in sorted(task):
        value = task[key]
        if isinstance(value, bool | int | float):
            out.append(float(value))
        elif isinstance(value, list | tuple):
            try:
                flat = np.asarray(value, dtype=np.float64).ravel()
            except (TypeError, ValueError):  # ragged or not numbers
                continue
            out.extend(float(v) for v in flat)
    if not out:
        raise ValueError(f"task with keys {sorted(task)}: no numeric parameters to condition "
                         f"a policy on")
    return out


class TaskObsEnv:
    """A batched env whose observations end with the task's features ``[N, E, obs_dim + F]``.

    Everything else (actions, rewards, flags, ``done``) is the wrapped env's.
    """

    def __init__(self, env: BatchedEnv, features: torch.Tensor) -> None:
        self.env = env
        self.features = features  # [N, F]
        self.obs_dim = env.obs_dim + features.shape[-1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    @property
    def done(self) -> torch.Tensor:
        """The wrapped env's ``done`` flags."""
        return self.env.done

    def _with_task(self, obs: torch.Tensor) -> torch.Tensor:
        feats = self.features.to(device=obs.device, dtype=obs.dtype)
        return torch.cat([obs, feats[:, None, :].expand(*obs.shape[:2], -1)], dim=-1)

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """The wrapped env's start observations, with the task's features."""
        return self._with_task(self.env.reset(generator))

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """The wrapped env's auto-reset, with the task's features."""
        return self._with_task(self.env.reset_done(generator, ended))

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The wrapped env's step, with the task's features on the observations."""
        obs, reward, terminated = self.env.step(actions)
        return self._with_task(obs), reward, terminated


class TaskConditionedFamily:
    """``family`` with the task's parameters appended to every observation.

    Features are standardised with the mean and spread of ``reference_tasks`` (the training
    tasks), so a target velocity in [0, 2] and an angle in [0, 2π) enter on the same scale.
    """

    def __init__(self, family: TaskFamily, reference_tasks: Sequence[dict[str, Any]] = (),
                 mean: Sequence[float] | None = None, scale: Sequence[float] | None = None
                 ) -> None:
        self.family = family
        self.name = f"{family.name}+task"
        self.max_steps = family.max_steps
        if mean is not None and scale is not None:  # as saved with a trained oracle
            self.mean, self.scale = np.asarray(mean, float), np.asarray(scale, float)
        else:
            if not reference_tasks:
                raise ValueError("TaskConditionedFamily: give reference tasks, or mean and scale")
            feats = np.array([task_features(family, t) for t in reference_tasks], dtype=float)
            self.mean = feats.mean(0)
            self.scale = np.where(feats.std(0) > 1e-8, feats.std(0), 1.0)

    def features(self, tasks: Sequence[dict[str, Any]]) -> torch.Tensor:
        """Standardised features ``[N, F]`` of ``tasks``."""
        feats = np.array([task_features(self.family, t) for t in tasks], dtype=np.float64)
        if feats.shape[1] != self.mean.shape[0]:
            raise ValueError(f"tasks have {feats.shape[1]} features, the reference tasks "
                             f"{self.mean.shape[0]}")
        return torch.as_tensor((feats - self.mean) / self.scale, dtype=torch.float32)

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """The wrapped family's tasks."""
        return self.family.sample(num_tasks, rng)

    def check_task(self, task: dict[str, Any]) -> None:
        """The wrapped family's check."""
        self.family.check_task(task)

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 device: torch.device | str = "cpu") -> TaskObsEnv:
        """The wrapped family's env, observations followed by the task's features."""
        env = self.family.make_env(tasks, num_envs, device=device)
        return TaskObsEnv(env, self.features(tasks).to(device))

    def oracle_returns(self, tasks: list[dict[str, Any]]) -> np.ndarray:
        """None in closed form (NaN): this family is how the oracle is trained."""
        return np.full(len(tasks), math.nan)
