"""RL²'s task families: env contract, determinism, statistics, oracles, configs, task sets."""

from __future__ import annotations

import copy
import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl  # noqa: F401  (registers the gymnasium views)
from metarl.config import ConfigError, from_mapping
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig, BatchedBandit, MetaBanditEnv
from metarl.envs.tabular_mdp import (
    BatchedTabularMDP,
    MetaTabularMDPEnv,
    TabularMDPFamily,
    TabularMDPFamilyConfig,
    value_iteration,
)
from metarl.families import make_family
from metarl.sampler import rollout
from metarl.tasks import TaskSet, sample_task_sets
from pipelines.settings import load_config
from tests.conftest import tiny_params, write_params

torch.set_num_threads(1)

# A 2-state, 2-action MDP small enough to solve by hand.
R2 = [[1.0, 0.0], [0.0, 2.0]]  # R[s][a]
P2 = [[[1.0, 0.0], [0.0, 1.0]],  # from s=0: a=0 stays, a=1 moves to 1
      [[0.5, 0.5], [1.0, 0.0]]]  # from s=1: a=0 coin flip, a=1 back to 0
MDP2 = {"reward_means": R2, "transitions": P2}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mdp_env(tasks: list[dict], num_envs: int = 1, horizon: int = 3,
             noise: float = 1.0) -> BatchedTabularMDP:
    return BatchedTabularMDP.from_tasks(tasks, num_envs, horizon, noise, dtype=torch.float64)


# --- gymnasium views -------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: gym.make("metarl/Bandit-v0"),
    lambda: MetaBanditEnv({"probs": [0.2, 0.9, 0.5]}, num_pulls=7),
    lambda: gym.make("metarl/TabularMDP-v0"),
    lambda: MetaTabularMDPEnv(MDP2, horizon=4),
])
def test_check_env_passes(make) -> None:
    env = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def _episode(env: gym.Env, seed: int, actions: list[int]) -> list[tuple]:
    obs, _ = env.reset(seed=seed)
    out = [tuple(obs)]
    for a in actions:
        obs, rew, term, trunc, _ = env.step(a)
        out.append((*obs, rew, term, trunc))
        if term:
            break
    return out


@pytest.mark.parametrize("env_id", ["metarl/Bandit-v0", "metarl/TabularMDP-v0"])
def test_same_seed_same_rollout(env_id: str) -> None:
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 5, size=200)]
    a = _episode(gym.make(env_id), 3, actions)
    b = _episode(gym.make(env_id), 3, actions)
    c = _episode(gym.make(env_id), 4, actions)
    assert a == b
    assert a != c


def test_bandit_view_episode_is_one_trial() -> None:
    env = MetaBanditEnv({"probs": [0.0, 1.0]}, num_pulls=4)
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [0.0] and info["probs"].tolist() == [0.0, 1.0]
    steps = [env.step(1) for _ in range(4)]
    assert [s[0].tolist() for s in steps] == [[0.25], [0.5], [0.75], [1.0]]
    assert [s[1] for s in steps] == [1.0] * 4  # p = 1 always pays
    assert [s[2] for s in steps] == [False, False, False, True]
    assert env.step(0)[1:3] == (0.0, True)  # past the end: nothing more
    with pytest.raises(ValueError, match="action=2"):
        env.step(2)
    with pytest.raises(ValueError, match="render_mode='human'"):
        MetaBanditEnv(render_mode="human")


