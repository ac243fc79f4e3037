"""The batched-environment contract shared by every task family."""

from __future__ import annotations

from typing import Protocol

import torch


class BatchedEnv(Protocol):
    """Steps a ``[num_tasks, num_envs]`` batch of episodes in one call.

    Shapes: observations ``[N, E, obs_dim]``; actions ``[N, E]`` (long, discrete);
    rewards and flags ``[N, E]``. There is no auto-reset: an episode that terminated stays
    terminated (its later rewards are zero) until :meth:`reset`, so one slot is one episode.
    """

    num_tasks: int
    num_envs: int
    obs_dim: int
    num_actions: int
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
