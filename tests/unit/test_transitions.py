"""The transitions contract: termination vs truncation, bootstrapping, and the sampler."""

from __future__ import annotations

import pytest
import torch

from metarl.envs.cartpole import BatchedCartPole, CartPoleTask
from metarl.returns import gae_transitions
from metarl.sampler import rollout, rollout_steps

F, T = False, True


def test_truncation_bootstraps_and_termination_does_not() -> None:
    # One slot, 4 steps: reward 1 each; step 1 is truncated (a time limit), step 3 terminated.
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0])
    values = torch.tensor([0.5, 0.4, 0.3, 0.2])
    next_values = torch.tensor([0.4, 10.0, 0.2, 99.0])  # V(next_obs): 10 after the limit
    terminated = torch.tensor([F, F, F, T])
    truncated = torch.tensor([F, T, F, F])
    g = 0.9
    adv, ret = gae_transitions(rewards, values, next_values, terminated, truncated, g, lam=1.0)
    # by hand, lam = 1: returns are bootstrapped discounted sums within each episode
    want = torch.tensor([1 + g * (1 + g * 10.0),  # episode 1: bootstraps V = 10 at the limit
                         1 + g * 10.0,
                         1 + g * 1.0,             # episode 2: terminal, V(next) ignored (99)
                         1.0])
    torch.testing.assert_close(ret, want)
    torch.testing.assert_close(adv, want - values)
    # lam = 0: one-step TD errors
    adv0, _ = gae_transitions(rewards, values, next_values, terminated, truncated, g, lam=0.0)
    torch.testing.assert_close(adv0, torch.tensor([1 + g * 0.4 - 0.5, 1 + g * 10.0 - 0.4,
                                                   1 + g * 0.2 - 0.3, 1.0 - 0.2]))
    # treating the time limit as a termination (the old contract) would lose g * 10
    _, as_terminal = gae_transitions(rewards, values, next_values, terminated | truncated,
                                     torch.zeros(4, dtype=torch.bool), g, lam=1.0)
    assert as_terminal[1] == pytest.approx(1.0) and ret[1] == pytest.approx(10.0)


def test_gae_lambda_mixes_and_masks_padding() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.0]])
    next_values = torch.tensor([[0.2, 0.3, 0.0, 0.0]])
    terminated = torch.tensor([[F, F, T, F]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    g, lam = 0.5, 0.5
    adv, _ = gae_transitions(rewards, values, next_values, terminated,
                             torch.zeros_like(terminated), g, lam, mask)
    d2 = 2.0 - 0.3
    d1 = 0.0 + g * 0.3 - 0.2
    d0 = 1.0 + g * 0.2 - 0.1
    torch.testing.assert_close(adv, torch.tensor([[d0 + g * lam * (d1 + g * lam * d2),
                                                   d1 + g * lam * d2, d2, 0.0]]))


def test_episodes_mark_truncation_at_the_horizon_and_termination_before() -> None:
    env = BatchedCartPole([CartPoleTask(), CartPoleTask(pole_length=0.05)], 3, max_steps=40)
    batch = rollout(lambda obs, g: torch.ones(obs.shape[:2], dtype=torch.long), env,
                    torch.Generator().manual_seed(0))  # always push right: falls fast
    ended = batch.terminated | batch.truncated
    assert (ended.sum(-1) == 1).all(), "every episode ends exactly once"
    last = batch.mask.sum(-1).long() - 1
    assert ended.gather(-1, last.unsqueeze(-1)).all(), "at its last valid step"
    assert not (batch.terminated & batch.truncated).any()
    # next_obs of a step is the obs of the next one, within an episode
    valid_next = batch.mask[..., 1:].bool()
    torch.testing.assert_close(batch.next_obs[..., :-1, :][valid_next],
                               batch.obs[..., 1:, :][valid_next])
    # a policy that balances is truncated at the horizon instead
    steady = BatchedCartPole([CartPoleTask()], 1, max_steps=5)
    calm = rollout(lambda obs, g: (obs[..., 2] + obs[..., 3] > 0).long(), steady,
                   torch.Generator().manual_seed(0))
    assert calm.truncated[0, 0, -1] and not calm.terminated.any()


def test_steps_auto_reset_with_next_obs_before_the_reset() -> None:
    env = BatchedCartPole([CartPoleTask()], 2, max_steps=7)
    batch = rollout_steps(None, env, 30, torch.Generator().manual_seed(1))
    ended = batch.terminated | batch.truncated
    assert ended.any() and batch.truncated.any()
    # after an ended step the next obs starts anew (near 0), unlike next_obs of the ended step
    n, e, t = torch.nonzero(ended[..., :-1], as_tuple=True)
    restarted = batch.obs[n, e, t + 1]
    assert restarted.abs().max() <= 0.05 + 1e-6
    assert not torch.equal(batch.next_obs[n, e, t], restarted)
    # the horizon: no episode runs more than 7 steps
    run = torch.zeros(1, 2, dtype=torch.long)
    for step in range(30):
        run = torch.where(ended[..., step], 0, run + 1)
        assert (run <= 7).all()
    assert torch.equal(batch.dones, ended.float())
