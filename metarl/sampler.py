"""Batched rollouts: every task and episode of a batched env in one loop over time.

The transitions contract, for every learner: ``obs``, ``actions``, ``rewards``, ``next_obs``,
``terminated``, ``truncated`` and ``mask``, each ``[N tasks, E slots, T steps, ...]``. A step is
*terminated* when the episode really ended (a value of 0 follows) and *truncated* when only
the horizon stopped it (the value of ``next_obs`` still counts: returns bootstrap there,
:func:`metarl.returns.gae_transitions`). ``next_obs`` is the observation the step led to,
before any auto-reset. The env alone writes its state: the sampler tells it which slots to
restart (``reset_done(generator, ended)``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from metarl.envs.base import BatchedEnv
from metarl.policies import ActFn, RecurrentActor, sample_actions


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes of ``N`` tasks × ``E`` slots, padded to ``T`` steps. Immutable.

    Attributes:
        obs: ``[N, E, T, obs_dim]`` observation before each step.
        actions: ``[N, E, T]`` long (discrete) or ``[N, E, T, action_dim]`` float (continuous:
            the policy's unclipped samples; the env clipped them when stepping).
        rewards: ``[N, E, T]``; zero on padding.
        mask: ``[N, E, T]`` 1.0 where a step was taken, 0.0 on padding after the episode ended.
        next_obs: ``[N, E, T, obs_dim]`` observation each step led to.
        terminated: ``[N, E, T]`` bool, the step ended the episode (no value after it).
        truncated: ``[N, E, T]`` bool, the horizon stopped the episode at this step.

    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor

    @property
    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of each episode, ``[N, E]``."""
        return self.rewards.sum(-1)

    @property
    def num_steps(self) -> int:
        """Environment steps actually taken (sum of the mask)."""
        return int(self.mask.sum().item())

    def transitions(self) -> TransitionBatch:
        """The valid steps as a :class:`TransitionBatch` (what a replay buffer stores)."""
        return TransitionBatch(obs=self.obs, actions=self.actions, rewards=self.rewards,
                               next_obs=self.next_obs, terminated=self.terminated,
                               truncated=self.truncated, mask=self.mask)


def random_actions(env: BatchedEnv, generator: torch.Generator, device: torch.device
                   ) -> torch.Tensor:
    """Uniform random actions for every slot.

    Discrete: uniform over ``num_actions``; continuous: uniform in the box
    ``[action_low, action_high]``.
    """
    n, e = env.num_tasks, env.num_envs
    if env.discrete:
        return sample_actions(torch.zeros(n, e, env.num_actions, device=device), generator)
    low = torch.tensor(env.action_low, device=device)
    high = torch.tensor(env.action_high, device=device)
    u = torch.rand(n, e, env.action_dim, generator=generator, device=device)
    return low + (high - low) * u


