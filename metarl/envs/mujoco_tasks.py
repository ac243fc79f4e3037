"""The MuJoCo locomotion tasks of MAML and PEARL, through gymnasium's MuJoCo envs.

Three families, each a batch of ``N`` tasks × ``E`` episodes stepped in one call by a
gymnasium :class:`~gymnasium.vector.SyncVectorEnv` over ``N·E`` copies of the base env
(``HalfCheetah-v5`` or ``Ant-v5``); actions and observations cross as torch tensors. The base
env's own reward is ignored: every step's reward is recomputed for the slot's task from the
step's ``info`` (velocities and the cost terms gymnasium reports), as in the references.

* ``cheetah_vel`` — Finn et al. (2017, MAML) section 5.3 / Rakelly et al. (2019, PEARL)
  ``half_cheetah_vel``: a target forward velocity ``v_goal ~ U[0, 2]`` (MAML's range; PEARL's
  is ``[0, 3]``). Reward ``-|v_x - v_goal| - 0.05·|a|²``, PEARL's exact constants
  (``forward_reward = -1.0 * abs(forward_vel - goal_velocity)``,
  ``ctrl_cost = 0.5 * 1e-1 * sum(a²)``, ``forward_vel = Δx / dt``); gymnasium's ``x_velocity``
  is that same ``Δx / dt`` of the root.
* ``cheetah_dir`` — MAML's forward/backward cheetah: direction ``d = ±1`` with probability
  1/2 each; reward ``d·v_x - 0.05·|a|²`` (PEARL's ``half_cheetah_dir`` has the same terms).
* ``ant_dir`` — PEARL's ``ant_dir``: reward ``(cos θ, sin θ)·(v_x, v_y) - 0.5·|a|²
  - 5e-4·|clip(cfrc_ext, -1, 1)|² + 1`` (survive), the episode ending when the torso leaves
  ``z ∈ [0.2, 1.0]``; these are also ``Ant-v5``'s own weights, so the cost terms are taken
  from ``info``. The direction follows PEARL's ``forward_backward`` setting (its published
  ant-dir experiments): ``θ ∈ {0, π}`` with probability 1/2 each, i.e. ±x like MAML's
  ant-direction task; ``directions: circle`` draws ``θ ~ U[0, 2π)`` instead (PEARL's other
  setting). The task dict stores ``angle`` (radians) either way.

Observations are the gymnasium ones (``HalfCheetah-v5``: 17 values; ``Ant-v5``: 105 with the
contact forces, 27 without), cast to float32. Actions are clipped to the base env's box
(``[-1, 1]`` per joint) before stepping, and the control cost is computed from the clipped
action. The horizon is 200 steps by default (MAML and PEARL), configurable.

Seeding: :meth:`BatchedGymMuJoCo.reset` draws one integer seed per slot from the torch
generator and passes it to the sub-env's ``reset(seed=...)``, so the same generator state gives
the same start states and, with the same actions, the same rollout.

Oracle: no task-conditioned reference policy exists cheaply for these tasks (a per-task
trained expert would be needed), so :meth:`oracle_returns` returns NaN for every task and the
evaluate stage reports raw returns with null normalised scores.

MuJoCo is an optional dependency (``pip install -e ".[mujoco]"``): without it, building one of
these families raises a :class:`~metarl.config.ConfigError` naming ``task.family``.

Gymnasium: :class:`MetaMuJoCoEnv` is one task of a family as a gymnasium env (the batched env
with a batch of one), registered as ``metarl/CheetahVel-v0``, ``metarl/CheetahDir-v0`` and
``metarl/AntDir-v0`` where MuJoCo is installed. Frames (:func:`render_mujoco`) come from
gymnasium's MuJoCo renderer, which needs an OpenGL backend: ``MUJOCO_GL=egl`` (or ``osmesa``)
where there is no display.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch

from metarl.config import ConfigError, check, check_fields, check_number, check_range
from metarl.envs import render
from metarl.envs.base import render_view

DEFAULT_MAX_STEPS = 200
"""MAML's and PEARL's horizon for these tasks."""

Info = dict[str, Any]
RewardFn = Callable[[Info, np.ndarray], np.ndarray]
"""Maps the vector env's ``info`` and a per-slot task parameter array to rewards ``[N·E]``."""


