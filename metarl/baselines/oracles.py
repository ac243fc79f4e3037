"""Oracles: the best a learner that knows the task can do, and the one rule that scores it.

:func:`oracle_returns` is what every stage normalises by (the 1 of the normalised score): a
closed form where the family has one (its own ``oracle_returns``: CartPole's horizon, a bandit's
``n · max p``, value iteration on a tabular MDP), else the return of a task-conditioned policy
that is optimal or close to it (:data:`ORACLE_POLICIES`: straight-to-goal navigation, the
pendulum's swing-up + LQR controller) rolled out in the family's own batched env, else NaN
(MuJoCo, Meta-World: the train stage trains a task-conditioned policy instead, see
:mod:`metarl.baselines.task_conditioned`). The environments themselves know nothing of
policies or rollouts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from metarl.envs.pendulum import MAX_TORQUE, BatchedPendulum, PendulumTask, lqr_gains
from metarl.policies import ActFn, Params
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import TaskFamily


class Nav2DOracle:
    """The optimal policy, ``clip(goal - position)``, as a :class:`~metarl.algos.base.MetaLearner`.

    It knows the goals of ``tasks`` (so it is an upper reference, not a learner): its
    parameters are those goals, and adaptation changes nothing.
    """

    def __init__(self, tasks: Sequence[dict[str, float]], action_clip: float = 0.1) -> None:
        self.goals = torch.tensor([[t["goal_x"], t["goal_y"]] for t in tasks])
        self.clip = action_clip

    def initial_params(self, num_tasks: int) -> Params:
        """The goals, ``{"goal": [N, 2]}``."""
        if num_tasks != len(self.goals):
            raise ValueError(f"num_tasks={num_tasks}: this oracle knows {len(self.goals)} tasks")
        return {"goal": self.goals.clone()}

    def explore(self, params: Params) -> ActFn:
        """Head straight for the goal at full speed."""
        clip = self.clip

        def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return (params["goal"].to(obs).unsqueeze(1) - obs).clamp(-clip, clip)

        return act

    act = explore

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """Nothing to adapt."""
        return params


class PendulumOracle:
    """Task-conditioned swing-up + LQR controller, as a :class:`~metarl.algos.base.MetaLearner`.

    Knows each task's physics (its parameters are per-task coefficients); adaptation changes
    nothing. Energy ``E = theta_dot²/2 + a cos theta`` (``a = 3g/2l``) is pumped to the upright
    rest value ``a`` by full torque in the direction that raises it; within about 45 degrees of
    the top, the task's LQR gain takes over (clipped to the torque limit).
    """

    def __init__(self, tasks: Sequence[dict[str, float]]) -> None:
        env = BatchedPendulum([PendulumTask(**t) for t in tasks], 1, dtype=torch.float64)
        self.gravity_coef = env.gravity_coef[:, 0]
        self.torque_coef = env.torque_coef[:, 0]
        self.gain = torch.from_numpy(lqr_gains(self.gravity_coef.numpy(),
                                               self.torque_coef.numpy()))

    def initial_params(self, num_tasks: int) -> Params:
        """Per-task ``gravity_coef``, ``torque_coef`` ``[N]`` and LQR ``gain`` ``[N, 2]``."""
        if num_tasks != len(self.gain):
            raise ValueError(f"num_tasks={num_tasks}: this oracle knows {len(self.gain)} tasks")
        return {"gravity_coef": self.gravity_coef.clone(), "torque_coef": self.torque_coef.clone(),
                "gain": self.gain.clone()}

    def explore(self, params: Params) -> ActFn:
        """The controller (deterministic)."""
        def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return pendulum_controller(params, obs.double()).to(obs.dtype)

        return act

    act = explore

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """Nothing to adapt."""
        return params


def pendulum_controller(params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Torques ``[N, E, 1]`` of the swing-up + LQR controller for observations ``[N, E, 3]``."""
    cos, sin, speed = obs.unbind(-1)
    theta = torch.atan2(sin, cos)
    a = params["gravity_coef"].unsqueeze(1)
    gain = params["gain"].unsqueeze(1)  # [N, 1, 2]
    lqr = -(gain[..., 0] * theta + gain[..., 1] * speed)
    energy = 0.5 * speed.square() + a * cos
    # Full torque along the speed while below the upright energy, against it above.
    pump = MAX_TORQUE * torch.sign(speed * (a - energy))
    pump = torch.where(speed == 0, torch.full_like(pump, MAX_TORQUE), pump)
    # Within about 45 degrees of the top the (saturating) LQR takes over; the threshold and
    # the rule were chosen by comparing a few variants' returns on sampled tasks.
    near_top = cos > 0.7
    return torch.where(near_top, lqr, pump).clamp(-MAX_TORQUE, MAX_TORQUE).unsqueeze(-1)




def _nav2d(family: Any, tasks: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
    """The straight-to-goal policy; one deterministic episode (the start is fixed)."""
    return Nav2DOracle(tasks, family.config.action_clip), family.make_env(list(tasks), 1)


def _pendulum(family: Any, tasks: Sequence[dict[str, Any]]) -> tuple[Any, Any]:
    """The controller; ``oracle_episodes`` start states, in float64."""
    env = BatchedPendulum([PendulumTask(**t) for t in tasks], family.config.oracle_episodes,
                          max_steps=family.max_steps, dtype=torch.float64)
    return PendulumOracle(tasks), env


ORACLE_POLICIES: dict[str, Callable[[Any, Sequence[dict[str, Any]]], tuple[Any, Any]]] = {
    "nav2d": _nav2d,
    "pendulum": _pendulum,
}
"""Family name → ``(oracle policy, env to score it in)`` for families with no closed form."""


def oracle_policy(family: TaskFamily, tasks: Sequence[dict[str, Any]]) -> Any | None:
    """The family's task-conditioned oracle as a meta-learner baseline, or None."""
    make = ORACLE_POLICIES.get(family.name)
    return None if make is None else make(family, tasks)[0]


def oracle_returns(family: TaskFamily, tasks: Sequence[dict[str, Any]]) -> np.ndarray:
    """The oracle's expected episode return per task, ``[N]`` (NaN where there is none).

    Deterministic: an oracle policy is rolled out from a fixed seed.
    """
    make = ORACLE_POLICIES.get(family.name)
    if make is not None:
        oracle, env = make(family, tasks)
        batch = rollout(oracle.act(oracle.initial_params(len(tasks))), env,
                        torch.Generator().manual_seed(0))
        return batch.episode_returns.mean(-1).double().numpy()  # type: ignore[no-any-return]
    closed_form = getattr(family, "oracle_returns", None)
    if closed_form is not None:
        return np.asarray(closed_form(list(tasks)), dtype=float)
    return np.full(len(tasks), np.nan)
