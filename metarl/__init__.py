"""metarl: meta-reinforcement learning on batched, task-parameterised environments."""

from __future__ import annotations

import gymnasium as gym

__version__ = "0.1.0"

if "metarl/CartPole-v0" not in gym.registry:
    gym.register(id="metarl/CartPole-v0", entry_point="metarl.envs.cartpole:MetaCartPoleEnv",
                 max_episode_steps=500)
