"""What a recurrent learner reads each step: the observation and the step before it.

A recurrent policy that adapts in context (RL²; a recurrent context of recent history, as
meta-Q-learning's) reads at every step ``t`` the current observation and what the previous
step gave: the action taken, its reward, whether it ended an episode, and the observation it
was taken in. This module builds that input in one place, in two forms that give the same
numbers:

- :class:`StepHistory`, step by step while acting (the history of ``[N, E]`` slots);
- :func:`replay_history`, for whole recorded sequences ``[..., T]`` at once (adapting from
  recorded episodes, serving a trial).

The input is ``(obs, action code, previous reward, previous done)`` — the code a one-hot of a
discrete action (all zeros before the first) or the action vector clipped to its bounds — in
one of the :data:`ENCODINGS`:

- ``paper`` (Duan et al. 2016) the input above;
- ``reward_code`` also ``code · reward``: an arm's rewards sum linearly in the input (bandits);
- ``pair_code`` also ``prev_obs ⊗ code`` and that times the reward: for one-hot states the code
  of the ``(s, a)`` pair the reward belongs to (tabular MDPs).

The codes carry no information the paper's input lacks (the previous observation was the
previous step's input); they make per-arm or per-pair statistics linear in the input instead
of a product the network must learn (``benchmarks/rl2/README.md``, "What was tried").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metarl.config import check

ENCODINGS = ("paper", "reward_code", "pair_code")
"""The step encodings (see the module docstring)."""


@dataclass(frozen=True)
class StepEncoder:
    """Builds one step's input ``[..., dim]`` for an observation and action space.

    Args:
        obs_dim: observation size.
        num_actions: discrete actions (0 for a continuous space).
        action_low, action_high: continuous action bounds (``()`` for a discrete space).
        encoding: one of :data:`ENCODINGS` (only ``paper`` for continuous actions).

    """

    obs_dim: int
    num_actions: int
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    encoding: str = "paper"

    def __post_init__(self) -> None:
        check(self.encoding in ENCODINGS, "inputs", self.encoding,
              f"must be one of {list(ENCODINGS)}")
        check(self.encoding == "paper" or self.discrete, "inputs", self.encoding,
              "the per-action codes need discrete actions; use 'paper' for this family")
        if len(self.action_low) != len(self.action_high):
            raise ValueError("StepEncoder: action_low and action_high differ in length")

    @property
    def discrete(self) -> bool:
        """Discrete actions (a one-hot code) or an action vector."""
        return self.num_actions > 0

    @property
    def code_dim(self) -> int:
        """Size of the action code: ``num_actions``, or the action vector's size."""
        return self.num_actions if self.discrete else len(self.action_low)

    @property
    def dim(self) -> int:
        """Size of one step's input."""
        extra = {"paper": 0, "reward_code": self.code_dim,
                 "pair_code": 2 * self.obs_dim * self.code_dim}[self.encoding]
        return self.obs_dim + self.code_dim + 2 + extra

    def no_action(self, shape: tuple[int, ...], device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
        """The "previous action" before a trial's first step: ``-1`` (discrete) or zeros."""
        if self.discrete:
            return torch.full(shape, -1, dtype=torch.long, device=device)
        return torch.zeros(*shape, self.code_dim, device=device)

    def code(self, action: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[..., code_dim]``: a one-hot (zeros for ``-1``) or the action clipped to bounds."""
        if self.discrete:
            one_hot = F.one_hot(action.clamp(min=0), self.num_actions).to(dtype)
            return one_hot * (action >= 0).unsqueeze(-1).to(dtype)
        low = torch.tensor(self.action_low, device=action.device, dtype=dtype)
        high = torch.tensor(self.action_high, device=action.device, dtype=dtype)
        return torch.maximum(torch.minimum(action.to(dtype), high), low)

    def __call__(self, obs: torch.Tensor, prev_action: torch.Tensor,
                 prev_reward: torch.Tensor, prev_done: torch.Tensor,
                 prev_obs: torch.Tensor) -> torch.Tensor:
        """One step's input from the current observation and the previous step.

        Args:
            obs: ``[..., obs_dim]`` current observation.
            prev_action: ``[...]`` long (``-1`` before the first step) or ``[..., code_dim]``.
            prev_reward: ``[...]`` (0 before the first step).
            prev_done: ``[...]`` 1.0 if the previous step ended an episode (``obs`` starts the
                next episode of the same trial).
            prev_obs: ``[..., obs_dim]`` the observation ``prev_action`` was taken in (zeros
                before the first step); read by ``pair_code`` only.

        """
        code = self.code(prev_action, obs.dtype)
        reward = prev_reward.unsqueeze(-1).to(obs.dtype)
        x = torch.cat([obs, code, reward, prev_done.unsqueeze(-1).to(obs.dtype)], dim=-1)
        if self.encoding == "paper":
            return x
        if self.encoding == "reward_code":
            return torch.cat([x, code * reward], dim=-1)
        pair = (prev_obs.to(obs.dtype).unsqueeze(-1) * code.unsqueeze(-2)).flatten(-2)
        return torch.cat([x, pair, pair * reward], dim=-1)


class StepHistory:
    """The previous step of every ``[N, E]`` slot, while acting.

    Starts from a context (the previous observation, action, reward and done flag per slot:
    :meth:`start` for a fresh trial); :meth:`input` builds the input of the current step and
    :meth:`push` records what the step did. A slot that is ``frozen`` keeps its history.
    """

    def __init__(self, encoder: StepEncoder, prev_obs: torch.Tensor, prev_action: torch.Tensor,
                 prev_reward: torch.Tensor, prev_done: torch.Tensor) -> None:
        self.encoder = encoder
        self.prev_obs, self.prev_action = prev_obs, prev_action
        self.prev_reward, self.prev_done = prev_reward, prev_done

    @classmethod
    def start(cls, encoder: StepEncoder, shape: Sequence[int],
              device: torch.device | str = "cpu") -> StepHistory:
        """A fresh trial in slots ``shape``: no previous observation, action, reward or end."""
        shape = tuple(shape)
        zeros = torch.zeros(shape, device=device)
        return cls(encoder, torch.zeros(*shape, encoder.obs_dim, device=device),
                   encoder.no_action(shape, device), zeros, zeros.clone())

    def input(self, obs: torch.Tensor) -> torch.Tensor:
        """The current step's input ``[..., encoder.dim]``."""
        return self.encoder(obs, self.prev_action, self.prev_reward, self.prev_done,
                            self.prev_obs)

    def push(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             done: torch.Tensor, frozen: torch.Tensor | None = None) -> None:
        """Record a step: taken in ``obs`` with ``action``, it gave ``reward`` and ``done``."""
        if frozen is None:
            self.prev_obs, self.prev_action = obs.to(self.prev_obs.dtype), action
            self.prev_reward, self.prev_done = reward.float(), done.float()
            return
        keep = frozen.unsqueeze(-1)
        self.prev_obs = torch.where(keep, self.prev_obs, obs.to(self.prev_obs.dtype))
        self.prev_action = torch.where(keep if not self.encoder.discrete else frozen,
                                       self.prev_action, action)
        self.prev_reward = torch.where(frozen, self.prev_reward, reward.float())
        self.prev_done = torch.where(frozen, self.prev_done, done.float())


def shifted(first: torch.Tensor, seq: torch.Tensor, dim: int) -> torch.Tensor:
    """``first`` then ``seq`` without its last step, along ``dim``: the previous-step values."""
    return torch.cat([first.unsqueeze(dim).to(seq.dtype), seq.narrow(dim, 0, seq.shape[dim] - 1)],
                     dim=dim)


def replay_history(history: StepHistory, obs: torch.Tensor, actions: torch.Tensor,
                   rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """Inputs ``[..., T, dim]`` of recorded steps ``[..., T]`` that follow ``history``.

    The whole-sequence form of :class:`StepHistory`: step ``t`` reads ``obs[t]`` and step
    ``t - 1``'s action, reward, done flag and observation (step 0 reads ``history``'s).
    ``actions`` are ``[..., T]`` long or ``[..., T, code_dim]``; ``history``'s tensors
    broadcast over the leading dims.
    """
    lead = obs.shape[:-2]
    dim = len(lead)

    def start(x: torch.Tensor, trailing: int) -> torch.Tensor:
        return x.expand(*lead, *x.shape[x.dim() - trailing:])

    trailing_action = 0 if history.encoder.discrete else 1
    prev_obs = shifted(start(history.prev_obs, 1), obs, dim)
    prev_action = shifted(start(history.prev_action, trailing_action), actions, dim)
    prev_reward = shifted(start(history.prev_reward, 0), rewards.float(), dim)
    prev_done = shifted(start(history.prev_done, 0), dones.float(), dim)
    return history.encoder(obs, prev_action, prev_reward, prev_done, prev_obs)
