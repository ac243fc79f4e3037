"""Random tabular MDPs: RL²'s second task distribution.

Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning",
https://arxiv.org/abs/1611.02779, section 3.2: ``|S| = 10`` states, ``|A| = 5`` actions; the mean
reward of every ``(s, a)`` is drawn from N(1, 1) and each observed reward adds unit Gaussian
noise; every transition row ``P(· | s, a)`` is drawn from a flat Dirichlet (all concentrations 1);
episodes last ``H = 10`` steps and a trial is ``n`` episodes of the same MDP.

Initial state: every episode starts in state 0. The paper does not say; the authors' code
(rllab ``sandbox/rocky/neural_learner``: ``RandomTabularMDPEnv`` and the bridge to Osband's
TabulaRL that produced the paper's baselines) resets to state 0, so we do the same.

For the MAML pipeline one *episode* is one episode of horizon ``H`` (one-hot state observation,
discrete action); RL²-style multi-episode trials are built from consecutive episodes.

:class:`BatchedTabularMDP` steps ``[tasks × envs]`` episodes in one call; the transition is a pure
function of (state, action, noise), :meth:`BatchedTabularMDP.step_with`, which the gymnasium view
:class:`MetaTabularMDPEnv` calls with noise drawn from its ``np_random``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from metarl.config import check, check_array, check_fields
from metarl.envs import render
from metarl.envs.base import render_view


def value_iteration(
    reward_means: torch.Tensor, transitions: torch.Tensor, horizon: int
) -> torch.Tensor:
    """Finite-horizon optimal action values by backward induction.

    Args:
        reward_means: ``[..., S, A]`` expected reward of each ``(s, a)``.
        transitions: ``[..., S, A, S]`` next-state distributions.
        horizon: episode length ``H``.

    Returns:
        ``Q [..., H, S, A]``: ``Q[..., h, s, a]`` is the expected reward-to-go of taking ``a``
        in ``s`` at step ``h`` (``H - h`` steps left) and acting optimally afterwards.

    """
    value = torch.zeros(reward_means.shape[:-1], dtype=reward_means.dtype,
                        device=reward_means.device)  # [..., S], zero steps to go
    qs = []
    for _ in range(horizon):
        q = reward_means + torch.einsum("...sat,...t->...sa", transitions, value)
        qs.append(q)
        value = q.amax(-1)
    return torch.stack(qs[::-1], dim=-3)


class BatchedTabularMDP:
    """``N`` tabular MDPs × ``E`` episodes each, stepped together.

    Args:
        reward_means: ``[N, S, A]`` mean reward of every ``(s, a)``.
        transitions: ``[N, S, A, S]`` next-state distributions (rows sum to 1).
        num_envs: episodes per task, ``E``.
        horizon: steps per episode, ``H``; the episode terminates with the ``H``-th step.
        reward_noise_std: standard deviation of the Gaussian reward noise.
        initial_state: the state every episode starts in.
        device: torch device of every tensor.
        dtype: float dtype of rewards, probabilities and observations.

    """

    discrete = True
    action_dim = 0
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()

    def __init__(
        self,
        reward_means: torch.Tensor,
        transitions: torch.Tensor,
        num_envs: int,
        horizon: int = 10,
        reward_noise_std: float = 1.0,
        initial_state: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        reward_means = torch.as_tensor(reward_means, dtype=dtype, device=device)
        transitions = torch.as_tensor(transitions, dtype=dtype, device=device)
        if reward_means.ndim != 3 or reward_means.shape[0] < 1:
            raise ValueError(f"reward_means shape {tuple(reward_means.shape)}: expected "
                             "[num_tasks, num_states, num_actions]")
        n, s, a = reward_means.shape
        if transitions.shape != (n, s, a, s):
            raise ValueError(f"transitions shape {tuple(transitions.shape)}: expected "
                             f"{(n, s, a, s)} to match reward_means")
        row_sums = transitions.sum(-1)
        if bool((transitions < 0).any()) or not torch.allclose(
                row_sums, torch.ones_like(row_sums), atol=1e-4):
            raise ValueError("transitions: every row P(.|s, a) must be non-negative and sum to 1 "
                             f"(row sums range {row_sums.min().item()}..{row_sums.max().item()})")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: must be >= 1")
        if horizon < 1:
            raise ValueError(f"horizon={horizon}: must be >= 1")
        if not 0 <= initial_state < s:
            raise ValueError(f"initial_state={initial_state}: expected a state in [0, {s})")
        self.reward_means = reward_means
        self.transitions = transitions
        self.cdf = transitions.cumsum(-1)
        self.num_tasks, self.num_states, self.num_actions = n, s, a
        self.obs_dim = s
        self.num_envs = num_envs
        self.max_steps = horizon
        self.reward_noise_std = float(reward_noise_std)
        self.initial_state = initial_state
        self.device = reward_means.device
        self.dtype = dtype
        self.state = torch.full((n, num_envs), initial_state, dtype=torch.long,
                                device=self.device)
        self.t = torch.zeros(n, num_envs, dtype=torch.long, device=self.device)
        self.done = torch.ones(n, num_envs, dtype=torch.bool, device=self.device)
        self.watched = False
        """Whether :meth:`render_frame` has been called: the history a frame draws is kept
        from then on only, so envs nobody watches step at full speed."""
        self.visits = torch.zeros(n, num_envs, s, dtype=torch.long, device=self.device)
        """``[N, E, S]``: how often each slot's episode has been in each state (start included)."""
        self.choices = torch.zeros(n, num_envs, s, a, dtype=torch.long, device=self.device)
        """``[N, E, S, A]``: how often each slot's episode has taken each action in each state."""
        self._rows = torch.arange(n, device=self.device).unsqueeze(1).expand(n, num_envs)
        self._generator: torch.Generator | None = None

    @classmethod
    def from_tasks(
        cls, tasks: Sequence[Mapping[str, Any]], num_envs: int, horizon: int = 10,
        reward_noise_std: float = 1.0, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> BatchedTabularMDP:
        """Build from task dicts ``{"reward_means": S×A, "transitions": S×A×S}`` (nested lists)."""
        if not tasks:
            raise ValueError("tasks: got an empty sequence; pass at least one MDP task")
        reward_means = torch.tensor([t["reward_means"] for t in tasks], dtype=dtype)
        transitions = torch.tensor([t["transitions"] for t in tasks], dtype=dtype)
        return cls(reward_means, transitions, num_envs, horizon, reward_noise_std,
                   device=device, dtype=dtype)

    def observe(self) -> torch.Tensor:
        """``[N, E, S]``: one-hot current state."""
        return F.one_hot(self.state, self.num_states).to(self.dtype)

    def restart(self) -> torch.Tensor:
        """Start a new episode in every slot, in the initial state; return obs."""
        self.state = torch.full_like(self.state, self.initial_state)
        self.t = torch.zeros_like(self.t)
        self.done = torch.zeros_like(self.done)
        self._restart_counts(torch.ones_like(self.done))
        return self.observe()

    def _restart_counts(self, slots: torch.Tensor) -> None:
        """Zero the visit and choice counts of ``slots`` and count their (start) state."""
        if not self.watched:
            return
        self.visits = torch.where(slots.unsqueeze(-1), 0, self.visits)
        self.choices = torch.where(slots.view(*slots.shape, 1, 1), 0, self.choices)
        self.visits.scatter_add_(2, self.state.unsqueeze(-1), slots.long().unsqueeze(-1))

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Start every slot anew; later steps draw their noise from ``generator``."""
        self._generator = generator
        return self.restart()

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Start a new episode in the slots that ended (auto-reset); return obs."""
        if ended is not None:  # slots the caller ends too (a time limit)
            self.done = self.done | ended
        self._generator = generator
        self.state = torch.where(self.done, self.initial_state, self.state)
        self.t = torch.where(self.done, 0, self.t)
        self._restart_counts(self.done)
        self.done = torch.zeros_like(self.done)
        return self.observe()

    def sample_noise(self, generator: torch.Generator) -> torch.Tensor:
        """The randomness of one step, ``[N, E, 2]``: reward noise and next-state draw.

        Per slot a standard normal (scaled by ``reward_noise_std``) and a uniform in ``[0, 1)``.
        """
        shape = (self.num_tasks, self.num_envs)
        z = torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)
        u = torch.rand(shape, generator=generator, dtype=self.dtype, device=self.device)
        return torch.stack((z, u), dim=-1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take ``actions [N, E]`` in every slot, with noise from the reset's generator."""
        if self._generator is None:
            raise RuntimeError("BatchedTabularMDP.step before reset(generator): reset first")
        return self.step_with(actions, self.sample_noise(self._generator))

    def mean_reward(self, actions: torch.Tensor) -> torch.Tensor:
        """Expected reward of taking ``actions [N, E]`` now: ``mean[s, a]`` in every slot.

        0 in slots whose episode has ended (as :meth:`step_with` pays there).
        """
        actions = actions.to(device=self.device, dtype=torch.long)
        return torch.where(self.done, 0.0, self.reward_means[self._rows, self.state, actions])

    def step_with(
        self, actions: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transition as a pure function of state, ``actions [N, E]`` and ``noise``.

        The reward is ``mean[s, a] + reward_noise_std · noise[..., 0]``; the next state is the
        smallest ``s'`` with ``noise[..., 1] < CDF(s' | s, a)`` (inverse-CDF sampling). Slots
        whose episode already ended are left as they are and get reward 0.

        Returns:
            ``(obs [N, E, S], reward [N, E], terminated [N, E])``; ``terminated`` is True only on
            the ``H``-th step.

        """
        actions = actions.to(device=self.device, dtype=torch.long)
        mean = self.mean_reward(actions)
        cdf = self.cdf[self._rows, self.state, actions]  # [N, E, S]
        next_state = (noise[..., 1:2] >= cdf).sum(-1).clamp_(max=self.num_states - 1)
        live = ~self.done
        reward = torch.where(live, mean + self.reward_noise_std * noise[..., 0], 0.0)
        counted = live.long().unsqueeze(-1)
        if self.watched:
            self.choices.view(*live.shape, -1).scatter_add_(
                2, (self.state * self.num_actions + actions).unsqueeze(-1), counted)
        self.state = torch.where(live, next_state, self.state)
        if self.watched:
            self.visits.scatter_add_(2, self.state.unsqueeze(-1), counted)
        self.t = self.t + live.long()
        terminated = live & (self.t >= self.max_steps)
        self.done = self.done | terminated
        return self.observe(), reward, terminated

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)``: visits and choices this episode, as charts."""
        render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        if not self.watched:  # counted from now on, this episode's start state included
            self.watched = True
            self._restart_counts(torch.ones_like(self.done))
        return render.tabular_mdp_frame(self.visits[task_index, env_index].tolist(),
                                        self.choices[task_index, env_index].cpu().numpy(),
                                        int(self.state[task_index, env_index]))


class MetaTabularMDPEnv(gym.Env[np.ndarray, int]):
    """Gymnasium view of one episode: :class:`BatchedTabularMDP` with a batch of one.

    Args:
        task: ``{"reward_means": ..., "transitions": ...}``, a fixed MDP. When omitted, every
            :meth:`reset` draws a new MDP from the family's prior with ``np_random``, so the
            registered ``metarl/TabularMDP-v0`` is the task distribution itself.
        num_states, num_actions: sizes when ``task`` is omitted.
        horizon: steps per episode; the episode terminates after the last one (so
            ``gym.make("metarl/TabularMDP-v0")`` needs no ``TimeLimit``: its horizon is this).
        render_mode: ``"rgb_array"`` (:meth:`render` returns frames) or None.

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": 4}

    def __init__(self, task: Mapping[str, Any] | None = None, num_states: int = 10,
                 num_actions: int = 5, horizon: int = 10,
                 render_mode: str | None = None) -> None:
        self.render_mode = render.check_render_mode(render_mode, "MetaTabularMDP")
        if task is not None:
            num_states, num_actions = np.shape(task["reward_means"])
        self.config = TabularMDPFamilyConfig(num_states=num_states, num_actions=num_actions,
                                             horizon=horizon)
        self.family = TabularMDPFamily(self.config)
        self.task = dict(task) if task is not None else None
        self.action_space = gym.spaces.Discrete(num_actions)  # type: ignore[assignment]
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(num_states,), dtype=np.float32)
        self._env: BatchedTabularMDP | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode in state 0 (of a freshly drawn MDP unless the env was given one)."""
        super().reset(seed=seed)
        task = self.task if self.task is not None else self.family.sample(1, self.np_random)[0]
        if self._env is None or self.task is None:
            self._env = BatchedTabularMDP.from_tasks(
                [task], 1, self.config.horizon, self.config.reward_noise_std, dtype=torch.float64)
        return self._obs(self._env.restart()), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take ``action``; reward noise and the next state are drawn from ``np_random``."""
        if self._env is None:
            raise RuntimeError("MetaTabularMDPEnv.step before reset(): call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action={action!r}: expected an action in "
                             f"[0, {self.config.num_actions})")
        if bool(self._env.done.item()):
            return self._obs(self._env.observe()), 0.0, True, False, {}
        noise = torch.tensor([[[self.np_random.standard_normal(), self.np_random.random()]]],
                             dtype=torch.float64)
        obs, reward, terminated = self._env.step_with(torch.tensor([[int(action)]]), noise)
        return (self._obs(obs), float(reward.item()), bool(terminated.item()), False,
                {"state": int(self._env.state.item())})

    def render(self) -> np.ndarray | None:
        """The current frame, ``[256, 256, 3]`` uint8 (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._frame)

    def _frame(self) -> np.ndarray:
        if self._env is None:
            raise RuntimeError("MetaTabularMDPEnv.render before reset(): call reset() first")
        return self._env.render_frame()

    @staticmethod
    def _obs(obs: torch.Tensor) -> np.ndarray:
        return obs[0, 0].numpy().astype(np.float32)


@dataclass(frozen=True)
class TabularMDPFamilyConfig:
    """RL²'s random tabular MDPs (``task.tabular_mdp`` in params.yaml)."""

    num_states: int = 10
    """States, ``|S|``; episodes start in state 0."""
    num_actions: int = 5
    """Actions, ``|A|``."""
    horizon: int = 10
    """Steps per episode, ``H``; one MAML episode is one such episode."""
    num_episodes: int = 10
    """Episodes per trial, ``n`` (the paper uses 10, 25, 50, 75 and 100)."""
    reward_mean: float = 1.0
    """Mean of the Gaussian prior over each ``(s, a)``'s mean reward."""
    reward_mean_std: float = 1.0
    """Standard deviation of that prior."""
    reward_noise_std: float = 1.0
    """Standard deviation of the Gaussian noise on every observed reward."""
    dirichlet_alpha: float = 1.0
    """Concentration of the symmetric Dirichlet over each transition row (1: flat)."""

    def __post_init__(self) -> None:
        for name, low in (("num_states", 1), ("num_actions", 2), ("horizon", 1),
                          ("num_episodes", 1)):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= low, name, value, f"must be >= {low}")
        check(self.reward_mean_std >= 0, "reward_mean_std", self.reward_mean_std, "must be >= 0")
        check(self.reward_noise_std >= 0, "reward_noise_std", self.reward_noise_std,
              "must be >= 0")
        check(self.dirichlet_alpha > 0, "dirichlet_alpha", self.dirichlet_alpha, "must be > 0")


