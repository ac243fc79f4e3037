"""2D navigation to a hidden goal, the point-robot task of the MAML paper, batched in torch.

Finn, Abbeel & Levine (2017), https://arxiv.org/abs/1703.03400, section 5.3: a point starts at
the origin; each step its action, a velocity clipped to ``[-0.1, 0.1]`` per coordinate, is
added to its position; the goal, unknown to the agent, is uniform in ``[-0.5, 0.5]^2``; the
horizon is 100 steps. The observation is the position only.

We follow the widely used implementation of pytorch-maml-rl (``maml_rl/envs/navigation.py``,
itself adapted from the paper's ``point_env_randgoal.py``; learn2learn's is the same):

* reward ``-||position - goal||`` after the step (``reward: distance``). The paper's text says
  squared distance; ``reward: squared_distance`` gives that instead.
* an episode **terminates** when the point is within ``goal_tolerance`` (0.01) of the goal in
  both coordinates; later steps are padding with zero reward. ``goal_tolerance: 0`` disables
  it (every episode then runs the full horizon).

The best policy is known: moving each coordinate towards the goal as fast as the clip allows,
``clip(goal - position)``, minimises the distance at every step at once (the coordinates move
independently under a box constraint), so it maximises the return under either reward.
:class:`metarl.baselines.oracles.Nav2DOracle` is that policy;
:func:`metarl.baselines.oracles.oracle_returns` rolls it out.

PEARL's point robots (Rakelly et al. 2019, appendix; oyster's ``point_robot.py``) are options
of the same family:

* the dense one: goals in ``[-1, 1]^2`` (``goal_low: -1``, ``goal_high: 1``), horizon 20;
* the sparse one: ``goals: semicircle`` puts the goals on the upper half of a circle of
  ``circle_radius`` 1 (angle uniform in ``[0, pi]``), and ``reward: sparse`` pays 1 on each
  step that ends within ``goal_radius`` (0.2) of the goal, else 0 (oyster adds ``1 - distance``
  inside the radius; the issue's protocol and ours pay a flat 1), horizon 20,
  ``goal_tolerance: 0``. The reward carries no direction until the goal is found, so a
  learner must explore over several episodes; :meth:`BatchedNav2D.success_rate` is the share of
  episodes that reached the goal radius at some step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch

from metarl.config import check, check_fields, check_number
from metarl.envs import render
from metarl.envs.base import StateBatch, render_view

RewardKind = Literal["distance", "squared_distance", "sparse"]
GoalKind = Literal["box", "semicircle"]


@dataclass(frozen=True)
class Nav2DFamilyConfig:
    """The 2D-navigation task distribution (``task.nav2d`` in params.yaml)."""

    goal_low: float = -0.5
    """Lower bound of each goal coordinate (goals are uniform in ``[goal_low, goal_high]^2``)."""
    goal_high: float = 0.5
    """Upper bound of each goal coordinate."""
    action_clip: float = 0.1
    """Actions (velocities, position units per step) are clipped to ``[-clip, clip]`` per axis."""
    max_steps: int = 100
    """Episode horizon, steps."""
    reward: RewardKind = "distance"
    """``distance`` (pytorch-maml-rl, learn2learn) or ``squared_distance`` (the paper's text)."""
    goal_tolerance: float = 0.01
    """An episode ends when both coordinates are within this of the goal; 0 never ends early."""
    goals: GoalKind = "box"
    """``box``: goals uniform in ``[goal_low, goal_high]^2``; ``semicircle``: on the upper half
    of a circle of ``circle_radius`` around the origin (PEARL's sparse point robot)."""
    circle_radius: float = 1.0
    """Radius of the semicircle of goals (``goals: semicircle``)."""
    goal_radius: float = 0.2
    """``reward: sparse`` pays 1 on steps that end within this distance of the goal."""

    def __post_init__(self) -> None:
        for name in ("goal_low", "goal_high", "action_clip", "goal_tolerance", "circle_radius",
                     "goal_radius"):
            value = getattr(self, name)
            check(np.isfinite(value), name, value, "must be a finite number")
        check(self.goal_low < self.goal_high, "goal_low", self.goal_low,
              f"must be below goal_high={self.goal_high} (the goal box would have "
              f"{'zero' if self.goal_low == self.goal_high else 'negative'} size); e.g. "
              "goal_low: -0.5, goal_high: 0.5")
        check(self.action_clip > 0, "action_clip", self.action_clip,
              "must be > 0 (the largest velocity per axis and step), e.g. 0.1")
        check(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        check(self.goal_tolerance >= 0, "goal_tolerance", self.goal_tolerance,
              "must be >= 0 (0 disables early termination)")
        check(self.reward in ("distance", "squared_distance", "sparse"), "reward", self.reward,
              "choose distance, squared_distance or sparse")
        check(self.goals in ("box", "semicircle"), "goals", self.goals,
              "choose box or semicircle")
        check(self.circle_radius > 0, "circle_radius", self.circle_radius, "must be > 0")
        check(self.goal_radius > 0, "goal_radius", self.goal_radius, "must be > 0")
        check(self.reward != "sparse" or self.goal_tolerance == 0, "goal_tolerance",
              self.goal_tolerance, "must be 0 with reward: sparse (an episode that ended at the "
              "goal would stop earning its reward); set goal_tolerance: 0")

    def goal_extent(self) -> tuple[float, float]:
        """The square every goal lies in, ``(low, high)`` per coordinate (for drawing)."""
        if self.goals == "semicircle":
            return -self.circle_radius, self.circle_radius
        return self.goal_low, self.goal_high

    def sample_goals(self, num_goals: int, rng: np.random.Generator) -> np.ndarray:
        """``[num_goals, 2]`` goals of this distribution (:attr:`goals`)."""
        if self.goals == "semicircle":
            angle = rng.uniform(0.0, np.pi, size=num_goals)
            return self.circle_radius * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        return rng.uniform(self.goal_low, self.goal_high, size=(num_goals, 2))


class BatchedNav2D(StateBatch):
    """``N`` goals × ``E`` episodes each, stepped together.

    Args:
        goals: ``[N, 2]`` goal positions.
        num_envs: episodes per task, ``E``.
        config: clip, horizon, reward kind and goal tolerance.
        device: torch device of every tensor.
        dtype: float dtype of the state.

    :attr:`trail` keeps every slot's positions since its episode began, for
    :meth:`render_frame`.

    """

    obs_dim = 2
    discrete = False
    num_actions = 0
    action_dim = 2

    def __init__(self, goals: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
                 num_envs: int,
                 config: Nav2DFamilyConfig | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        config = config or Nav2DFamilyConfig()
        self.goals = torch.as_tensor(goals, dtype=dtype).to(device).reshape(-1, 2)
        self._init_batch(self.goals.shape[0], num_envs, 2, config.max_steps, device, dtype,
                         "goals: got none; pass at least one [x, y] goal")
        self.clip = config.action_clip
        self.reward_kind = config.reward
        self.goal_radius = config.goal_radius
        self.tolerance = config.goal_tolerance
        self.action_low: tuple[float, ...] = (-self.clip, -self.clip)
        self.action_high: tuple[float, ...] = (self.clip, self.clip)
        self.goal_box = config.goal_extent()
        self.success = torch.zeros(self.num_tasks, num_envs, dtype=torch.bool,
                                   device=self.device)
        """``[N, E]``: the slot's episode has ended a step within ``goal_radius`` of the goal
        since it began (every reward kind keeps it; only ``sparse`` reports it)."""
        if config.reward == "sparse":
            self.success_rate = self._success_rate
        self.watched = False
        """Whether :meth:`render_frame` has been called: the history a frame draws is kept
        from then on only, so envs nobody watches step at full speed."""
        self.trail = torch.zeros(self.num_tasks, num_envs, config.max_steps + 1, 2, dtype=dtype,
                                 device=self.device)
        """``[N, E, max_steps + 1, 2]``: positions since each slot's start (later steps past the
        horizon overwrite the last entry)."""
        self.trail_length = torch.zeros(self.num_tasks, num_envs, dtype=torch.long,
                                        device=self.device)
        """``[N, E]``: how many entries of :attr:`trail` each slot has filled."""

    def start_states(self, generator: torch.Generator) -> torch.Tensor:
        """Every slot starts at the origin (``generator`` is not used: the start is fixed)."""
        return torch.zeros_like(self.state)

    def set_state(self, state: torch.Tensor) -> torch.Tensor:
        """Put every slot in ``state`` (``[N, E, 2]``) and start its trail there."""
        obs = super().set_state(state)
        self.success = torch.zeros_like(self.done)
        self._restart_trail(torch.ones_like(self.done))
        return obs

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Restart the ended slots (auto-reset) and their trails; return obs."""
        restarted = self.done if ended is None else self.done | ended
        obs = super().reset_done(generator, ended)
        self.success = self.success & ~restarted
        self._restart_trail(restarted)
        return obs

    def _success_rate(self) -> torch.Tensor:
        """Share of each task's slots whose episode reached the goal radius, ``[N]``."""
        return self.success.float().mean(dim=1)

    def _restart_trail(self, slots: torch.Tensor) -> None:
        if not self.watched:
            return
        self.trail[:, :, 0] = torch.where(slots.unsqueeze(-1), self.state, self.trail[:, :, 0])
        self.trail_length = torch.where(slots, 1, self.trail_length)

    def _extend_trail(self, live: torch.Tensor) -> None:
        if not self.watched:
            return
        # Every slot writes its position at its next entry; only live slots count it, so an
        # ended slot's write lands past its trail (or repeats its last, unchanged, position).
        last = self.trail.shape[2] - 1
        self.trail_length = self.trail_length + live.long()
        index = (self.trail_length - 1).clamp_(0, last)
        self.trail.scatter_(2, index.view(*index.shape, 1, 1).expand(*index.shape, 1, 2),
                            self.state.unsqueeze(2))
        self.trail_length.clamp_(max=last + 1)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move every live slot by its clipped action.

        Returns:
            ``(obs [N,E,2], reward [N,E], terminated [N,E])``: the reward is minus the
            (squared) distance to the goal after the move (``sparse``: 1 within
            ``goal_radius``, else 0), 0 for slots already terminated.

        """
        live = ~self.done
        velocity = actions.to(self.dtype).clamp(-self.clip, self.clip)
        self.state = torch.where(live.unsqueeze(-1), self.state + velocity, self.state)
        offset = self.state - self.goals.unsqueeze(1)
        sq = offset.square().sum(-1)
        inside = live & (sq <= self.goal_radius ** 2)
        self.success = self.success | inside
        if self.reward_kind == "sparse":
            reward = inside.to(self.dtype)
        else:
            cost = sq if self.reward_kind == "squared_distance" else sq.sqrt()
            reward = torch.where(live, -cost, torch.zeros_like(cost))
        if self.tolerance > 0:
            terminated = (offset.abs() < self.tolerance).all(-1) & live
        else:
            terminated = torch.zeros_like(live)
        self.done = self.done | terminated
        self._extend_trail(live)
        return self.state, reward, terminated

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)``: goal, agent, path (:func:`render.nav2d_frame`)."""
        render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        if not self.watched:  # the path is kept from now on, starting where each slot is
            self.watched = True
            self._restart_trail(torch.ones_like(self.done))
        length = int(self.trail_length[task_index, env_index])
        trail = self.trail[task_index, env_index, :length].cpu().numpy()
        return render.nav2d_frame(self.state[task_index, env_index].tolist(),
                                  self.goals[task_index].tolist(), trail, *self.goal_box)


class MetaNav2DEnv(gym.Env[np.ndarray, np.ndarray]):
    """Gymnasium view of 2D navigation: :class:`BatchedNav2D` with a batch of one, float64.

    Args:
        goal: the task's goal ``(x, y)``; when omitted (and ``task`` too), every reset draws a
            new goal of the config's distribution from ``np_random`` (a meta-env: one
            task per episode).
        config: clip, horizon, reward, tolerance (:class:`Nav2DFamilyConfig`).
        render_mode: ``"rgb_array"`` (:meth:`render` returns frames) or None.
        task: the family's task dict, ``{"goal_x": x, "goal_y": y}``: the same as ``goal``.

    The horizon is not enforced here: ``gym.make("metarl/Nav2D-v0")`` wraps it in a
    ``TimeLimit`` of 100 steps. ``info["goal"]`` holds the current goal.

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": 10}

    def __init__(self, goal: Sequence[float] | None = None,
                 config: Nav2DFamilyConfig | None = None, render_mode: str | None = None,
                 task: Mapping[str, float] | None = None) -> None:
        self.render_mode = render.check_render_mode(render_mode, "MetaNav2D")
        self.config = config or Nav2DFamilyConfig()
        if task is not None:
            if goal is not None:
                raise ValueError(f"goal={goal!r} and task={task!r}: pass one of them")
            Nav2DFamily(self.config).check_task(dict(task))
            goal = [task["goal_x"], task["goal_y"]]
        self.fixed_goal = None if goal is None else np.asarray(goal, dtype=np.float64)
        if self.fixed_goal is not None and self.fixed_goal.shape != (2,):
            raise ValueError(f"goal={goal!r}: expected two numbers [x, y]")
        clip = self.config.action_clip
        self.action_space = gym.spaces.Box(-clip, clip, shape=(2,), dtype=np.float32)
        bound = np.finfo(np.float32).max
        self.observation_space = gym.spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        self._env = BatchedNav2D(np.zeros((1, 2)), 1, self.config, dtype=torch.float64)
        self._terminated = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start at the origin; draw the goal from ``np_random`` unless it is fixed."""
        super().reset(seed=seed)
        if self.fixed_goal is None:
            goal = self.config.sample_goals(1, self.np_random)[0]
        else:
            goal = self.fixed_goal
        self._env.goals = torch.as_tensor(goal, dtype=torch.float64).view(1, 2)
        self._env.set_state(torch.zeros(1, 1, 2, dtype=torch.float64))
        self._terminated = False
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step of the shared batched dynamics (the action is clipped, not rejected)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action={action!r}: expected two finite numbers")
        if self._terminated:
            return self._obs(), 0.0, True, False, self._info()
        _, reward, terminated = self._env.step(torch.from_numpy(a).view(1, 1, 2))
        self._terminated = bool(terminated.item())
        return self._obs(), float(reward.item()), self._terminated, False, self._info()

    def render(self) -> np.ndarray | None:
        """The current frame, ``[256, 256, 3]`` uint8 (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._env.render_frame)

    def _obs(self) -> np.ndarray:
        return self._env.state[0, 0].numpy().astype(np.float32)

    def _info(self) -> dict[str, Any]:
        return {"goal": self._env.goals[0].numpy().copy()}


class Nav2DFamily:
    """2D navigation to a hidden goal (task dict: ``goal_x``, ``goal_y``)."""

    name: ClassVar[str] = "nav2d"

    def __init__(self, config: Nav2DFamilyConfig) -> None:
        self.config = config
        self.max_steps = config.max_steps

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """Goals of the config's distribution (:meth:`Nav2DFamilyConfig.sample_goals`)."""
        goals = self.config.sample_goals(num_tasks, rng)
        return [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]

    def check_task(self, task: dict[str, Any]) -> None:
        """``goal_x`` and ``goal_y``, finite numbers (anywhere in the plane)."""
        check_fields(task, ("goal_x", "goal_y"))
        for name in ("goal_x", "goal_y"):
            check_number(name, task[name], what="a goal coordinate")

    def make_env(
        self, tasks: list[dict[str, float]], num_envs: int, device: torch.device | str = "cpu"
    ) -> BatchedNav2D:
        """Batched navigation to the goals of ``tasks``."""
        goals = [[t["goal_x"], t["goal_y"]] for t in tasks]
        return BatchedNav2D(goals, num_envs, self.config, device=device)
