"""The RL² settings of ``metarl bench rl2``'s cells, read from data files.

``pipelines/bench/presets/rl2_bandit.yaml`` and ``rl2_mdp.yaml`` hold, per length of the
training trials, the PPO iterations and every :class:`~metarl.algos.rl2.RL2Config` key: the
bench states its settings in full, so that RL2Config's defaults (the pipeline's) can change
without moving the bench's numbers. Why each value is what it is: the files' comments and
``benchmarks/rl2/README.md`` ("What was tried").
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

from metarl.algos.rl2 import RL2Config
from metarl.config import ConfigError, check, from_mapping

PRESETS_DIR = Path(__file__).parents[1] / "presets"
BANDIT_PRESETS_PATH = PRESETS_DIR / "rl2_bandit.yaml"
"""The bandit cells' settings by pulls per training trial."""
MDP_PRESETS_PATH = PRESETS_DIR / "rl2_mdp.yaml"
"""The tabular-MDP cells' settings by episodes per training trial."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """One entry of a preset file: the settings of models trained on trials up to a length."""

    up_to: int | None
    """The longest training trial (pulls or episodes) this entry serves; ``None``: any."""
    iterations: int
    """PPO iterations per training seed (``--iterations`` replaces it)."""
    reward_scale_at: int | None
    """When set, ``config.reward_scale`` is the scale at trials of this length, and a trial of
    ``n`` has ``reward_scale * reward_scale_at / n`` (value targets on one scale across
    lengths); ``None``: ``config.reward_scale`` at every length."""
    config: RL2Config
    """Every RL² setting, none left to RL2Config's defaults."""

    def __post_init__(self) -> None:
        for name in ("up_to", "reward_scale_at"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, value, "must be >= 1, or null")
        check(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")

    def config_for(self, length: int) -> RL2Config:
        """The RL² settings for training trials of ``length`` pulls or episodes."""
        if self.reward_scale_at is None:
            return self.config
        return dataclasses.replace(
            self.config, reward_scale=self.config.reward_scale * self.reward_scale_at / length)


@dataclasses.dataclass(frozen=True)
class PresetFile:
    """A preset file: its entries, shortest trials first, the last for any longer trial."""

    lengths: tuple[Preset, ...] = ()

    def __post_init__(self) -> None:
        bounds = [p.up_to for p in self.lengths]
        check(bool(bounds) and bounds[-1] is None, "lengths", bounds,
              "give entries of rising `up_to`, the last with `up_to: null` (any longer trial)")
        listed = [b for b in bounds[:-1] if b is not None]
        check(len(listed) == len(bounds) - 1 and listed == sorted(set(listed)), "lengths",
              bounds, "list each `up_to` once, shortest first, and null only last")

    def entry(self, length: int) -> Preset:
        """The first entry whose ``up_to`` is at least ``length`` (the last: any)."""
        return next(p for p in self.lengths if p.up_to is None or length <= p.up_to)


def _check_every_key(data: Any) -> None:
    """Refuse an entry or a ``config`` that leaves a key to a dataclass default."""
    entries = data.get("lengths") if isinstance(data, dict) else None
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        if not isinstance(entry, dict):
            continue  # from_mapping names it
        for cls, mapping, key in ((Preset, entry, f"lengths[{i}]"),
                                  (RL2Config, entry.get("config"), f"lengths[{i}].config")):
            names = [f.name for f in dataclasses.fields(cls)]
            missing = [n for n in names if isinstance(mapping, dict) and n not in mapping]
            check(not missing, key, missing, f"missing keys; list every {cls.__name__} key, "
                  "so that no default can move the bench's numbers")


@functools.cache
def load_presets(path: Path) -> PresetFile:
    """Read and validate a preset file.

    Raises:
        ConfigError: the file cannot be read, or a key is missing, unknown or has a bad
            value; the message names the file and the key (``lengths[1].config.lr``).

    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("preset file", str(path), f"cannot read it ({err})") from None
    try:
        _check_every_key(data)
        return from_mapping(PresetFile, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err.key}", err.value, err.message) from None


def bandit_config(num_pulls: int) -> RL2Config:
    """The RL² settings for training on bandit trials of ``num_pulls`` pulls."""
    return load_presets(BANDIT_PRESETS_PATH).entry(num_pulls).config_for(num_pulls)


def mdp_config(num_episodes: int) -> RL2Config:
    """The RL² settings for training on tabular-MDP trials of ``num_episodes`` episodes."""
    return load_presets(MDP_PRESETS_PATH).entry(num_episodes).config_for(num_episodes)


def default_iterations(table: str, n: int) -> int:
    """PPO iterations per seed for training trials of ``n`` pulls (``bandit``) or episodes."""
    path = MDP_PRESETS_PATH if table == "mdp" else BANDIT_PRESETS_PATH
    return load_presets(path).entry(n).iterations
