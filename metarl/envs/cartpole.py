"""CartPole with per-task physics: one torch implementation for batches and for gymnasium.

The dynamics are those of gymnasium's ``CartPole-v1`` (Barto, Sutton & Anderson 1983, Euler
integration, tau = 0.02 s); every physical constant is a per-task tensor so a whole
``[tasks × envs]`` batch steps in one call. :class:`MetaCartPoleEnv` is the gymnasium view: the
same :class:`BatchedCartPole` with a batch of one, in float64, which reproduces ``CartPole-v1``
step for step at its default parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from metarl.config import check, check_fields, check_number, check_range
from metarl.envs import render
from metarl.envs.base import StateBatch, render_view

TAU = 0.02
X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * math.pi / 360


@dataclass(frozen=True)
class CartPoleTask:
    """Physical parameters of one CartPole task (gymnasium's defaults)."""

    pole_length: float = 0.5
    """Half the pole's length, m (gymnasium's ``length``)."""
    pole_mass: float = 0.1
    """Pole mass, kg."""
    cart_mass: float = 1.0
    """Cart mass, kg."""
    gravity: float = 9.8
    """Gravitational acceleration, m/s²."""
    force_mag: float = 10.0
    """Force applied by action 1, N; action 0 applies the opposite. Negative flips the controls."""

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return asdict(self)


class BatchedCartPole(StateBatch):
    """``N`` CartPole tasks × ``E`` episodes each, stepped together.

    Args:
        tasks: the ``N`` task parameter sets.
        num_envs: episodes per task, ``E``.
        max_steps: horizon; reaching it truncates the episode (not a termination).
        device: torch device of every tensor.
        dtype: float dtype of the state (float32 for speed, float64 to match gymnasium exactly).

    """

    obs_dim = 4
    discrete = True
    num_actions = 2
    action_dim = 0
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()

    def __init__(
        self,
        tasks: Sequence[CartPoleTask],
        num_envs: int,
        max_steps: int = 500,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._init_batch(len(tasks), num_envs, 4, max_steps, device, dtype,
                         "tasks: got an empty sequence; pass at least one CartPoleTask")

        def column(name: str) -> torch.Tensor:
            values = [getattr(t, name) for t in tasks]
            return torch.tensor(values, dtype=dtype, device=self.device).unsqueeze(1)

        self.gravity = column("gravity")
        self.pole_mass = column("pole_mass")
        self.length = column("pole_length")
        self.force_mag = column("force_mag")
        self.total_mass = self.pole_mass + column("cart_mass")
        self.polemass_length = self.pole_mass * self.length

    def start_states(self, generator: torch.Generator) -> torch.Tensor:
        """Start states uniform in ``[-0.05, 0.05]^4``, as gymnasium draws them."""
        u = torch.rand(self.state.shape, generator=generator, dtype=self.dtype,
                       device=self.device)
        return u * 0.1 - 0.05

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Euler step of every slot; slots already terminated are left as they are.

        Returns:
            ``(obs [N,E,4], reward [N,E], terminated [N,E])``. The reward is 1 for each step
            taken by a live slot (including the terminating one, as in gymnasium) and 0 after.

        """
        x, x_dot, theta, theta_dot = self.state.unbind(-1)
        force = torch.where(actions == 1, self.force_mag, -self.force_mag)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.pole_mass * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        new_state = torch.stack(
            (x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot,
             theta_dot + TAU * thetaacc),
            dim=-1,
        )
        live = ~self.done
        self.state = torch.where(live.unsqueeze(-1), new_state, self.state)
        x, theta = self.state[..., 0], self.state[..., 2]
        terminated = (x.abs() > X_THRESHOLD) | (theta.abs() > THETA_THRESHOLD)
        reward = live.to(self.dtype)
        self.done = self.done | terminated
        return self.state, reward, terminated & live

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)``: track, cart, pole (:func:`render.cartpole_frame`)."""
        render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        x, _, theta, _ = self.state[task_index, env_index].tolist()
        return render.cartpole_frame(x, theta, float(self.length[task_index, 0]),
                                     float(self.force_mag[task_index, 0]), X_THRESHOLD)


class MetaCartPoleEnv(gym.Env[np.ndarray, int]):
    """Gymnasium view of one CartPole task: :class:`BatchedCartPole` with a batch of one.

    Args:
        task: physical parameters, a :class:`CartPoleTask` or the family's task dict (the five
            fields); gymnasium's defaults when omitted.
        render_mode: ``"rgb_array"`` (:meth:`render` returns frames) or None.

    The horizon is not enforced here: ``gym.make("metarl/CartPole-v1")`` wraps it in the
    family's 200-step ``TimeLimit`` (``metarl/CartPole-v0``: 500 steps, as ``CartPole-v1``).

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": round(1 / TAU)}

    def __init__(self, task: CartPoleTask | Mapping[str, float] | None = None,
                 render_mode: str | None = None) -> None:
        self.render_mode = render.check_render_mode(render_mode, "MetaCartPole")
        if isinstance(task, Mapping):
            CartPoleFamily(CartPoleFamilyConfig()).check_task(dict(task))
            task = CartPoleTask(**task)
        self.task = task or CartPoleTask()
        self._env = BatchedCartPole([self.task], num_envs=1, dtype=torch.float64)
        high = np.array(
            [X_THRESHOLD * 2, np.finfo(np.float32).max, THETA_THRESHOLD * 2,
             np.finfo(np.float32).max],
            dtype=np.float32,
        )
        self.action_space = gym.spaces.Discrete(2)  # type: ignore[assignment]
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self._terminated = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start state uniform in ``[-0.05, 0.05]^4`` drawn from ``np_random``."""
        super().reset(seed=seed)
        start = self.np_random.uniform(low=-0.05, high=0.05, size=(4,))
        self._env.set_state(torch.from_numpy(start).view(1, 1, 4))
        self._terminated = False
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step of the shared batched dynamics."""
        if not self.action_space.contains(action):
            raise ValueError(f"action={action!r}: expected 0 or 1")
        # The physics keeps evolving after termination, as gymnasium's CartPole does.
        self._env.done.zero_()
        _, _, terminated = self._env.step(torch.tensor([[int(action)]]))
        if self._terminated:
            return self._obs(), 0.0, True, False, {}  # gymnasium gives 0 past termination
        self._terminated = bool(terminated.item())
        return self._obs(), 1.0, self._terminated, False, {}

    def render(self) -> np.ndarray | None:
        """The current frame, ``[256, 256, 3]`` uint8 (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._env.render_frame)

    def _obs(self) -> np.ndarray:
        return self._env.state[0, 0].numpy().astype(np.float32)


@dataclass(frozen=True)
class CartPoleFamilyConfig:
    """Ranges of the CartPole task distribution (``task.cartpole`` in params.yaml)."""

    pole_length: tuple[float, float] = (0.25, 1.0)
    """Half-length of the pole, m, sampled uniformly in [min, max]."""
    pole_mass: tuple[float, float] = (0.05, 0.5)
    """Pole mass, kg."""
    cart_mass: tuple[float, float] = (0.5, 2.0)
    """Cart mass, kg."""
    gravity: tuple[float, float] = (8.0, 12.0)
    """Gravity, m/s²."""
    force_mag: tuple[float, float] = (5.0, 15.0)
    """Magnitude of the push, N."""
    force_flip_prob: float = 0.5
    """Probability that a task's controls are reversed (action 1 pushes left)."""
    max_steps: int = 200
    """Episode horizon, steps; the best possible return equals it."""

    def __post_init__(self) -> None:
        for name in ("pole_length", "pole_mass", "cart_mass", "gravity", "force_mag"):
            check_range(name, getattr(self, name), positive=True)
        check(0.0 <= self.force_flip_prob <= 1.0, "force_flip_prob", self.force_flip_prob,
              "must be a probability in [0, 1]")
        check(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")


_CARTPOLE_FIELDS = ("pole_length", "pole_mass", "cart_mass", "gravity", "force_mag")


class CartPoleFamily:
    """CartPole tasks with varied physics and, with some probability, reversed controls."""

    name: ClassVar[str] = "cartpole"

    def __init__(self, config: CartPoleFamilyConfig) -> None:
        self.config = config
        self.max_steps = config.max_steps

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """Uniform in every range; the force's sign flips with ``force_flip_prob``."""
        c = self.config
        tasks = []
        for _ in range(num_tasks):
            values = {name: float(rng.uniform(*getattr(c, name))) for name in _CARTPOLE_FIELDS}
            if rng.random() < c.force_flip_prob:
                values["force_mag"] = -values["force_mag"]
            tasks.append(values)
        return tasks

    def check_task(self, task: dict[str, Any]) -> None:
        """The five fields; lengths, masses and gravity > 0, the force non-zero (any sign)."""
        check_fields(task, _CARTPOLE_FIELDS)
        for name, what in (("pole_length", "half the pole's length, m"),
                           ("pole_mass", "a mass, kg"), ("cart_mass", "a mass, kg"),
                           ("gravity", "m/s²")):
            check_number(name, task[name], positive=True, what=what)
        force = check_number("force_mag", task["force_mag"], what="the push, N")
        check(force != 0, "force_mag", task["force_mag"],
              "must be non-zero (the push, N; negative reverses the controls)")

    def make_env(
        self, tasks: list[dict[str, float]], num_envs: int, device: torch.device | str = "cpu"
    ) -> BatchedCartPole:
        """Batched CartPole over ``tasks``."""
        return BatchedCartPole([CartPoleTask(**t) for t in tasks], num_envs,
                               max_steps=self.max_steps, device=device)

    def oracle_returns(self, tasks: list[dict[str, float]]) -> np.ndarray:
        """The horizon: every task can be balanced for the whole episode."""
        return np.full(len(tasks), float(self.max_steps))
