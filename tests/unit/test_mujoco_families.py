"""The MuJoCo families (cheetah_vel, cheetah_dir, ant_dir): env contract, rewards recomputed
from gymnasium's info, seeding, config errors, and a tiny in-process pipeline run.

Tests that need MuJoCo skip cleanly when it is not installed (``pip install -e ".[mujoco]"``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.config import ConfigError
from metarl.envs.mujoco_tasks import (
    AntDirFamilyConfig,
    CheetahDirFamilyConfig,
    CheetahVelFamilyConfig,
)
from metarl.families import make_family
from pipelines.cli import main
from tests.conftest import run_tiny_family, tiny_params, write_params

FAMILIES = ["cheetah_vel", "cheetah_dir", "ant_dir"]
DIMS = {"cheetah_vel": (17, 6), "cheetah_dir": (17, 6), "ant_dir": (105, 8)}
TASKS = {"cheetah_vel": [{"velocity": 0.0}, {"velocity": 2.0}],
         "cheetah_dir": [{"direction": 1.0}, {"direction": -1.0}],
         "ant_dir": [{"angle": 0.0}, {"angle": math.pi}]}


@pytest.fixture
def mujoco() -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium.envs.mujoco")


def _family(name: str, **config: object):  # type: ignore[no-untyped-def]
    cls = {"cheetah_vel": CheetahVelFamilyConfig, "cheetah_dir": CheetahDirFamilyConfig,
           "ant_dir": AntDirFamilyConfig}[name]
    return make_family(name, cls(**config))


def _expected_reward(name: str, task: dict[str, float], info: dict, action: np.ndarray
                     ) -> float:
    """The reference formulas (MAML / PEARL constants), from a single gymnasium env's info."""
    a = np.clip(action, -1, 1).astype(np.float64)
    if name == "cheetah_vel":
        return -abs(info["x_velocity"] - task["velocity"]) - 0.05 * float(np.sum(a**2))
    if name == "cheetah_dir":
        return task["direction"] * info["x_velocity"] - 0.05 * float(np.sum(a**2))
    forward = (math.cos(task["angle"]) * info["x_velocity"]
               + math.sin(task["angle"]) * info["y_velocity"])
    return (forward - 0.5 * float(np.sum(a**2)) + info["reward_contact"]
            + info["reward_survive"])


@pytest.mark.usefixtures("mujoco")
@pytest.mark.parametrize("name", FAMILIES)
def test_env_contract(name: str) -> None:
    fam = _family(name, max_steps=5)
    tasks = fam.sample(3, np.random.default_rng(0))
    assert len(tasks) == 3 and all(np.isfinite(list(t.values())).all() for t in tasks)
    env = fam.make_env(tasks, num_envs=2)
    obs_dim, action_dim = DIMS[name]
    assert (env.num_tasks, env.num_envs, env.obs_dim, env.action_dim) == (3, 2, obs_dim,
                                                                          action_dim)
    assert not env.discrete and env.num_actions == 0 and env.max_steps == 5
    assert env.action_low == (-1.0,) * action_dim and env.action_high == (1.0,) * action_dim
    obs = env.reset(torch.Generator().manual_seed(0))
    assert obs.shape == (3, 2, obs_dim) and obs.dtype == torch.float32
    obs, reward, terminated = env.step(torch.randn(3, 2, action_dim) * 3)  # clipped by the env
    assert obs.shape == (3, 2, obs_dim) and obs.dtype == torch.float32
    assert reward.shape == (3, 2) and reward.dtype == torch.float32
    assert terminated.shape == (3, 2) and terminated.dtype == torch.bool
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert np.isnan(fam.oracle_returns(tasks)).all()


@pytest.mark.usefixtures("mujoco")
@pytest.mark.parametrize("name", FAMILIES)
def test_reward_matches_reference_formula_on_a_single_gymnasium_env(name: str) -> None:
    import gymnasium as gym

    fam = _family(name)
    tasks = TASKS[name]
    env = fam.make_env(tasks, num_envs=2)
    seed = 7
    env.reset(torch.Generator().manual_seed(seed))
    # Slot (task 1, env 0) is sub-env 2; its reset seed is the generator's third draw.
    slot_seed = int(torch.randint(0, 2**31 - 1, (4,),
                                  generator=torch.Generator().manual_seed(seed))[2])
    env_id = "Ant-v5" if name == "ant_dir" else "HalfCheetah-v5"
    single = gym.make(env_id)
    single_obs, _ = single.reset(seed=slot_seed)
    np.testing.assert_allclose(env.obs[1, 0].numpy(), single_obs.astype(np.float32))
    rng = np.random.default_rng(0)
    for _ in range(5):
        actions = torch.from_numpy(rng.uniform(-1.5, 1.5, size=(2, 2, env.action_dim)))
        obs, reward, _ = env.step(actions)
        a = np.clip(actions[1, 0].numpy(), -1, 1).astype(np.float32)
        single_obs, _, _, _, info = single.step(a)
        np.testing.assert_allclose(obs[1, 0].numpy(), single_obs.astype(np.float32),
                                   rtol=1e-5, atol=1e-5)
        expected = _expected_reward(name, tasks[1], info, a)
        assert reward[1, 0].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.usefixtures("mujoco")
