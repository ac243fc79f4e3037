"""Continuous families: nav2d and pendulum dynamics, gymnasium parity and contract, oracles,
config validation."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl  # noqa: F401  (registers metarl/Nav2D-v0 and metarl/Pendulum-v0)
from metarl.algos.base import RandomLearner
from metarl.baselines.oracles import oracle_policy, oracle_returns
from metarl.config import ConfigError, from_mapping
from metarl.envs.nav2d import BatchedNav2D, MetaNav2DEnv, Nav2DFamily, Nav2DFamilyConfig
from metarl.envs.pendulum import (
    BatchedPendulum,
    MetaPendulumEnv,
    PendulumFamily,
    PendulumFamilyConfig,
    PendulumTask,
    lqr_gains,
)
from metarl.evaluation import adaptation_curve
from metarl.families import make_family
from metarl.tasks import sample_task_sets

torch.set_num_threads(1)

NORMALISE_WARNING = "For Box action spaces, we recommend using a symmetric and normalized space"

# ---------------------------------------------------------------------------------- nav2d


def test_nav2d_step_hand_computed() -> None:
    env = BatchedNav2D([[0.3, -0.2], [0.05, 0.0]], num_envs=2, dtype=torch.float64)
    env.reset(torch.Generator())
    actions = torch.tensor([[[0.5, -0.05], [0.02, 0.03]],
                            [[0.05, 0.0], [-1.0, 1.0]]], dtype=torch.float64)
    obs, reward, terminated = env.step(actions)
    # Clipped to ±0.1 per axis and added to the origin.
    expected = torch.tensor([[[0.1, -0.05], [0.02, 0.03]], [[0.05, 0.0], [-0.1, 0.1]]],
                            dtype=torch.float64)
    torch.testing.assert_close(obs, expected, rtol=0, atol=1e-15)
    goals = torch.tensor([[0.3, -0.2], [0.05, 0.0]], dtype=torch.float64).unsqueeze(1)
    torch.testing.assert_close(reward, -(expected - goals).norm(dim=-1), rtol=1e-12, atol=0)
    # Slot [1, 0] landed on its goal: within 0.01 on both axes, so it terminates.
    assert terminated.tolist() == [[False, False], [True, False]]
    obs2, reward2, terminated2 = env.step(actions)
    assert torch.equal(obs2[1, 0], expected[1, 0]), "a terminated slot stays put"
    assert reward2[1, 0].item() == 0.0 and not terminated2[1, 0]
    assert reward2[0, 0].item() < 0


def test_nav2d_squared_reward_and_no_termination() -> None:
    config = Nav2DFamilyConfig(reward="squared_distance", goal_tolerance=0.0)
    env = BatchedNav2D([[0.05, 0.0]], num_envs=1, config=config, dtype=torch.float64)
    env.reset(torch.Generator())
    _, reward, terminated = env.step(torch.tensor([[[0.02, 0.04]]], dtype=torch.float64))
    assert reward.item() == pytest.approx(-(0.03**2 + 0.04**2), rel=1e-12)
    _, reward, terminated = env.step(torch.tensor([[[0.03, -0.04]]], dtype=torch.float64))
    assert reward.item() == pytest.approx(0.0, abs=1e-15)
    assert not terminated.any(), "goal_tolerance 0 never ends an episode early"


def test_nav2d_batched_equals_each_slot_alone() -> None:
    goals = [[0.3, -0.2], [-0.45, 0.1], [0.0, 0.49]]
    env = BatchedNav2D(goals, num_envs=3, dtype=torch.float64)
    env.reset(torch.Generator())
    gen = torch.Generator().manual_seed(0)
    actions = torch.randn(30, 3, 3, 2, generator=gen, dtype=torch.float64) * 0.1
    out = [tuple(x.clone() for x in env.step(actions[t])) for t in range(30)]
    for i, goal in enumerate(goals):
        for j in range(3):
            single = BatchedNav2D([goal], num_envs=1, dtype=torch.float64)
            single.reset(torch.Generator())
            for t in range(30):
                obs, reward, term = single.step(actions[t, i, j].view(1, 1, 2))
                torch.testing.assert_close(obs[0, 0], out[t][0][i, j], rtol=0, atol=0)
                assert reward.item() == out[t][1][i, j].item()
                assert term.item() == out[t][2][i, j].item()


def test_nav2d_oracle_return_hand_computed() -> None:
    family = Nav2DFamily(Nav2DFamilyConfig())
    tasks = [{"goal_x": 0.25, "goal_y": -0.1}, {"goal_x": 0.0, "goal_y": 0.0}]
    oracle = oracle_returns(family, tasks)
    # Full speed per axis: (0.1, -0.1), (0.2, -0.1), (0.25, -0.1) = goal, then 0 (terminated).
    expected = -(math.hypot(0.15, 0.0) + math.hypot(0.05, 0.0) + 0.0)
    assert oracle[0] == pytest.approx(expected, abs=1e-6)
    assert oracle[1] == pytest.approx(0.0, abs=1e-7)
    # The same without early termination: the oracle stays on the goal, reward 0.
    no_stop = oracle_returns(Nav2DFamily(Nav2DFamilyConfig(goal_tolerance=0.0)), tasks)
    np.testing.assert_allclose(no_stop, oracle, atol=1e-6)


def test_nav2d_oracle_beats_random_and_perturbations() -> None:
    family = Nav2DFamily(Nav2DFamilyConfig())
    tasks = family.sample(8, np.random.default_rng(0))
    oracle = oracle_returns(family, tasks)
    assert (oracle <= 0).all() and (oracle > -1.5).all()
    learner = oracle_policy(family, tasks)
    curve = adaptation_curve(learner, family, tasks, 1, 4, seed=0)
    np.testing.assert_allclose(curve[0], oracle, atol=1e-5)  # deterministic: every episode
    np.testing.assert_allclose(curve[1], oracle, atol=1e-5)  # adapting changes nothing
    rand = adaptation_curve(RandomLearner(), family, tasks, 0, 20, seed=0)[0]
    assert (rand < oracle - 10).all()
    # Any perturbation of the oracle's actions does worse on every task.
    env = family.make_env(tasks, 1)
    act = learner.act(learner.initial_params(len(tasks)))
    gen = torch.Generator().manual_seed(1)
    from metarl.sampler import rollout

    noisy = rollout(lambda o, g: act(o, g) + 0.03 * torch.randn(o.shape, generator=g), env, gen)
    assert (noisy.episode_returns[:, 0].numpy() < oracle - 1e-3).all()


def test_nav2d_gymnasium_view_runs_the_shared_dynamics() -> None:
    env = gym.make("metarl/Nav2D-v0", goal=[0.25, -0.1])
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros(2, np.float32))
    np.testing.assert_array_equal(info["goal"], [0.25, -0.1])
    total, steps, terminated, truncated = 0.0, 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(
            np.clip(np.array([0.25, -0.1]) - obs, -0.1, 0.1).astype(np.float32))
        total += reward
        steps += 1
    assert terminated and steps == 3
    assert total == pytest.approx(oracle_returns(Nav2DFamily(Nav2DFamilyConfig()),
                                         [{"goal_x": 0.25, "goal_y": -0.1}])[0], abs=1e-6)
    # Random actions: the 100-step TimeLimit truncates.
    env.reset(seed=1)
    env.action_space.seed(1)
    steps = 0
    for _ in range(100):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated:
            break
    assert truncated and steps == 100


@pytest.mark.parametrize("kwargs", [{}, {"goal": [0.3, 0.4]},
                                    {"config": Nav2DFamilyConfig(reward="squared_distance")}])
def test_nav2d_check_env_passes(kwargs: dict) -> None:
    env = MetaNav2DEnv(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def _episode(env: gym.Env, seed: int) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [obs], []
    for _ in range(20):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return observations, rewards


@pytest.mark.parametrize("env_id", ["metarl/Nav2D-v0", "metarl/Pendulum-v0"])
def test_same_seed_same_rollout(env_id: str) -> None:
    first, second = _episode(gym.make(env_id), 3), _episode(gym.make(env_id), 3)
    other = _episode(gym.make(env_id), 4)
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1]
    assert first[1] != other[1]


def test_nav2d_meta_env_draws_goals_from_np_random() -> None:
    env = MetaNav2DEnv()
    goals = {tuple(env.reset(seed=s)[1]["goal"]) for s in range(20)}
    assert len(goals) == 20
    assert all(-0.5 <= g <= 0.5 for goal in goals for g in goal)
    assert env.reset(seed=5)[1]["goal"].tolist() == env.reset(seed=5)[1]["goal"].tolist()
    with pytest.raises(ValueError, match="action="):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="render_mode='human'"):
        MetaNav2DEnv(render_mode="human")


# ---------------------------------------------------------------------------------- pendulum


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_pendulum_matches_gymnasium_step_for_step(seed: int) -> None:
    ours, ref = gym.make("metarl/Pendulum-v0"), gym.make("Pendulum-v1")
    obs, _ = ours.reset(seed=seed)
    ref_obs, _ = ref.reset(seed=seed)
    np.testing.assert_array_equal(obs, ref_obs)
    rng = np.random.default_rng(seed)
    steps = 0
    while True:
        # Beyond the torque limit half the time, so the clip is exercised too.
        action = rng.uniform(-3.0, 3.0, size=1).astype(np.float32)
        obs, reward, term, trunc, _ = ours.step(action)
        ref_obs, ref_reward, ref_term, ref_trunc, _ = ref.step(action)
        steps += 1
        assert obs.dtype == np.float32 and obs.shape == (3,)
        np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-5)
        assert reward == pytest.approx(float(ref_reward), abs=1e-5)
        assert (term, trunc) == (ref_term, ref_trunc)
        if trunc:
            break
    assert steps == 200 and not term


def test_pendulum_reset_options_match_gymnasium() -> None:
    ours, ref = gym.make("metarl/Pendulum-v0"), gym.make("Pendulum-v1")
    options = {"x_init": 0.1, "y_init": 0.2}
    obs, _ = ours.reset(seed=4, options=options)
    np.testing.assert_array_equal(obs, ref.reset(seed=4, options=options)[0])
    assert obs[0] > np.cos(0.1) - 1e-6 and abs(obs[2]) <= 0.2


def test_pendulum_speed_clip_matches_gymnasium() -> None:
    ours, ref = gym.make("metarl/Pendulum-v0"), gym.make("Pendulum-v1")
    ours.reset(seed=0)
    ref.reset(seed=0)
    for _ in range(60):  # full torque one way spins it up to the 8 rad/s limit
        obs, reward, *_ = ours.step(np.array([2.0], np.float32))
        ref_obs, ref_reward, *_ = ref.step(np.array([2.0], np.float32))
        np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-5)
        assert reward == pytest.approx(float(ref_reward), abs=1e-5)
    assert abs(obs[2]) == pytest.approx(8.0)


def test_pendulum_batched_parameters_change_the_physics() -> None:
    tasks = [PendulumTask(), PendulumTask(mass=2.0), PendulumTask(length=0.5),
             PendulumTask(gravity=5.0)]
    env = BatchedPendulum(tasks, num_envs=1, dtype=torch.float64)
    env.set_state(torch.tensor([0.5, 0.0], dtype=torch.float64).expand(4, 1, 2))
    obs, reward, terminated = env.step(torch.full((4, 1, 1), 1.0, dtype=torch.float64))
    speed = obs[:, 0, 2]
    # theta_dot' = (3g/(2l) sin(0.5) + 3/(m l²) u) dt
    expected = [(3 * g / (2 * length) * math.sin(0.5) + 3 / (m * length**2)) * 0.05
                for m, length, g in ((1, 1, 10), (2, 1, 10), (1, 0.5, 10), (1, 1, 5))]
    torch.testing.assert_close(speed, torch.tensor(expected, dtype=torch.float64), rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(reward, torch.full((4, 1), -(0.25 + 0.001), dtype=torch.float64))
    assert not terminated.any()


def test_pendulum_check_env_passes() -> None:
    for env in (MetaPendulumEnv(), MetaPendulumEnv(PendulumTask(1.3, 0.8, 11.0))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env, skip_render_check=True)
        # Only gymnasium's advice to normalise [-2, 2] to [-1, 1]: Pendulum-v1 gets it too.
        messages = [str(w.message) for w in caught]
        assert all(NORMALISE_WARNING in m for m in messages), messages


def test_pendulum_lqr_stabilises_the_linearised_system() -> None:
    a, b = np.array([15.0, 30.0]), np.array([3.0, 1.5])
    gain = lqr_gains(a, b)
    for i in range(2):
        dt = 0.05
        big_a = np.array([[1 + a[i] * dt**2, dt], [a[i] * dt, 1.0]])
        big_b = np.array([[b[i] * dt**2], [b[i] * dt]])
        closed = big_a - big_b @ gain[i : i + 1]
        assert np.abs(np.linalg.eigvals(closed)).max() < 1.0


def test_pendulum_oracle_swings_up_and_beats_random() -> None:
    family = PendulumFamily(PendulumFamilyConfig(oracle_episodes=16))
    tasks = [PendulumTask().to_dict(), *family.sample(4, np.random.default_rng(0))]
    oracle = oracle_returns(family, tasks)
    assert oracle[0] == pytest.approx(-125, abs=15), "gymnasium defaults: about -125"
    assert (oracle > -300).all()
    np.testing.assert_array_equal(oracle, oracle_returns(family, tasks))  # fixed seed
    rand = adaptation_curve(RandomLearner(), family, tasks, 0, 16, seed=0)[0]
    assert (rand < oracle - 500).all()
    # The controller ends upright: the last 50 steps of every episode cost almost nothing.
    from metarl.sampler import rollout

    learner = oracle_policy(family, tasks)
    env = family.make_env(tasks, 16)
    batch = rollout(learner.act(learner.initial_params(len(tasks))), env,
                    torch.Generator().manual_seed(5))
    assert batch.rewards[..., -50:].min() > -0.01


# ---------------------------------------------------------------------------------- configs


def _error(cls: type, prefix: str, data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(cls, data, prefix=prefix)
    return info.value


def test_nav2d_zero_size_goal_box_names_key_and_value() -> None:
    err = _error(Nav2DFamilyConfig, "task.nav2d", {"goal_low": 0.2, "goal_high": 0.2})
    assert err.key == "task.nav2d.goal_low"
    assert err.value == 0.2
    assert str(err).startswith("task.nav2d.goal_low=0.2: ")
    assert "zero size" in str(err) and "goal_high" in str(err)
    inverted = _error(Nav2DFamilyConfig, "task.nav2d", {"goal_low": 0.5, "goal_high": -0.5})
    assert inverted.key == "task.nav2d.goal_low" and "negative size" in str(inverted)


@pytest.mark.parametrize(("data", "key", "hint"), [
    ({"action_clip": 0.0}, "task.nav2d.action_clip", "must be > 0"),
    ({"action_clip": -0.1}, "task.nav2d.action_clip", "must be > 0"),
    ({"max_steps": 0}, "task.nav2d.max_steps", "must be >= 1"),
    ({"reward": "manhattan"}, "task.nav2d.reward", "distance"),
    ({"goal_tolerance": -0.01}, "task.nav2d.goal_tolerance", "0 disables"),
    ({"goal_low": "low"}, "task.nav2d.goal_low", "expected a number"),
    ({"goal": [0.1, 0.2]}, "task.nav2d.goal", "unknown key"),
])
def test_nav2d_bad_values_name_the_key(data: dict, key: str, hint: str) -> None:
    err = _error(Nav2DFamilyConfig, "task.nav2d", data)
    assert err.key == key
    assert hint in str(err)
    assert repr(next(iter(data.values()))) in str(err)


@pytest.mark.parametrize(("data", "key", "hint"), [
    ({"mass": [1.5, 0.5]}, "task.pendulum.mass", "swap"),
    ({"length": [-1.0, 1.0]}, "task.pendulum.length", "> 0"),
    ({"gravity": 10.0}, "task.pendulum.gravity", "expected a list"),
    ({"max_steps": 0}, "task.pendulum.max_steps", "must be >= 1"),
    ({"oracle_episodes": 0}, "task.pendulum.oracle_episodes", "must be >= 1"),
])
def test_pendulum_bad_values_name_the_key(data: dict, key: str, hint: str) -> None:
    err = _error(PendulumFamilyConfig, "task.pendulum", data)
    assert err.key == key
    assert hint in str(err)


@pytest.mark.parametrize("name", ["nav2d", "pendulum"])
def test_families_sample_within_ranges_and_build_envs(name: str) -> None:
    family = make_family(name)
    sets = sample_task_sets(family, {"train": 50, "test": 5}, seed=0)
    again = sample_task_sets(family, {"train": 50, "test": 5}, seed=0)
    assert sets["train"] == again["train"]
    tasks = list(sets["train"].tasks)
    if name == "nav2d":
        values = np.array([[t["goal_x"], t["goal_y"]] for t in tasks])
        assert values.min() >= -0.5 and values.max() <= 0.5 and np.ptp(values) > 0.7
    else:
        for key, (lo, hi) in (("mass", (0.5, 1.5)), ("length", (0.7, 1.3)),
                              ("gravity", (8.0, 12.0))):
            values = np.array([t[key] for t in tasks])
            assert values.min() >= lo and values.max() <= hi
    env = family.make_env(tasks[:3], num_envs=2)
    assert (env.num_tasks, env.num_envs, env.discrete) == (3, 2, False)
    assert len(env.action_low) == len(env.action_high) == env.action_dim
    assert oracle_returns(family, tasks[:3]).shape == (3,)


def test_rollout_steps_auto_resets_continuous_envs() -> None:
    from metarl.sampler import rollout_steps

    env = PendulumFamily(PendulumFamilyConfig(max_steps=50)).make_env(
        [PendulumTask().to_dict()], num_envs=3)
    batch = rollout_steps(None, env, 120, torch.Generator().manual_seed(0))
    assert batch.actions.shape == (1, 3, 120, 1)
    assert batch.actions.abs().max() <= 2.0
    # Truncated every 50 steps; the next observation is a fresh start (|speed| <= 1).
    assert batch.dones[0, 0].nonzero().flatten().tolist() == [49, 99]
    assert batch.obs[0, :, 50, 2].abs().max() <= 1.0
    nav = BatchedNav2D([[0.0, 0.05]], num_envs=2, config=Nav2DFamilyConfig(max_steps=5))
    steps = rollout_steps(lambda o, g: (torch.tensor([0.0, 0.05]) - o).clamp(-0.1, 0.1), nav, 6,
                          torch.Generator())
    # Reaches the goal in one step, terminates, restarts at the origin, and again.
    assert steps.dones[0, 0].tolist() == [1.0] * 6
    assert steps.obs[0, 0, :, 1].tolist() == [0.0] * 6
