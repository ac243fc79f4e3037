"""Gradient checks of the functional MAML core (float64 where finite differences are used)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metarl.algos.base import (
    clipped_surrogate_loss,
    inner_step_vmap,
    log_probs,
    pg_inner_step,
    policy_gradient_loss,
)
from metarl.algos.maml import (
    MAML,
    MAMLConfig,
    adapted_params,
    make_policy,
    maml_objective,
    train_maml,
)
from metarl.envs.cartpole import BatchedCartPole, CartPoleFamily, CartPoleFamilyConfig, CartPoleTask
from metarl.envs.nav2d import BatchedNav2D, Nav2DFamily, Nav2DFamilyConfig
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Params, act_fn, expand_params
from metarl.returns import advantages
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import sample_task_sets

torch.set_num_threads(1)

TASKS = [CartPoleTask(), CartPoleTask(pole_length=0.3, pole_mass=0.3, force_mag=-8.0)]
CONFIG = MAMLConfig(hidden_sizes=(8,), inner_lr=0.5, first_order=False, clip_eps=0.2,
                    episodes_per_task=3)


def _policy() -> CategoricalMLPPolicy:
    return CategoricalMLPPolicy(4, 2, (8,))


def _theta(seed: int = 0) -> Params:
    params = _policy().init_params(torch.Generator().manual_seed(seed))
    return {k: v.double() for k, v in params.items()}


def _batch(seed: int) -> tuple[EpisodeBatch, torch.Tensor]:
    """A float64 batch of 2 tasks × 3 envs × ≤10 steps with fixed random advantages."""
    env = BatchedCartPole(TASKS, num_envs=3, max_steps=10)
    gen = torch.Generator().manual_seed(seed)
    b = rollout(None, env, gen)
    batch = dataclasses.replace(b, obs=b.obs.double(), rewards=b.rewards.double(),
                                mask=b.mask.double())
    adv = torch.randn(b.mask.shape, generator=gen, dtype=torch.float64) * batch.mask
    return batch, adv


def _problem(num_inner: int, first_order: bool = False):
    """Policy, theta, inner batches, post batch/advantages, old_logp (ratio 1 at theta), config."""
    policy = _policy()
    theta = _theta()
    inner = [_batch(seed) for seed in range(num_inner)]
    post, post_adv = _batch(100)
    config = dataclasses.replace(CONFIG, first_order=first_order)
    with torch.no_grad():
        adapted = adapted_params(policy, theta, inner, config.inner_lr, first_order=True)
        old_logp = log_probs(policy, adapted, post)
    return policy, theta, inner, post, post_adv, old_logp, config


def _meta_grad(problem, theta: Params) -> Params:
    policy, _, inner, post, post_adv, old_logp, config = problem
    leaf = {k: v.clone().requires_grad_() for k, v in theta.items()}
    loss = maml_objective(policy, leaf, inner, post, post_adv, old_logp, config)
    grads = torch.autograd.grad(loss, list(leaf.values()))
    return dict(zip(leaf, grads, strict=True))


def _objective(problem, theta: Params) -> float:
    policy, _, inner, post, post_adv, old_logp, config = problem
    with torch.no_grad():
        return maml_objective(policy, theta, inner, post, post_adv, old_logp, config).item()


def _dot(a: Params, b: Params) -> float:
    return sum(float((a[k] * b[k]).sum()) for k in a)


@pytest.mark.parametrize("num_inner", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(num_inner: int) -> None:
    problem = _problem(num_inner)
    theta = problem[1]
    g = _meta_grad(problem, theta)
    gen = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(3):
        v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in theta.items()}
        plus = _objective(problem, {k: theta[k] + eps * v[k] for k in theta})
        minus = _objective(problem, {k: theta[k] - eps * v[k] for k in theta})
        fd = (plus - minus) / (2 * eps)
        analytic = _dot(g, v)
        assert abs(fd) > 1e-3, "direction should not be degenerate"
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-8)
    # Single coordinates too (one per parameter tensor).
    for k, t in theta.items():
        idx = (0,) * t.dim()
        e = {j: torch.zeros_like(u) for j, u in theta.items()}
        e[k][idx] = 1.0
        plus = _objective(problem, {j: theta[j] + eps * e[j] for j in theta})
        minus = _objective(problem, {j: theta[j] - eps * e[j] for j in theta})
        assert g[k][idx].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8)


def test_first_order_differs_and_ignores_the_inner_jacobian() -> None:
    problem_so = _problem(1, first_order=False)
    problem_fo = _problem(1, first_order=True)
    theta = problem_so[1]
    g_so = _meta_grad(problem_so, theta)
    g_fo = _meta_grad(problem_fo, theta)
    flat_so = torch.cat([g_so[k].flatten() for k in theta])
    flat_fo = torch.cat([g_fo[k].flatten() for k in theta])
    rel = (flat_so - flat_fo).norm() / flat_so.norm()
    assert rel > 1e-3
    # FOMAML: d loss / d theta = sum over tasks of d loss / d theta'_i at theta'_i.
    policy, _, inner, post, post_adv, old_logp, config = problem_fo
    with torch.no_grad():
        adapted = adapted_params(policy, theta, inner, config.inner_lr, first_order=True)
    leaf = {k: v.clone().requires_grad_() for k, v in adapted.items()}
    loss = clipped_surrogate_loss(policy.task_log_prob(leaf, post.obs, post.actions), old_logp,
                                  post_adv, post.mask, config.clip_eps)
    grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values())), strict=True))
    for k in theta:
        torch.testing.assert_close(g_fo[k], grads[k].sum(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_every_meta_parameter_gets_a_finite_nonzero_gradient(first_order: bool) -> None:
    problem = _problem(1, first_order=first_order)
    g = _meta_grad(problem, problem[1])
    assert set(g) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    for k, v in g.items():
        assert v.shape == problem[1][k].shape
        assert torch.isfinite(v).all(), k
        assert v.abs().max() > 1e-6, k


def _task_inner_loss(policy: CategoricalMLPPolicy, params: Params, batch: EpisodeBatch,
                     adv: torch.Tensor, i: int) -> torch.Tensor:
    # Independent of the policy's own log_prob: the module's forward + log_softmax.
    p = {k: v[i] for k, v in params.items()}
    logits = functional_call(policy, p, (batch.obs[i],))
    logp = torch.log_softmax(logits, -1).gather(-1, batch.actions[i].unsqueeze(-1)).squeeze(-1)
    return policy_gradient_loss(logp, adv[i], batch.mask[i])


def _per_task_params(num_tasks: int) -> Params:
    gen = torch.Generator().manual_seed(5)
    return {k: v.expand(num_tasks, *v.shape)
            + 0.1 * torch.randn(num_tasks, *v.shape, generator=gen, dtype=torch.float64)
            for k, v in _theta().items()}


def test_one_inner_step_lowers_each_task_loss() -> None:
    policy = _policy()
    batch, adv = _batch(0)
    params = _per_task_params(2)
    new = pg_inner_step(policy, params, batch, adv, lr=0.01)
    for i in range(2):
        before = _task_inner_loss(policy, params, batch, adv, i).item()
        after = _task_inner_loss(policy, new, batch, adv, i).item()
        assert after < before - 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_inner_step_matches_a_per_task_loop(first_order: bool) -> None:
    policy = _policy()
    batch, adv = _batch(0)
    params = _per_task_params(2)
    lr = 0.3
    new = pg_inner_step(policy, params, batch, adv, lr, first_order=first_order)
    for i in range(2):
        p = {k: v[i].clone().requires_grad_() for k, v in params.items()}
        loss = _task_inner_loss(policy, {k: v.unsqueeze(0) for k, v in p.items()},
                                _slice(batch, i), adv[i : i + 1], 0)
        grads = torch.autograd.grad(loss, list(p.values()))
        for (k, v), g in zip(p.items(), grads, strict=True):
            torch.testing.assert_close(new[k][i], v.detach() - lr * g, rtol=1e-12, atol=1e-12)
            assert not torch.equal(new[k][i], params[k][i])


def _slice(batch: EpisodeBatch, i: int) -> EpisodeBatch:
    return EpisodeBatch(**{f.name: getattr(batch, f.name)[i : i + 1]
                           for f in dataclasses.fields(batch)})


def test_second_order_inner_step_matches_per_task_double_backward() -> None:
    policy = _policy()
    batch, adv = _batch(0)
    theta = {k: v.requires_grad_() for k, v in _theta().items()}
    probe = {k: torch.randn(2, *v.shape, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64) for k, v in theta.items()}
    new = pg_inner_step(policy, {k: v.expand(2, *v.shape) for k, v in theta.items()}, batch, adv,
                     0.5, first_order=False)
    out = sum((new[k] * probe[k]).sum() for k in theta)
    g_vmap = torch.autograd.grad(out, list(theta.values()))
    total = 0.0
    for i in range(2):
        loss = _task_inner_loss(policy, {k: v.unsqueeze(0) for k, v in theta.items()},
                                _slice(batch, i), adv[i : i + 1], 0)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        total = total + sum(((theta[k] - 0.5 * g) * probe[k][i]).sum()
                            for k, g in zip(theta, grads, strict=True))
    g_loop = torch.autograd.grad(total, list(theta.values()))
    for a, b in zip(g_vmap, g_loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _train(seed: int) -> Params:
    family = CartPoleFamily(CartPoleFamilyConfig(max_steps=20))
    train_set = sample_task_sets(family, {"train": 4}, seed=0)["train"]
    config = MAMLConfig(hidden_sizes=(8,), meta_batch_size=2, episodes_per_task=3,
                        num_outer_steps=2)
    maml = train_maml(family, train_set, config, num_iterations=2, seed=seed)
    return {k: v.detach().clone() for k, v in maml.theta.items()}


def test_train_maml_same_seed_same_parameters() -> None:
    first, second, other = _train(0), _train(0), _train(1)
    init = _policy().init_params(torch.Generator().manual_seed(0))
    assert set(first) == set(init)
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert any(not torch.equal(first[k], init[k]) for k in first), "training changed nothing"
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_clipped_surrogate_hand_computed() -> None:
    # Uniform logits: logp = log 0.5 for both actions, so old_logp sets the ratio directly.
    ratios = torch.tensor([1.1, 1.5, 0.5, 0.9, 1.5, 0.5, 3.0], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0, -1.0, 1.0, 100.0], dtype=torch.float64)
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0], dtype=torch.float64)
    actions = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    logits = torch.zeros(7, 2, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    old_logp = np.log(0.5) - torch.log(ratios)
    loss = clipped_surrogate_loss(logp, old_logp, adv, mask, clip_eps=0.2)
    # min(r A, clip(r) A): 1.1 (inside), 1.2 (clipped high), -0.8 (clipped low),
    # -1.8 (inside), -1.5 (unclipped: pessimistic), 0.5 (unclipped), masked out.
    expected = -(1.1 + 1.2 - 0.8 - 1.8 - 1.5 + 0.5) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    (g,) = torch.autograd.grad(loss, logits)
    row_has_grad = g.abs().sum(-1) > 0
    assert row_has_grad.tolist() == [True, False, False, True, True, True, False]
    # d loss / d logp_t = -r_t A_t / 6 where the unclipped branch is active, else 0.
    logp_leaf = logp.detach().requires_grad_()
    (g_logp,) = torch.autograd.grad(
        clipped_surrogate_loss(logp_leaf, old_logp, adv, mask, clip_eps=0.2), logp_leaf)
    active = torch.tensor([1, 0, 0, 1, 1, 1, 0], dtype=torch.float64)
    torch.testing.assert_close(g_logp, -ratios * adv * active / 6, rtol=1e-12, atol=0)


def test_policy_gradient_loss_hand_computed() -> None:
    logp = torch.log(torch.tensor([0.75, 0.5, 0.9], dtype=torch.float64))
    adv = torch.tensor([2.0, -1.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    loss = policy_gradient_loss(logp, adv, mask)
    expected = -(np.log(0.75) * 2.0 + np.log(0.5) * -1.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


# --- Meta-SGD: learned per-parameter inner step sizes (``learn_inner_lr``) -------------------

GOALS = [[0.3, -0.2], [-0.4, 0.1]]


def _gaussian_policy() -> GaussianMLPPolicy:
    return GaussianMLPPolicy(2, 2, (8,), init_std=0.3)


def _gaussian_batch(seed: int) -> tuple[EpisodeBatch, torch.Tensor]:
    """A float64 batch of 2 goals × 3 episodes × 12 steps of the Gaussian policy."""
    env = BatchedNav2D(GOALS, num_envs=3, config=Nav2DFamilyConfig(max_steps=12),
                       dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    init = _gaussian_policy().init_params(torch.Generator().manual_seed(0))
    b = rollout(act_fn(_gaussian_policy(), expand_params(init, 2)), env, gen)
    batch = dataclasses.replace(b, obs=b.obs.double(), actions=b.actions.double(),
                                rewards=b.rewards.double(), mask=b.mask.double())
    return batch, advantages(batch, 0.99)


def _step_sizes(theta: Params, base: float, seed: int = 3) -> Params:
    """Elementwise different step sizes in ``base * [0.5, 1.5)`` (so a scalar would not do)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: base * (0.5 + torch.rand(v.shape, generator=gen, dtype=v.dtype))
            for k, v in theta.items()}


