"""metarl: meta-reinforcement learning on batched, task-parameterised environments."""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

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