def require_mujoco(family: str) -> None:
    """Raise :class:`ConfigError` on ``task.family`` unless gymnasium's MuJoCo envs import."""
    try:
        importlib.import_module("mujoco")
        importlib.import_module("gymnasium.envs.mujoco")
    except ImportError as err:
        raise ConfigError(
            "task.family", family,
            f"needs MuJoCo, which is not importable ({err}); install it with "
            "`pip install -e \".[mujoco]\"` (or `pip install \"gymnasium[mujoco]\"`), "
            "or choose a torch family (cartpole, nav2d, pendulum, bandit, tabular_mdp)",
        ) from None


def velocity_reward(info: Info, goal_velocity: np.ndarray) -> np.ndarray:
    """``-|v_x - v_goal|`` plus gymnasium's (negative) control-cost term."""
    vx = np.asarray(info["x_velocity"], dtype=np.float64)
    return -np.abs(vx - goal_velocity) + np.asarray(info["reward_ctrl"], dtype=np.float64)


def direction_reward(info: Info, direction: np.ndarray) -> np.ndarray:
    """``d·v_x`` plus the control-cost term."""
    vx = np.asarray(info["x_velocity"], dtype=np.float64)
    return direction * vx + np.asarray(info["reward_ctrl"], dtype=np.float64)


def ant_direction_reward(info: Info, angle: np.ndarray) -> np.ndarray:
    """``(cos θ, sin θ)·(v_x, v_y)`` plus the control, contact and survive terms."""
    vx = np.asarray(info["x_velocity"], dtype=np.float64)
    vy = np.asarray(info["y_velocity"], dtype=np.float64)
    rest = sum(np.asarray(info[k], dtype=np.float64)
               for k in ("reward_ctrl", "reward_contact", "reward_survive"))
    return np.cos(angle) * vx + np.sin(angle) * vy + rest


class MuJoCoRenderError(RuntimeError):
    """MuJoCo could not draw a frame: no usable OpenGL backend (see :func:`render_mujoco`)."""


def render_mujoco(env: Any) -> np.ndarray:
    """An ``rgb_array`` frame of a gymnasium MuJoCo env (Meta-World's envs are ones too).

    Uses the env's own ``mujoco_renderer`` whatever its ``render_mode``, so batched envs built
    without one render as well.

    Raises:
        MuJoCoRenderError: no OpenGL context could be made (``MUJOCO_GL`` unset without a
            display, or set to a backend whose library is missing); the message says how to fix.

    """
    renderer = env.unwrapped.mujoco_renderer
    try:
        frame = renderer.render("rgb_array")
    except Exception as err:  # the GL backends raise FatalError, RuntimeError, EGLError...
        backend = os.environ.get("MUJOCO_GL")
        raise MuJoCoRenderError(
            f"MuJoCo could not render a frame with MUJOCO_GL={backend!r} "
            f"({type(err).__name__}: {err}). MuJoCo draws offscreen through the OpenGL backend "
            "the MUJOCO_GL environment variable names, set before Python starts: "
            "MUJOCO_GL=egl (a GPU's EGL driver, or Mesa's libegl1 for software rendering) or "
            "MUJOCO_GL=osmesa (Mesa's libosmesa6); the default, glfw, needs a display"
        ) from err
    return np.ascontiguousarray(frame, dtype=np.uint8)


