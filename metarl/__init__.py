"""metarl: meta-reinforcement learning on batched, task-parameterised environments.

The notebook API (:mod:`metarl.api`): ``metarl.load(uri_or_dir)`` a trained meta-learner,
``metarl.collect(env, model, n)`` episodes of it on a task of yours, ``model.adapt(episodes)``,
``model.act(obs)``. Importing ``metarl`` stays light: the API loads on first use.
"""

from __future__ import annotations

from typing import Any

from metarl.envs.registration import register_envs

__version__ = "0.1.0"
__all__ = ["Model", "__version__", "collect", "load"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "collect", "load"):
        from metarl import api

        return getattr(api, name)
    raise AttributeError(f"module 'metarl' has no attribute {name!r}")


register_envs()  # metarl/CartPole-v1, metarl/Nav2D-v0, ...: see metarl.envs.registration
