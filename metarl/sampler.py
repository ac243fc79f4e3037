"""Batched rollouts: every task and episode of a batched env in one loop over time."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metarl.envs.base import BatchedEnv
from metarl.policies import ActFn, sample_actions


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes of ``N`` tasks × ``E`` slots, padded to ``T`` steps. Immutable.

    Attributes:
        obs: ``[N, E, T, obs_dim]`` observation before each step.
        actions: ``[N, E, T]`` long (discrete) or ``[N, E, T, action_dim]`` float (continuous:
            the policy's unclipped samples; the env clipped them when stepping).
        rewards: ``[N, E, T]``; zero on padding.
        mask: ``[N, E, T]`` 1.0 where a step was taken, 0.0 on padding after the episode ended.

    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor

    @property
    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of each episode, ``[N, E]``."""
        return self.rewards.sum(-1)

    @property
    def num_steps(self) -> int:
        """Environment steps actually taken (sum of the mask)."""
        return int(self.mask.sum().item())


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
def rollout(act: ActFn | None, env: BatchedEnv, generator: torch.Generator) -> EpisodeBatch:
    """Run one episode in every slot of ``env`` until all end or the horizon is reached.

    Args:
        act: maps observations ``[N, E, obs_dim]`` and ``generator`` to actions (see
            :data:`~metarl.policies.ActFn`); ``None`` acts uniformly at random. A recurrent
            acting function that needs rewards (RL²) has an ``observe(reward, done)`` method:
            it is called after every step with the rewards and the episode-end flags
            (termination, or the horizon's last step).
        env: the batched environment (it is reset here).
        generator: source of start states and action noise.

    """
    obs = env.reset(generator)
    n, e = env.num_tasks, env.num_envs
    observe = getattr(act, "observe", None)
    obs_buf, act_buf, rew_buf, mask_buf = [], [], [], []
    alive = torch.ones(n, e, dtype=torch.bool, device=obs.device)
    for t in range(env.max_steps):
        actions = choose_actions(act, env, obs, generator)
        obs_buf.append(obs.float())
        act_buf.append(actions)
        mask_buf.append(alive)
        obs, reward, terminated = env.step(actions)
        rew_buf.append(reward.float() * alive)
        if observe is not None:
            observe(reward, terminated | (t == env.max_steps - 1))
        alive = alive & ~terminated
        if not alive.any():
            break
    return EpisodeBatch(
        obs=torch.stack(obs_buf, dim=2),
        actions=torch.stack(act_buf, dim=2),
        rewards=torch.stack(rew_buf, dim=2),
        mask=torch.stack(mask_buf, dim=2).float(),
    )


@dataclass(frozen=True)
class TransitionBatch:
    """A fixed number of steps per slot with auto-reset, ``[N, E, T]``. Immutable.

    Used where episodes follow each other within a trial (and by the sampler benchmark).

    Attributes:
        obs: ``[N, E, T, obs_dim]``.
        actions: ``[N, E, T]`` long or ``[N, E, T, action_dim]`` float.
        rewards: ``[N, E, T]``.
        dones: ``[N, E, T]`` 1.0 where the step ended an episode (the next step starts anew).

    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor


@torch.no_grad()
def rollout_steps(
    act: ActFn | None, env: BatchedEnv, num_steps: int, generator: torch.Generator
) -> TransitionBatch:
    """Step every slot ``num_steps`` times, restarting episodes as they end.

    An episode also ends (truncation) after ``env.max_steps`` steps.
    """
    obs = env.reset(generator)
    n, e = env.num_tasks, env.num_envs
    age = torch.zeros(n, e, dtype=torch.long, device=obs.device)
    obs_buf, act_buf, rew_buf, done_buf = [], [], [], []
    for _ in range(num_steps):
        actions = choose_actions(act, env, obs, generator)
        obs_buf.append(obs.float())
        act_buf.append(actions)
        obs, reward, terminated = env.step(actions)
        age += 1
        done = terminated | (age >= env.max_steps)
        rew_buf.append(reward.float())
        done_buf.append(done)
        env.done |= done
        age.masked_fill_(done, 0)
        obs = env.reset_done(generator)
    return TransitionBatch(
        obs=torch.stack(obs_buf, dim=2),
        actions=torch.stack(act_buf, dim=2),
        rewards=torch.stack(rew_buf, dim=2),
        dones=torch.stack(done_buf, dim=2).float(),
    )
