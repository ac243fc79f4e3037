"""The task-conditioned oracle: observations carry the task, and knowing it pays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarl.algos.maml import MAMLConfig
from metarl.algos.pretrain import pretrain_multitask
from metarl.baselines.task_conditioned import (
    TaskConditionedFamily,
    has_closed_form_oracle,
    task_features,
)
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adaptation_curve
from metarl.sampler import rollout_steps
from metarl.tasks import TaskSet

torch.set_num_threads(1)


def test_observations_end_with_the_standardised_task_features() -> None:
    fam = Nav2DFamily(Nav2DFamilyConfig(max_steps=5))
    train = fam.sample(50, np.random.default_rng(0))
    cond = TaskConditionedFamily(fam, train)
    feats = np.array([task_features(fam, t) for t in train])
    np.testing.assert_allclose(cond.mean, feats.mean(0))
    tasks = fam.sample(3, np.random.default_rng(1))
    env, plain = cond.make_env(tasks, 2), fam.make_env(tasks, 2)
    assert env.obs_dim == plain.obs_dim + 2
    obs, plain_obs = env.reset(torch.Generator()), plain.reset(torch.Generator())
    torch.testing.assert_close(obs[..., :2], plain_obs.float())
    expected = torch.tensor([task_features(fam, t) for t in tasks])
    expected = (expected.double() - torch.tensor(cond.mean)) / torch.tensor(cond.scale)
    torch.testing.assert_close(obs[:, 0, 2:], expected.float())
    torch.testing.assert_close(obs[:, 1, 2:], expected.float())
    # the sampler's auto-reset writes `done` through the wrapper
    batch = rollout_steps(None, env, 7, torch.Generator())
    assert batch.obs.shape == (3, 2, 7, 4) and batch.dones[..., 4].all()
    # features saved with a trained oracle rebuild the same wrapper
    again = TaskConditionedFamily(fam, mean=cond.mean.tolist(), scale=cond.scale.tolist())
    torch.testing.assert_close(again.features(tasks), cond.features(tasks))
    with pytest.raises(ValueError, match="reference tasks"):
        TaskConditionedFamily(fam)


def test_families_own_features_and_the_generic_fallback() -> None:
    from metarl.envs.mujoco_tasks import AntDirFamily

    fam = Nav2DFamily(Nav2DFamilyConfig())
    assert task_features(fam, {"goal_y": -0.5, "goal_x": 0.25}) == [0.25, -0.5]  # sorted keys
    assert task_features(fam, {"rand_vec": [1, 2], "a": 0.5}) == [0.5, 1.0, 2.0]  # flattened
    ant = object.__new__(AntDirFamily)  # task_features needs no MuJoCo
    assert ant.task_features({"angle": math.pi}) == pytest.approx([-1.0, 0.0])
    with pytest.raises(ValueError, match="no numeric parameters"):
        task_features(fam, {"name": "x"})
    assert has_closed_form_oracle(CartPoleFamily(CartPoleFamilyConfig()), [{}]) is True


def test_knowing_the_goal_beats_pooling_the_tasks() -> None:
    # Multi-task PPO with the same budget, with and without the goal in the observation: only
    # the conditioned policy can head for each task's goal.
    fam = Nav2DFamily(Nav2DFamilyConfig())
    train = TaskSet("nav2d", "train", 0, tuple(fam.sample(40, np.random.default_rng(0))))
    test = fam.sample(20, np.random.default_rng(1))
    cfg = MAMLConfig(hidden_sizes=(32, 32), init_std=3.0, outer_lr=0.01, num_outer_steps=2,
                     meta_batch_size=10, episodes_per_task=10)
    cond = TaskConditionedFamily(fam, train.tasks)
    oracle = pretrain_multitask(cond, train, cfg, 40, seed=0)
    pooled = pretrain_multitask(fam, train, cfg, 40, seed=0)
    oracle_return = adaptation_curve(oracle, cond, test, 0, 10, seed=0).mean()
    pooled_return = adaptation_curve(pooled, fam, test, 0, 10, seed=0).mean()
    assert oracle_return > pooled_return + 10, (oracle_return, pooled_return)