class BatchedGymMuJoCo:
    """``N`` tasks × ``E`` episodes of a gymnasium MuJoCo env, stepped together.

    Args:
        env_id: the base env, e.g. ``HalfCheetah-v5``.
        env_kwargs: keyword arguments of ``gym.make`` (cost weights and so on).
        task_values: ``[N]`` the task parameter each slot's reward uses.
        reward_fn: the per-task reward from ``info`` (see :data:`RewardFn`).
        num_envs: episodes per task, ``E``.
        max_steps: horizon (truncation).
        device: torch device of the returned tensors.

    There is no auto-reset: an episode that terminated (the ant falling) keeps its last
    observation and gets zero reward until :meth:`reset` or :meth:`reset_done`.

    """

    discrete = False
    num_actions = 0

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], task_values: np.ndarray,
                 reward_fn: RewardFn, num_envs: int, max_steps: int = DEFAULT_MAX_STEPS,
                 device: torch.device | str = "cpu") -> None:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        values = np.asarray(task_values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            raise ValueError("tasks: got none; pass at least one task")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: must be >= 1")
        self.num_tasks = int(values.size)
        self.num_envs = num_envs
        self.max_steps = max_steps
        self.device = torch.device(device)
        self.reward_fn = reward_fn
        self.slot_values = np.repeat(values, num_envs)  # [N·E], task-major like the batch

        def make() -> Any:
            return gym.make(env_id, max_episode_steps=max_steps, disable_env_checker=True,
                            **env_kwargs)

        self.vec = SyncVectorEnv([make] * (self.num_tasks * num_envs),
                                 autoreset_mode=AutoresetMode.DISABLED)
        space = self.vec.single_action_space
        self.low = np.asarray(space.low, dtype=np.float64)  # type: ignore[attr-defined]
        self.high = np.asarray(space.high, dtype=np.float64)  # type: ignore[attr-defined]
        self.action_dim = int(self.low.size)
        self.action_low: tuple[float, ...] = tuple(float(v) for v in self.low)
        self.action_high: tuple[float, ...] = tuple(float(v) for v in self.high)
        self.obs_dim = int(np.prod(self.vec.single_observation_space.shape or (0,)))
        self.obs = torch.zeros(self.num_tasks, num_envs, self.obs_dim, device=self.device)
        self.done = torch.ones(self.num_tasks, num_envs, dtype=torch.bool, device=self.device)

    def _seeds(self, generator: torch.Generator) -> list[int | None]:
        seeds = torch.randint(0, 2**31 - 1, (self.num_tasks * self.num_envs,),
                              generator=generator, device=generator.device)
        return [int(s) for s in seeds.tolist()]  # one reset seed per slot, task-major

    def _to_torch(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32)).to(self.device).view(
            self.num_tasks, self.num_envs, self.obs_dim)

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Reset every slot with a seed drawn from ``generator``; return the observations."""
        obs, _ = self.vec.reset(seed=self._seeds(generator))
        self.obs = self._to_torch(obs)
        self.done = torch.zeros_like(self.done)
        return self.obs

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Reset the ended slots only; return the observations.

        Seeds are drawn for every slot, so the generator's use does not depend on which ended.
        """
        if ended is not None:  # slots the caller ends too (a time limit)
            self.done = self.done | ended
        seeds = self._seeds(generator)
        mask = self.done.reshape(-1).cpu().numpy().astype(np.bool_)
        if mask.any():
            obs, _ = self.vec.reset(seed=seeds, options={"reset_mask": mask})  # type: ignore[arg-type]
            fresh = self._to_torch(obs)
            self.obs = torch.where(self.done.unsqueeze(-1), fresh, self.obs)
        self.done = torch.zeros_like(self.done)
        return self.obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step every slot with its clipped action ``[N, E, action_dim]``.

        Returns:
            ``(obs [N,E,obs_dim], reward [N,E], terminated [N,E])``: the task's reward
            recomputed from ``info``, 0 for slots already terminated.

        """
        a = actions.detach().to("cpu", torch.float64).reshape(-1, self.action_dim).numpy()
        a = np.clip(a, self.low, self.high).astype(np.float32)
        live = ~self.done
        # The live sub-envs only, one by one (as SyncVectorEnv does): stepping an ended one
        # would trip the vector env's autoreset assertion, and the gymnasium view may run past
        # the sub-envs' own TimeLimit.
        flat_live = live.reshape(-1).cpu().tolist()
        obs = self.obs.reshape(-1, self.obs_dim).cpu().numpy().copy()
        reward = np.zeros(len(flat_live))
        terminated = np.zeros(len(flat_live), dtype=np.bool_)
        for i, env in enumerate(self.vec.envs):
            if flat_live[i]:
                obs[i], _, terminated[i], _, info = env.step(a[i])
                reward[i] = np.asarray(self.reward_fn(info, self.slot_values[i:i + 1])).item()
        shape = (self.num_tasks, self.num_envs)
        self.obs = self._to_torch(obs)
        term_t = torch.as_tensor(terminated).to(self.device).view(shape)
        self.done = self.done | term_t
        return self.obs, torch.as_tensor(reward, dtype=torch.float32).to(self.device).view(
            shape), term_t

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)`` drawn by MuJoCo (:func:`render_mujoco`)."""
        slot = render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        return render_mujoco(self.vec.envs[slot])

    def close(self) -> None:
        """Close the sub-envs (and their renderers)."""
        self.vec.close()


