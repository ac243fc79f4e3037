"""Bernoulli multi-armed bandits: RL²'s first task distribution.

Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning",
https://arxiv.org/abs/1611.02779, section 3.1: a task is ``k`` arms whose success probabilities
are drawn i.i.d. from U[0, 1]; a trial is ``n`` pulls.

For the MAML pipeline one *episode* is one whole trial: the observation is the fraction of the
trial already played (``t / n``, one float), the action is the arm, the reward is 1 on a success
and 0 otherwise, and the episode terminates with the ``n``-th pull.

:class:`BatchedBandit` steps ``[tasks × envs]`` trials in one call. A step's randomness is one
uniform number per slot, drawn from the generator passed to :meth:`BatchedBandit.reset`; the
transition itself is a pure function of (state, action, noise), :meth:`BatchedBandit.step_with`,
which is also what the gymnasium view :class:`MetaBanditEnv` calls (with noise drawn from its
``np_random``), so there is one copy of the dynamics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from metarl.config import check, check_array, check_fields
from metarl.envs import render
from metarl.envs.base import render_view


class BatchedBandit:
    """``N`` Bernoulli bandits × ``E`` trials each, stepped together.

    Args:
        probs: ``[N, k]`` success probability of every arm of every task, in ``[0, 1]``.
        num_envs: trials per task, ``E``.
        num_pulls: pulls per trial, ``n`` (the episode horizon).
        device: torch device of every tensor.
        dtype: float dtype of probabilities, observations and rewards.

    """

    obs_dim = 1
    discrete = True
    action_dim = 0
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()

    def __init__(
        self,
        probs: torch.Tensor,
        num_envs: int,
        num_pulls: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        probs = torch.as_tensor(probs, dtype=dtype, device=device)
        if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 2:
            raise ValueError(f"probs shape {tuple(probs.shape)}: expected [num_tasks, num_arms] "
                             "with at least one task and two arms")
        if not bool(((probs >= 0) & (probs <= 1)).all()):
            raise ValueError(f"probs={probs.tolist()}: every arm probability must be in [0, 1]")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: must be >= 1")
        if num_pulls < 1:
            raise ValueError(f"num_pulls={num_pulls}: must be >= 1")
        self.probs = probs
        self.num_tasks, self.num_actions = probs.shape
        self.num_envs = num_envs
        self.max_steps = num_pulls
        self.device = probs.device
        self.dtype = dtype
        self.t = torch.zeros(self.num_tasks, num_envs, dtype=torch.long, device=self.device)
        self.done = torch.ones(self.num_tasks, num_envs, dtype=torch.bool, device=self.device)
        self.watched = False
        """Whether :meth:`render_frame` has been called: the history a frame draws is kept
        from then on only, so envs nobody watches step at full speed."""
        self.pulls = torch.zeros(self.num_tasks, num_envs, self.num_actions, dtype=torch.long,
                                 device=self.device)
        """``[N, E, k]``: how often each arm has been pulled in each slot's trial so far."""
        self._generator: torch.Generator | None = None

    @classmethod
    def from_tasks(
        cls, tasks: Sequence[Mapping[str, Any]], num_envs: int, num_pulls: int,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> BatchedBandit:
        """Build from task dicts ``{"probs": [p_1, ..., p_k]}`` (all with the same ``k``)."""
        if not tasks:
            raise ValueError("tasks: got an empty sequence; pass at least one bandit task")
        sizes = {len(t["probs"]) for t in tasks}
        if len(sizes) != 1:
            raise ValueError(f"tasks have different numbers of arms {sorted(sizes)}; a batch "
                             "needs one k")
        probs = torch.tensor([list(t["probs"]) for t in tasks], dtype=dtype)
        return cls(probs, num_envs, num_pulls, device=device, dtype=dtype)

    def observe(self) -> torch.Tensor:
        """``[N, E, 1]``: the fraction of the trial already played, ``t / n``."""
        return (self.t.to(self.dtype) / self.max_steps).unsqueeze(-1)

    def restart(self) -> torch.Tensor:
        """Start a new trial in every slot (no randomness is involved); return obs."""
        self.t = torch.zeros_like(self.t)
        self.pulls = torch.zeros_like(self.pulls)
        self.done = torch.zeros_like(self.done)
        return self.observe()

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Start every slot anew; later steps draw their noise from ``generator``."""
        self._generator = generator
        return self.restart()

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Start a new trial in the slots that ended (auto-reset); return obs."""
        if ended is not None:  # slots the caller ends too (a time limit)
            self.done = self.done | ended
        self._generator = generator
        self.t = torch.where(self.done, 0, self.t)
        if self.watched:
            self.pulls = torch.where(self.done.unsqueeze(-1), 0, self.pulls)
        self.done = torch.zeros_like(self.done)
        return self.observe()

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """The randomness of one step: ``[N, E]`` uniforms in ``[0, 1)``."""
        return torch.rand(self.num_tasks, self.num_envs, generator=generator, dtype=self.dtype,
                          device=self.device)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pull arm ``actions[i, j]`` in every slot, with noise from the reset's generator."""
        if self._generator is None:
            raise RuntimeError("BatchedBandit.step before reset(generator): reset first")
        return self.step_with(actions, self.sample_noise(self._generator))

    def mean_reward(self, actions: torch.Tensor) -> torch.Tensor:
        """Expected reward of pulling ``actions [N, E]`` now: the arms' success probabilities.

        0 in slots whose trial has ended (as :meth:`step_with` pays there).
        """
        p = torch.gather(self.probs, 1, actions.to(device=self.device, dtype=torch.long))
        return torch.where(self.done, 0.0, p)

    def step_with(
        self, actions: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transition as a pure function of state, ``actions [N, E]`` and ``noise [N, E]``.

        A pull of arm ``a`` succeeds (reward 1) iff ``noise < p_a``. Slots whose trial already
        ended are left as they are and get reward 0.

        Returns:
            ``(obs [N, E, 1], reward [N, E], terminated [N, E])``; ``terminated`` is True only
            on the ``n``-th pull.

        """
        p = self.mean_reward(actions)
        live = ~self.done
        reward = ((noise < p) & live).to(self.dtype)
        self.t = self.t + live.long()
        arms = actions.to(device=self.device, dtype=torch.long).unsqueeze(-1)
        if self.watched:
            self.pulls.scatter_add_(2, arms, live.long().unsqueeze(-1))
        terminated = live & (self.t >= self.max_steps)
        self.done = self.done | terminated
        return self.observe(), reward, terminated

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)``: pulls per arm vs. probabilities (a bar chart)."""
        render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        self.watched = True  # counted from now on (a frame after the reset shows the trial)
        return render.bandit_frame(self.pulls[task_index, env_index].tolist(),
                                   self.probs[task_index].tolist(), self.max_steps)


class MetaBanditEnv(gym.Env[np.ndarray, int]):
    """Gymnasium view of one bandit trial: :class:`BatchedBandit` with a batch of one.

    Args:
        task: ``{"probs": [...]}``, a fixed task. When omitted, every :meth:`reset` draws a new
            task from the family (``p_i ~ U[0, 1]``) with ``np_random``, so the registered
            ``metarl/Bandit-v0`` is the task distribution itself.
        num_arms: ``k`` when ``task`` is omitted.
        num_pulls: ``n``, pulls per trial; the episode terminates after the last one (so
            ``gym.make("metarl/Bandit-v0")`` needs no ``TimeLimit``: its horizon is ``n``).
        render_mode: ``"rgb_array"`` (:meth:`render` returns frames) or None.

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": 10}

    def __init__(self, task: Mapping[str, Any] | None = None, num_arms: int = 5,
                 num_pulls: int = 100, render_mode: str | None = None) -> None:
        self.render_mode = render.check_render_mode(render_mode, "MetaBandit")
        config = BanditFamilyConfig(num_arms=len(task["probs"]) if task else num_arms,
                                    num_pulls=num_pulls)
        self.task = dict(task) if task is not None else None
        self.num_arms, self.num_pulls = config.num_arms, config.num_pulls
        self.action_space = gym.spaces.Discrete(self.num_arms)  # type: ignore[assignment]
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._env: BatchedBandit | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a trial (of a freshly drawn task unless the env was given one)."""
        super().reset(seed=seed)
        if self.task is not None:
            probs = np.asarray(self.task["probs"], dtype=np.float64)
        else:
            probs = self.np_random.uniform(0.0, 1.0, size=self.num_arms)
        self._env = BatchedBandit(torch.from_numpy(probs).view(1, -1), 1, self.num_pulls,
                                  dtype=torch.float64)
        obs = self._env.restart()
        return self._obs(obs), {"probs": probs.copy()}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Pull ``action``; the success draw comes from ``np_random``."""
        if self._env is None:
            raise RuntimeError("MetaBanditEnv.step before reset(): call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action={action!r}: expected an arm in [0, {self.num_arms})")
        if bool(self._env.done.item()):
            return self._obs(self._env.observe()), 0.0, True, False, {}
        noise = torch.tensor([[self.np_random.random()]], dtype=torch.float64)
        obs, reward, terminated = self._env.step_with(torch.tensor([[int(action)]]), noise)
        return self._obs(obs), float(reward.item()), bool(terminated.item()), False, {}

    def render(self) -> np.ndarray | None:
        """The current frame, ``[256, 256, 3]`` uint8 (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._frame)

    def _frame(self) -> np.ndarray:
        if self._env is None:
            raise RuntimeError("MetaBanditEnv.render before reset(): call reset() first")
        return self._env.render_frame()

    @staticmethod
    def _obs(obs: torch.Tensor) -> np.ndarray:
        return obs[0, 0].numpy().astype(np.float32)


@dataclass(frozen=True)
class BanditFamilyConfig:
    """RL²'s Bernoulli bandits (``task.bandit`` in params.yaml)."""

    num_arms: int = 5
    """Arms per task, ``k`` (the paper uses 5, 10 and 50)."""
    num_pulls: int = 100
    """Pulls per trial, ``n`` (the paper uses 10, 100 and 500); one MAML episode is one trial."""

    def __post_init__(self) -> None:
        check(isinstance(self.num_arms, int) and self.num_arms >= 2, "num_arms", self.num_arms,
              "a bandit needs at least 2 arms")
        check(isinstance(self.num_pulls, int) and self.num_pulls >= 1, "num_pulls",
              self.num_pulls, "a trial needs at least 1 pull")


class BanditFamily:
    """Bernoulli bandits with arm probabilities i.i.d. U[0, 1]; a task is ``{"probs": [...]}``."""

    name: ClassVar[str] = "bandit"

    def __init__(self, config: BanditFamilyConfig) -> None:
        self.config = config
        self.max_steps = config.num_pulls

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``num_tasks`` tasks, each ``k`` probabilities drawn from U[0, 1]."""
        probs = rng.uniform(0.0, 1.0, size=(num_tasks, self.config.num_arms))
        return [{"probs": row.tolist()} for row in probs]

    def check_task(self, task: dict[str, Any]) -> None:
        """``probs``: ``num_arms`` probabilities in [0, 1]."""
        check_fields(task, ("probs",))
        probs = check_array("probs", task["probs"], (self.config.num_arms,))
        for i, p in enumerate(probs):
            check(0.0 <= p <= 1.0, f"probs[{i}]", task["probs"][i],
                  "must be a probability in [0, 1]")

    def make_env(
        self, tasks: list[dict[str, Any]], num_envs: int, device: torch.device | str = "cpu"
    ) -> BatchedBandit:
        """Batched bandit over ``tasks``; one episode is one trial of ``n`` pulls."""
        return BatchedBandit.from_tasks(tasks, num_envs, self.config.num_pulls, device=device)

    def oracle_returns(self, tasks: list[dict[str, Any]]) -> np.ndarray:
        """``n · max_i p_i``: always pulling the best arm (per trial, which is one episode)."""
        return np.array([self.config.num_pulls * max(t["probs"]) for t in tasks], dtype=float)
