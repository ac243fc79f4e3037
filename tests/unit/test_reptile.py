"""Reptile: its direction against gradients computed task by task, its update, determinism."""

from __future__ import annotations

import pytest
import torch

from metarl.algos import registry
from metarl.algos.base import policy_gradient_loss
from metarl.algos.reptile import Reptile, ReptileConfig, reptile_direction, train_reptile
from metarl.config import ConfigError, from_mapping
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.policies import CategoricalMLPPolicy, Params, act_fn
from metarl.returns import advantages
from metarl.sampler import rollout
from metarl.tasks import sample_task_sets

torch.set_num_threads(1)

FAMILY = CartPoleFamily(CartPoleFamilyConfig(max_steps=15))
TASKS = list(sample_task_sets(FAMILY, {"train": 3}, 0)["train"].tasks)
SMALL = {"hidden_sizes": (8,), "meta_batch_size": 3, "episodes_per_task": 4}


def _reptile(**kw: object) -> Reptile:
    cfg = ReptileConfig(**{**SMALL, **kw})  # type: ignore[arg-type]
    return Reptile(CategoricalMLPPolicy(4, 2, cfg.hidden_sizes), cfg, seed=0)


def _replayed_direction(reptile: Reptile, state: torch.Tensor) -> Params:
    """Reptile's direction recomputed task by task: the same episodes (the generator replayed),
    each task's REINFORCE gradient by autograd on its own, SGD steps of ``inner_lr``."""
    cfg = reptile.config
    gen = torch.Generator().set_state(state)
    env = FAMILY.make_env(TASKS, cfg.episodes_per_task)
    theta = {k: v.detach() for k, v in reptile.theta.items()}
    params = {k: v.unsqueeze(0).repeat(len(TASKS), *([1] * v.dim())) for k, v in theta.items()}
    for _ in range(cfg.num_inner_steps):
        batch = rollout(act_fn(reptile.policy, params), env, gen)
        adv = advantages(batch, cfg.discount)
        new = {}
        for i in range(len(TASKS)):
            p = {k: v[i].clone().requires_grad_() for k, v in params.items()}
            logp = reptile.policy.log_prob(p, batch.obs[i], batch.actions[i])
            loss = policy_gradient_loss(logp, adv[i], batch.mask[i])
            grads = torch.autograd.grad(loss, list(p.values()))
            new[i] = {k: (p[k] - cfg.inner_lr * g).detach() for k, g in zip(p, grads, strict=True)}
        params = {k: torch.stack([new[i][k] for i in range(len(TASKS))]) for k in params}
    return {k: (params[k] - theta[k]).mean(0) for k in theta}


@pytest.mark.parametrize("k", [1, 2])
def test_direction_is_the_mean_of_per_task_sgd_steps(k: int) -> None:
    # k = 1: mean_i(theta'_i - theta) = -inner_lr * (mean task gradient at theta), the paper's
    # joint-training case; k = 2: the sum of both steps' gradients, the second at theta'_1
    # (FOMAML's gradient), each computed here task by task with autograd.
    reptile = _reptile(num_inner_steps=k, inner_lr=0.3)
    state = reptile.generator.get_state()
    adapted, returns, steps = reptile.adapt(FAMILY, TASKS)
    got = reptile_direction({k_: v.detach() for k_, v in reptile.theta.items()}, adapted)
    want = _replayed_direction(reptile, state)
    assert len(returns) == k and steps > 0
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-4), name
    assert max(float(v.abs().max()) for v in got.values()) > 1e-4  # it moved


def test_sgd_update_moves_theta_toward_the_adapted_parameters() -> None:
    # outer_lr = 1 lands on the mean of the adapted parameters; 0.5 goes half way there
    for lr, share in ((1.0, 0.0), (0.5, 0.5)):
        reptile = _reptile(optimizer="sgd", outer_lr=lr, num_inner_steps=2)
        theta0 = {k: v.detach().clone() for k, v in reptile.theta.items()}
        state = reptile.generator.get_state()
        adapted, _, _ = Reptile.adapt(reptile, FAMILY, TASKS)
        target = {k: v.mean(0) for k, v in adapted.items()}
        reptile.generator.set_state(state)
        reptile.meta_train_step(FAMILY, TASKS)
        for k, v in reptile.theta.items():
            before = (target[k] - theta0[k]).norm()
            after = (target[k] - v.detach()).norm()
            assert torch.allclose(after, share * before, atol=1e-6), k


def test_adam_steps_against_the_negative_direction() -> None:
    reptile = _reptile(optimizer="adam", outer_lr=0.01)
    theta0 = {k: v.detach().clone() for k, v in reptile.theta.items()}
    state = reptile.generator.get_state()
    adapted, _, _ = reptile.adapt(FAMILY, TASKS)
    direction = reptile_direction(theta0, adapted)
    reptile.generator.set_state(state)
    reptile.meta_train_step(FAMILY, TASKS)
    for k, v in reptile.theta.items():
        moved = v.detach() - theta0[k]
        # Adam's first step is lr * sign(gradient) where the gradient is not ~0
        big = direction[k].abs() > 1e-6
        assert torch.allclose(moved[big], 0.01 * direction[k][big].sign(), atol=1e-4), k


def _train(seed: int, **kw: object) -> dict[str, torch.Tensor]:
    cfg = ReptileConfig(**{**SMALL, **kw})  # type: ignore[arg-type]
    out = train_reptile(FAMILY, sample_task_sets(FAMILY, {"train": 6}, 0)["train"], cfg, 2, seed)
    return {k: v.detach().clone() for k, v in out.theta.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_same_parameters(optimizer: str) -> None:
    first, second, other = (_train(s, optimizer=optimizer) for s in (0, 0, 1))
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_registered_with_its_budget_and_a_checked_config() -> None:
    algo = registry.get("reptile")
    cfg = ReptileConfig(num_inner_steps=3, meta_batch_size=5, episodes_per_task=4)
    assert algo.episodes(cfg, 10, 4) == 10 * 3 * 5 * 4  # every inner rollout, nothing else
    with pytest.raises(ConfigError, match="optimizer"):
        from_mapping(ReptileConfig, {"optimizer": "rmsprop"}, "algo.reptile")