@dataclass(frozen=True)
class MuJoCoBase:
    """What a family builds its envs from: the base env, its arguments, the task's reward."""

    env_id: str
    """Gymnasium id of the base env, e.g. ``HalfCheetah-v5``."""
    reward_fn: RewardFn
    """The task's reward from the step's ``info``."""
    task_key: str
    """The task dict's one field, the value ``reward_fn`` reads (``velocity``, ...)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``gym.make`` (cost weights and so on)."""

    def make_env(self, tasks: list[dict[str, float]], num_envs: int, max_steps: int,
                 device: torch.device | str = "cpu") -> BatchedGymMuJoCo:
        """Base-env copies, each rewarded for its task."""
        return BatchedGymMuJoCo(self.env_id, self.env_kwargs,
                                np.array([t[self.task_key] for t in tasks]), self.reward_fn,
                                num_envs, max_steps, device)


def _check_common(max_steps: int, ctrl_cost_weight: float) -> None:
    check(max_steps >= 1, "max_steps", max_steps, "must be >= 1 (MAML/PEARL use 200)")
    check(math.isfinite(ctrl_cost_weight) and ctrl_cost_weight >= 0, "ctrl_cost_weight",
          ctrl_cost_weight, "must be a finite number >= 0")


@dataclass(frozen=True)
class CheetahVelFamilyConfig:
    """Target-velocity half-cheetah (``task.cheetah_vel`` in params.yaml)."""

    velocity: tuple[float, float] = (0.0, 2.0)
    """Target forward velocity range, m/s, sampled uniformly (MAML: [0, 2]; PEARL: [0, 3])."""
    ctrl_cost_weight: float = 0.05
    """Weight of ``|a|²`` (MAML/PEARL: 0.5·1e-1)."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Episode horizon, steps."""

    def __post_init__(self) -> None:
        check_range("velocity", self.velocity)
        check(all(math.isfinite(v) for v in self.velocity), "velocity", self.velocity,
              "must be finite numbers, e.g. [0.0, 2.0]")
        _check_common(self.max_steps, self.ctrl_cost_weight)


@dataclass(frozen=True)
class CheetahDirFamilyConfig:
    """Forward/backward half-cheetah (``task.cheetah_dir`` in params.yaml)."""

    ctrl_cost_weight: float = 0.05
    """Weight of ``|a|²`` (MAML/PEARL: 0.5·1e-1)."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Episode horizon, steps."""

    def __post_init__(self) -> None:
        _check_common(self.max_steps, self.ctrl_cost_weight)


@dataclass(frozen=True)
class AntDirFamilyConfig:
    """Direction-following ant (``task.ant_dir`` in params.yaml)."""

    directions: Literal["forward_backward", "circle"] = "forward_backward"
    """``forward_backward``: θ ∈ {0, π} (PEARL's ant-dir experiments, MAML's ±x);
    ``circle``: θ ~ U[0, 2π)."""
    ctrl_cost_weight: float = 0.5
    """Weight of ``|a|²`` (PEARL and Ant-v5: 0.5)."""
    contact_cost_weight: float = 5e-4
    """Weight of the clipped contact forces' squared norm (PEARL and Ant-v5: 0.5·1e-3)."""
    healthy_reward: float = 1.0
    """Survive bonus per step while the torso is in the healthy height range (PEARL: 1)."""
    contact_forces_in_obs: bool = True
    """Include the 78 contact-force values in the observation (Ant-v5 default; 105 vs 27)."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Episode horizon, steps."""

    def __post_init__(self) -> None:
        _check_common(self.max_steps, self.ctrl_cost_weight)
        check(math.isfinite(self.contact_cost_weight) and self.contact_cost_weight >= 0,
              "contact_cost_weight", self.contact_cost_weight, "must be a finite number >= 0")
        check(math.isfinite(self.healthy_reward), "healthy_reward", self.healthy_reward,
              "must be a finite number (PEARL: 1.0)")


def _no_oracle(tasks: list[dict[str, float]]) -> np.ndarray:
    return np.full(len(tasks), np.nan)


