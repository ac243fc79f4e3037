"""Meta-Q-learning: TD3's update rules, the propensity weights, the GRU context, resume,
checkpoints and serving, and learning on a short 2D navigation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.algos import registry
from metarl.algos.base import RandomLearner
from metarl.algos.mql import (
    MQL,
    MQLAct,
    MQLConfig,
    MQLLearner,
    Spec,
    TD3Nets,
    actor_forward,
    broadcast,
    buffer_batch,
    critic_forward,
    effective_sample_size,
    empty_window,
    encode,
    fit_propensity,
    init_params,
    save_checkpoint,
    smoothed_target,
    train_mql,
)
from metarl.checkpoint import load_learner
from metarl.config import ConfigError
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adapt_to_tasks
from metarl.sampler import TransitionBatch, rollout
from metarl.tasks import sample_task_sets
from metarl.training import Resume

torch.set_num_threads(1)

SPEC = Spec(obs_dim=2, action_dim=2, action_low=(-0.1, -0.1), action_high=(0.1, 0.1),
            hidden_sizes=(8,), context_hidden=4, history_length=3)
FAMILY = Nav2DFamily(Nav2DFamilyConfig(max_steps=8))
SETS = sample_task_sets(FAMILY, {"train": 3, "test": 2}, 0)
TINY = {"hidden_sizes": (8,), "context_hidden": 4, "history_length": 3, "batch_size": 12,
        "meta_batch_size": 2, "episodes_per_task": 2, "updates_per_iteration": 5,
        "random_iterations": 1, "buffer_size": 30, "adapt_buffer_size": 40, "adapt_steps": 4,
        "adapt_batch_size": 8, "propensity_steps": 5, "serve_adapt_min_steps": 6}


def _batch(n: int, b: int, gen: torch.Generator, terminated: torch.Tensor | None = None
           ) -> dict[str, Any]:
    win = {"obs": torch.randn(n, b, 3, 2, generator=gen),
           "act": torch.rand(n, b, 3, 2, generator=gen) * 0.2 - 0.1,
           "rew": torch.randn(n, b, 3, generator=gen), "valid": torch.ones(n, b, 3,
                                                                           dtype=torch.bool)}
    return {"obs": torch.randn(n, b, 2, generator=gen),
            "act": torch.rand(n, b, 2, generator=gen) * 0.2 - 0.1,
            "rew": torch.randn(n, b, generator=gen),
            "next_obs": torch.randn(n, b, 2, generator=gen),
            "term": torch.zeros(n, b, dtype=torch.bool) if terminated is None else terminated,
            "win": win, "next_win": win}


# ---- 1. TD3 ---------------------------------------------------------------------------------

def test_actor_and_targets_move_only_every_policy_delay_critic_steps() -> None:
    cfg = MQLConfig(policy_delay=3, lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    nets = TD3Nets(broadcast(init_params(SPEC, gen), 2), cfg.lr)
    actor_moves, target_moves, critic_moves = [], [], []
    for _ in range(7):
        before = {k: v.detach().clone() for k, v in nets.actor.params().items()}
        critic_before = {k: v.detach().clone() for k, v in nets.critic.params().items()}
        target_before = {k: v.detach().clone() for k, v in nets.targets().items()}
        _, a_loss = nets.step([(_batch(2, 5, gen), None)], SPEC, cfg, gen)
        actor_moves.append(any(not torch.equal(v, before[k])
                               for k, v in nets.actor.params().items()))
        critic_moves.append(any(not torch.equal(v, critic_before[k])
                                for k, v in nets.critic.params().items()))
        target_moves.append(any(not torch.equal(v, target_before[k])
                                for k, v in nets.targets().items()))
        assert (a_loss is not None) == actor_moves[-1]
    assert actor_moves == [False, False, True, False, False, True, False]
    assert target_moves == actor_moves
    assert all(critic_moves)
    assert nets.updates == 7


def test_smoothed_target_uses_clipped_noise_at_the_target_actor() -> None:
    gen = torch.Generator().manual_seed(1)
    target = broadcast(init_params(SPEC, gen), 2)
    batch = _batch(2, 6, gen)
    sigma, clip, gamma = 3.0, 0.5, 0.9  # sigma large: most of the noise is clipped
    state = torch.Generator().manual_seed(7).get_state()
    got = smoothed_target(target, batch, SPEC, sigma, clip, gamma,
                          torch.Generator().set_state(state))
    # By hand: the same normal draws, clipped to ±0.5 half-ranges (0.05), then to the box.
    eps = torch.randn(2, 6, 2, generator=torch.Generator().set_state(state))
    noise = np.clip(eps.numpy() * sigma, -clip, clip) * 0.1
    mu = actor_forward(target, batch["next_obs"], encode(target, "actor", batch["next_win"],
                                                         SPEC), SPEC).detach()
    a = torch.as_tensor(np.clip(mu.numpy() + noise, -0.1, 0.1))
    zc = encode(target, "critic", batch["next_win"], SPEC)
    q1, q2 = critic_forward(target, batch["next_obs"], a, zc, SPEC)
    want = batch["rew"] + gamma * torch.minimum(q1, q2)
    torch.testing.assert_close(got, want.detach())
    # Unclipped noise would give another target: the clip is doing something.
    a_raw = (mu + eps * sigma * 0.1).clamp(-0.1, 0.1)
    r1, r2 = critic_forward(target, batch["next_obs"], a_raw, zc, SPEC)
    assert not torch.allclose(got, batch["rew"] + gamma * torch.minimum(r1, r2))
    assert (eps.abs() * sigma > clip).float().mean() > 0.5


def test_target_bootstraps_on_truncation_not_on_termination() -> None:
    gen = torch.Generator().manual_seed(2)
    target = init_params(SPEC, gen)
    for q, value in (("q1", 2.0), ("q2", 3.0)):  # constant critics: Q1' = 2, Q2' = 3
        last = f"critic_{q}_l1"
        target[f"{last}_w"] = torch.zeros_like(target[f"{last}_w"])
        target[f"{last}_b"] = torch.full_like(target[f"{last}_b"], value)
    term = torch.tensor([[True, False, False, True]])
    batch = _batch(1, 4, gen, term)
    y = smoothed_target(broadcast(target, 1), batch, SPEC, 0.2, 0.5, 0.9, gen)
    # Terminated: r; not terminated (a truncated step is one of these): r + 0.9 * min(2, 3).
    want = batch["rew"] + 0.9 * 2.0 * (~term).float()
    torch.testing.assert_close(y, want)


def test_buffer_histories_are_the_task_s_previous_steps_in_ring_order() -> None:
    mql = MQL(FAMILY, SETS["train"], MQLConfig(**{**TINY, "buffer_size": 10}), seed=0)
    steps = torch.arange(14, dtype=torch.float32)  # task 1 plays 14 steps; the ring keeps 10

    def tb(values: torch.Tensor) -> TransitionBatch:
        t = len(values)
        obs = values.reshape(1, 1, t, 1).expand(1, 1, t, 2)
        return TransitionBatch(obs=obs, actions=torch.zeros(1, 1, t, 2),
                               rewards=values.reshape(1, 1, t),
                               next_obs=obs + 1, terminated=torch.zeros(1, 1, t, dtype=torch.bool),
                               truncated=torch.zeros(1, 1, t, dtype=torch.bool),
                               mask=torch.ones(1, 1, t))

    mql.buffer.add(tb(steps[:6]), tasks=torch.tensor([1]))
    mql.buffer.add(tb(steps[6:]), tasks=torch.tensor([1]))
    # Slot of step 12 (slot 2), of step 4 (the oldest kept, slot 4), of step 6 (slot 6).
    b = buffer_batch(mql.buffer, torch.tensor([1]), torch.tensor([[2, 4, 6]]), mql.spec)
    assert b["rew"].tolist() == [[12.0, 4.0, 6.0]]
    assert b["win"]["rew"].tolist() == [[[9.0, 10.0, 11.0], [0.0, 0.0, 0.0], [0.0, 4.0, 5.0]]]
    assert b["win"]["valid"].tolist() == [[[True] * 3, [False] * 3, [False, True, True]]]
    assert b["next_win"]["rew"].tolist()[0][2] == [4.0, 5.0, 6.0]


# ---- 2. propensity --------------------------------------------------------------------------

def test_propensity_separates_two_gaussians_and_clips_its_weights() -> None:
    gen = torch.Generator().manual_seed(3)
    centres = torch.tensor([[2.0, 2.0], [2.0, -2.0]])  # two tasks, each its own 'new' cloud
    new = torch.randn(2, 200, 2, generator=gen) + centres[:, None]
    mask = torch.ones(2, 200)
    mask[1, 150:] = 0  # task 1 has fewer real rows
    new[1, 150:] = 100.0  # padding must not matter
    train = torch.randn(1000, 2, generator=gen) + torch.tensor([-2.0, 0.0])
    prop = fit_propensity(new, mask, train, c=0.5, steps=20)
    test_new = torch.randn(2, 300, 2, generator=gen) + centres[:, None]
    test_train = torch.randn(300, 2, generator=gen) + torch.tensor([-2.0, 0.0])
    acc = ((prop.logits(test_new) > 0).float().mean(1) + (prop.logits(test_train) < 0)
           .float().mean(1)) / 2
    assert (acc > 0.9).all(), acc
    beta = prop.beta(test_train, clip=1.2)
    beta_new = prop.beta(test_new, clip=1.2)
    assert beta.max() <= 1.2 and beta_new.max() <= 1.2
    assert beta.median() < 0.05 and (beta_new.median(1).values == pytest.approx(1.2))
    unclipped = prop.beta(test_new, clip=1e9)
    assert (unclipped.median(1).values > 10).all()


def test_effective_sample_size() -> None:
    assert effective_sample_size(torch.full((2, 50), 0.3)).tolist() == pytest.approx([1.0, 1.0])
    one_hot = torch.zeros(40)
    one_hot[3] = 1.0
    assert float(effective_sample_size(one_hot)) == pytest.approx(1 / 40)
    beta = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert float(effective_sample_size(beta)) == pytest.approx(0.5)  # (2)^2 / (4 * 2)
    rand = torch.rand(3, 100, generator=torch.Generator().manual_seed(0))
    ess = effective_sample_size(rand)
    assert ((ess > 0) & (ess <= 1)).all()


# ---- 3. the GRU context ---------------------------------------------------------------------

def test_actor_depends_on_history_and_ignores_padding() -> None:
    theta = broadcast(init_params(SPEC, torch.Generator().manual_seed(4)), 1)
    obs = torch.zeros(1, 2, 2)
    win = empty_window((1, 2), SPEC)
    # one step each, rewards differ
    win["rew"] = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]])
    win["valid"][..., -1] = True
    a = actor_forward(theta, obs, encode(theta, "actor", win, SPEC), SPEC)
    assert not torch.allclose(a[0, 0], a[0, 1], atol=1e-5)
    # Garbage in the padding changes nothing; an empty history is z = 0.
    junk = {k: v.clone() for k, v in win.items()}
    junk["rew"][..., 0] = 50.0
    junk["obs"][..., 0, :] = 7.0
    torch.testing.assert_close(encode(theta, "actor", junk, SPEC),
                               encode(theta, "actor", win, SPEC))
    assert encode(theta, "actor", empty_window((1, 2), SPEC), SPEC).abs().max() == 0


def test_running_history_of_the_act_fn_and_its_carry_over() -> None:
    learner = MQLLearner(init_params(SPEC, torch.Generator().manual_seed(5)), SPEC,
                         MQLConfig(**{**TINY, "adapt_steps": 0}), {})
    params = learner.initial_params(2)
    act = learner.act(params)
    assert isinstance(act, MQLAct)
    gen = torch.Generator().manual_seed(0)
    obs = [torch.randn(2, 2, 2, generator=gen) for _ in range(4)]
    rewards = [torch.randn(2, 2, generator=gen) for _ in range(4)]
    actions = []
    for t in range(4):
        actions.append(act(obs[t], gen))
        done = torch.zeros(2, 2, dtype=torch.bool)
        done[0, 1] = t == 1  # slot (0, 1) ends after its second step
        act.observe(rewards[t], done)
    assert act.window is not None
    # Slot (1, 0): the last 3 steps, oldest first.
    assert torch.equal(act.window["rew"][1, 0], torch.stack([rewards[t][1, 0] for t in (1, 2, 3)]))
    assert torch.equal(act.window["obs"][1, 0], torch.stack([obs[t][1, 0] for t in (1, 2, 3)]))
    assert torch.equal(act.window["act"][1, 0], torch.stack([actions[t][1, 0] for t in (1, 2, 3)]))
    # Slot (0, 1) froze at its episode's end: two real steps, left-padded.
    assert act.window["valid"][0, 1].tolist() == [False, True, True]
    assert act.window["rew"][0, 1, 1:].tolist() == [rewards[0][0, 1], rewards[1][0, 1]]
    # A fresh rollout from the initial params starts from no history (the first action is the
    # empty-history action); adapt() carries a task's newest steps into the next rollout.
    fresh = learner.act(params)
    torch.testing.assert_close(fresh(obs[0], gen), actions[0])
    env = FAMILY.make_env(list(SETS["test"].tasks), 2)
    batch = rollout(learner.explore(params), env, gen)
    adapted = learner.adapt(params, batch)
    assert adapted["hist_valid"].tolist() == [[1.0] * 3] * 2
    torch.testing.assert_close(adapted["hist_rew"], batch.rewards[:, -1, -3:])
    torch.testing.assert_close(adapted["hist_obs"], batch.obs[:, -1, -3:])
    carried = learner.act(adapted)
    assert not torch.allclose(carried(obs[0], gen), actions[0])


# ---- 4. resume ------------------------------------------------------------------------------

def test_resumed_training_is_bit_identical(tmp_path: Path) -> None:
    cfg = MQLConfig(**TINY)
    straight = train_mql(FAMILY, SETS["train"], cfg, 3, seed=0)
    saved: dict[int, Path] = {}

    def save(done: int, state_fn: Any) -> None:
        path = tmp_path / f"state{done}.pt"
        torch.save(state_fn(), path)
        saved[done] = path

    train_mql(FAMILY, SETS["train"], cfg, 2, seed=0, resume=Resume(save=save))
    state = torch.load(saved[2], weights_only=True)
    resumed = train_mql(FAMILY, SETS["train"], cfg, 3, seed=0, resume=Resume(state=state))
    a, b = straight.training_state(), resumed.training_state()
    for key in ("weights", "targets"):
        for k, v in a["nets"][key].items():
            assert torch.equal(v, b["nets"][key][k]), k
    for k, v in a["buffer"]["data"].items():
        assert torch.equal(v, b["buffer"]["data"][k])
    assert a["env_steps"] == b["env_steps"] and a["nets"]["updates"] == 15
    assert torch.equal(a["generator"], b["generator"])
    # And a different seed does not give the same weights (the check can fail).
    other = train_mql(FAMILY, SETS["train"], cfg, 1, seed=1).nets.weights()
    one = train_mql(FAMILY, SETS["train"], cfg, 1, seed=0).nets.weights()
    assert not all(torch.equal(v, other[k]) for k, v in one.items())


# ---- 5. checkpoints and serving -------------------------------------------------------------

def test_save_load_round_trip_and_serving(tmp_path: Path) -> None:
    cfg = MQLConfig(**TINY)
    mql = train_mql(FAMILY, SETS["train"], cfg, 2, seed=0)
    config = save_checkpoint(mql, tmp_path / "w.pt")
    assert config["learner"] == "mql" and config["obs_dim"] == 2 and config["action_dim"] == 2
    loaded = load_learner(tmp_path / "w.pt", config)
    original = mql.learner()
    assert isinstance(loaded, MQLLearner)
    assert loaded.kept["obs"].shape == (40, 2)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 2, generator=gen)
    p0, p1 = original.initial_params(2), loaded.initial_params(2)
    assert torch.equal(original.act(p0)(obs, gen), loaded.act(p1)(obs, gen))
    env = FAMILY.make_env(list(SETS["test"].tasks), 2)
    batch = rollout(original.explore(p0), env, torch.Generator().manual_seed(1))
    a0, a1 = original.adapt(p0, batch), loaded.adapt(p1, batch)
    assert torch.equal(original.act(a0)(obs, gen), loaded.act(a1)(obs, gen))

    # Serving: no context = the meta-trained actor with an empty history.
    rows = np.array([[0.1, -0.2], [0.3, 0.0]], dtype=np.float32)
    (name, dtype, shape), = loaded.serving_spec()[1]
    assert (name, dtype, shape) == ("action", "float32", (-1, 2))
    plain = loaded.serve({"obs": rows})
    want = loaded.act(loaded.initial_params(1))(torch.as_tensor(rows)[None], gen)[0]
    np.testing.assert_allclose(plain, want.numpy(), rtol=0, atol=1e-7)
    # A short context only gives the history; a long one (>= 6 steps) also adapts.
    ctx_obs, ctx_act = batch.obs[0, 0], batch.actions[0, 0]
    short = {"context_obs": ctx_obs[:4].ravel().tolist(), "context_action":
             ctx_act[:4].ravel().tolist(), "context_reward": batch.rewards[0, 0, :4].tolist(),
             "context_done": [0.0] * 4}
    hist = loaded.initial_params(1)
    hist.update({"hist_obs": ctx_obs[1:4][None], "hist_act": ctx_act[1:4][None],
                 "hist_rew": batch.rewards[0, 0, 1:4][None], "hist_valid": torch.ones(1, 3)})
    want_short = loaded.act(hist)(torch.as_tensor(rows)[None], gen)[0]
    np.testing.assert_allclose(loaded.serve({"obs": rows, **short}), want_short.numpy(),
                               atol=1e-6)
    assert not np.allclose(loaded.serve({"obs": rows, **short}), plain)
    dones = [0.0] * 7 + [1.0]
    long = {"context_obs": ctx_obs.ravel().tolist(), "context_action": ctx_act.ravel().tolist(),
            "context_reward": batch.rewards[0, 0].tolist(), "context_done": dones}
    one = {k: v[:1, :1] for k, v in batch.__dict__.items()}
    adapted = loaded.adapt(loaded.initial_params(1), type(batch)(**one))
    want_long = loaded.act(adapted)(torch.as_tensor(rows)[None], gen)[0]
    np.testing.assert_allclose(loaded.serve({"obs": rows, **long}), want_long.numpy(), atol=1e-6)
    # Weights of another architecture are refused.
    bad = {**config, "algo_config": {**config["algo_config"], "hidden_sizes": [9]}}
    with pytest.raises(ValueError, match="do not match"):
        load_learner(tmp_path / "w.pt", bad)


def test_registry_entry_and_config_validation() -> None:
    algo = registry.get("mql")
    cfg = MQLConfig()
    assert algo.action_spaces == frozenset({"continuous"})
    assert algo.episodes(cfg, 10, 3) == 10 * cfg.meta_batch_size * cfg.episodes_per_task
    with pytest.raises(ConfigError, match="policy_delay"):
        MQLConfig(policy_delay=0)
    with pytest.raises(ConfigError, match="tau"):
        MQLConfig(tau=0.0)
    with pytest.raises(ConfigError, match="beta_clip"):
        MQLConfig(beta_clip=0.0)


# ---- 6. learning ----------------------------------------------------------------------------

def test_learns_short_navigation_and_adaptation_does_not_hurt() -> None:
    # Goals in [0.2, 0.5]^2, 20 steps from the origin: a random policy stays near the start
    # (return about -12.8 on these tasks); heading up-right to the goal earns about -2.
    family = Nav2DFamily(Nav2DFamilyConfig(max_steps=20, goal_low=0.2, goal_high=0.5))
    sets = sample_task_sets(family, {"train": 4, "test": 4}, 0)
    cfg = MQLConfig(hidden_sizes=(32, 32), context_hidden=8, history_length=4, lr=1e-3,
                    batch_size=64, meta_batch_size=4, episodes_per_task=2,
                    updates_per_iteration=100, random_iterations=1, tau=0.01,
                    adapt_buffer_size=500, adapt_steps=20, adapt_batch_size=32)
    mql = train_mql(family, sets["train"], cfg, 15, seed=0)
    tasks = list(sets["test"].tasks)
    run = adapt_to_tasks(mql.learner(), family, tasks, 1, 2, seed=0)
    random = adapt_to_tasks(RandomLearner(), family, tasks, 0, 2, seed=0).returns.mean()
    before, after = run.returns.mean(1)
    assert random < -10
    assert before > random + 7, (before, random)
    assert after > before - 0.5, (before, after)
    assert math.isfinite(after)
