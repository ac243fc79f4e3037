"""The per-task replay buffer keeps each task's transitions apart, newest over oldest."""

from __future__ import annotations

import pytest
import torch

from metarl.buffers import TaskReplayBuffer
from metarl.envs.cartpole import BatchedCartPole, CartPoleTask
from metarl.sampler import TransitionBatch, rollout_steps


def _batch(n: int, e: int, t: int, start: float = 0.0) -> TransitionBatch:
    """Rewards count up so each stored step is recognisable: task i, slot j, step k."""
    reward = (start + torch.arange(n * e * t, dtype=torch.float32)).reshape(n, e, t)
    reward = reward + 1000 * torch.arange(n).reshape(n, 1, 1)
    obs = reward.unsqueeze(-1).expand(n, e, t, 2).clone()
    flags = torch.zeros(n, e, t, dtype=torch.bool)
    return TransitionBatch(obs=obs, actions=torch.zeros(n, e, t, dtype=torch.long),
                           rewards=reward, next_obs=obs + 0.5, terminated=flags,
                           truncated=flags, mask=torch.ones(n, e, t))


def test_tasks_stay_apart_and_the_oldest_go_first() -> None:
    buf = TaskReplayBuffer(num_tasks=3, capacity=5)
    buf.add(_batch(2, 1, 3), tasks=torch.tensor([0, 2]))
    assert buf.size.tolist() == [3, 0, 3]
    buf.add(_batch(2, 1, 4, start=10.0), tasks=torch.tensor([0, 2]))
    assert buf.size.tolist() == [5, 0, 5]
    # task 0 held 0, 1, 2 then 10..13: the two oldest (0, 1) were overwritten; row 2 held
    # 1003..1005 then 1014..1017
    assert sorted(buf.data["rewards"][0].tolist()) == [2.0, 10.0, 11.0, 12.0, 13.0]
    assert sorted(buf.data["rewards"][2].tolist()) == [1005.0, 1014.0, 1015.0, 1016.0, 1017.0]
    out = buf.sample(64, torch.Generator().manual_seed(0), tasks=torch.tensor([2, 0]))
    assert out["rewards"].shape == (2, 64) and out["obs"].shape == (2, 64, 2)
    assert (out["rewards"][0] >= 1000).all() and (out["rewards"][1] < 1000).all()
    torch.testing.assert_close(out["next_obs"], out["obs"] + 0.5)  # fields stay aligned
    assert set(out["rewards"][1].tolist()) <= {2.0, 10.0, 11.0, 12.0, 13.0}
    again = buf.sample(64, torch.Generator().manual_seed(0), tasks=torch.tensor([2, 0]))
    assert torch.equal(again["rewards"], out["rewards"])  # same generator, same draw
    with pytest.raises(ValueError, match=r"tasks \[1\]: no transitions"):
        buf.sample(4, torch.Generator(), tasks=torch.tensor([1]))


def test_only_valid_steps_are_stored_and_overflow_keeps_the_newest() -> None:
    batch = _batch(1, 2, 4)
    mask = torch.ones(1, 2, 4)
    mask[0, 1, 2:] = 0.0
    padded = TransitionBatch(**{**{k: getattr(batch, k) for k in (
        "obs", "actions", "rewards", "next_obs", "terminated", "truncated")}, "mask": mask})
    buf = TaskReplayBuffer(1, 3)
    buf.add(padded)  # 6 valid steps, room for 3: the last three of them
    assert sorted(buf.data["rewards"][0].tolist()) == [3.0, 4.0, 5.0]
    assert buf.size.tolist() == [3] and buf.cursor.tolist() == [0]


def test_it_holds_the_samplers_transitions() -> None:
    env = BatchedCartPole([CartPoleTask(), CartPoleTask(force_mag=-10.0)], 2, max_steps=9)
    batch = rollout_steps(None, env, 12, torch.Generator().manual_seed(0))
    buf = TaskReplayBuffer(2, 100)
    buf.add(batch)
    assert buf.size.tolist() == [24, 24]
    out = buf.sample(10, torch.Generator().manual_seed(3))
    assert out["terminated"].dtype == torch.bool and out["actions"].dtype == torch.long
    assert int(buf.data["truncated"].sum() + buf.data["terminated"].sum()) == int(
        (batch.truncated | batch.terminated).sum())


def test_state_round_trip_continues_identically() -> None:
    buf = TaskReplayBuffer(num_tasks=2, capacity=4)
    buf.add(_batch(2, 1, 3))
    copy = TaskReplayBuffer(num_tasks=2, capacity=4)
    copy.load_state(buf.state())
    for b in (buf, copy):
        b.add(_batch(2, 1, 2, start=50.0))
    assert torch.equal(copy.data["rewards"], buf.data["rewards"])
    assert copy.size.tolist() == buf.size.tolist() == [4, 4]
    a = buf.sample(8, torch.Generator().manual_seed(1))
    b = copy.sample(8, torch.Generator().manual_seed(1))
    assert torch.equal(a["rewards"], b["rewards"])
    with pytest.raises(ValueError, match="buffer state"):
        TaskReplayBuffer(num_tasks=3, capacity=4).load_state(buf.state())
