"""Return and advantage math against hand-computed values."""

from __future__ import annotations

import numpy as np
import torch

from metarl.envs.cartpole import BatchedCartPole, CartPoleTask
from metarl.returns import (
    advantages,
    baseline_features,
    discounted_returns,
    linear_baseline,
    normalize_per_task,
)
from metarl.sampler import rollout

torch.set_num_threads(1)


def test_discounted_returns_hand_computed() -> None:
    out = discounted_returns(torch.tensor([1.0, 2.0, 3.0]), 0.5)
    torch.testing.assert_close(out, torch.tensor([2.75, 3.5, 3.0]))


def test_discounted_returns_with_padding_and_batch_dims() -> None:
    rewards = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
                            [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]])
    out = discounted_returns(rewards, 0.9)
    expected = torch.tensor([[[1.9, 1.0, 0.0, 0.0], [3.439, 2.71, 1.9, 1.0]],
                             [[2.0, 0.0, 0.0, 0.0], [4 * 0.9**3, 4 * 0.9**2, 3.6, 4.0]]])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_discounted_returns_discount_one_is_reverse_cumsum() -> None:
    rewards = torch.arange(1.0, 7.0, dtype=torch.float64)
    expected = rewards.flip(0).cumsum(0).flip(0)
    torch.testing.assert_close(discounted_returns(rewards, 1.0), expected)


def _mask(num_tasks: int, num_envs: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(steps // 2, steps + 1, (num_tasks, num_envs), generator=gen)
    return (torch.arange(steps) < lengths.unsqueeze(-1)).to(torch.float64)


def test_linear_baseline_fits_linear_returns_exactly_per_task() -> None:
    gen = torch.Generator().manual_seed(0)
    n, e, t = 2, 4, 60
    obs = torch.rand(n, e, t, 4, generator=gen, dtype=torch.float64) * 2 - 1
    mask = _mask(n, e, t, gen)
    assert (mask == 0).any()
    feats = baseline_features(obs, mask)
    assert feats.shape == (n, e, t, 12)
    coef = torch.randn(n, 12, generator=gen, dtype=torch.float64)  # a different fit per task
    returns = torch.einsum("netf,nf->net", feats, coef)
    fitted = linear_baseline(obs, returns, mask)
    assert fitted.shape == (n, e, t)
    # Exact up to the ridge term (reg=1e-5 shrinks the near-collinear t, t², t³ coefficients).
    torch.testing.assert_close(fitted, returns, rtol=0, atol=1e-3)
    assert (fitted[mask == 0] == 0).all()
    # And equal to an independent ridge solve, task by task.
    for i in range(n):
        x = feats[i].reshape(-1, 12).numpy()
        y = returns[i].reshape(-1).numpy()
        aug_x = np.vstack([x, np.sqrt(1e-5) * np.eye(12)])
        aug_y = np.concatenate([y, np.zeros(12)])
        ref_coef = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
        np.testing.assert_allclose(fitted[i].reshape(-1).numpy(), x @ ref_coef, atol=1e-8)
    # A pooled fit over both tasks could not do this: the tasks' targets differ.
    assert (returns[0] - torch.einsum("etf,f->et", feats[0], coef[1])).abs().max() > 0.1


def test_linear_baseline_is_zero_on_masked_steps_for_nonlinear_returns() -> None:
    gen = torch.Generator().manual_seed(1)
    obs = torch.rand(2, 3, 20, 4, generator=gen)
    mask = _mask(2, 3, 20, gen).float()
    returns = torch.rand(2, 3, 20, generator=gen) * 10
    fitted = linear_baseline(obs, returns, mask)
    assert fitted.dtype == torch.float32
    assert (fitted[mask == 0] == 0).all()
    assert fitted[mask == 1].abs().min() > 0


def test_normalize_per_task_zero_mean_unit_std() -> None:
    gen = torch.Generator().manual_seed(2)
    mask = _mask(3, 4, 10, gen)
    scale = torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64).view(3, 1, 1)
    shift = torch.tensor([0.0, 5.0, -3.0], dtype=torch.float64).view(3, 1, 1)
    values = torch.randn(3, 4, 10, generator=gen, dtype=torch.float64) * scale + shift
    values = values + 1000.0 * (1 - mask)  # junk on padding must not leak in
    out = normalize_per_task(values, mask)
    assert (out[mask == 0] == 0).all()
    for i in range(3):
        valid = out[i][mask[i] == 1]
        torch.testing.assert_close(valid.mean(), torch.tensor(0.0, dtype=torch.float64),
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(valid.std(unbiased=False),
                                   torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)


def test_advantages_on_a_rollout_are_normalised_and_masked() -> None:
    tasks = [CartPoleTask(), CartPoleTask(pole_length=0.3, force_mag=-8.0)]
    env = BatchedCartPole(tasks, num_envs=6, max_steps=40)
    batch = rollout(None, env, torch.Generator().manual_seed(0))
    adv = advantages(batch, 0.99)
    assert adv.shape == batch.rewards.shape
    assert (adv[batch.mask == 0] == 0).all()
    for i in range(2):
        valid = adv[i][batch.mask[i] == 1]
        assert abs(valid.mean().item()) < 1e-5
        assert abs(valid.std(unbiased=False).item() - 1.0) < 1e-4
