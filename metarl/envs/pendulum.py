"""Pendulum swing-up with per-task mass, length and gravity: one torch implementation.

The dynamics, reward, start distribution and limits are those of gymnasium's ``Pendulum-v1``
(semi-implicit Euler, ``dt = 0.05`` s, torque clipped to ±2, angular speed to ±8 rad/s,
reward ``-(angle² + 0.1·speed² + 0.001·torque²)``, start angle uniform in ``[-π, π]`` and speed
in ``[-1, 1]``, 200 steps, never terminates); mass ``m``, length ``l`` and gravity ``g`` are
per-task tensors so a whole ``[tasks × envs]`` batch steps in one call. :class:`MetaPendulumEnv`
is the gymnasium view: the same :class:`BatchedPendulum` with a batch of one, in float64, which
reproduces ``Pendulum-v1`` step for step at its defaults (m = l = 1, g = 10).

There is no closed-form optimal return. The oracle (:class:`PendulumOracle`) is a
task-conditioned reference controller that knows ``m, l, g``: energy-pumping swing-up (bang-bang
torque that drives the pendulum's energy to that of the upright rest state) and, near the top,
the discrete-time LQR of the task's linearised dynamics with the reward's own weights. At
gymnasium's defaults it averages about -127 per episode over random starts, better than the
usual deep-RL results on ``Pendulum-v1`` (roughly -140 to -160); it is a strong reference, not a
proven optimum, so normalised scores slightly above 1 are possible.
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

DT = 0.05
MAX_SPEED = 8.0
MAX_TORQUE = 2.0


@dataclass(frozen=True)
class PendulumTask:
    """Physical parameters of one pendulum task (gymnasium's defaults)."""

    mass: float = 1.0
    """Mass of the rod, kg."""
    length: float = 1.0
    """Length of the rod, m."""
    gravity: float = 10.0
    """Gravitational acceleration, m/s²."""

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        return asdict(self)


def angle_normalize(x: torch.Tensor) -> torch.Tensor:
    """Wrap angles to ``[-π, π)`` as gymnasium does (``((x + π) mod 2π) - π``)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class BatchedPendulum(StateBatch):
    """``N`` pendulum tasks × ``E`` episodes each, stepped together.

    The state is ``(theta, theta_dot)`` with ``theta = 0`` upright; the observation is
    ``(cos theta, sin theta, theta_dot)``.

    Args:
        tasks: the ``N`` task parameter sets.
        num_envs: episodes per task, ``E``.
        max_steps: horizon (truncation; the pendulum never terminates).
        device: torch device of every tensor.
        dtype: float dtype of the state (float64 to match gymnasium exactly).

    """

    obs_dim = 3
    discrete = False
    num_actions = 0
    action_dim = 1
    action_low: tuple[float, ...] = (-MAX_TORQUE,)
    action_high: tuple[float, ...] = (MAX_TORQUE,)

    def __init__(self, tasks: Sequence[PendulumTask], num_envs: int, max_steps: int = 200,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self._init_batch(len(tasks), num_envs, 2, max_steps, device, dtype,
                         "tasks: got an empty sequence; pass at least one PendulumTask")

        def column(name: str) -> torch.Tensor:
            values = [getattr(t, name) for t in tasks]
            return torch.tensor(values, dtype=torch.float64).unsqueeze(1)

        m, length, g = column("mass"), column("length"), column("gravity")
        self.lengths = length[:, 0].tolist()
        """Each task's rod length, m (for :meth:`render_frame`)."""
        # Written as gymnasium writes them, in float64, then cast: 3g/(2l) and 3/(m l²).
        self.gravity_coef = (3 * g / (2 * length)).to(device=self.device, dtype=dtype)
        self.torque_coef = (3.0 / (m * length**2)).to(device=self.device, dtype=dtype)

    def start_states(self, generator: torch.Generator) -> torch.Tensor:
        """Angle uniform in ``[-π, π]``, speed in ``[-1, 1]``, as gymnasium draws them."""
        u = torch.rand(self.state.shape, generator=generator, dtype=self.dtype,
                       device=self.device)
        high = torch.tensor([math.pi, 1.0], dtype=self.dtype, device=self.device)
        return (u * 2 - 1) * high

    def observe(self) -> torch.Tensor:
        """``(cos theta, sin theta, theta_dot)``, ``[N, E, 3]``."""
        th, thdot = self.state.unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One semi-implicit Euler step of every slot (``actions [N, E, 1]``, clipped to ±2).

        Returns:
            ``(obs [N,E,3], reward [N,E], terminated [N,E])``; ``terminated`` is all False.

        """
        th, thdot = self.state.unbind(-1)
        u = actions[..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
        # The torque terms are computed in the action's precision, then widened: gymnasium
        # does the same (float32 actions), and the dynamics are chaotic enough that the last
        # bits matter after a hundred steps.
        torque = (self.torque_coef.to(u.dtype) * u).to(self.dtype)
        control_cost = (0.001 * u.square()).to(self.dtype)
        cost = angle_normalize(th).square() + 0.1 * thdot.square() + control_cost
        new_thdot = thdot + (self.gravity_coef * torch.sin(th) + torque) * DT
        new_thdot = new_thdot.clamp(-MAX_SPEED, MAX_SPEED)
        new_th = th + new_thdot * DT
        self.state = torch.stack((new_th, new_thdot), dim=-1)
        return self.observe(), -cost, torch.zeros_like(self.done)

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)``: the rod at its angle, as long as the task's."""
        render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        theta = float(self.state[task_index, env_index, 0])
        return render.pendulum_frame(theta, self.lengths[task_index])


class MetaPendulumEnv(gym.Env[np.ndarray, np.ndarray]):
    """Gymnasium view of one pendulum task: :class:`BatchedPendulum` with a batch of one.

    Args:
        task: physical parameters, a :class:`PendulumTask` or the family's task dict
            (``mass``, ``length``, ``gravity``); gymnasium's defaults when omitted.
        render_mode: ``"rgb_array"`` (:meth:`render` returns frames) or None.

    ``gym.make("metarl/Pendulum-v0")`` adds the 200-step ``TimeLimit`` of ``Pendulum-v1``.
    The action space is ``Pendulum-v1``'s ``[-2, 2]`` (not normalised to ``[-1, 1]``, so
    ``check_env`` recommends normalising it, exactly as it does for ``Pendulum-v1``).

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": round(1 / DT)}

    def __init__(self, task: PendulumTask | Mapping[str, float] | None = None,
                 render_mode: str | None = None) -> None:
        self.render_mode = render.check_render_mode(render_mode, "MetaPendulum")
        if isinstance(task, Mapping):
            PendulumFamily(PendulumFamilyConfig()).check_task(dict(task))
            task = PendulumTask(**task)
        self.task = task or PendulumTask()
        self._env = BatchedPendulum([self.task], num_envs=1, dtype=torch.float64)
        high = np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32)
        self.action_space = gym.spaces.Box(-MAX_TORQUE, MAX_TORQUE, shape=(1,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start state drawn from ``np_random`` exactly as ``Pendulum-v1`` draws it.

        Like ``Pendulum-v1``, ``options`` may set the bounds ``x_init`` (angle, default π) and
        ``y_init`` (speed, default 1) of the symmetric start box.
        """
        super().reset(seed=seed)
        options = options or {}
        high = np.array([float(options.get("x_init", np.pi)), float(options.get("y_init", 1.0))])
        start = self.np_random.uniform(low=-high, high=high)
        self._env.set_state(torch.from_numpy(start).view(1, 1, 2))
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step of the shared batched dynamics (the torque is clipped, as gymnasium does)."""
        a = np.asarray(action).reshape(-1)
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)
        if a.shape != (1,) or not np.isfinite(a[0]):
            raise ValueError(f"action={action!r}: expected one finite torque")
        _, reward, _ = self._env.step(torch.from_numpy(a.copy()).view(1, 1, 1))
        return self._obs(), float(reward.item()), False, False, {}

    def render(self) -> np.ndarray | None:
        """The current frame, ``[256, 256, 3]`` uint8 (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._env.render_frame)

    def _obs(self) -> np.ndarray:
        return self._env.observe()[0, 0].numpy().astype(np.float32)


def lqr_gains(gravity_coef: np.ndarray, torque_coef: np.ndarray, iterations: int = 2000
              ) -> np.ndarray:
    """Discrete-time LQR gains ``K [N, 2]`` of the upright pendulum, ``u = -K (theta, speed)``.

    The linearisation of the semi-implicit Euler step at the top (``sin theta ≈ theta``) with
    the reward's weights ``Q = diag(1, 0.1)``, ``R = 0.001``; the Riccati equation is iterated
    to its fixed point for every task at once.
    """
    a, b = gravity_coef.reshape(-1), torque_coef.reshape(-1)
    n = len(a)
    big_a = np.zeros((n, 2, 2))
    big_a[:, 0, 0] = 1 + a * DT**2
    big_a[:, 0, 1] = DT
    big_a[:, 1, 0] = a * DT
    big_a[:, 1, 1] = 1.0
    big_b = np.stack((b * DT**2, b * DT), axis=-1)[..., None]  # [N, 2, 1]
    q = np.diag([1.0, 0.1])
    r = 0.001
    p = np.broadcast_to(q, (n, 2, 2)).copy()
    at, bt = big_a.transpose(0, 2, 1), big_b.transpose(0, 2, 1)
    for _ in range(iterations):
        gain = np.linalg.solve(r + bt @ p @ big_b, bt @ p @ big_a)  # [N, 1, 2]
        p = q + at @ p @ (big_a - big_b @ gain)
    return gain[:, 0, :]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PendulumFamilyConfig:
    """Ranges of the pendulum task distribution (``task.pendulum`` in params.yaml)."""

    mass: tuple[float, float] = (0.5, 1.5)
    """Rod mass, kg, sampled uniformly in [min, max] (gymnasium: 1)."""
    length: tuple[float, float] = (0.7, 1.3)
    """Rod length, m (gymnasium: 1)."""
    gravity: tuple[float, float] = (8.0, 12.0)
    """Gravity, m/s² (gymnasium: 10)."""
    max_steps: int = 200
    """Episode horizon, steps (gymnasium: 200)."""
    oracle_episodes: int = 32
    """Start states per task over which the oracle's return is averaged (seeded, fixed)."""

    def __post_init__(self) -> None:
        for name in ("mass", "length", "gravity"):
            check_range(name, getattr(self, name), positive=True)
        check(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        check(self.oracle_episodes >= 1, "oracle_episodes", self.oracle_episodes,
              "must be >= 1")


class PendulumFamily:
    """Pendulum swing-up with varied mass, length and gravity."""

    name: ClassVar[str] = "pendulum"

    def __init__(self, config: PendulumFamilyConfig) -> None:
        self.config = config
        self.max_steps = config.max_steps

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """Uniform in every range."""
        c = self.config
        return [{name: float(rng.uniform(*getattr(c, name)))
                 for name in ("mass", "length", "gravity")} for _ in range(num_tasks)]

    def check_task(self, task: dict[str, Any]) -> None:
        """``mass``, ``length`` and ``gravity``, each > 0."""
        check_fields(task, ("mass", "length", "gravity"))
        for name, what in (("mass", "a mass, kg"), ("length", "a length, m"),
                           ("gravity", "m/s²")):
            check_number(name, task[name], positive=True, what=what)

    def make_env(
        self, tasks: list[dict[str, float]], num_envs: int, device: torch.device | str = "cpu"
    ) -> BatchedPendulum:
        """Batched pendulum over ``tasks``."""
        return BatchedPendulum([PendulumTask(**t) for t in tasks], num_envs,
                               max_steps=self.max_steps, device=device)
