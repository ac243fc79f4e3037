"""The batched-environment contract shared by every task family."""

from __future__ import annotations

from typing import Protocol

import torch


class BatchedEnv(Protocol):
    """Steps a ``[num_tasks, num_envs]`` batch of episodes in one call.

    Shapes: observations ``[N, E, obs_dim]``; actions ``[N, E]`` long in ``[0, num_actions)``
    for a discrete env, ``[N, E, action_dim]`` float for a continuous one (the env clips them to
    ``[action_low, action_high]``); rewards and flags ``[N, E]``. There is no auto-reset: an
    episode that terminated stays terminated (its later rewards are zero) until :meth:`reset`,
    so one slot is one episode.
    """

    num_tasks: int
    num_envs: int
    obs_dim: int
    discrete: bool
    """Integer actions (True) or float action vectors (False)."""
    num_actions: int
    """Discrete envs: number of actions; continuous envs: 0."""
    action_dim: int
    """Continuous envs: size of an action vector; discrete envs: 0 (actions are scalars)."""
    action_low: tuple[float, ...]
    """Continuous envs: per-dimension lower bound of the actions (``()`` for discrete)."""
    action_high: tuple[float, ...]
    """Continuous envs: per-dimension upper bound of the actions (``()`` for discrete)."""
    max_steps: int
    done: torch.Tensor
    """``[N, E]`` bool: which slots have ended since the last reset."""

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Draw start states for all ``N × E`` slots; return the observations."""
        ...

    def reset_done(self, generator: torch.Generator) -> torch.Tensor:
        """Redraw start states of the terminated slots only (auto-reset); return obs."""
        ...

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every slot; return ``(obs, reward, terminated)``."""
        ...
