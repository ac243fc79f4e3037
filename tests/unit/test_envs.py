"""Env contract: gymnasium parity, check_env, vectorisation, masking, determinism."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl  # noqa: F401  (registers metarl/CartPole-v0)
from metarl.envs.cartpole import BatchedCartPole, CartPoleTask, MetaCartPoleEnv
from metarl.policies import CategoricalMLPPolicy, act_fn, expand_params
from metarl.sampler import rollout

torch.set_num_threads(1)

NON_DEFAULT = CartPoleTask(pole_length=0.8, pole_mass=0.3, cart_mass=1.7, gravity=11.0,
                           force_mag=-7.5)


def _step_both(ours: gym.Env, ref: gym.Env, action: int) -> tuple[np.ndarray, bool, bool]:
    obs, rew, term, trunc, _ = ours.step(action)
    ref_obs, ref_rew, ref_term, ref_trunc, _ = ref.step(action)
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)
    assert rew == ref_rew
    assert term == ref_term
    assert trunc == ref_trunc
    return obs, term, trunc


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_matches_gymnasium_cartpole_until_termination(seed: int) -> None:
    ours = gym.make("metarl/CartPole-v0")
    ref = gym.make("CartPole-v1")
    obs, _ = ours.reset(seed=seed)
    ref_obs, _ = ref.reset(seed=seed)
    np.testing.assert_array_equal(obs, ref_obs)
    actions = np.random.default_rng(seed).integers(0, 2, size=500)
    steps = 0
    for a in actions:
        steps += 1
        _, term, trunc = _step_both(ours, ref, int(a))
        if term or trunc:
            break
    assert term and not trunc, "random actions should drop the pole well before 500 steps"
    assert steps < 100
    # Past termination both give reward 0 while the physics keeps evolving.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a in actions[:2]:
            obs, rew, term, _, _ = ours.unwrapped.step(int(a))
            ref_obs, ref_rew, ref_term, _, _ = ref.unwrapped.step(int(a))
            np.testing.assert_allclose(obs, ref_obs, rtol=0, atol=1e-6)
            assert rew == ref_rew == 0.0
            assert term and ref_term


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_gymnasium_cartpole_until_truncation(seed: int) -> None:
    ours = gym.make("metarl/CartPole-v0")
    ref = gym.make("CartPole-v1")
    obs, _ = ours.reset(seed=seed)
    ref_obs, _ = ref.reset(seed=seed)
    np.testing.assert_array_equal(obs, ref_obs)
    steps = 0
    while True:
        steps += 1
        action = 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        obs, term, trunc = _step_both(ours, ref, action)
        if term or trunc:
            break
    assert steps == 500
    assert trunc and not term


@pytest.mark.parametrize("task", [None, CartPoleTask(), NON_DEFAULT])
def test_check_env_passes(task: CartPoleTask | None) -> None:
    env = gym.make("metarl/CartPole-v0") if task is None else MetaCartPoleEnv(task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def test_meta_env_rejects_bad_action_and_render_mode() -> None:
    env = MetaCartPoleEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action=2"):
        env.step(2)
    with pytest.raises(ValueError, match="render_mode='human'"):
        MetaCartPoleEnv(render_mode="human")


TASKS = [
    CartPoleTask(),
    CartPoleTask(pole_length=0.3, pole_mass=0.4, cart_mass=0.6, gravity=8.5, force_mag=12.0),
    CartPoleTask(pole_length=0.9, pole_mass=0.05, cart_mass=1.8, gravity=11.5, force_mag=-6.0),
]


def test_batched_equals_each_slot_alone() -> None:
    num_envs, num_steps = 4, 40
    gen = torch.Generator().manual_seed(0)
    env = BatchedCartPole(TASKS, num_envs=num_envs)
    start = env.reset(gen).clone()
    actions = torch.randint(0, 2, (num_steps, len(TASKS), num_envs), generator=gen)
    states, rewards, terms = [], [], []
    for t in range(num_steps):
        s, r, d = env.step(actions[t])
        states.append(s.clone())
        rewards.append(r)
        terms.append(d)
    states_b, rewards_b, terms_b = torch.stack(states), torch.stack(rewards), torch.stack(terms)
    assert terms_b.any(), "some slot should terminate in 40 random steps"
    assert not terms_b.any(0).all(), "some slot should survive (tests both branches)"
    for i, task in enumerate(TASKS):
        for j in range(num_envs):
            single = BatchedCartPole([task], num_envs=1)
            single.set_state(start[i, j].view(1, 1, 4))
            for t in range(num_steps):
                s, r, d = single.step(actions[t, i, j].view(1, 1))
                torch.testing.assert_close(s[0, 0], states_b[t, i, j], rtol=1e-6, atol=1e-6)
                assert r.item() == rewards_b[t, i, j].item()
                assert d.item() == terms_b[t, i, j].item()


def test_tasks_with_different_params_evolve_differently() -> None:
    env = BatchedCartPole(TASKS, num_envs=1, dtype=torch.float64)
    state = torch.tensor([0.01, -0.02, 0.03, 0.01], dtype=torch.float64)
    env.set_state(state.expand(len(TASKS), 1, 4))
    for _ in range(5):
        s, _, _ = env.step(torch.ones(len(TASKS), 1, dtype=torch.long))
    for a in range(len(TASKS)):
        for b in range(a + 1, len(TASKS)):
            assert (s[a, 0] - s[b, 0]).abs().max() > 1e-3


def test_reversed_force_mirrors_the_push() -> None:
    pos = CartPoleTask(force_mag=10.0)
    neg = CartPoleTask(force_mag=-10.0)
    env = BatchedCartPole([pos, neg], num_envs=1, dtype=torch.float64)
    # Upright at rest: the x acceleration is linear in the force, so it flips sign exactly.
    env.set_state(torch.zeros(2, 1, 4, dtype=torch.float64))
    s, _, _ = env.step(torch.ones(2, 1, dtype=torch.long))
    xacc = s[:, 0, 1] / 0.02
    assert xacc[0] > 1.0
    assert xacc[1] < -1.0
    torch.testing.assert_close(xacc[1], -xacc[0], rtol=1e-12, atol=0)
    # From any state, action 0 of the reversed task is action 1 of the normal one.
    start = torch.tensor([0.1, 0.3, -0.05, 0.2], dtype=torch.float64).expand(2, 1, 4)
    env.set_state(start)
    s, _, _ = env.step(torch.tensor([[1], [0]]))
    torch.testing.assert_close(s[0], s[1], rtol=0, atol=0)


def test_terminated_slots_stay_frozen_with_zero_reward() -> None:
    env = BatchedCartPole([CartPoleTask()], num_envs=2, dtype=torch.float64)
    # Slot 0 is about to leave the track; slot 1 is upright at rest.
    start = torch.tensor([[[2.39, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    env.set_state(start)
    s, r, d = env.step(torch.ones(1, 2, dtype=torch.long))
    assert d.tolist() == [[True, False]]
    assert r.tolist() == [[1.0, 1.0]]
    frozen = s[0, 0].clone()
    assert frozen[0] > 2.4
    for _ in range(3):
        s, r, d = env.step(torch.ones(1, 2, dtype=torch.long))
        torch.testing.assert_close(s[0, 0], frozen, rtol=0, atol=0)
        assert r.tolist() == [[0.0, 1.0]]
        assert d.tolist() == [[False, False]]
    assert env.done.tolist() == [[True, False]]


def _replay_lengths(env: BatchedCartPole, obs0: torch.Tensor, actions: torch.Tensor
                    ) -> torch.Tensor:
    """Episode lengths found by replaying ``actions`` from ``obs0`` in a fresh env."""
    fresh = BatchedCartPole(TASKS, num_envs=env.num_envs, max_steps=env.max_steps)
    fresh.set_state(obs0)
    lengths = torch.full(obs0.shape[:2], actions.shape[-1], dtype=torch.long)
    ended = torch.zeros(obs0.shape[:2], dtype=torch.bool)
    for t in range(actions.shape[-1]):
        _, _, d = fresh.step(actions[..., t])
        lengths = torch.where(d & ~ended, torch.tensor(t + 1), lengths)
        ended |= d
    return lengths


def test_rollout_masks_and_padding() -> None:
    env = BatchedCartPole(TASKS, num_envs=5, max_steps=30)
    batch = rollout(None, env, torch.Generator().manual_seed(3))
    n, e, t = batch.mask.shape
    assert (n, e) == (3, 5)
    assert t <= 30
    assert batch.obs.shape == (n, e, t, 4)
    lengths = _replay_lengths(env, batch.obs[:, :, 0], batch.actions)
    torch.testing.assert_close(batch.mask.sum(-1), lengths.float())
    assert (lengths < t).any(), "some episodes should end early and be padded"
    # mask is 1 then 0: non-increasing in time
    assert (batch.mask[..., 1:] <= batch.mask[..., :-1]).all()
    assert (batch.rewards[batch.mask == 0] == 0).all()
    torch.testing.assert_close(batch.rewards, batch.mask)  # CartPole: 1 per step taken
    torch.testing.assert_close(batch.episode_returns, lengths.float())
    assert batch.num_steps == int(lengths.sum())


def test_rollout_reaches_the_horizon() -> None:
    env = BatchedCartPole([CartPoleTask()], num_envs=2, max_steps=7)
    batch = rollout(None, env, torch.Generator().manual_seed(0))
    assert batch.mask.shape == (1, 2, 7)
    assert batch.mask.sum().item() == 14.0


def _policy_rollout(seed: int) -> tuple[torch.Tensor, ...]:
    policy = CategoricalMLPPolicy(4, 2, (8,))
    params = expand_params(policy.init_params(torch.Generator().manual_seed(123)), len(TASKS))
    env = BatchedCartPole(TASKS, num_envs=4, max_steps=25)
    b = rollout(act_fn(policy, params), env, torch.Generator().manual_seed(seed))
    return b.obs, b.actions, b.rewards, b.mask


def test_rollout_same_seed_same_tensors() -> None:
    first, second = _policy_rollout(0), _policy_rollout(0)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    other = _policy_rollout(1)
    assert not torch.equal(first[0][:, :, 0], other[0][:, :, 0])
    assert other[1].shape != first[1].shape or not torch.equal(first[1], other[1])
