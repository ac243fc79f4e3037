"""PEARL's point robots as nav2d options: goals on a semicircle, a sparse reward, success."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.algos.base import RandomLearner
from metarl.baselines.oracles import oracle_returns
from metarl.config import ConfigError
from metarl.envs.nav2d import BatchedNav2D, MetaNav2DEnv, Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adaptation_curves

SPARSE = Nav2DFamilyConfig(goals="semicircle", reward="sparse", goal_tolerance=0.0,
                           max_steps=20)


def test_semicircle_goals_lie_on_the_upper_half_circle() -> None:
    goals = SPARSE.sample_goals(500, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    assert (goals[:, 1] >= 0).all()
    assert goals[:, 0].min() < -0.95 and goals[:, 0].max() > 0.95  # the whole half is used
    tasks = Nav2DFamily(SPARSE).sample(3, np.random.default_rng(1))
    assert np.hypot(tasks[0]["goal_x"], tasks[0]["goal_y"]) == pytest.approx(1.0)
    # the box distribution draws exactly what it always drew (task sets do not move)
    box = Nav2DFamilyConfig().sample_goals(4, np.random.default_rng(2))
    np.testing.assert_array_equal(box, np.random.default_rng(2).uniform(-0.5, 0.5, (4, 2)))


def test_sparse_reward_pays_one_inside_the_goal_radius_only() -> None:
    env = BatchedNav2D([[0.25, 0.0]], 3, SPARSE)
    env.reset(torch.Generator())
    # slot 0 steps to 0.1 (0.15 from the goal: inside), slot 1 to 0.04 (0.21: outside), then
    # 0.08 (inside); slot 2 moves away from the goal
    actions = torch.tensor([[[0.1, 0.0], [0.04, 0.0], [-0.1, 0.0]]])
    _, reward, terminated = env.step(actions)
    assert reward.tolist() == [[1.0, 0.0, 0.0]]
    assert not terminated.any()  # sparse: no early end
    _, reward, _ = env.step(actions)
    assert reward.tolist() == [[1.0, 1.0, 0.0]]
    assert env.success_rate().tolist() == pytest.approx([2 / 3])
    env.reset_done(torch.Generator(), ended=torch.tensor([[True, False, False]]))
    assert env.success_rate().tolist() == pytest.approx([1 / 3])  # a new episode starts over


def test_dense_envs_report_no_success_rate_and_sparse_needs_no_tolerance() -> None:
    assert not hasattr(BatchedNav2D([[0.3, 0.0]], 1), "success_rate")
    with pytest.raises(ConfigError, match="goal_tolerance"):
        Nav2DFamilyConfig(reward="sparse")
    with pytest.raises(ConfigError, match="goals"):
        Nav2DFamilyConfig(goals="circle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="goal_radius"):
        Nav2DFamilyConfig(goal_radius=0.0)


def test_oracle_and_random_on_the_sparse_task() -> None:
    family = Nav2DFamily(SPARSE)
    tasks = family.sample(8, np.random.default_rng(0))
    best = oracle_returns(family, tasks)
    # straight to a goal 1 away at 0.1 per axis: at least ~10 of 20 steps inside the radius
    assert (best >= 10).all() and (best <= 20).all()
    returns, success = adaptation_curves(RandomLearner(), family, tasks, 1, 10, seed=0)
    assert success is not None and success.shape == (2, 8)
    assert returns.mean() < 0.5 and success.mean() < 0.1  # random almost never finds it


def test_the_gymnasium_env_draws_semicircle_goals() -> None:
    env = MetaNav2DEnv(config=SPARSE)
    _, info = env.reset(seed=3)
    assert np.linalg.norm(info["goal"]) == pytest.approx(1.0)
