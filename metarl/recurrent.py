"""Recurrent policies that adapt in context: a GRU over the step history, and its learner.

:class:`RL2Policy` reads at every step the observation and what the previous step gave
(:mod:`metarl.history`) and keeps its hidden state across the episodes of a *trial*, so
adapting to a task is acting. :class:`RL2Learner` puts it on the ``MetaLearner`` contract: its
"parameters" are the trial's context, and adapting after an episode is carrying that context
into the next. RL² (:mod:`metarl.algos.rl2`) trains it; a checkpoint or the registry serves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metarl.algos.base import Context, TensorInfo, half_action_range, probe_env, read_context
from metarl.config import check
from metarl.envs.base import BatchedEnv
from metarl.envs.wrappers import TrialClock, clock_observation
from metarl.history import StepEncoder, StepHistory, replay_history
from metarl.policies import Params, categorical_log_prob, gaussian_log_prob, sample_actions
from metarl.sampler import EpisodeBatch
from metarl.tasks import TaskFamily

HEADS = ("linear", "bilinear")
"""The policy and value heads (``RL2Config.head``)."""


def bilinear(obs: torch.Tensor, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``Σ_i obs_i · W_i z`` for ``obs [B, I]``, ``z [B, H]``, ``weight [O, I, H]``: ``[B, O]``.

    :class:`torch.nn.Bilinear` without bias, as one matrix product (its own kernel ran the
    bandit cells 2.5× slower on a CPU, backward included).
    """
    out_dim, in_dim, hidden = weight.shape
    u = (z @ weight.reshape(out_dim * in_dim, hidden).T).view(-1, out_dim, in_dim)
    return (u * obs.unsqueeze(-2)).sum(-1)


