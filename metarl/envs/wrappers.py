"""Wrappers around a :class:`~metarl.envs.base.BatchedEnv` that change what it shows.

:class:`TrialClock` appends the fraction of a trial already played to every observation: a
recurrent learner that plays several episodes of one task (RL²'s trials) then knows where in
the trial it is, so a policy trained on trials of ``n`` episodes can play a longer trial on the
same schedule, stretched.
"""

from __future__ import annotations

from typing import Any

import torch

from metarl.envs.base import BatchedEnv


def clock_observation(obs: torch.Tensor, episode: torch.Tensor, episodes_per_trial: int
                      ) -> torch.Tensor:
    """``obs [..., D]`` with ``episode / episodes_per_trial`` appended: ``[..., D + 1]``.

    ``episode [...]`` counts the episodes of the trial already played (0 in the first).
    """
    clock = (episode.to(obs.dtype) / episodes_per_trial).unsqueeze(-1)
    return torch.cat([obs, clock], dim=-1)


class TrialClock:
    """``env`` whose observations end with the trial clock (:func:`clock_observation`).

    One trial per slot, started by the first :meth:`reset`: every later :meth:`reset` starts the
    next episode of every slot, :meth:`reset_done` that of the slots it restarts, and each
    counts one more episode played. Everything else is ``env``'s own.

    Args:
        env: the batched env (any family).
        episodes_per_trial: the trial's episodes, ``n``: the clock runs ``0, 1/n, …``.

    """

    def __init__(self, env: BatchedEnv, episodes_per_trial: int) -> None:
        if not isinstance(episodes_per_trial, int) or episodes_per_trial < 1:
            raise ValueError(f"episodes_per_trial={episodes_per_trial!r}: must be an integer "
                             ">= 1")
        self.env, self.episodes_per_trial = env, episodes_per_trial
        self.obs_dim = env.obs_dim + 1
        self.episode: torch.Tensor | None = None
        """``[N, E]`` long: episodes each slot has finished (None before the first reset)."""

    def __getattr__(self, name: str) -> Any:  # the wrapped env's spaces, sizes, helpers
        return getattr(self.env, name)

    @property
    def done(self) -> torch.Tensor:
        """The wrapped env's own end flags."""
        return self.env.done

    def _clocked(self, obs: torch.Tensor) -> torch.Tensor:
        assert self.episode is not None
        return clock_observation(obs.float(), self.episode, self.episodes_per_trial)

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """The wrapped env's reset; a new trial the first time, its next episode after."""
        obs = self.env.reset(generator)
        if self.episode is None:
            self.episode = torch.zeros(self.env.num_tasks, self.env.num_envs,
                                       dtype=torch.long, device=obs.device)
        else:
            self.episode = self.episode + 1
        return self._clocked(obs)

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Auto-reset of the ended slots, each one episode further in its trial."""
        restarted = self.env.done if ended is None else self.env.done | ended
        obs = self.env.reset_done(generator, ended)
        assert self.episode is not None, "TrialClock: reset() before reset_done()"
        self.episode = self.episode + restarted.long()
        return self._clocked(obs)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The wrapped env's step, the clock on its observations."""
        obs, reward, terminated = self.env.step(actions)
        return self._clocked(obs), reward, terminated