def choose_actions(act: ActFn | None, env: BatchedEnv, obs: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """``act``'s actions for ``obs``, or uniform random ones when ``act`` is None."""
    if act is None:
        return random_actions(env, generator, obs.device)
    return act(obs.float(), generator)


@torch.no_grad()
def rollout(act: ActFn | None, env: BatchedEnv, generator: torch.Generator,
            watch: Callable[[BatchedEnv], None] | None = None) -> EpisodeBatch:
    """Run one episode in every slot of ``env`` until all end or the horizon is reached.

    Args:
        act: maps observations ``[N, E, obs_dim]`` and ``generator`` to actions (see
            :data:`~metarl.policies.ActFn`); ``None`` acts uniformly at random. A
            :class:`~metarl.policies.RecurrentActor` (RL²) is told after every step the
            rewards and the episode-end flags (termination, or the horizon's last step).
        env: the batched environment (it is reset here).
        generator: source of start states and action noise.
        watch: called with the env after the reset and after every step (e.g. to render it).

    """
    obs = env.reset(generator)
    if watch is not None:
        watch(env)
    n, e = env.num_tasks, env.num_envs
    observer = act if isinstance(act, RecurrentActor) else None
    obs_buf, act_buf, rew_buf, mask_buf, next_buf, term_buf, trunc_buf = ([] for _ in range(7))
    alive = torch.ones(n, e, dtype=torch.bool, device=obs.device)
    for t in range(env.max_steps):
        actions = choose_actions(act, env, obs, generator)
        obs_buf.append(obs.float())
        act_buf.append(actions)
        mask_buf.append(alive)
        obs, reward, terminated = env.step(actions)
        if watch is not None:
            watch(env)
        last = t == env.max_steps - 1
        rew_buf.append(reward.float() * alive)
        next_buf.append(obs.float())
        term_buf.append(terminated & alive)
        trunc_buf.append(alive & ~terminated & last)
        if observer is not None:
            observer.observe(reward, terminated | last)
        alive = alive & ~terminated
        if not alive.any():
            break
    return EpisodeBatch(
        obs=torch.stack(obs_buf, dim=2),
        actions=torch.stack(act_buf, dim=2),
        rewards=torch.stack(rew_buf, dim=2),
        mask=torch.stack(mask_buf, dim=2).float(),
        next_obs=torch.stack(next_buf, dim=2),
        terminated=torch.stack(term_buf, dim=2),
        truncated=torch.stack(trunc_buf, dim=2),
    )


@dataclass(frozen=True)
class TransitionBatch:
    """A fixed number of steps per slot with auto-reset, ``[N, E, T]``. Immutable.

    The transitions contract of the module docstring, for learners that read steps rather
    than whole episodes (off-policy replay, trials of several episodes).

    Attributes:
        obs: ``[N, E, T, obs_dim]`` observation before each step.
        actions: ``[N, E, T]`` long or ``[N, E, T, action_dim]`` float.
        rewards: ``[N, E, T]``.
        next_obs: ``[N, E, T, obs_dim]`` the observation the step led to (before a reset).
        terminated: ``[N, E, T]`` bool, the step ended its episode.
        truncated: ``[N, E, T]`` bool, the step hit the horizon (``env.max_steps``) without
            ending it; the next step starts a new episode either way.
        mask: ``[N, E, T]`` 1.0 on every step (all are real here).

    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    mask: torch.Tensor

    @property
    def dones(self) -> torch.Tensor:
        """``[N, E, T]`` 1.0 where a step ended an episode (terminated or truncated)."""
        return (self.terminated | self.truncated).float()


class TimeLimit:
    """Counts each slot's steps since its episode began; the ``max_steps``-th truncates it.

    The one auto-reset rule of every step loop that restarts episodes (:func:`rollout_steps`,
    RL²'s trials): call :meth:`step` after each env step, then restart the ``ended`` slots
    with ``env.reset_done(generator, ended=ended)``.
    """

    def __init__(self, env: BatchedEnv, device: torch.device | str = "cpu") -> None:
        self.max_steps = env.max_steps
        self.age = torch.zeros(env.num_tasks, env.num_envs, dtype=torch.long, device=device)

    def step(self, terminated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(truncated, ended)`` of the step just taken, ``[N, E]`` bool each."""
        self.age += 1
        truncated = ~terminated & (self.age >= self.max_steps)
        ended = terminated | truncated
        self.age.masked_fill_(ended, 0)
        return truncated, ended


@torch.no_grad()
def rollout_steps(
    act: ActFn | None, env: BatchedEnv, num_steps: int, generator: torch.Generator
) -> TransitionBatch:
    """Step every slot ``num_steps`` times, restarting episodes as they end.

    An episode also ends (truncation) after ``env.max_steps`` steps.
    """
    obs = env.reset(generator)
    limit = TimeLimit(env, obs.device)
    bufs: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "obs", "actions", "rewards", "next_obs", "terminated", "truncated")}
    for _ in range(num_steps):
        actions = choose_actions(act, env, obs, generator)
        bufs["obs"].append(obs.float())
        bufs["actions"].append(actions)
        obs, reward, terminated = env.step(actions)
        truncated, ended = limit.step(terminated)
        for key, value in (("rewards", reward.float()), ("next_obs", obs.float()),
                           ("terminated", terminated), ("truncated", truncated)):
            bufs[key].append(value)
        obs = env.reset_done(generator, ended=ended)
    out = {k: torch.stack(v, dim=2) for k, v in bufs.items()}
    return TransitionBatch(**out, mask=torch.ones_like(out["rewards"]))


def episodes_from_steps(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                        terminated: torch.Tensor, truncated: torch.Tensor | None = None,
                        next_obs: torch.Tensor | None = None) -> EpisodeBatch:
    """The episodes of one task's consecutive steps ``[T, ...]``, as a batch ``[1, E, T']``.

    A step that is terminated or truncated ends its episode; steps after the last end form one
    more (unfinished) episode. ``next_obs`` defaults to the next step's observation (the last
    step's own at the very end). Padding is as :func:`rollout`'s: zeros, mask 0.
    """
    steps = obs.shape[0]
    if not (actions.shape[0] == rewards.shape[0] == terminated.shape[0] == steps):
        raise ValueError(f"episodes_from_steps: {steps} observations but {actions.shape[0]} "
                         f"actions, {rewards.shape[0]} rewards, {terminated.shape[0]} flags")
    truncated = torch.zeros_like(terminated) if truncated is None else truncated
    if next_obs is None:
        next_obs = torch.cat([obs[1:], obs[-1:]]) if steps else obs
    ends = (terminated | truncated).nonzero().flatten().tolist()
    bounds = [0, *[e + 1 for e in ends]]
    if bounds[-1] < steps:
        bounds.append(steps)
    spans = list(itertools.pairwise(bounds))
    length = max(b - a for a, b in spans)

    def pad(x: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
        rows = [torch.cat([x[a:b], torch.full((length - (b - a), *x.shape[1:]), fill,
                                              dtype=x.dtype)]) for a, b in spans]
        return torch.stack(rows).unsqueeze(0)

    mask = pad(torch.ones(steps))
    return EpisodeBatch(obs=pad(obs.float()), actions=pad(actions), rewards=pad(rewards.float()),
                        mask=mask, next_obs=pad(next_obs.float()),
                        terminated=pad(terminated, False), truncated=pad(truncated, False))
