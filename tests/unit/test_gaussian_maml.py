"""MAML's gradient checks for the Gaussian policy on 2D navigation (float64 where finite
differences are used), and the batched inner step against the vmap(grad) reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from metarl.algos.base import inner_step_vmap, log_probs, pg_inner_step
from metarl.algos.maml import MAMLConfig, adapted_params, maml_objective, train_maml
from metarl.envs.nav2d import BatchedNav2D, Nav2DFamily, Nav2DFamilyConfig
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Params, act_fn, expand_params
from metarl.returns import advantages
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import sample_task_sets

torch.set_num_threads(1)

GOALS = [[0.3, -0.2], [-0.4, 0.1]]
CONFIG = MAMLConfig(hidden_sizes=(8,), inner_lr=0.1, first_order=False, clip_eps=0.2,
                    episodes_per_task=3)


def _policy() -> GaussianMLPPolicy:
    return GaussianMLPPolicy(2, 2, (8,), init_std=0.3)


def _theta(seed: int = 0) -> Params:
    params = _policy().init_params(torch.Generator().manual_seed(seed))
    return {k: v.double() for k, v in params.items()}


def _batch(seed: int) -> tuple[EpisodeBatch, torch.Tensor]:
    """A float64 batch of 2 goals × 3 episodes × 12 steps of the Gaussian policy at theta."""
    env = BatchedNav2D(GOALS, num_envs=3, config=Nav2DFamilyConfig(max_steps=12),
                       dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    params = expand_params({k: v.float() for k, v in _theta().items()}, 2)
    b = rollout(act_fn(_policy(), params), env, gen)
    batch = dataclasses.replace(b, obs=b.obs.double(), actions=b.actions.double(),
                                rewards=b.rewards.double(), mask=b.mask.double())
    return batch, advantages(batch, 0.99)


def _problem(num_inner: int, first_order: bool = False):
    policy, theta = _policy(), _theta()
    inner = [_batch(seed) for seed in range(num_inner)]
    post, post_adv = _batch(100)
    config = dataclasses.replace(CONFIG, first_order=first_order)
    with torch.no_grad():
        adapted = adapted_params(policy, theta, inner, config.inner_lr, first_order=True)
        # Off the adapted policy a little, so some ratios leave the clip range.
        old_logp = log_probs(policy, adapted, post) + 0.3 * torch.randn(
            post.mask.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return policy, theta, inner, post, post_adv, old_logp, config


def _objective(problem, theta: Params) -> torch.Tensor:
    policy, _, inner, post, post_adv, old_logp, config = problem
    return maml_objective(policy, theta, inner, post, post_adv, old_logp, config)


def _meta_grad(problem, theta: Params) -> Params:
    leaf = {k: v.clone().requires_grad_() for k, v in theta.items()}
    grads = torch.autograd.grad(_objective(problem, leaf), list(leaf.values()))
    return dict(zip(leaf, grads, strict=True))


@pytest.mark.parametrize("num_inner", [1, 2])
def test_gaussian_second_order_meta_gradient_matches_finite_differences(num_inner: int) -> None:
    problem = _problem(num_inner)
    theta = problem[1]
    g = _meta_grad(problem, theta)
    assert set(g) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "log_std"}
    eps = 1e-6
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in theta.items()}
        with torch.no_grad():
            plus = _objective(problem, {k: theta[k] + eps * v[k] for k in theta}).item()
            minus = _objective(problem, {k: theta[k] - eps * v[k] for k in theta}).item()
        fd = (plus - minus) / (2 * eps)
        assert abs(fd) > 1e-3, "direction should not be degenerate"
        assert sum(float((g[k] * v[k]).sum()) for k in theta) == pytest.approx(fd, rel=1e-4,
                                                                                abs=1e-8)
    # The log_std coordinate alone (it enters both the inner step and the outer loss).
    e = {k: torch.zeros_like(t) for k, t in theta.items()}
    e["log_std"][1] = 1.0
    with torch.no_grad():
        plus = _objective(problem, {k: theta[k] + eps * e[k] for k in theta}).item()
        minus = _objective(problem, {k: theta[k] - eps * e[k] for k in theta}).item()
    assert g["log_std"][1].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8)
    assert abs(g["log_std"][1].item()) > 1e-4


def test_gaussian_first_order_differs_from_second_order() -> None:
    theta = _theta()
    g_so = _meta_grad(_problem(1, first_order=False), theta)
    g_fo = _meta_grad(_problem(1, first_order=True), theta)
    flat = [torch.cat([g[k].flatten() for k in theta]) for g in (g_so, g_fo)]
    assert (flat[0] - flat[1]).norm() / flat[0].norm() > 1e-3
    assert all(torch.isfinite(x).all() for x in flat)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_batched_inner_step_matches_vmap_grad(kind: str, first_order: bool) -> None:
    if kind == "gaussian":
        policy, batch_adv = _policy(), _batch(0)
        theta = {k: v.requires_grad_() for k, v in _theta().items()}
    else:
        from metarl.envs.cartpole import BatchedCartPole, CartPoleTask

        policy = CategoricalMLPPolicy(4, 2, (8,))
        env = BatchedCartPole([CartPoleTask(), CartPoleTask(force_mag=-7.0)], 3, max_steps=15)
        b = rollout(None, env, torch.Generator().manual_seed(0))
        batch = dataclasses.replace(b, obs=b.obs.double(), rewards=b.rewards.double(),
                                    mask=b.mask.double())
        batch_adv = (batch, advantages(batch, 0.99))
        theta = {k: v.double().requires_grad_()
                 for k, v in policy.init_params(torch.Generator().manual_seed(0)).items()}
    batch, adv = batch_adv
    gen = torch.Generator().manual_seed(1)
    per_task = {k: v.expand(2, *v.shape) + 0.05 * torch.randn(2, *v.shape, generator=gen,
                                                               dtype=torch.float64)
                for k, v in theta.items()}
    fast = pg_inner_step(policy, per_task, batch, adv, 0.3, first_order=first_order)
    ref = inner_step_vmap(policy, per_task, batch, adv, 0.3, first_order=first_order)
    for k in theta:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-12, atol=1e-14)
        assert not torch.equal(fast[k], per_task[k])
    probe = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in fast.items()}
    leaves = list(theta.values())
    g_fast = torch.autograd.grad(sum((fast[k] * probe[k]).sum() for k in fast), leaves)
    g_ref = torch.autograd.grad(sum((ref[k] * probe[k]).sum() for k in ref), leaves)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_inner_step_lowers_each_gaussian_task_loss_and_works_under_no_grad() -> None:
    policy = _policy()
    batch, adv = _batch(0)
    params = expand_params(_theta(), 2)
    with torch.no_grad():
        new = pg_inner_step(policy, params, batch, adv, lr=0.01)
    assert not any(v.requires_grad for v in new.values())

    def loss(p: Params, i: int) -> float:
        logp = policy.log_prob({k: v[i] for k, v in p.items()}, batch.obs[i], batch.actions[i])
        return float(-(logp * adv[i] * batch.mask[i]).sum() / batch.mask[i].sum())

    for i in range(2):
        assert loss(new, i) < loss(params, i) - 1e-6


def _train(seed: int) -> Params:
    family = Nav2DFamily(Nav2DFamilyConfig(max_steps=15))
    train_set = sample_task_sets(family, {"train": 4}, seed=0)["train"]
    config = MAMLConfig(hidden_sizes=(8,), meta_batch_size=2, episodes_per_task=3,
                        num_outer_steps=2, inner_lr=0.1, init_std=2.0)
    maml = train_maml(family, train_set, config, num_iterations=2, seed=seed)
    assert isinstance(maml.policy, GaussianMLPPolicy)
    assert maml.policy.init_std == pytest.approx(0.2), "init_std is relative to the clip 0.1"
    return {k: v.detach().clone() for k, v in maml.theta.items()}


def test_train_maml_on_nav2d_same_seed_same_parameters() -> None:
    first, second, other = _train(0), _train(0), _train(1)
    assert "log_std" in first
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert not torch.allclose(first["log_std"], torch.full((2,), float(np.log(0.2))))
