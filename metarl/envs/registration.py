"""The gymnasium ids of the task families: ``gymnasium.make("metarl/<Name>-v<k>", task=...)``.

Every family has one current id (:data:`FAMILY_IDS`) whose time limit is the family's default
horizon and whose ``task`` keyword takes the family's task dict (what task-set files and
``metarl adapt --task`` hold); without a task the env is the family's default task (CartPole,
Pendulum: gymnasium's physics) or draws a task from the family at every reset (the others).
Every view renders ``rgb_array`` frames (``render_mode="rgb_array"``).

========================  ===========  =========================================================
id                        horizon      notes
========================  ===========  =========================================================
metarl/CartPole-v1        200          the family's horizon
metarl/CartPole-v0        500          kept: ``CartPole-v1``'s limit (it reproduces that env)
metarl/Nav2D-v0           100
metarl/Pendulum-v0        200
metarl/Bandit-v0          100 pulls    ends by termination (``num_pulls``), no ``TimeLimit``
metarl/TabularMDP-v0      10 steps     ends by termination (``horizon``), no ``TimeLimit``
metarl/CheetahVel-v0      200          where MuJoCo is installed
metarl/CheetahDir-v0      200          where MuJoCo is installed
metarl/AntDir-v0          200          where MuJoCo is installed
metarl/MetaWorldML1-v0    150          where Meta-World is installed (``env_name=...``)
========================  ===========  =========================================================

Bandit and TabularMDP episodes end by *termination* at their own horizon, which their
constructor sets (``num_pulls``, ``horizon``): a registered ``TimeLimit`` would not follow that
argument and would silently cut longer trials, so they have none.

Registering costs no import of the envs (the entry points are strings), so ``import metarl``
stays light; the horizons are written out here and a test checks them against the families'
config defaults.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvId:
    """One registered id."""

    id: str
    """Gymnasium id, ``metarl/<Name>-v<k>``."""
    family: str
    """The family whose tasks it plays (``task.family`` in params.yaml)."""
    entry_point: str
    """``module:Class`` of the gymnasium view."""
    horizon: int
    """Steps per episode: the ``TimeLimit`` or, where ``time_limit`` is False, the env's own."""
    time_limit: bool = True
    """Whether ``gym.make`` adds a ``TimeLimit`` of ``horizon`` steps."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Fixed constructor arguments (the MuJoCo view's family)."""
    needs: tuple[str, ...] = ()
    """Modules that must be installed for the id to be registered."""


_MUJOCO = ("mujoco", "gymnasium.envs.mujoco")

ENV_IDS: tuple[EnvId, ...] = (
    EnvId("metarl/CartPole-v1", "cartpole", "metarl.envs.cartpole:MetaCartPoleEnv", 200),
    EnvId("metarl/CartPole-v0", "cartpole", "metarl.envs.cartpole:MetaCartPoleEnv", 500),
    EnvId("metarl/Nav2D-v0", "nav2d", "metarl.envs.nav2d:MetaNav2DEnv", 100),
    EnvId("metarl/Pendulum-v0", "pendulum", "metarl.envs.pendulum:MetaPendulumEnv", 200),
    EnvId("metarl/Bandit-v0", "bandit", "metarl.envs.bandit:MetaBanditEnv", 100,
          time_limit=False),
    EnvId("metarl/TabularMDP-v0", "tabular_mdp", "metarl.envs.tabular_mdp:MetaTabularMDPEnv",
          10, time_limit=False),
    EnvId("metarl/CheetahVel-v0", "cheetah_vel", "metarl.envs.mujoco_tasks:MetaMuJoCoEnv", 200,
          kwargs={"family": "cheetah_vel"}, needs=_MUJOCO),
    EnvId("metarl/CheetahDir-v0", "cheetah_dir", "metarl.envs.mujoco_tasks:MetaMuJoCoEnv", 200,
          kwargs={"family": "cheetah_dir"}, needs=_MUJOCO),
    EnvId("metarl/AntDir-v0", "ant_dir", "metarl.envs.mujoco_tasks:MetaMuJoCoEnv", 200,
          kwargs={"family": "ant_dir"}, needs=_MUJOCO),
    EnvId("metarl/MetaWorldML1-v0", "metaworld_ml1",
          "metarl.envs.metaworld_tasks:MetaWorldML1Env", 150, needs=("mujoco", "metaworld")),
)
"""Every id, current ones first."""

FAMILY_IDS: dict[str, str] = {}
"""Family name → its current id (the first of :data:`ENV_IDS` for it)."""
for _spec in ENV_IDS:
    FAMILY_IDS.setdefault(_spec.family, _spec.id)


def installed(modules: tuple[str, ...]) -> bool:
    """Whether every module in ``modules`` can be found (without importing it)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in modules)
    except (ImportError, ValueError):  # a parent package that fails to import
        return False


def register_envs() -> list[str]:
    """Register the ids whose dependencies are installed (those not registered yet).

    Returns:
        The ids registered now or before, in :data:`ENV_IDS` order.

    """
    ids = []
    for spec in ENV_IDS:
        if spec.needs and not installed(spec.needs):
            continue
        if spec.id not in gym.registry:
            gym.register(id=spec.id, entry_point=spec.entry_point, kwargs=dict(spec.kwargs),
                         max_episode_steps=spec.horizon if spec.time_limit else None)
        ids.append(spec.id)
    return ids