class CheetahVelFamily:
    """Half-cheetah running at a target velocity (task dict: ``velocity``)."""

    name: ClassVar[str] = "cheetah_vel"

    def __init__(self, config: CheetahVelFamilyConfig) -> None:
        require_mujoco(self.name)
        self.config = config
        self.max_steps = config.max_steps

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """Target velocities uniform in the configured range."""
        return [{"velocity": float(v)} for v in rng.uniform(*self.config.velocity, num_tasks)]

    def check_task(self, task: dict[str, Any]) -> None:
        """``velocity``: a finite number, m/s (negative runs backward)."""
        check_fields(task, ("velocity",))
        check_number("velocity", task["velocity"], what="the target velocity, m/s")

    def base(self) -> MuJoCoBase:
        """``HalfCheetah-v5`` rewarded for matching the task's velocity."""
        return MuJoCoBase("HalfCheetah-v5", velocity_reward, "velocity",
                          {"ctrl_cost_weight": self.config.ctrl_cost_weight})

    def make_env(self, tasks: list[dict[str, float]], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedGymMuJoCo:
        """``HalfCheetah-v5`` copies rewarded for matching each task's velocity."""
        return self.base().make_env(tasks, num_envs, self.max_steps, device)

    def oracle_returns(self, tasks: list[dict[str, float]]) -> np.ndarray:
        """No oracle: NaN per task (see the module docstring)."""
        return _no_oracle(tasks)


class CheetahDirFamily:
    """Half-cheetah running forward or backward (task dict: ``direction`` = ±1)."""

    name: ClassVar[str] = "cheetah_dir"

    def __init__(self, config: CheetahDirFamilyConfig) -> None:
        require_mujoco(self.name)
        self.config = config
        self.max_steps = config.max_steps

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """±1 with probability 1/2 each (MAML)."""
        return [{"direction": float(d)} for d in rng.choice([-1.0, 1.0], size=num_tasks)]

    def check_task(self, task: dict[str, Any]) -> None:
        """``direction``: -1 (backward) or 1 (forward)."""
        check_fields(task, ("direction",))
        direction = check_number("direction", task["direction"])
        check(direction in (-1.0, 1.0), "direction", task["direction"],
              "must be -1 (backward) or 1 (forward)")

    def base(self) -> MuJoCoBase:
        """``HalfCheetah-v5`` rewarded for velocity along the task's direction."""
        return MuJoCoBase("HalfCheetah-v5", direction_reward, "direction",
                          {"ctrl_cost_weight": self.config.ctrl_cost_weight})

    def make_env(self, tasks: list[dict[str, float]], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedGymMuJoCo:
        """``HalfCheetah-v5`` copies rewarded for velocity along each task's direction."""
        return self.base().make_env(tasks, num_envs, self.max_steps, device)

    def oracle_returns(self, tasks: list[dict[str, float]]) -> np.ndarray:
        """No oracle: NaN per task (see the module docstring)."""
        return _no_oracle(tasks)


class AntDirFamily:
    """Ant walking in a task direction (task dict: ``angle``, radians)."""

    name: ClassVar[str] = "ant_dir"

    def __init__(self, config: AntDirFamilyConfig) -> None:
        require_mujoco(self.name)
        self.config = config
        self.max_steps = config.max_steps

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """θ ∈ {0, π} (``forward_backward``) or θ ~ U[0, 2π) (``circle``)."""
        if self.config.directions == "forward_backward":
            angles = rng.choice([0.0, math.pi], size=num_tasks)
        else:
            angles = rng.uniform(0.0, 2 * math.pi, size=num_tasks)
        return [{"angle": float(a)} for a in angles]

    def check_task(self, task: dict[str, Any]) -> None:
        """``angle``: a finite number, radians (any value; the direction wraps)."""
        check_fields(task, ("angle",))
        check_number("angle", task["angle"], what="the walking direction, radians")

    def base(self) -> MuJoCoBase:
        """``Ant-v5`` rewarded for velocity along the task's direction."""
        c = self.config
        kwargs = {"ctrl_cost_weight": c.ctrl_cost_weight,
                  "contact_cost_weight": c.contact_cost_weight,
                  "healthy_reward": c.healthy_reward,
                  "include_cfrc_ext_in_observation": c.contact_forces_in_obs}
        return MuJoCoBase("Ant-v5", ant_direction_reward, "angle", kwargs)

    def make_env(self, tasks: list[dict[str, float]], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedGymMuJoCo:
        """``Ant-v5`` copies rewarded for velocity along each task's direction."""
        return self.base().make_env(tasks, num_envs, self.max_steps, device)

    def task_features(self, task: dict[str, float]) -> list[float]:
        """``(cos θ, sin θ)``: the direction, continuous across 0 = 2π (for the oracle)."""
        return [math.cos(task["angle"]), math.sin(task["angle"])]

    def oracle_returns(self, tasks: list[dict[str, float]]) -> np.ndarray:
        """No oracle: NaN per task (see the module docstring)."""
        return _no_oracle(tasks)


_FAMILIES: dict[str, tuple[type, type]] = {
    "cheetah_vel": (CheetahVelFamilyConfig, CheetahVelFamily),
    "cheetah_dir": (CheetahDirFamilyConfig, CheetahDirFamily),
    "ant_dir": (AntDirFamilyConfig, AntDirFamily),
}


class MetaMuJoCoEnv(gym.Env[np.ndarray, np.ndarray]):
    """Gymnasium view of one task of a MuJoCo family: its batched env with a batch of one.

    Args:
        family: ``cheetah_vel``, ``cheetah_dir`` or ``ant_dir``.
        task: the family's task dict (``{"velocity": 1.5}``, ``{"direction": -1}``,
            ``{"angle": 1.57}``); when omitted, every reset draws a task from the family with
            ``np_random`` (a meta-env: one task per episode). ``info["task"]`` holds it.
        config: the family's config (its defaults when omitted): costs, horizon, ranges.
        render_mode: ``"rgb_array"`` (:meth:`render` returns MuJoCo's frames) or None.

    Raises:
        ConfigError: MuJoCo is not installed, or ``task`` is not one of the family's.

    The horizon is not enforced here: ``gym.make("metarl/CheetahVel-v0")`` (and the others) wrap
    it in the family's 200-step ``TimeLimit``.

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": 20}

    def __init__(self, family: str, task: Mapping[str, float] | None = None,
                 config: Any = None, render_mode: str | None = None) -> None:
        if family not in _FAMILIES:
            raise ValueError(f"family={family!r}: expected one of {sorted(_FAMILIES)}")
        self.render_mode = render.check_render_mode(render_mode, "MetaMuJoCo")
        config_cls, family_cls = _FAMILIES[family]
        self.family = family_cls(config if config is not None else config_cls())
        self.task = dict(task) if task is not None else None
        if self.task is not None:
            self.family.check_task(self.task)
        self._base = self.family.base()
        # Built once; a reset only sets the slot's task value, which the reward reads.
        self._env = self._base.make_env([{self._base.task_key: 0.0}], 1, self.family.max_steps)
        self.action_space = gym.spaces.Box(self._env.low.astype(np.float32),
                                           self._env.high.astype(np.float32), dtype=np.float32)
        bound = np.finfo(np.float32).max
        self.observation_space = gym.spaces.Box(-bound, bound, shape=(self._env.obs_dim,),
                                                dtype=np.float32)
        self._current: dict[str, float] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode (of a freshly drawn task unless the env was given one)."""
        super().reset(seed=seed)
        self._current = self.task or self.family.sample(1, self.np_random)[0]
        self._env.slot_values[:] = self._current[self._base.task_key]
        generator = torch.Generator().manual_seed(int(self.np_random.integers(2**31 - 1)))
        obs = self._env.reset(generator)
        return obs[0, 0].cpu().numpy(), {"task": dict(self._current)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step of the batched env (the action clipped, the task's reward)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self._env.action_dim,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action={action!r}: expected {self._env.action_dim} finite numbers")
        obs, reward, _ = self._env.step(torch.from_numpy(a).view(1, 1, -1))
        # ``done`` stays set past the end (the step's own flag is only the ending step's).
        return (obs[0, 0].cpu().numpy(), float(reward.item()), bool(self._env.done.item()),
                False, {"task": dict(self._current)})

    def render(self) -> np.ndarray | None:
        """MuJoCo's frame of the current state (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._env.render_frame)

    def close(self) -> None:
        """Close the MuJoCo env and its renderer."""
        self._env.close()