def test_views_replay_the_batched_dynamics() -> None:
    """The view is the batched env with noise from ``np_random``: replaying that noise through
    ``step_with`` of a separate batched env gives the same observations and rewards."""
    view = MetaTabularMDPEnv(MDP2, horizon=6)
    view.reset(seed=11)
    rng = copy.deepcopy(view.np_random)
    env = _mdp_env([MDP2], horizon=6)
    env.restart()
    for a in [0, 1, 0, 0, 1, 1]:
        obs, rew, term, _, info = view.step(a)
        noise = torch.tensor([[[rng.standard_normal(), rng.random()]]], dtype=torch.float64)
        b_obs, b_rew, b_term = env.step_with(torch.tensor([[a]]), noise)
        assert obs.tolist() == b_obs[0, 0].tolist()
        assert info["state"] == int(env.state.item())
        assert rew == pytest.approx(float(b_rew.item()), abs=1e-12)
        assert term == bool(b_term.item())
    assert term


# --- batched envs ----------------------------------------------------------------------------

def test_bandit_batched_equals_each_slot_alone() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.9], [0.7, 0.2, 0.4]])
    env = BatchedBandit(probs, num_envs=3, num_pulls=5)
    env.restart()
    singles = [[BatchedBandit(probs[i:i + 1], 1, 5) for _ in range(3)] for i in range(2)]
    for row in singles:
        for single in row:
            single.restart()
    g = _gen(0)
    for _ in range(5):
        actions = torch.randint(0, 3, (2, 3), generator=g)
        noise = env.sample_noise(g)
        obs, rew, term = env.step_with(actions, noise)
        for i in range(2):
            for j in range(3):
                o, r, t = singles[i][j].step_with(actions[i:i + 1, j:j + 1],
                                                  noise[i:i + 1, j:j + 1])
                assert o[0, 0].tolist() == obs[i, j].tolist()
                assert r.item() == rew[i, j].item() and t.item() == term[i, j].item()
    assert term.all() and env.done.all()


def test_mdp_batched_equals_each_slot_alone() -> None:
    tasks = TabularMDPFamily(TabularMDPFamilyConfig()).sample(3, np.random.default_rng(1))
    env = _mdp_env(tasks, num_envs=2, horizon=10)
    env.restart()
    singles = [[_mdp_env([t], horizon=10) for _ in range(2)] for t in tasks]
    for row in singles:
        for single in row:
            single.restart()
    g = _gen(1)
    for _ in range(10):
        actions = torch.randint(0, 5, (3, 2), generator=g)
        noise = env.sample_noise(g)
        obs, rew, term = env.step_with(actions, noise)
        for i in range(3):
            for j in range(2):
                o, r, t = singles[i][j].step_with(actions[i:i + 1, j:j + 1],
                                                  noise[i:i + 1, j:j + 1])
                assert torch.equal(o[0, 0], obs[i, j])
                assert r.item() == rew[i, j].item() and t.item() == term[i, j].item()
    assert term.all()


def test_bandit_rewards_have_the_arm_frequencies() -> None:
    env = BatchedBandit(torch.tensor([[0.2, 0.8]]), num_envs=20_000, num_pulls=1)
    env.reset(_gen(0))
    for arm, p in ((0, 0.2), (1, 0.8)):
        env.restart()
        _, reward, terminated = env.step(torch.full((1, 20_000), arm))
        assert reward.mean().item() == pytest.approx(p, abs=0.01)
        assert terminated.all()


def test_mdp_transitions_and_rewards_have_the_right_law() -> None:
    env = _mdp_env([MDP2], num_envs=40_000, horizon=2, noise=1.0)
    env.reset(_gen(2))
    env.state[:] = 1
    obs, reward, _ = env.step(torch.zeros(1, 40_000, dtype=torch.long))  # s=1, a=0: coin flip
    assert obs.shape == (1, 40_000, 2)
    assert obs.sum(-1).eq(1).all()
    assert env.state.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert reward.mean().item() == pytest.approx(0.0, abs=0.02)
    assert reward.std().item() == pytest.approx(1.0, abs=0.02)