def _sgd_problem(kind: str, num_inner: int, first_order: bool = False):
    """Like :func:`_problem`, plus per-parameter step sizes; ``kind``: categorical/gaussian."""
    if kind == "categorical":
        policy, theta = _policy(), _theta()
        inner = [_batch(seed) for seed in range(num_inner)]
        post, post_adv = _batch(100)
        base = CONFIG.inner_lr
    else:
        policy = _gaussian_policy()
        theta = {k: v.double() for k, v in
                 policy.init_params(torch.Generator().manual_seed(0)).items()}
        inner = [_gaussian_batch(seed) for seed in range(num_inner)]
        post, post_adv = _gaussian_batch(100)
        base = 0.1
    config = dataclasses.replace(CONFIG, inner_lr=base, first_order=first_order,
                                 learn_inner_lr=True)
    lr = _step_sizes(theta, base)
    with torch.no_grad():
        adapted = adapted_params(policy, theta, inner, lr, first_order=True)
        # Off the adapted policy a little, so some ratios leave the clip range.
        old_logp = log_probs(policy, adapted, post) + 0.3 * torch.randn(
            post.mask.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return policy, theta, lr, inner, post, post_adv, old_logp, config


def _sgd_objective(problem, theta: Params, lr: Params) -> torch.Tensor:
    policy, _, _, inner, post, post_adv, old_logp, config = problem
    return maml_objective(policy, theta, inner, post, post_adv, old_logp, config, lr)


def _sgd_meta_grad(problem) -> tuple[Params, Params]:
    theta = {k: v.clone().requires_grad_() for k, v in problem[1].items()}
    lr = {k: v.clone().requires_grad_() for k, v in problem[2].items()}
    grads = torch.autograd.grad(_sgd_objective(problem, theta, lr),
                                [*theta.values(), *lr.values()])
    n = len(theta)
    return dict(zip(theta, grads[:n], strict=True)), dict(zip(lr, grads[n:], strict=True))


def _sgd_fd(problem, d_theta: Params, d_lr: Params, eps: float = 1e-6) -> float:
    theta, lr = problem[1], problem[2]
    with torch.no_grad():
        plus = _sgd_objective(problem, {k: theta[k] + eps * d_theta[k] for k in theta},
                              {k: lr[k] + eps * d_lr[k] for k in lr}).item()
        minus = _sgd_objective(problem, {k: theta[k] - eps * d_theta[k] for k in theta},
                               {k: lr[k] - eps * d_lr[k] for k in lr}).item()
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize(("kind", "num_inner", "first_order"),
                         [("categorical", 1, False), ("categorical", 2, False),
                          ("gaussian", 1, False), ("gaussian", 2, False),
                          ("gaussian", 1, True)])
def test_meta_sgd_step_size_gradient_matches_finite_differences(
        kind: str, num_inner: int, first_order: bool) -> None:
    # Second order: exact for theta and the step sizes. First order with ONE inner step: the
    # inner gradient does not depend on the step sizes, so their gradient is exact there too.
    problem = _sgd_problem(kind, num_inner, first_order)
    theta, lr = problem[1], problem[2]
    g_theta, g_lr = _sgd_meta_grad(problem)
    zero_theta = {k: torch.zeros_like(v) for k, v in theta.items()}
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):
        v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in lr.items()}
        fd = _sgd_fd(problem, zero_theta, v)
        assert abs(fd) > 1e-4, "direction should not be degenerate"
        assert _dot(g_lr, v) == pytest.approx(fd, rel=1e-4, abs=1e-8)
        if not first_order:  # jointly with theta
            u = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64)
                 for k, t in theta.items()}
            fd = _sgd_fd(problem, u, v)
            assert _dot(g_theta, u) + _dot(g_lr, v) == pytest.approx(fd, rel=1e-4, abs=1e-8)
    # One coordinate of every step-size tensor (log_std's included for the Gaussian policy).
    for k, t in lr.items():
        idx = (0,) * t.dim()
        e = {j: torch.zeros_like(u) for j, u in lr.items()}
        e[k][idx] = 1.0
        fd = _sgd_fd(problem, zero_theta, e)
        assert g_lr[k][idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-8), k
        assert abs(fd) > 1e-8, k


