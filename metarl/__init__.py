"""metarl: meta-reinforcement learning on batched, task-parameterised environments.

The notebook API (:mod:`metarl.api`): ``metarl.load(uri_or_dir)`` a trained meta-learner,
``metarl.collect(env, model, n)`` episodes of it on a task of yours, ``model.adapt(episodes)``,
``model.act(obs)``. Importing ``metarl`` stays light: the API loads on first use.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__version__ = "0.1.0"
__all__ = ["Model", "__version__", "collect", "load"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "collect", "load"):
        from metarl import api

        return getattr(api, name)
    raise AttributeError(f"module 'metarl' has no attribute {name!r}")


if "metarl/CartPole-v0" not in gym.registry:
    gym.register(id="metarl/CartPole-v0", entry_point="metarl.envs.cartpole:MetaCartPoleEnv",
                 max_episode_steps=500)
if "metarl/Nav2D-v0" not in gym.registry:
    gym.register(id="metarl/Nav2D-v0", entry_point="metarl.envs.nav2d:MetaNav2DEnv",
                 max_episode_steps=100)
if "metarl/Pendulum-v0" not in gym.registry:
    gym.register(id="metarl/Pendulum-v0", entry_point="metarl.envs.pendulum:MetaPendulumEnv",
                 max_episode_steps=200)
if "metarl/Bandit-v0" not in gym.registry:
    gym.register(id="metarl/Bandit-v0", entry_point="metarl.envs.bandit:MetaBanditEnv")
if "metarl/TabularMDP-v0" not in gym.registry:
    gym.register(id="metarl/TabularMDP-v0",
                 entry_point="metarl.envs.tabular_mdp:MetaTabularMDPEnv")