def test_episodes_end_at_the_horizon_and_stay_ended() -> None:
    env = _mdp_env([MDP2], num_envs=2, horizon=3, noise=0.0)
    env.reset(_gen(0))
    rewards = []
    for step in range(3):
        _, r, term = env.step(torch.tensor([[0, 1]]))
        rewards.append(r[0].tolist())
        assert term.all() == (step == 2)
    assert rewards == [[1.0, 0.0], [1.0, 2.0], [1.0, 0.0]]  # a=1 alternates 0 → 1 → 0
    _, r, term = env.step(torch.tensor([[0, 1]]))
    assert r.tolist() == [[0.0, 0.0]] and not term.any()
    env.done[0, 0] = True
    env.done[0, 1] = False
    env.reset_done(_gen(0))
    assert env.state.tolist() == [[0, 1]] and env.t.tolist() == [[0, 3]]


def test_step_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        BatchedBandit(torch.tensor([[0.5, 0.5]]), 1, 3).step(torch.zeros(1, 1, dtype=torch.long))


def test_bad_tables_are_rejected() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        BatchedBandit(torch.tensor([[0.5, 1.5]]), 1, 3)
    with pytest.raises(ValueError, match="sum to 1"):
        BatchedTabularMDP.from_tasks([{"reward_means": R2,
                                       "transitions": [[[0.5, 0.4], [0, 1]], [[1, 0], [1, 0]]]}],
                                     1)


@pytest.mark.parametrize("family_name", ["bandit", "tabular_mdp"])
def test_sampler_rollout_same_seed_same_tensors(family_name: str) -> None:
    family = make_family(family_name)
    tasks = family.sample(4, np.random.default_rng(0))
    env = family.make_env(tasks, num_envs=3)
    a = rollout(None, env, _gen(5))
    b = rollout(None, family.make_env(tasks, num_envs=3), _gen(5))
    c = rollout(None, env, _gen(6))
    assert a.rewards.shape == (4, 3, family.max_steps)
    assert a.mask.sum().item() == 4 * 3 * family.max_steps  # fixed-length episodes
    for x, y in zip((a.obs, a.actions, a.rewards), (b.obs, b.actions, b.rewards), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.rewards, c.rewards)


# --- oracles ---------------------------------------------------------------------------------

def test_bandit_oracle_is_n_times_the_best_arm() -> None:
    family = BanditFamily(BanditFamilyConfig(num_arms=3, num_pulls=10))
    tasks = [{"probs": [0.1, 0.7, 0.3]}, {"probs": [0.95, 0.2, 0.3]}]
    np.testing.assert_allclose(family.oracle_returns(tasks), [7.0, 9.5])


def test_value_iteration_on_a_hand_solved_mdp() -> None:
    # By hand (V_h = values with h steps to go):
    # V_1 = (max(1, 0), max(0, 2)) = (1, 2)
    # Q_2(0) = (1 + V_1(0), 0 + V_1(1)) = (2, 2);    Q_2(1) = (0 + .5·1 + .5·2, 2 + 1) = (1.5, 3)
    # V_2 = (2, 3);  Q_3(0) = (1 + 2, 0 + 3) = (3, 3); Q_3(1) = (0 + 2.5, 2 + 2) = (2.5, 4)
    q = value_iteration(torch.tensor([R2]), torch.tensor([P2]), horizon=3)[0]
    assert q.shape == (3, 2, 2)
    assert q[2].tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert q[1].tolist() == [[2.0, 2.0], [1.5, 3.0]]
    assert q[0].tolist() == [[3.0, 3.0], [2.5, 4.0]]
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_states=2, num_actions=2, horizon=3,
                                                     num_episodes=4))
    np.testing.assert_allclose(family.oracle_returns([MDP2]), [3.0])
    np.testing.assert_allclose(family.trial_oracle_returns([MDP2]), [12.0])


# --- configs and task sets -------------------------------------------------------------------