def test_meta_sgd_first_order_step_size_gradient_is_minus_inner_grad_times_outer_grad() -> None:
    # d L / d alpha = -sum_i grad_inner_i * dL/dtheta'_i (elementwise), one inner step.
    problem = _sgd_problem("gaussian", 1, first_order=True)
    policy, theta, lr, inner, post, post_adv, old_logp, config = problem
    _, g_lr = _sgd_meta_grad(problem)
    batch, adv = inner[0]
    params = expand_params(theta, 2)
    unit = pg_inner_step(policy, params, batch, adv, 1.0)  # theta - grad_inner
    inner_grad = {k: params[k] - unit[k] for k in params}
    with torch.no_grad():
        adapted = adapted_params(policy, theta, inner, lr, first_order=True)
    leaf = {k: v.clone().requires_grad_() for k, v in adapted.items()}
    loss = clipped_surrogate_loss(policy.task_log_prob(leaf, post.obs, post.actions), old_logp,
                                  post_adv, post.mask, config.clip_eps)
    outer = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values())), strict=True))
    for k in lr:
        torch.testing.assert_close(g_lr[k], -(inner_grad[k] * outer[k]).sum(0),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_inner_step_with_per_parameter_step_sizes_is_theta_minus_lr_times_grad(
        first_order: bool) -> None:
    policy = _policy()
    batch, adv = _batch(0)
    params = _per_task_params(2)
    lr = _step_sizes(_theta(), 0.3)
    new = pg_inner_step(policy, params, batch, adv, lr, first_order=first_order)
    ref = inner_step_vmap(policy, params, batch, adv, lr, first_order=first_order)
    for i in range(2):
        p = {k: v[i].clone().requires_grad_() for k, v in params.items()}
        loss = _task_inner_loss(policy, {k: v.unsqueeze(0) for k, v in p.items()},
                                _slice(batch, i), adv[i : i + 1], 0)
        grads = torch.autograd.grad(loss, list(p.values()))
        for (k, v), g in zip(p.items(), grads, strict=True):
            expected = v.detach() - lr[k] * g
            torch.testing.assert_close(new[k][i], expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ref[k][i], expected, rtol=1e-12, atol=1e-12)
            # ... and not what the mean step size would give.
            assert not torch.allclose(new[k][i], v.detach() - lr[k].mean() * g), k


def _nav_maml(learn_inner_lr: bool, num_outer_steps: int = 2) -> tuple[MAML, Nav2DFamily]:
    family = Nav2DFamily(Nav2DFamilyConfig(max_steps=10))
    config = MAMLConfig(hidden_sizes=(8,), init_std=2.0, inner_lr=0.1, meta_batch_size=2,
                        episodes_per_task=3, num_outer_steps=num_outer_steps,
                        learn_inner_lr=learn_inner_lr)
    return MAML(make_policy(family, config.hidden_sizes, config.init_std), config, 0), family


def test_meta_sgd_step_sizes_get_gradients_change_and_reach_the_learner() -> None:
    maml, family = _nav_maml(True)
    assert isinstance(maml.inner_lr, dict)
    assert set(maml.inner_lr) == set(maml.theta) and "log_std" in maml.inner_lr
    for k, v in maml.inner_lr.items():
        assert v.shape == maml.theta[k].shape and v.requires_grad
        assert torch.equal(v, torch.full_like(v, 0.1))
    tasks = family.sample(2, np.random.default_rng(0))
    metrics = maml.meta_train_step(family, tasks)
    assert {"train/inner_lr_mean", "train/inner_lr_min", "train/inner_lr_max"} <= set(metrics)
    for k, v in maml.inner_lr.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
        assert v.grad.abs().max() > 0, k
        assert (v.detach() != 0.1).any(), f"{k}: step size unchanged by the outer step"
    learner = maml.learner()
    assert isinstance(learner.inner_lr, dict)
    for k, v in learner.inner_lr.items():
        assert torch.equal(v, maml.inner_lr[k].detach()) and not v.requires_grad
    # The learner adapts with the learned step sizes, not with the initial alpha.
    env = family.make_env(tasks, 3)
    params = learner.initial_params(2)
    episodes = rollout(learner.explore(params), env, torch.Generator().manual_seed(1))
    adapted = learner.adapt(params, episodes)
    expected = pg_inner_step(learner.policy, params, episodes, advantages(episodes, 0.99),
                          learner.inner_lr)
    fixed = pg_inner_step(learner.policy, params, episodes, advantages(episodes, 0.99), 0.1)
    for k in adapted:
        torch.testing.assert_close(adapted[k], expected[k], rtol=0, atol=0)
    assert any(not torch.allclose(adapted[k], fixed[k]) for k in adapted)


def test_meta_sgd_starts_where_fixed_alpha_maml_does() -> None:
    # Same seed, one outer step: the first iteration's rollouts and loss are identical (the step
    # sizes start at inner_lr); afterwards the step sizes make the two runs differ.
    (on, family), (off, _) = _nav_maml(True, 1), _nav_maml(False, 1)
    assert isinstance(off.inner_lr, float) and off.meta_params == list(off.theta.values())
    rng_on, rng_off = np.random.default_rng(0), np.random.default_rng(0)
    m_on = on.meta_train_step(family, family.sample(2, rng_on))
    m_off = off.meta_train_step(family, family.sample(2, rng_off))
    for key in ("train/return_pre_adapt", "train/return_post_adapt", "train/outer_loss"):
        assert m_on[key] == m_off[key], key
    m_on = on.meta_train_step(family, family.sample(2, rng_on))
    m_off = off.meta_train_step(family, family.sample(2, rng_off))
    assert m_on["train/return_post_adapt"] != m_off["train/return_post_adapt"]
