"""The registry of task families: name → (config dataclass, family class).

A family is chosen by ``task.family`` in params.yaml; its ranges live in ``task.<name>``.
"""

from __future__ import annotations

from typing import Any

from metarl.config import ConfigError
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.envs.metaworld_tasks import MetaWorldML1Family, MetaWorldML1FamilyConfig
from metarl.envs.mujoco_tasks import (
    AntDirFamily,
    AntDirFamilyConfig,
    CheetahDirFamily,
    CheetahDirFamilyConfig,
    CheetahVelFamily,
    CheetahVelFamilyConfig,
)
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.envs.pendulum import PendulumFamily, PendulumFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from metarl.tasks import TaskFamily

FAMILIES: dict[str, tuple[type, Any]] = {
    "cartpole": (CartPoleFamilyConfig, CartPoleFamily),
    "nav2d": (Nav2DFamilyConfig, Nav2DFamily),
    "pendulum": (PendulumFamilyConfig, PendulumFamily),
    "bandit": (BanditFamilyConfig, BanditFamily),
    "tabular_mdp": (TabularMDPFamilyConfig, TabularMDPFamily),
    # MuJoCo (optional dependency: pip install -e ".[mujoco]")
    "cheetah_vel": (CheetahVelFamilyConfig, CheetahVelFamily),
    "cheetah_dir": (CheetahDirFamilyConfig, CheetahDirFamily),
    "ant_dir": (AntDirFamilyConfig, AntDirFamily),
    # Meta-World (optional dependency: pip install -e ".[metaworld]")
    "metaworld_ml1": (MetaWorldML1FamilyConfig, MetaWorldML1Family),
}
"""Family name → (its config dataclass, the class built from that config)."""


def make_family(name: str, config: Any = None) -> TaskFamily:
    """Instantiate family ``name`` from its config (the defaults when ``None``).

    Raises:
        ConfigError: unknown family name.

    """
    if name not in FAMILIES:
        raise ConfigError("task.family", name,
                          f"unknown family; choose one of {sorted(FAMILIES)}")
    config_cls, family_cls = FAMILIES[name]
    return family_cls(config if config is not None else config_cls())  # type: ignore[no-any-return]
