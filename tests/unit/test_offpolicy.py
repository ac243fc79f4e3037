"""The off-policy rules: TD targets bootstrap on truncation, never after termination."""

from __future__ import annotations

import torch

from metarl.offpolicy import MLP, soft_update, td_target


def test_td_target_bootstraps_on_truncation_not_termination() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0])
    next_value = torch.tensor([10.0, 10.0, 10.0], requires_grad=True)
    terminated = torch.tensor([False, True, False])
    # step 2 is truncated (the horizon): it bootstraps exactly like step 0
    target = td_target(rewards, next_value, terminated, 0.9)
    assert target.tolist() == [10.0, 1.0, 10.0]
    assert not target.requires_grad


def test_soft_update_moves_a_fraction_tau() -> None:
    gen = torch.Generator().manual_seed(0)
    source, target = MLP(3, 2, (4,), gen), MLP(3, 2, (4,), gen)
    before = [p.clone() for p in target.parameters()]
    soft_update(target, source, 0.25)
    for b, t, s in zip(before, target.parameters(), source.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)


def test_mlp_shares_weights_over_leading_dims_and_seeds_deterministically() -> None:
    net = MLP(3, 2, (5, 5), torch.Generator().manual_seed(1))
    again = MLP(3, 2, (5, 5), torch.Generator().manual_seed(1))
    x = torch.randn(4, 6, 3)
    torch.testing.assert_close(net(x), again(x))
    torch.testing.assert_close(net(x)[2], net(x[2]))