class RL2Policy(nn.Module):
    """GRU over step inputs (:class:`~metarl.history.StepEncoder`), a policy and a value head.

    The policy head gives logits (discrete) or the mean of a diagonal Gaussian with a learned,
    state-independent ``log_std`` (continuous). Parameters are drawn uniform in
    ``±1/sqrt(hidden_size)`` from ``generator`` (PyTorch's default ranges: same seed, same
    network), the policy head scaled by 0.01 (a near-uniform start).

    Args:
        obs_dim: observation size.
        num_actions: discrete actions (0 for a continuous family).
        hidden_size: GRU state width.
        generator: draws the initial parameters.
        action_dim, action_low, action_high: a continuous family's action size and bounds.
        init_std: continuous only, the Gaussian's initial standard deviation.
        inputs: the step encoding (``RL2Config.inputs``).
        head: ``linear`` or ``bilinear`` (``RL2Config.head``).

    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int,
                 generator: torch.Generator, action_dim: int = 0,
                 action_low: Sequence[float] = (), action_high: Sequence[float] = (),
                 init_std: float = 1.0, inputs: str = "paper", head: str = "linear"
                 ) -> None:
        super().__init__()
        if (num_actions > 0) == (action_dim > 0):
            raise ValueError(f"RL2Policy: give num_actions ({num_actions}) for a discrete "
                             f"family or action_dim ({action_dim}) for a continuous one")
        if action_dim and (len(action_low) != action_dim or len(action_high) != action_dim):
            raise ValueError(f"RL2Policy: action_low/action_high need {action_dim} values")
        check(head in HEADS, "head", head, f"must be one of {list(HEADS)}")
        self.encoder = StepEncoder(obs_dim, num_actions, tuple(map(float, action_low)),
                                   tuple(map(float, action_high)), inputs)
        self.discrete = action_dim == 0
        self.obs_dim, self.num_actions, self.action_dim = obs_dim, num_actions, action_dim
        self.hidden_size, self.head, self.inputs = hidden_size, head, inputs
        self.input_dim, code_dim = self.encoder.dim, self.encoder.code_dim
        self.gru = nn.GRU(self.input_dim, hidden_size, batch_first=True)
        self.pi = nn.Linear(hidden_size, code_dim)
        self.v = nn.Linear(hidden_size, 1)
        self.pi_obs: nn.Bilinear | None = None
        self.v_obs: nn.Bilinear | None = None
        if head == "bilinear":
            self.pi_obs = nn.Bilinear(obs_dim, hidden_size, code_dim, bias=False)
            self.v_obs = nn.Bilinear(obs_dim, hidden_size, 1, bias=False)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(hidden_size)
            for p in self.parameters():
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            self.pi.weight.mul_(0.01)
            self.pi.bias.zero_()
            if self.pi_obs is not None:
                self.pi_obs.weight.mul_(0.01)
        if not self.discrete:
            if init_std <= 0:
                raise ValueError(f"init_std={init_std}: must be > 0")
            self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    @property
    def action_low(self) -> tuple[float, ...]:
        """Continuous action lower bounds (``()`` for discrete)."""
        return self.encoder.action_low

    @property
    def action_high(self) -> tuple[float, ...]:
        """Continuous action upper bounds (``()`` for discrete)."""
        return self.encoder.action_high

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The hidden state at the start of a trial: zeros ``[batch, hidden_size]``."""
        return torch.zeros(batch, self.hidden_size, device=device)

    def encode(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU states after each of ``L`` steps ``[B, L, hidden]`` and the last ``[B, hidden]``."""
        out, h_last = self.gru(x, h.unsqueeze(0))
        return out, h_last.squeeze(0)

    def forward(self, x: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``L`` steps ``x [B, L, input_dim]`` from ``h [B, hidden]``.

        Returns ``(out [B, L, code_dim], values [B, L], h_last [B, hidden])``; ``out`` is the
        logits or the Gaussian's mean.
        """
        out, h_last = self.encode(x, h)
        head, values = self.pi(out), self.v(out).squeeze(-1)
        if self.pi_obs is not None and self.v_obs is not None:
            obs = x[..., :self.obs_dim].reshape(-1, self.obs_dim)
            z = out.reshape(-1, self.hidden_size)
            head = head + bilinear(obs, z, self.pi_obs.weight).reshape(head.shape)
            values = values + bilinear(obs, z, self.v_obs.weight).reshape(values.shape)
        return head, values, h_last

    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability (density) of ``actions`` under the head output ``out``."""
        if self.discrete:
            return categorical_log_prob(out, actions)
        return gaussian_log_prob(out, self.log_std, actions)

    def sample(self, out: torch.Tensor, generator: torch.Generator, greedy: bool = False
               ) -> torch.Tensor:
        """Actions from the head output: sampled, or the mode when ``greedy``."""
        if self.discrete:
            return out.argmax(-1) if greedy else sample_actions(out, generator)
        if greedy:
            return out
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        return out + torch.exp(self.log_std) * noise

    def entropy(self, out: torch.Tensor) -> torch.Tensor:
        """Entropy of the action distribution at every step, ``out.shape[:-1]``."""
        if self.discrete:
            log_pi = torch.log_softmax(out, -1)
            return -(log_pi.exp() * log_pi).sum(-1)
        per_step = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
        return per_step.expand(out.shape[:-1])


def model_for(family: TaskFamily, hidden_size: int, generator: torch.Generator,
              init_std: float = 0.5, inputs: str = "paper", head: str = "linear",
              clock: bool = False) -> RL2Policy:
    """An :class:`RL2Policy` sized for ``family`` (``clock``: one more observation entry).

    A continuous family's Gaussian starts at ``init_std`` times half the widest action range.
    """
    env = probe_env(family)
    obs_dim = env.obs_dim + int(clock)
    if env.discrete:
        return RL2Policy(obs_dim, env.num_actions, hidden_size, generator, inputs=inputs,
                         head=head)
    return RL2Policy(obs_dim, 0, hidden_size, generator, action_dim=env.action_dim,
                     action_low=env.action_low, action_high=env.action_high,
                     init_std=init_std * half_action_range(env), inputs=inputs, head=head)



class RecurrentAct:
    """The acting function of an :class:`RL2Policy` inside one batched episode.

    Built from a context (:meth:`RL2Learner.initial_params`); each call advances the GRU one
    step, and :func:`metarl.sampler.rollout` reports each step's reward and end flag through
    :meth:`observe`. A slot whose episode has ended keeps its state.
    """

    def __init__(self, model: RL2Policy, context: Params, greedy: bool = False) -> None:
        self.model, self.context, self.greedy = model, context, greedy
        self.h: torch.Tensor | None = None
        self.history: StepHistory | None = None
        self.finished: torch.Tensor | None = None
        self.obs: torch.Tensor | None = None
        self.actions: torch.Tensor | None = None

    def __call__(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Actions for ``obs [N, E, obs_dim]``; advances the hidden state of running slots."""
        n, e = obs.shape[:2]
        if self.h is None:  # broadcast the context's slots ([N, 1] at a trial's start)
            ctx = {k: v.to(obs.device).expand(n, e, *v.shape[2:]).clone()
                   for k, v in self.context.items()}
            self.h = ctx["h"]
            self.history = StepHistory(self.model.encoder, ctx["prev_obs"],
                                       ctx["prev_action"], ctx["prev_reward"], ctx["prev_done"])
            self.finished = torch.zeros(n, e, dtype=torch.bool, device=obs.device)
        assert self.history is not None and self.finished is not None
        x = self.history.input(obs.float())
        out, _, h = self.model(x.reshape(n * e, 1, -1), self.h.reshape(n * e, -1))
        actions = self.model.sample(out.reshape(n, e, -1), generator, self.greedy)
        self.h = torch.where(self.finished.unsqueeze(-1), self.h, h.reshape(n, e, -1))
        self.obs, self.actions = obs.float(), actions
        return actions

    def observe(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """The step's reward and whether it ended the episode (termination or horizon)."""
        assert self.history is not None and self.finished is not None
        assert self.obs is not None and self.actions is not None
        self.history.push(self.obs, self.actions, reward, done, frozen=self.finished)
        self.finished = self.finished | done


class RL2Learner:
    """An :class:`RL2Policy` on the :class:`~metarl.algos.base.MetaLearner` contract.

    Its "parameters" are a per-slot *context*: the GRU state ``h [N, E, hidden]`` and the
    previous observation, action, reward and done flag. ``adapt`` replays an episode through
    the GRU and returns the context at its end, so the next episode continues the same trial:
    the evaluator's adaptation curve is the return of episode 1, 2, … of a trial.

    ``trial_length`` (a model trained with ``RL2Config.trial_clock``): the trial's episodes;
    :meth:`wrap_env` then puts the trial clock on the evaluator's env.
    """

    def __init__(self, model: RL2Policy, greedy: bool = False,
                 trial_length: int | None = None) -> None:
        check(trial_length is None or (isinstance(trial_length, int) and trial_length >= 1),
              "trial_length", trial_length, "must be an integer >= 1 (or None: no clock)")
        self.model, self.greedy, self.trial_length = model, greedy, trial_length

    def wrap_env(self, env: BatchedEnv) -> BatchedEnv:
        """The env the model reads: with the trial clock of a clocked model."""
        if self.trial_length is None:
            return env
        return TrialClock(env, self.trial_length)  # type: ignore[return-value]

    def initial_params(self, num_tasks: int) -> Params:
        """A fresh trial (``[N, 1, ...]``): zero state, no previous step."""
        device = next(self.model.parameters()).device
        start = StepHistory.start(self.model.encoder, (num_tasks, 1), device)
        return {"h": torch.zeros(num_tasks, 1, self.model.hidden_size, device=device),
                "prev_obs": start.prev_obs, "prev_action": start.prev_action,
                "prev_reward": start.prev_reward, "prev_done": start.prev_done}

    def explore(self, params: Params) -> RecurrentAct:
        """Act from the context (sampling, unless built with ``greedy``)."""
        return RecurrentAct(self.model, params, self.greedy)

    act = explore

    @torch.no_grad()
    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """The context after ``episodes`` (one per slot), replayed through the GRU."""
        n, e, steps = episodes.mask.shape
        device = episodes.obs.device
        ctx = {k: v.to(device) for k, v in params.items()}
        start = StepHistory(self.model.encoder, ctx["prev_obs"], ctx["prev_action"],
                            ctx["prev_reward"], ctx["prev_done"])
        obs = episodes.obs.float()
        x = replay_history(start, obs, episodes.actions, episodes.rewards,
                           (episodes.terminated | episodes.truncated).float())
        h = ctx["h"].expand(n, e, -1).reshape(n * e, -1)
        states, _ = self.model.encode(x.reshape(n * e, steps, -1), h)
        last = (episodes.mask.sum(-1).long() - 1).clamp(min=0)  # [N, E], the final step
        return {"h": _at_step(states.reshape(n, e, steps, -1), last),
                "prev_obs": _at_step(obs, last),
                "prev_action": _at_step(episodes.actions, last),
                "prev_reward": _at_step(episodes.rewards, last),
                "prev_done": torch.ones(n, e, device=device)}

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """``obs [-1, obs_dim]`` (the current observations) → the greedy action of each."""
        m = self.model
        obs_dim = m.obs_dim - int(self.trial_length is not None)  # the clock is added here
        out: TensorInfo = (("action", "int64", (-1,)) if m.discrete else
                           ("action", "float32", (-1, m.action_dim)))
        return [("obs", "float32", (-1, obs_dim))], [out]

    def serve(self, inputs: dict[str, Any]) -> np.ndarray:
        """Greedy actions for ``obs [B, obs_dim]``, each the next step of the trial so far.

        The trial so far is the :data:`~metarl.algos.base.CONTEXT` (none: a fresh trial): the
        GRU reads it from a zero state, then each observation row as the step after it. A
        clocked model counts the trial's episodes from ``context_done``.
        """
        m = self.model
        obs_dim = m.obs_dim - int(self.trial_length is not None)
        obs = torch.as_tensor(np.asarray(inputs["obs"], dtype=np.float32)).reshape(-1, obs_dim)
        ctx = read_context(inputs, obs_dim, m.action_dim)
        if self.trial_length is not None:  # the episode of each step, and of the query
            played = torch.cat([torch.zeros(1), ctx.dones.float().cumsum(0)])
            ctx = Context(clock_observation(ctx.obs, played[:-1], self.trial_length),
                          ctx.actions, ctx.rewards, ctx.dones)
            obs = clock_observation(obs, played[-1].expand(obs.shape[0]), self.trial_length)
        with torch.no_grad():
            h = m.initial_state(1)
            history = StepHistory.start(m.encoder, (1,))
            if ctx.steps:
                x = replay_history(history, ctx.obs[None], ctx.actions[None], ctx.rewards[None],
                                   ctx.dones[None].float())
                _, h = m.encode(x, h)
                history = StepHistory(m.encoder, ctx.obs[-1:], ctx.actions[-1:],
                                      ctx.rewards[-1:], ctx.dones[-1:].float())
            b = obs.shape[0]
            query = StepHistory(m.encoder, *(v.expand(b, *v.shape[1:]) for v in (
                history.prev_obs, history.prev_action, history.prev_reward, history.prev_done)))
            out, _, _ = m(query.input(obs)[:, None], h.expand(b, -1))
            actions = m.sample(out[:, 0], torch.Generator(), greedy=True)
        return actions.numpy().astype(np.int64 if m.discrete else np.float32)


def _at_step(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``x [N, E, T, ...]`` at step ``step [N, E]`` of each slot: ``[N, E, ...]``."""
    trailing = x.shape[3:]
    index = step.reshape(*step.shape, 1, *(1 for _ in trailing))
    return x.gather(2, index.expand(*step.shape, 1, *trailing)).squeeze(2)
