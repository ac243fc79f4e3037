"""Policy math: log-probabilities against torch.distributions, batched paths against references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Normal

from metarl.envs.nav2d import BatchedNav2D
from metarl.policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    Params,
    act_fn,
    expand_params,
    task_outputs_vmap,
)
from metarl.sampler import random_actions, rollout

torch.set_num_threads(1)


def _per_task(params: Params, num_tasks: int, seed: int = 3) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {k: v.expand(num_tasks, *v.shape)
            + 0.3 * torch.randn(num_tasks, *v.shape, generator=gen, dtype=v.dtype)
            for k, v in params.items()}


def _gaussian(dtype: torch.dtype = torch.float64) -> tuple[GaussianMLPPolicy, Params]:
    policy = GaussianMLPPolicy(3, 2, (8, 5), init_std=0.7)
    params = {k: v.to(dtype) for k, v in
              policy.init_params(torch.Generator().manual_seed(0)).items()}
    return policy, params


def test_gaussian_init_params_have_log_std() -> None:
    policy, params = _gaussian(torch.float32)
    assert set(params) == set(dict(policy.named_parameters()))
    assert "log_std" in params
    torch.testing.assert_close(params["log_std"], torch.full((2,), math.log(0.7)))
    with pytest.raises(ValueError, match="init_std=0"):
        GaussianMLPPolicy(3, 2, (4,), init_std=0.0)


def test_gaussian_log_prob_matches_torch_normal() -> None:
    policy, params = _gaussian()
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    actions = torch.randn(7, 2, generator=gen, dtype=torch.float64) * 2
    mean = policy.mlp(params, obs)
    reference = Normal(mean, params["log_std"].exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.log_prob(params, obs, actions), reference, rtol=1e-12,
                               atol=1e-12)
    # Per-task params with a different log_std per task: the batched path, task by task.
    per_task = _per_task(params, 4)
    obs_b = torch.randn(4, 5, 6, 3, generator=gen, dtype=torch.float64)
    act_b = torch.randn(4, 5, 6, 2, generator=gen, dtype=torch.float64)
    batched = policy.task_log_prob(per_task, obs_b, act_b)
    assert batched.shape == (4, 5, 6)
    for i in range(4):
        p = {k: v[i] for k, v in per_task.items()}
        ref = Normal(policy.mlp(p, obs_b[i]), p["log_std"].exp()).log_prob(act_b[i]).sum(-1)
        torch.testing.assert_close(batched[i], ref, rtol=1e-12, atol=1e-12)


def test_categorical_log_prob_matches_torch_categorical() -> None:
    policy = CategoricalMLPPolicy(4, 3, (6,))
    params = {k: v.double() for k, v in
              policy.init_params(torch.Generator().manual_seed(0)).items()}
    per_task = _per_task(params, 2)
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(2, 4, 5, 4, generator=gen, dtype=torch.float64)
    actions = torch.randint(0, 3, (2, 4, 5), generator=gen)
    batched = policy.task_log_prob(per_task, obs, actions)
    for i in range(2):
        p = {k: v[i] for k, v in per_task.items()}
        ref = Categorical(logits=policy.mlp(p, obs[i])).log_prob(actions[i])
        torch.testing.assert_close(batched[i], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(policy.log_prob(p, obs[i], actions[i]), ref, rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("policy", [CategoricalMLPPolicy(3, 4, (8, 8)),
                                    GaussianMLPPolicy(3, 2, (8, 8))])
def test_batched_outputs_match_vmap_functional_call(policy: CategoricalMLPPolicy) -> None:
    params = _per_task(policy.init_params(torch.Generator().manual_seed(0)), 3)
    obs = torch.randn(3, 4, 5, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(policy.task_mlp(params, obs),
                               task_outputs_vmap(policy, params, obs), rtol=1e-5, atol=1e-6)


def test_gaussian_sampling_statistics_and_greedy() -> None:
    policy, params = _gaussian(torch.float32)
    per_task = _per_task(params, 2)
    obs = torch.zeros(2, 20_000, 3)
    act = act_fn(policy, per_task)
    actions = act(obs, torch.Generator().manual_seed(0))
    assert actions.shape == (2, 20_000, 2)
    assert actions.dtype == torch.float32
    mean = policy.task_mlp(per_task, obs)[:, 0]
    std = per_task["log_std"].exp()
    torch.testing.assert_close(actions.mean(1), mean, rtol=0, atol=4 * std.max().item() / 100)
    torch.testing.assert_close(actions.std(1), std, rtol=0.03, atol=0)
    greedy = act_fn(policy, per_task, greedy=True)(obs, torch.Generator())
    torch.testing.assert_close(greedy, policy.task_mlp(per_task, obs), rtol=0, atol=0)
    again = act(obs, torch.Generator().manual_seed(0))
    assert torch.equal(actions, again), "same generator seed, same actions"


def test_random_actions_cover_the_action_box() -> None:
    env = BatchedNav2D([[0.1, 0.2], [0.3, -0.4]], num_envs=5000)
    actions = random_actions(env, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert actions.shape == (2, 5000, 2)
    assert actions.min() >= -0.1 and actions.max() <= 0.1
    assert actions.min() < -0.099 and actions.max() > 0.099
    assert abs(actions.mean().item()) < 0.005


def test_rollout_stores_unclipped_gaussian_actions() -> None:
    policy = GaussianMLPPolicy(2, 2, (8, 5), init_std=1.0)
    params = expand_params(policy.init_params(torch.Generator().manual_seed(0)), 2)
    env = BatchedNav2D([[0.1, 0.2], [0.3, -0.4]], num_envs=3, dtype=torch.float32)
    batch = rollout(act_fn(policy, params), env, torch.Generator().manual_seed(0))
    assert batch.actions.shape == (2, 3, 100, 2)
    assert batch.actions.abs().max() > 0.5, "std 1: the stored samples exceed the clip"
    steps = batch.obs[:, :, 1:] - batch.obs[:, :, :-1]
    taken = batch.mask[:, :, 1:].unsqueeze(-1)
    assert taken.sum() > 100
    assert steps.abs().max() <= 0.1 + 1e-6, "the env moved by the clipped action"
    torch.testing.assert_close(steps * taken, batch.actions[:, :, :-1].clamp(-0.1, 0.1) * taken,
                               rtol=0, atol=1e-6)
