"""The step history a recurrent learner reads, the trial clock wrapper and the time limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.config import ConfigError
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from metarl.envs.wrappers import TrialClock, clock_observation
from metarl.history import StepEncoder, StepHistory, replay_history
from metarl.sampler import TimeLimit


@pytest.mark.parametrize("encoding", ["paper", "reward_code", "pair_code"])
def test_replayed_history_equals_the_history_built_step_by_step(encoding: str) -> None:
    g = torch.Generator().manual_seed(0)
    encoder = StepEncoder(3, 4, encoding=encoding)
    obs = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 5, 7), generator=g), 3).float()
    actions = torch.randint(0, 4, (2, 5, 7), generator=g)
    rewards = torch.randn(2, 5, 7, generator=g)
    dones = (torch.rand(2, 5, 7, generator=g) < 0.3).float()
    history = StepHistory.start(encoder, (2, 5))
    stepwise = []
    for t in range(7):
        stepwise.append(history.input(obs[:, :, t]))
        history.push(obs[:, :, t], actions[:, :, t], rewards[:, :, t], dones[:, :, t])
    replayed = replay_history(StepHistory.start(encoder, (2, 1)), obs, actions, rewards, dones)
    torch.testing.assert_close(replayed, torch.stack(stepwise, dim=2))
    assert replayed.shape == (2, 5, 7, encoder.dim)
    # step 0 reads nothing before the trial; step t reads step t - 1's action and reward
    torch.testing.assert_close(replayed[:, :, 0, 3:], torch.zeros(2, 5, encoder.dim - 3))
    one_hot = torch.nn.functional.one_hot(actions[:, :, 2], 4).float()
    torch.testing.assert_close(replayed[:, :, 3, 3:7], one_hot)
    torch.testing.assert_close(replayed[:, :, 3, 7], rewards[:, :, 2])
    torch.testing.assert_close(replayed[:, :, 3, 8], dones[:, :, 2])


def test_a_frozen_slot_keeps_its_history() -> None:
    encoder = StepEncoder(2, 0, (-1.0, -1.0), (1.0, 1.0))
    history = StepHistory.start(encoder, (1, 2))
    history.push(torch.ones(1, 2, 2), torch.full((1, 2, 2), 3.0), torch.tensor([[1.0, 2.0]]),
                 torch.tensor([[0.0, 1.0]]), frozen=torch.tensor([[False, True]]))
    torch.testing.assert_close(history.prev_reward, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(history.prev_action[0, 1], torch.zeros(2))
    x = history.input(torch.zeros(1, 2, 2))
    torch.testing.assert_close(x[0, 0, 2:4], torch.ones(2))  # the action code is clipped
    with pytest.raises(ConfigError, match=r"inputs.*'pair_code'.*discrete"):
        StepEncoder(2, 0, (-1.0,), (1.0,), "pair_code")


def test_trial_clock_counts_episodes_over_resets_and_auto_resets() -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_states=4, num_actions=2, horizon=2))
    env = TrialClock(family.make_env(family.sample(2, np.random.default_rng(0)), 3), 4)
    assert env.obs_dim == 5 and env.max_steps == 2 and env.num_tasks == 2
    g = torch.Generator().manual_seed(0)
    obs = env.reset(g)
    assert obs.shape == (2, 3, 5) and torch.equal(obs[..., 4], torch.zeros(2, 3))
    obs, _, _ = env.step(torch.zeros(2, 3, dtype=torch.long))
    assert torch.equal(obs[..., 4], torch.zeros(2, 3))  # the step stays in its episode
    ended = torch.tensor([[True, False, False], [False, False, True]])
    obs = env.reset_done(g, ended=ended)
    torch.testing.assert_close(obs[..., 4], ended.float() / 4)
    obs = env.reset(g)  # the evaluator's next episode: every slot one further
    torch.testing.assert_close(obs[..., 4], (ended.float() + 1) / 4)
    torch.testing.assert_close(clock_observation(torch.zeros(2, 1), torch.tensor([1, 3]), 4),
                               torch.tensor([[0.0, 0.25], [0.0, 0.75]]))
    with pytest.raises(ValueError, match="episodes_per_trial"):
        TrialClock(env, 0)  # type: ignore[arg-type]


def test_time_limit_truncates_at_the_horizon_and_restarts_the_count() -> None:
    class Env:
        num_tasks, num_envs, max_steps = 1, 2, 3

    limit = TimeLimit(Env())  # type: ignore[arg-type]
    never = torch.tensor([[False, False]])
    flags = [limit.step(t) for t in (never, torch.tensor([[True, False]]), never, never, never)]
    assert [tr.tolist() for tr, _ in flags] == [[[False, False]], [[False, False]],
                                                [[False, True]], [[False, False]],
                                                [[True, False]]]
    assert [en.tolist() for _, en in flags][1] == [[True, False]]  # termination ends it
