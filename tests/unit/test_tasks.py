"""Task sets (JSON, hash, sampling, per-family validation) and CartPole's config validation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metarl.config import MISSING, ConfigError, from_mapping
from metarl.envs.bandit import BanditFamilyConfig
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamilyConfig
from metarl.families import make_family
from metarl.tasks import SCHEMA_VERSION, TaskSet, TaskSetError, sample_task_sets
from pipelines.cli import main

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


# --- per-family task validation ------------------------------------------------------------

CORE_FAMILIES = ["cartpole", "nav2d", "pendulum", "bandit", "tabular_mdp"]
NEEDS = {"cheetah_vel": ("mujoco", "gymnasium.envs.mujoco"),
         "cheetah_dir": ("mujoco", "gymnasium.envs.mujoco"),
         "ant_dir": ("mujoco", "gymnasium.envs.mujoco"),
         "metaworld_ml1": ("mujoco", "metaworld")}


def _rehashed(task_set: TaskSet, tasks: list[dict[str, Any]]) -> str:
    """The file form of ``task_set`` with ``tasks`` instead, its hash recomputed (an attacker)."""
    data = json.loads(task_set.to_json())
    data["tasks"] = tasks
    data["content_hash"] = TaskSet(task_set.family, task_set.split, task_set.seed,
                                   tuple(tasks)).content_hash
    return json.dumps(data)


def _refusal(family_name: str, tasks: list[dict[str, Any]], config: object = None) -> str:
    """The one-line message with which a rehashed file holding ``tasks`` is refused."""
    family = make_family(family_name, config)
    original = sample_task_sets(family, {"train": 2}, seed=0)["train"]
    loaded = TaskSet.from_json(_rehashed(original, tasks), source="data/tasks/train.json")
    with pytest.raises(TaskSetError) as info:
        loaded.check(family, source="data/tasks/train.json")
    message = str(info.value)
    assert message.startswith("data/tasks/train.json: tasks[")
    assert "\n" not in message
    assert "metarl stage tasks" in message
    return message


@pytest.mark.parametrize("name", [*CORE_FAMILIES, *NEEDS])
def test_sampled_tasks_pass_their_familys_check(name: str) -> None:
    for module in NEEDS.get(name, ()):
        pytest.importorskip(module)
    family = make_family(name)
    sets = sample_task_sets(family, {"train": 5, "val": 3, "test": 3}, seed=2)
    for task_set in sets.values():
        task_set.check(family)
        loaded = TaskSet.from_json(task_set.to_json())  # the JSON round trip keeps them valid
        loaded.check(family)
        for task in loaded.tasks:
            family.check_task(task)


def test_held_out_values_outside_the_sampling_range_pass() -> None:
    family = _family()
    family.check_task({"pole_length": 3.0, "pole_mass": 2.0, "cart_mass": 0.01,
                       "gravity": 30.0, "force_mag": -40})


def test_negative_mass_is_refused_naming_task_field_and_value() -> None:
    task = {"pole_length": 0.5, "pole_mass": -0.1, "cart_mass": 1.0, "gravity": 9.8,
            "force_mag": 10.0}
    message = _refusal("cartpole", [task])
    assert "tasks[0].pole_mass=-0.1: must be > 0 (a mass, kg)" in message
    with pytest.raises(ConfigError) as info:
        _family().check_task(task)
    assert (info.value.key, info.value.value) == ("pole_mass", -0.1)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.update(gravity=0.0), "tasks[1].gravity=0.0: must be > 0"),
        (lambda t: t.update(pole_length=-1), "tasks[1].pole_length=-1: must be > 0"),
        (lambda t: t.update(force_mag=0.0), "tasks[1].force_mag=0.0: must be non-zero"),
        (lambda t: t.update(cart_mass=True), "tasks[1].cart_mass=True: expected a number"),
        (lambda t: t.pop("cart_mass"), "tasks[1].cart_mass=<missing>: field missing"),
        (lambda t: t.update(wind=1.0), "tasks[1].wind=1.0: unknown field"),
    ],
)
def test_cartpole_task_errors(edit, needle: str) -> None:  # type: ignore[no-untyped-def]
    tasks = _family().sample(2, np.random.default_rng(0))
    edit(tasks[1])
    message = _refusal("cartpole", tasks)
    assert needle in message
    if "field" in needle:
        assert "'pole_mass'" in message  # lists the expected fields


def test_missing_field_value_reads_missing() -> None:
    assert repr(MISSING) == "<missing>"


def test_string_value_is_refused_by_the_file_check() -> None:
    family = _family()
    original = sample_task_sets(family, {"train": 2}, seed=0)["train"]
    tasks = [dict(t) for t in original.tasks]
    tasks[0]["pole_mass"] = "heavy"
    with pytest.raises(ValueError, match=re.escape("tasks[0].pole_mass='heavy'")):
        TaskSet.from_json(_rehashed(original, tasks), source="data/tasks/train.json")
    with pytest.raises(ConfigError, match=re.escape("pole_mass='heavy': expected a number")):
        family.check_task(tasks[0])


def test_bandit_task_errors() -> None:
    config = BanditFamilyConfig(num_arms=3)
    message = _refusal("bandit", [{"probs": [0.1, 0.2]}], config)
    assert "tasks[0].probs=[0.1, 0.2]: expected 3 entries, got 2" in message
    message = _refusal("bandit", [{"probs": [0.1, 1.5, 0.2]}], config)
    assert "tasks[0].probs[1]=1.5: must be a probability in [0, 1]" in message
    message = _refusal("bandit", [{"probs": [0.1, 0.5, -0.2]}], config)
    assert "tasks[0].probs[2]=-0.2" in message
    message = _refusal("bandit", [{"probs": [0.1, 0.5, 0.2], "arms": 3}], config)
    assert "tasks[0].arms=3: unknown field" in message


def test_tabular_mdp_task_errors() -> None:
    config = TabularMDPFamilyConfig(num_states=3, num_actions=2)
    family = make_family("tabular_mdp", config)
    task = family.sample(1, np.random.default_rng(0))[0]
    bad = json.loads(json.dumps(task))
    bad["transitions"][1][0] = [0.5, 0.2, 0.2]
    message = _refusal("tabular_mdp", [bad], config)
    assert "tasks[0].transitions[1][0]=[0.5, 0.2, 0.2]: a transition row must sum to 1" in message
    bad = json.loads(json.dumps(task))
    bad["transitions"][2][1] = [1.5, -0.5, 0.0]
    message = _refusal("tabular_mdp", [bad], config)
    assert ("tasks[0].transitions[2][1]=[1.5, -0.5, 0.0]: a transition row must be "
            "non-negative") in message
    bad = json.loads(json.dumps(task))
    bad["reward_means"] = bad["reward_means"][:2]
    message = _refusal("tabular_mdp", [bad], config)
    assert "tasks[0].reward_means=" in message and "expected 3 entries, got 2" in message
    bad = json.loads(json.dumps(task))
    bad["transitions"][0][0] = [0.5, 0.5]  # 2 next states in a 3-state MDP
    assert "tasks[0].transitions[0][0]=[0.5, 0.5]" in _refusal("tabular_mdp", [bad], config)
    row = np.array(task["transitions"][0][1])
    near = json.loads(json.dumps(task))
    near["transitions"][0][1] = (row / row.sum() * (1 + 1e-8)).tolist()  # within tolerance
    family.check_task(near)


@pytest.mark.parametrize(
    ("name", "task", "needle"),
    [
        ("nav2d", {"goal_x": 0.1}, "goal_y=<missing>"),
        ("pendulum", {"mass": 1.0, "length": 0.0, "gravity": 10.0}, "length=0.0: must be > 0"),
    ],
)
def test_other_core_family_errors(name: str, task: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        make_family(name).check_task(task)


def test_mujoco_and_metaworld_task_errors() -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium.envs.mujoco")
    with pytest.raises(ConfigError, match=re.escape("direction=0.5: must be -1")):
        make_family("cheetah_dir").check_task({"direction": 0.5})
    with pytest.raises(ConfigError, match=re.escape("velocity=inf")):
        make_family("cheetah_vel").check_task({"velocity": float("inf")})
    make_family("cheetah_vel").check_task({"velocity": -3.0})  # backward, outside [0, 2]
    with pytest.raises(ConfigError, match=re.escape("angle=<missing>")):
        make_family("ant_dir").check_task({"theta": 0.0})
    pytest.importorskip("metaworld")
    family = make_family("metaworld_ml1")
    task = family.sample(1, np.random.default_rng(0))[0]
    for field, value, needle in [("test_split", 2, "must be <= 1"),
                                 ("goal_index", 50, "must be <= 49"),
                                 ("goal_index", 1.0, "expected an integer"),
                                 ("benchmark_seed", -1, "must be >= 0"),
                                 ("rand_vec", [], "expected a non-empty list")]:
        with pytest.raises(ConfigError, match=re.escape(f"{field}={value!r}: {needle}")):
            family.check_task({**task, field: value})


# --- through the CLI ------------------------------------------------------------------------

def _cli(root: Path, *args: str) -> int:
    return main([*args, "--root", str(root)])


def test_train_file_saved_as_test_is_refused(project: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(project, "stage", "tasks") == 0
    tasks_dir = project / "data" / "tasks"
    (tasks_dir / "test.json").write_text((tasks_dir / "train.json").read_text())
    capsys.readouterr()
    assert _cli(project, "stage", "evaluate") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, "the error is one line"
    assert err.startswith("metarl: error: ")
    assert "test.json: split='train' but it is read as the test split" in err
    assert "metarl stage tasks" in err


def test_rehashed_negative_mass_stops_training(project: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(project, "stage", "tasks") == 0
    path = project / "data" / "tasks" / "train.json"
    original = TaskSet.from_json(path.read_text())
    tasks = [dict(t) for t in original.tasks]
    tasks[0]["pole_mass"] = -0.1
    path.write_text(_rehashed(original, tasks))
    capsys.readouterr()
    assert _cli(project, "stage", "train") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, "the error is one line"
    assert "train.json: tasks[0].pole_mass=-0.1: must be > 0" in err
    assert not (project / "models").exists()
    tasks[0]["pole_mass"] = 0.1
    tasks[1]["wind"] = 1.0
    path.write_text(_rehashed(original, tasks))
    assert _cli(project, "stage", "train") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tasks[1].wind=1.0: unknown field" in err
    assert "Traceback" not in err
    assert not (project / "models").exists()