ROW_SUM_TOLERANCE = 1e-6
"""How far a task's transition row may sum from 1 (JSON round trips are exact; hand edits)."""


class TabularMDPFamily:
    """Random MDPs; a task is ``{"reward_means": S×A, "transitions": S×A×S}`` (nested lists)."""

    name: ClassVar[str] = "tabular_mdp"

    def __init__(self, config: TabularMDPFamilyConfig) -> None:
        self.config = config
        self.max_steps = config.horizon

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Mean rewards ~ N(reward_mean, reward_mean_std²); rows ~ Dirichlet(dirichlet_alpha)."""
        c = self.config
        shape = (num_tasks, c.num_states, c.num_actions)
        means = rng.normal(c.reward_mean, c.reward_mean_std, size=shape)
        rows = rng.dirichlet(np.full(c.num_states, c.dirichlet_alpha), size=shape)
        return [{"reward_means": m.tolist(), "transitions": p.tolist()}
                for m, p in zip(means, rows, strict=True)]

    def check_task(self, task: dict[str, Any]) -> None:
        """``reward_means`` S×A finite; ``transitions`` S×A×S, rows distributions (± 1e-6)."""
        c = self.config
        check_fields(task, ("reward_means", "transitions"))
        check_array("reward_means", task["reward_means"], (c.num_states, c.num_actions))
        transitions = check_array("transitions", task["transitions"],
                                  (c.num_states, c.num_actions, c.num_states))
        for s, a in np.ndindex(c.num_states, c.num_actions):
            row = transitions[s, a]
            key, value = f"transitions[{s}][{a}]", task["transitions"][s][a]
            check(bool((row >= 0).all()), key, value,
                  "a transition row must be non-negative (probabilities of the next state)")
            check(abs(row.sum() - 1.0) <= ROW_SUM_TOLERANCE, key, value,
                  f"a transition row must sum to 1 (± {ROW_SUM_TOLERANCE:g}), "
                  f"this one sums to {row.sum():.9g}")

    def make_env(
        self, tasks: list[dict[str, Any]], num_envs: int, device: torch.device | str = "cpu"
    ) -> BatchedTabularMDP:
        """Batched MDPs over ``tasks``; one episode is ``horizon`` steps from state 0."""
        return BatchedTabularMDP.from_tasks(tasks, num_envs, self.config.horizon,
                                            self.config.reward_noise_std, device=device)

    def oracle_returns(self, tasks: list[dict[str, Any]]) -> np.ndarray:
        """Optimal expected return of one episode from state 0 (value iteration on the true MDP).

        This is per *episode*, the unit the MAML pipeline rolls out and normalises; the
        optimum of a trial of ``num_episodes`` episodes is ``num_episodes`` times it
        (:meth:`trial_oracle_returns`), since every episode restarts in state 0.
        """
        reward_means = torch.tensor([t["reward_means"] for t in tasks], dtype=torch.float64)
        transitions = torch.tensor([t["transitions"] for t in tasks], dtype=torch.float64)
        q = value_iteration(reward_means, transitions, self.config.horizon)
        return q[:, 0, 0].amax(-1).numpy()

    def trial_oracle_returns(self, tasks: list[dict[str, Any]]) -> np.ndarray:
        """Optimal expected return of a whole trial, ``num_episodes ·`` :meth:`oracle_returns`."""
        return self.config.num_episodes * self.oracle_returns(tasks)