@pytest.mark.parametrize(("cls", "prefix", "key", "value"), [
    (BanditFamilyConfig, "task.bandit", "num_arms", 1),
    (BanditFamilyConfig, "task.bandit", "num_pulls", 0),
    (TabularMDPFamilyConfig, "task.tabular_mdp", "num_states", 0),
    (TabularMDPFamilyConfig, "task.tabular_mdp", "num_actions", 1),
    (TabularMDPFamilyConfig, "task.tabular_mdp", "horizon", 0),
    (TabularMDPFamilyConfig, "task.tabular_mdp", "num_episodes", -3),
    (TabularMDPFamilyConfig, "task.tabular_mdp", "reward_noise_std", -1.0),
    (TabularMDPFamilyConfig, "task.tabular_mdp", "dirichlet_alpha", 0.0),
])
def test_config_errors_name_key_and_value(cls, prefix: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(cls, {key: value}, prefix=prefix)
    assert info.value.key == f"{prefix}.{key}"
    assert info.value.value == value
    assert f"{prefix}.{key}={value!r}" in str(info.value)


def test_params_yaml_sections_load_and_validate(tmp_path) -> None:
    params = tiny_params()
    params["task"]["family"] = "tabular_mdp"
    config = load_config(write_params(tmp_path, params))
    assert config.task.family_config() == TabularMDPFamilyConfig()
    assert config.task.bandit == BanditFamilyConfig(num_arms=5, num_pulls=100)
    params["task"]["bandit"]["num_arms"] = 1
    with pytest.raises(ConfigError, match=r"task\.bandit\.num_arms=1"):
        load_config(write_params(tmp_path, params))


@pytest.mark.parametrize("name", ["bandit", "tabular_mdp"])
def test_task_sets_with_list_values_round_trip(name: str) -> None:
    family = make_family(name)
    sets = sample_task_sets(family, {"train": 3, "test": 2}, seed=4)
    again = sample_task_sets(family, {"train": 3, "test": 2}, seed=4)
    assert sets == again
    text = sets["train"].to_json()
    loaded = TaskSet.from_json(text)
    assert loaded == sets["train"]
    assert loaded.content_hash == sets["train"].content_hash
    env = family.make_env(list(loaded.tasks), num_envs=1)
    assert env.num_tasks == 3


@pytest.mark.parametrize("bad", [[0.5, float("nan")], [], [[0.1], []], ["0.5"], [[0.5, None]]])
def test_task_set_rejects_bad_list_values(bad: list) -> None:
    data = json.loads(TaskSet("bandit", "train", 0, ({"probs": [0.5, 0.5]},)).to_json())
    data["tasks"][0]["probs"] = bad
    data["content_hash"] = TaskSet("bandit", "train", 0, tuple(data["tasks"])).content_hash
    with pytest.raises(ValueError, match=r"tasks\[0\].*expected finite numbers"):
        TaskSet.from_json(json.dumps(data))


def test_families_sample_the_papers_priors() -> None:
    bandit = BanditFamily(BanditFamilyConfig(num_arms=10))
    probs = np.array([t["probs"] for t in bandit.sample(2000, np.random.default_rng(0))])
    assert probs.shape == (2000, 10)
    assert probs.min() >= 0 and probs.max() <= 1
    assert probs.mean() == pytest.approx(0.5, abs=0.01)
    assert probs.var() == pytest.approx(1 / 12, abs=0.005)
    mdp = TabularMDPFamily(TabularMDPFamilyConfig())
    tasks = mdp.sample(500, np.random.default_rng(0))
    means = np.array([t["reward_means"] for t in tasks])
    rows = np.array([t["transitions"] for t in tasks])
    assert means.shape == (500, 10, 5) and rows.shape == (500, 10, 5, 10)
    assert means.mean() == pytest.approx(1.0, abs=0.02)
    assert means.std() == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-12)
    assert rows[..., 0].mean() == pytest.approx(0.1, abs=0.005)  # flat Dirichlet: E = 1/S
    assert rows[..., 0].var() == pytest.approx(0.9 / (10 * 11), rel=0.1)  # (1/S)(1-1/S)/(S+1)
