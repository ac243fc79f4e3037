"""The Meta-World ML1 family (metaworld_ml1): env contract, the official train/test split,
determinism, success, config errors, and a tiny in-process pipeline run.

Tests that need Meta-World skip cleanly when it is not installed
(``pip install -e ".[metaworld]"``).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.config import ConfigError
from metarl.envs.metaworld_tasks import MetaWorldML1FamilyConfig, ml1_goal
from metarl.families import make_family
from metarl.tasks import sample_task_sets
from pipelines.cli import main
from tests.conftest import run_tiny_family, tiny_params, write_params


@pytest.fixture
def metaworld() -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("metaworld")


def _family(**config: object):  # type: ignore[no-untyped-def]
    return make_family("metaworld_ml1", MetaWorldML1FamilyConfig(**config))  # type: ignore[arg-type]


@pytest.mark.usefixtures("metaworld")
def test_env_contract_and_success_tracking() -> None:
    fam = _family(max_steps=5)
    tasks = fam.sample(3, np.random.default_rng(0))
    env = fam.make_env(tasks, num_envs=2)
    assert (env.num_tasks, env.num_envs, env.obs_dim, env.action_dim) == (3, 2, 39, 4)
    assert not env.discrete and env.num_actions == 0 and env.max_steps == 5
    assert env.action_low == (-1.0,) * 4 and env.action_high == (1.0,) * 4
    obs = env.reset(torch.Generator().manual_seed(0))
    assert obs.shape == (3, 2, 39) and obs.dtype == torch.float32
    assert torch.all(obs[..., -3:] == 0)  # ML1 hides the goal
    obs, reward, terminated = env.step(torch.randn(3, 2, 4) * 3)  # clipped by the env
    assert obs.shape == (3, 2, 39) and obs.dtype == torch.float32
    assert reward.shape == (3, 2) and reward.dtype == torch.float32
    assert terminated.shape == (3, 2) and terminated.dtype == torch.bool
    assert not terminated.any() and torch.isfinite(obs).all()
    assert ((reward >= 0) & (reward <= 10)).all()  # Meta-World v2 rewards
    assert env.success.shape == (3, 2) and env.success.dtype == torch.bool
    assert env.success_rate().shape == (3,)
    assert np.isnan(fam.oracle_returns(tasks)).all()


@pytest.mark.usefixtures("metaworld")
def test_reach_success_is_reported_when_the_hand_is_driven_to_the_goal() -> None:
    fam = _family(max_steps=100)
    task = fam.sample(1, np.random.default_rng(0))[0]
    env = fam.make_env([task], num_envs=1)
    env.reset(torch.Generator())
    goal = torch.tensor(task["rand_vec"][3:], dtype=torch.float32)
    for _ in range(100):  # a proportional controller on the hand position (obs[:3])
        action = torch.zeros(1, 1, 4)
        action[0, 0, :3] = (goal - env.obs[0, 0, :3]) * 50
        env.step(action)
        if env.success.all():
            break
    assert env.success.all() and env.success_rate().item() == 1.0
    env.done[:] = True
    env.reset_done(torch.Generator())
    assert not env.success.any()


@pytest.mark.usefixtures("metaworld")
def test_splits_come_from_the_official_ml1_train_and_test_goals() -> None:
    import metaworld

    fam = _family()
    sets = sample_task_sets(fam, {"train": 50, "val": 4, "test": 60}, seed=3)
    bench = metaworld.ML1("reach-v3", seed=0)

    def goals(tasks: list) -> np.ndarray:
        return np.stack([pickle.loads(t.data)["rand_vec"] for t in tasks])

    official = {0: goals(bench.train_tasks), 1: goals(bench.test_tasks)}
    for split, expected in (("train", 0), ("val", 0), ("test", 1)):
        for task in sets[split].tasks:
            assert task["test_split"] == expected and task["benchmark_seed"] == 0
            np.testing.assert_array_equal(task["rand_vec"],
                                          official[expected][task["goal_index"]])
            np.testing.assert_array_equal(
                task["rand_vec"], ml1_goal("reach-v3", 0, bool(expected), task["goal_index"]))
    # 50 train tasks are all 50 train goals; 60 test tasks cover every test goal.
    assert sorted(t["goal_index"] for t in sets["train"].tasks) == list(range(50))
    assert {t["goal_index"] for t in sets["test"].tasks} == set(range(50))
    train_goals = {tuple(t["rand_vec"]) for t in sets["train"].tasks}
    assert not train_goals & {tuple(t["rand_vec"]) for t in sets["test"].tasks}


@pytest.mark.usefixtures("metaworld")
def test_a_task_set_file_reproduces_the_goal_and_the_rollout() -> None:
    from metarl.tasks import TaskSet

    fam = _family(max_steps=10)
    task_set = sample_task_sets(fam, {"train": 2, "val": 1, "test": 2}, seed=0)["test"]
    loaded = TaskSet.from_json(task_set.to_json())
    actions = torch.rand(6, 2, 2, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def run(tasks: list, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        env = fam.make_env(tasks, num_envs=2)
        obs = [env.reset(torch.Generator().manual_seed(seed))]
        rewards = []
        for a in actions:
            o, r, _ = env.step(a)
            obs.append(o)
            rewards.append(r)
        return torch.stack(obs), torch.stack(rewards)

    o1, r1 = run(list(task_set.tasks), 0)
    o2, r2 = run(list(loaded.tasks), 0)
    assert torch.equal(o1, o2) and torch.equal(r1, r2)
    assert not torch.equal(r1[:, 0], r1[:, 1])  # two goals, two reward streams


@pytest.mark.usefixtures("metaworld")
def test_unknown_env_name_and_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        _family(env_name="fly-v3")
    assert err.value.key == "task.metaworld_ml1.env_name"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"max_steps": 0}, "max_steps"), ({"max_steps": 501}, "max_steps"),
     ({"benchmark_seed": -1}, "benchmark_seed"), ({"env_name": "reach-v2"}, "env_name")],
)
def test_bad_config_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MetaWorldML1FamilyConfig(**kwargs)
    assert err.value.key == key


def test_missing_metaworld_is_a_config_error_naming_the_family(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld now raises
    with pytest.raises(ConfigError) as err:
        make_family("metaworld_ml1")
    assert err.value.key == "task.family" and err.value.value == "metaworld_ml1"
    assert 'pip install -e ".[metaworld]"' in str(err.value)


def test_bad_params_stop_the_tasks_stage_with_key_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tiny_params()
    params["task"]["family"] = "metaworld_ml1"
    params["task"]["metaworld_ml1"]["max_steps"] = 600
    write_params(tmp_path, params)
    assert main(["stage", "tasks", "--root", str(tmp_path)]) == 2
    assert "task.metaworld_ml1.max_steps=600: " in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.usefixtures("metaworld")
def test_metaworld_runs_tasks_train_evaluate(tmp_path: Path) -> None:
    run_tiny_family(tmp_path, "metaworld_ml1")

    train = json.loads((tmp_path / "data/tasks/train.json").read_text())
    test = json.loads((tmp_path / "data/tasks/test.json").read_text())
    assert test["family"] == "metaworld_ml1"
    assert all(t["test_split"] == 0 for t in train["tasks"])
    assert all(t["test_split"] == 1 for t in test["tasks"])
    ckpt = json.loads((tmp_path / "models/config.json").read_text())
    assert (ckpt["policy"], ckpt["action_dim"], ckpt["family"]) == ("gaussian", 4,
                                                                    "metaworld_ml1")
    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    # no closed-form optimum: normalised by the trained task-conditioned policy
    assert summary["oracle_kind"] == "task-conditioned"
    assert 0 <= summary["oracle_return"] <= 200
    assert json.loads((tmp_path / "models/oracle.json").read_text())["obs_dim"] == 39 + 6
    for name in ("maml", "pretrained", "scratch", "random"):
        assert np.isfinite(summary[name]["return_post_adapt_k1"]), name
        assert summary[name]["normalized_post_adapt"] is not None
        assert 0 <= summary[name]["return_pre_adapt"] <= 200  # 20 steps of 0..10
        for k in (0, 1):  # the share of episodes that succeeded, per adaptation step
            assert 0.0 <= summary[name][f"success_rate_k{k}"] <= 1.0, name
    assert "Success rate" in (tmp_path / "reports/meta_test.md").read_text()


class _GoalSeeker:
    """A 'learner' that drives the hand to the goal it is told (success 1), for the evaluator."""

    def __init__(self, goals: torch.Tensor) -> None:
        self.goals = goals  # [N, 3]

    def initial_params(self, num_tasks: int) -> dict[str, torch.Tensor]:
        return {}

    def explore(self, params: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
        def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            action = torch.zeros(*obs.shape[:2], 4)
            action[..., :3] = (self.goals[:, None, :] - obs[..., :3]) * 50
            return action
        return act

    act = explore

    def adapt(self, params: dict[str, torch.Tensor], episodes: object) -> dict[str, torch.Tensor]:
        return params


@pytest.mark.usefixtures("metaworld")
def test_evaluator_reports_the_success_rate_per_adaptation_step() -> None:
    from metarl.algos.base import RandomLearner
    from metarl.evaluation import adaptation_curves

    fam = _family(max_steps=60)
    tasks = fam.sample(3, np.random.default_rng(0))
    goals = torch.tensor(np.stack([t["rand_vec"][3:] for t in tasks]), dtype=torch.float32)
    returns, success = adaptation_curves(_GoalSeeker(goals), fam, tasks, 1, 2, seed=0)
    assert returns.shape == (2, 3) and success is not None and success.shape == (2, 3)
    assert (success == 1.0).all()
    _, random_success = adaptation_curves(RandomLearner(), fam, tasks, 1, 2, seed=0)
    assert random_success is not None and random_success.mean() < 0.5