@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_rollout_other_seed_other_rollout(name: str) -> None:
    fam = _family(name)
    tasks = fam.sample(2, np.random.default_rng(1))
    actions = torch.rand(4, 2, 2, DIMS[name][1], generator=torch.Generator().manual_seed(3))

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        env = fam.make_env(tasks, num_envs=2)
        obs = [env.reset(torch.Generator().manual_seed(seed))]
        rewards = []
        for a in actions * 2 - 1:
            o, r, _ = env.step(a)
            obs.append(o)
            rewards.append(r)
        return torch.stack(obs), torch.stack(rewards)

    o1, r1 = run(0)
    o2, r2 = run(0)
    o3, r3 = run(1)
    assert torch.equal(o1, o2) and torch.equal(r1, r2)
    assert not torch.equal(o1[0], o3[0]) and not torch.equal(r1, r3)


@pytest.mark.usefixtures("mujoco")
@pytest.mark.parametrize("name", FAMILIES)
def test_different_tasks_give_different_rewards_for_the_same_motion(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fam = _family(name)
    env = fam.make_env(TASKS[name], num_envs=1)
    # Every slot starts from the same seed, so both tasks see the very same physics.
    monkeypatch.setattr(env, "_seeds", lambda generator: [5, 5])
    env.reset(torch.Generator())
    action = torch.rand(1, 1, DIMS[name][1], generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        obs, reward, _ = env.step(action.expand(2, 1, -1) * 2 - 1)
        assert torch.equal(obs[0], obs[1])
        assert reward[0, 0].item() != pytest.approx(reward[1, 0].item(), abs=1e-6)


@pytest.mark.usefixtures("mujoco")
def test_ant_rollout_steps_resets_ended_slots() -> None:
    from metarl.sampler import rollout, rollout_steps

    fam = _family("ant_dir", max_steps=3, directions="circle", contact_forces_in_obs=False)
    tasks = fam.sample(2, np.random.default_rng(0))
    assert all(0 <= t["angle"] < 2 * math.pi for t in tasks)
    env = fam.make_env(tasks, num_envs=2)
    assert env.obs_dim == 27
    batch = rollout_steps(None, env, 7, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (2, 2, 7, 27)
    assert batch.dones[..., 2].all() and batch.dones[..., 5].all()  # truncated at 3 steps
    episodes = rollout(None, env, torch.Generator().manual_seed(0))
    assert episodes.rewards.shape == (2, 2, 3) and torch.isfinite(episodes.rewards).all()


def test_missing_mujoco_is_a_config_error_naming_the_family(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now raises ImportError
    for name in FAMILIES:
        with pytest.raises(ConfigError) as err:
            make_family(name)
        assert err.value.key == "task.family" and err.value.value == name
        assert 'pip install -e ".[mujoco]"' in str(err.value)


@pytest.mark.parametrize(
    ("config", "kwargs", "key"),
    [
        (CheetahVelFamilyConfig, {"velocity": (2.0, 0.0)}, "velocity"),
        (CheetahVelFamilyConfig, {"max_steps": 0}, "max_steps"),
        (CheetahDirFamilyConfig, {"ctrl_cost_weight": -0.1}, "ctrl_cost_weight"),
        (AntDirFamilyConfig, {"contact_cost_weight": float("nan")}, "contact_cost_weight"),
    ],
)
def test_bad_config_values_name_the_key(config: type, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**kwargs)
    assert err.value.key == key


@pytest.mark.parametrize(
    ("family", "edit", "message"),
    [
        ("cheetah_vel", {"velocity": [2.0, 0.0]}, "task.cheetah_vel.velocity=(2.0, 0.0): "),
        ("ant_dir", {"directions": "up"}, "task.ant_dir.directions='up': "),
        ("cheetah_dir", {"speed": 1}, "task.cheetah_dir.speed"),
    ],
)
def test_bad_params_stop_the_tasks_stage_with_key_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str, edit: dict, message: str
) -> None:
    params = tiny_params()
    params["task"]["family"] = family
    params["task"][family].update(edit)
    write_params(tmp_path, params)
    assert main(["stage", "tasks", "--root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.usefixtures("mujoco")
def test_cheetah_vel_runs_tasks_train_evaluate(tmp_path: Path) -> None:
    run_tiny_family(tmp_path, "cheetah_vel")

    tasks = json.loads((tmp_path / "data/tasks/test.json").read_text())
    assert tasks["family"] == "cheetah_vel"
    assert all(0 <= t["velocity"] <= 2 for t in tasks["tasks"])
    ckpt = json.loads((tmp_path / "models/config.json").read_text())
    assert (ckpt["policy"], ckpt["action_dim"], ckpt["family"]) == ("gaussian", 6,
                                                                    "cheetah_vel")
    oracle = json.loads((tmp_path / "models/oracle.json").read_text())
    assert oracle["oracle"] == "task-conditioned"
    assert oracle["obs_dim"] == 17 + 1 and len(oracle["feature_mean"]) == 1  # obs + velocity
    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    # no closed-form optimum: normalised by the trained task-conditioned policy
    assert summary["oracle_kind"] == "task-conditioned"
    assert -100 < summary["oracle_return"] < 20
    for name in ("maml", "pretrained", "scratch", "random"):
        assert np.isfinite(summary[name]["return_post_adapt_k1"]), name
        assert summary[name]["normalized_post_adapt"] is not None
        assert -100 < summary[name]["return_pre_adapt"] < 20  # 20 steps of -|v - goal| - cost
