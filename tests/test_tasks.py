"""Task sets (JSON, hash, sampling) and the CartPole family's config validation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from metarl.config import ConfigError, from_mapping
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.tasks import SCHEMA_VERSION, TaskSet, sample_task_sets

RANGED = ("pole_length", "pole_mass", "cart_mass", "gravity", "force_mag")
SIZES = {"train": 8, "val": 4, "test": 4}


def _family(**overrides: object) -> CartPoleFamily:
    return CartPoleFamily(from_mapping(CartPoleFamilyConfig, overrides, prefix="task.cartpole"))


def _task_set() -> TaskSet:
    return sample_task_sets(_family(), {"train": 3}, seed=5)["train"]


def test_json_round_trip_preserves_tasks_and_hash() -> None:
    original = _task_set()
    text = original.to_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["content_hash"] == original.content_hash
    assert len(original.content_hash) == 16
    loaded = TaskSet.from_json(text)
    assert loaded == original
    assert loaded.tasks == original.tasks
    assert loaded.content_hash == original.content_hash
    assert (loaded.family, loaded.split, loaded.seed) == ("cartpole", "train", 5)


def test_hash_depends_on_content() -> None:
    a = _task_set()
    b = TaskSet(a.family, a.split, a.seed, (*a.tasks[:-1], {**a.tasks[-1], "gravity": 9.0}))
    c = TaskSet(a.family, "val", a.seed, a.tasks)
    assert len({a.content_hash, b.content_hash, c.content_hash}) == 3


def test_edited_task_value_fails_the_hash_check() -> None:
    original = _task_set()
    text = original.to_json()
    value = original.tasks[0]["pole_mass"]
    needle = f'"pole_mass": {json.dumps(value)}'
    assert text.count(needle) == 1
    edited = text.replace(needle, '"pole_mass": 0.123')
    with pytest.raises(ValueError, match="content_hash") as info:
        TaskSet.from_json(edited, source="tasks/train.json")
    assert "tasks/train.json" in str(info.value)
    assert original.content_hash in str(info.value)


def test_wrong_schema_version_raises() -> None:
    data = json.loads(_task_set().to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match=f"schema_version={SCHEMA_VERSION + 1}"):
        TaskSet.from_json(json.dumps(data))
    del data["schema_version"]
    with pytest.raises(ValueError, match="schema_version=None"):
        TaskSet.from_json(json.dumps(data))


def test_empty_tasks_raises() -> None:
    data = json.loads(_task_set().to_json())
    data["tasks"] = []
    with pytest.raises(ValueError, match=re.escape("tasks=[]: expected a non-empty list")):
        TaskSet.from_json(json.dumps(data))


def test_invalid_json_raises() -> None:
    text = _task_set().to_json()
    with pytest.raises(ValueError, match="not valid JSON"):
        TaskSet.from_json(text[: len(text) // 2])
    with pytest.raises(ValueError, match="schema_version"):
        TaskSet.from_json("[1, 2]")


def test_same_seed_same_sets_other_seed_other_sets() -> None:
    a = sample_task_sets(_family(), SIZES, seed=11)
    b = sample_task_sets(_family(), SIZES, seed=11)
    c = sample_task_sets(_family(), SIZES, seed=12)
    assert list(a) == ["train", "val", "test"]
    for split, size in SIZES.items():
        assert len(a[split]) == size
        assert a[split] == b[split]
        assert a[split].content_hash == b[split].content_hash
        assert a[split].tasks != c[split].tasks


def test_splits_differ_from_each_other() -> None:
    sets = sample_task_sets(_family(), {"train": 4, "val": 4, "test": 4}, seed=0)
    tasks = {split: s.tasks for split, s in sets.items()}
    assert tasks["train"] != tasks["val"]
    assert tasks["train"] != tasks["test"]
    assert tasks["val"] != tasks["test"]
    all_tasks = [json.dumps(t, sort_keys=True) for s in tasks.values() for t in s]
    assert len(set(all_tasks)) == 12


def test_values_within_configured_ranges() -> None:
    family = _family(pole_length=[0.4, 0.6], pole_mass=[0.2, 0.3], cart_mass=[1.0, 1.5],
                     gravity=[9.0, 9.5], force_mag=[6.0, 8.0])
    tasks = sample_task_sets(family, {"train": 200}, seed=3)["train"].tasks
    for name in RANGED:
        lo, hi = getattr(family.config, name)
        values = np.array([abs(t[name]) if name == "force_mag" else t[name] for t in tasks])
        assert values.min() >= lo and values.max() <= hi, name
        assert values.max() - values.min() > 0.5 * (hi - lo), f"{name} barely varies"
    assert all(set(t) == set(RANGED) for t in tasks)


def test_force_flip_probability() -> None:
    flipped = sample_task_sets(_family(force_flip_prob=0.5), {"train": 100}, seed=0)["train"]
    signs = [t["force_mag"] < 0 for t in flipped.tasks]
    assert 20 < sum(signs) < 80
    never = sample_task_sets(_family(force_flip_prob=0.0), {"train": 100}, seed=0)["train"]
    assert all(t["force_mag"] > 0 for t in never.tasks)
    always = sample_task_sets(_family(force_flip_prob=1.0), {"train": 20}, seed=0)["train"]
    assert all(t["force_mag"] < 0 for t in always.tasks)


def test_make_env_uses_the_task_values() -> None:
    family = _family(max_steps=33)
    tasks = sample_task_sets(family, {"train": 3}, seed=1)["train"].tasks
    env = family.make_env(list(tasks), num_envs=2)
    assert (env.num_tasks, env.num_envs, env.max_steps) == (3, 2, 33)
    assert env.force_mag.squeeze(1).tolist() == pytest.approx([t["force_mag"] for t in tasks])
    assert family.oracle_returns(list(tasks)).tolist() == [33.0, 33.0, 33.0]


def _config_error(data: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(CartPoleFamilyConfig, data, prefix="task.cartpole")
    return info.value


def test_config_min_greater_than_max() -> None:
    err = _config_error({"pole_mass": [0.5, 0.1]})
    assert err.key == "task.cartpole.pole_mass"
    assert err.value == (0.5, 0.1)
    assert "task.cartpole.pole_mass" in str(err)
    assert "0.5" in str(err) and "0.1" in str(err)
    assert "swap" in str(err)


def test_config_negative_mass() -> None:
    err = _config_error({"cart_mass": [-1.0, 2.0]})
    assert err.key == "task.cartpole.cart_mass"
    assert "-1.0" in str(err)
    assert "> 0" in str(err)


def test_config_unknown_key() -> None:
    err = _config_error({"pole_mas": [0.1, 0.2]})
    assert err.key == "task.cartpole.pole_mas"
    assert "unknown key" in str(err)
    assert "pole_mass" in str(err)  # lists the valid keys


def test_config_wrong_types() -> None:
    err = _config_error({"max_steps": "200"})
    assert err.key == "task.cartpole.max_steps"
    assert "'200'" in str(err)
    assert "integer" in str(err)
    assert _config_error({"max_steps": 2.5}).key == "task.cartpole.max_steps"
    assert _config_error({"gravity": [8.0, "12"]}).key == "task.cartpole.gravity[1]"
    assert _config_error({"gravity": 9.8}).key == "task.cartpole.gravity"


def test_config_bad_probability_and_horizon() -> None:
    err = _config_error({"force_flip_prob": 1.5})
    assert err.key == "task.cartpole.force_flip_prob"
    assert "1.5" in str(err)
    assert _config_error({"force_flip_prob": -0.1}).key == "task.cartpole.force_flip_prob"
    assert _config_error({"max_steps": 0}).key == "task.cartpole.max_steps"


def test_config_valid_mapping_builds_tuples() -> None:
    config = from_mapping(CartPoleFamilyConfig, {"pole_mass": [0.1, 0.2], "max_steps": 50},
                          prefix="task.cartpole")
    assert config.pole_mass == (0.1, 0.2)
    assert config.max_steps == 50
    assert config.gravity == CartPoleFamilyConfig().gravity
