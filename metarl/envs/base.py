"""The batched-environment contract shared by every task family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from gymnasium import logger


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

    @property
    def done(self) -> torch.Tensor:
        """``[N, E]`` bool: which slots have ended since the last reset (the env's own)."""
        ...

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Draw start states for all ``N × E`` slots; return the observations."""
        ...

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Redraw start states of the ended slots only (auto-reset); return obs.

        ``ended`` (``[N, E]`` bool) ends more slots first, e.g. those at a time limit: the
        env alone writes its state, callers say which slots to restart.
        """
        ...

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every slot; return ``(obs, reward, terminated)``."""
        ...


class RendersSlots(Protocol):
    """A batched env that draws one slot as an ``rgb_array`` frame."""

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """``[H, W, 3]`` uint8: slot ``(task_index, env_index)`` as it is now."""
        ...


class StateBatch:
    """Plumbing shared by the batched envs whose slots hold a float state ``[N, E, D]``.

    Subclasses call :meth:`_init_batch` from ``__init__``, say how a start state is drawn
    (:meth:`start_states`) and, where the observation is not the state itself, override
    :meth:`observe`; :meth:`reset`, :meth:`reset_done` (auto-reset) and :meth:`set_state` come
    from here. A reset draws one start state per slot from the generator whether or not the
    slot ended, so the generator's use does not depend on which slots ended.
    """

    num_tasks: int
    num_envs: int
    max_steps: int
    device: torch.device
    dtype: torch.dtype
    state: torch.Tensor
    done: torch.Tensor

    def _init_batch(self, num_tasks: int, num_envs: int, state_dim: int, max_steps: int,
                    device: torch.device | str, dtype: torch.dtype, no_tasks: str) -> None:
        """Check the batch size and allocate ``state`` (zeros) and ``done`` (all ended)."""
        if num_tasks < 1:
            raise ValueError(no_tasks)
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: must be >= 1")
        self.num_tasks, self.num_envs, self.max_steps = num_tasks, num_envs, max_steps
        self.device, self.dtype = torch.device(device), dtype
        self.state = torch.zeros(num_tasks, num_envs, state_dim, dtype=dtype, device=self.device)
        self.done = torch.ones(num_tasks, num_envs, dtype=torch.bool, device=self.device)

    def start_states(self, generator: torch.Generator) -> torch.Tensor:
        """A start state for every slot, ``[N, E, D]``."""
        raise NotImplementedError

    def observe(self) -> torch.Tensor:
        """The observations of the current state (by default the state itself)."""
        return self.state

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Draw start states for all ``N × E`` slots; return the observations."""
        return self.set_state(self.start_states(generator))

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Redraw the start states of the ended slots only (auto-reset); return obs."""
        if ended is not None:  # slots the caller ends too (a time limit)
            self.done = self.done | ended
        self.state = torch.where(self.done.unsqueeze(-1), self.start_states(generator),
                                 self.state)
        self.done = torch.zeros_like(self.done)
        return self.observe()

    def set_state(self, state: torch.Tensor) -> torch.Tensor:
        """Put every slot in ``state`` (``[N, E, D]``), mark it live, return the observations."""
        self.state = state.to(device=self.device, dtype=self.dtype).clone()
        self.done = torch.zeros(self.num_tasks, self.num_envs, dtype=torch.bool,
                                device=self.device)
        return self.observe()


def render_view(render_mode: str | None, draw: Callable[[], np.ndarray]) -> np.ndarray | None:
    """A gymnasium view's ``render()``: ``draw()`` in ``rgb_array`` mode, else None.

    Without a render mode gymnasium's envs warn and return None; the views do the same.
    """
    if render_mode is None:
        logger.warn("render() without a render_mode: make the env with "
                    "render_mode='rgb_array' to get frames")
        return None
    return draw()
