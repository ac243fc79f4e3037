"""PEARL: the product of Gaussians, the KL, the soft TD target, the tanh-Gaussian density, the
learner's contract, resume, checkpoints, config validation, and learning on a short 2D
navigation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from metarl.algos import registry
from metarl.algos.base import RandomLearner
from metarl.algos.pearl import (
    PEARL,
    PEARLConfig,
    PEARLLearner,
    factor_stats,
    gaussian_kl,
    posterior,
    save_checkpoint,
    soft_td_target,
    tanh_gaussian_log_prob,
    train_pearl,
)
from metarl.checkpoint import load_learner
from metarl.config import ConfigError
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adapt_to_tasks
from metarl.families import make_family
from metarl.sampler import EpisodeBatch, episodes_from_steps, rollout
from metarl.tasks import sample_task_sets
from metarl.training import Resume

torch.set_num_threads(1)

FAMILY = Nav2DFamily(Nav2DFamilyConfig(max_steps=8))
SETS = sample_task_sets(FAMILY, {"train": 3, "test": 2}, 0)
TINY: dict[str, Any] = {
    "latent_dim": 3, "hidden_sizes": (16,), "encoder_hidden": (8,), "meta_batch_size": 2,
    "batch_size": 12, "context_batch": 6, "num_initial_episodes": 2, "num_tasks_sample": 2,
    "num_episodes_prior": 1, "num_episodes_posterior": 1, "num_extra_rl_episodes_posterior": 1,
    "num_train_steps_per_itr": 5, "replay_capacity": 50}


def _assert_same(a: Any, b: Any, where: str = "state") -> int:
    """Recursively require ``a == b`` (tensors bit-identical); returns the tensors compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        return sum(_assert_same(v, b[k], f"{where}.{k}") for k, v in a.items())
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        pairs = enumerate(zip(a, b, strict=True))
        return sum(_assert_same(x, y, f"{where}[{i}]") for i, (x, y) in pairs)
    assert a == b, (where, a, b)
    return 0


# ---- 1. closed forms ------------------------------------------------------------------------

def test_product_of_gaussians_matches_the_closed_form_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    n, t, c = 2, 5, 3
    mu = torch.randn(n, t, c, generator=gen, dtype=torch.float64)
    var = torch.rand(n, t, c, generator=gen, dtype=torch.float64) * 2 + 0.1
    mask = torch.ones(n, t, dtype=torch.float64)
    mask[1, 3:] = 0  # task 1 has 3 real factors; its padding holds garbage
    mu[1, 3:], var[1, 3:] = 1e3, 1e-4
    eta, prec = factor_stats(mu, var, mask)
    mean, pvar = posterior(eta, 1.0 + prec)
    m, v = mu.numpy(), var.numpy()
    for i, steps in ((0, t), (1, 3)):
        want_prec = 1.0 + sum(1.0 / v[i, j] for j in range(steps))
        want_mean = sum(m[i, j] / v[i, j] for j in range(steps)) / want_prec
        np.testing.assert_allclose(pvar[i].numpy(), 1.0 / want_prec, rtol=1e-12)
        np.testing.assert_allclose(mean[i].numpy(), want_mean, rtol=1e-12)
    # Without the mask the garbage dominates task 1 (the mask is doing something).
    _, unmasked = factor_stats(mu, var)
    assert (unmasked[1] > 1e4).all() and (prec[1] < 40).all()
    # No factors: the prior.
    e0, p0 = factor_stats(mu, var, torch.zeros(n, t, dtype=torch.float64))
    m0, v0 = posterior(e0, 1.0 + p0)
    assert m0.abs().max() == 0 and torch.equal(v0, torch.ones_like(v0))


def test_sufficient_statistics_are_associative() -> None:
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 2, 7, 4, generator=gen, dtype=torch.float64)  # [N, E, T, z]
    var = torch.rand(3, 2, 7, 4, generator=gen, dtype=torch.float64) + 0.05
    mask = (torch.rand(3, 2, 7, generator=gen) > 0.3).double()
    whole = factor_stats(mu, var, mask, dims=(1, 2))
    first = factor_stats(mu[:, :, :4], var[:, :, :4], mask[:, :, :4], dims=(1, 2))
    rest = factor_stats(mu[:, :, 4:], var[:, :, 4:], mask[:, :, 4:], dims=(1, 2))
    for w, a, b in zip(whole, first, rest, strict=True):
        torch.testing.assert_close(w, a + b, rtol=1e-12, atol=1e-12)
    # Over slots (dim 1) too.
    by_slot = [factor_stats(mu[:, e:e + 1], var[:, e:e + 1], mask[:, e:e + 1], dims=(1, 2))
               for e in range(2)]
    torch.testing.assert_close(whole[1], by_slot[0][1] + by_slot[1][1], rtol=1e-12, atol=0)


def test_gaussian_kl_matches_torch() -> None:
    gen = torch.Generator().manual_seed(2)
    mean = torch.randn(4, 5, generator=gen, dtype=torch.float64) * 2
    var = torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3 + 1e-3
    want = kl_divergence(Normal(mean, var.sqrt()), Normal(torch.zeros_like(mean),
                                                          torch.ones_like(mean))).sum(-1)
    got = gaussian_kl(mean, var)
    assert got.shape == (4,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert gaussian_kl(torch.zeros(2, 3), torch.ones(2, 3)).abs().max() < 1e-7  # prior: 0


def test_soft_td_target_bootstraps_on_truncation_not_termination() -> None:
    rewards = torch.tensor([1.0, 2.0, -1.0])
    q1 = torch.tensor([3.0, 0.5, 4.0], requires_grad=True)
    q2 = torch.tensor([2.0, 1.0, 5.0])
    logp = torch.tensor([0.5, -1.0, 2.0])
    terminated = torch.tensor([False, True, False])  # step 2 is truncated: it bootstraps
    y = soft_td_target(rewards, q1, q2, logp, terminated, alpha=0.2, discount=0.9,
                       reward_scale=5.0)
    # 5 r + 0.9 (1 - term) (min(q1, q2) - 0.2 logp): values 1.9, 0.7, 3.6.
    torch.testing.assert_close(y, torch.tensor([5.0 + 0.9 * 1.9, 10.0, -5.0 + 0.9 * 3.6]))
    assert not y.requires_grad
    # A tensor temperature, another scale and discount.
    y2 = soft_td_target(rewards, q1, q2, logp, terminated, torch.tensor(1.0), 0.5, 1.0)
    torch.testing.assert_close(y2, torch.tensor([1.0 + 0.5 * 1.5, 2.0, -1.0 + 0.5 * 2.0]))


def test_tanh_gaussian_log_prob_matches_the_naive_change_of_variables() -> None:
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    log_std = torch.rand(6, 3, generator=gen, dtype=torch.float64) * 2 - 1.5
    u = (torch.rand(6, 3, generator=gen, dtype=torch.float64) * 4 - 2)  # |u| <= 2
    naive = (Normal(mean, log_std.exp()).log_prob(u).sum(-1)
             - torch.log(1 - torch.tanh(u).square()).sum(-1))
    got = tanh_gaussian_log_prob(u, mean, log_std)
    assert got.shape == (6,)
    torch.testing.assert_close(got, naive, rtol=1e-10, atol=1e-10)
    # Where tanh saturates in float32 the naive form is inf; the stable one stays finite.
    big = torch.tensor([[20.0, -20.0]])
    assert torch.isinf(torch.log(1 - torch.tanh(big).square())).all()
    stable = tanh_gaussian_log_prob(big, torch.zeros(1, 2), torch.zeros(1, 2))
    want = -0.5 * 800.0 - 2 * 0.5 * math.log(2 * math.pi) - 2 * (2 * (math.log(2) - 20.0))
    assert math.isfinite(float(stable)) and float(stable) == pytest.approx(want, rel=1e-6)


# ---- 2. the learner -------------------------------------------------------------------------

def _pearl(**over: Any) -> PEARL:
    return PEARL(FAMILY, SETS["train"].tasks, PEARLConfig(**{**TINY, **over}), seed=0)


def _with_mask(batch: EpisodeBatch, mask: torch.Tensor) -> EpisodeBatch:
    return dataclasses.replace(batch, mask=mask)


def test_learner_prior_and_adapt_accumulates_the_posterior() -> None:
    learner = _pearl().learner()
    assert isinstance(learner, PEARLLearner)
    p0 = learner.initial_params(2)
    assert p0["eta"].shape == p0["precision"].shape == (2, 3)
    assert p0["eta"].abs().max() == 0 and torch.equal(p0["precision"], torch.ones(2, 3))
    env = FAMILY.make_env(list(SETS["test"].tasks), 2)
    b1 = rollout(learner.explore(p0), env, torch.Generator().manual_seed(1))
    b2 = rollout(learner.explore(p0), env, torch.Generator().manual_seed(2))
    p1 = learner.adapt(p0, b1)
    assert (p1["precision"] > p0["precision"]).all()
    # The statistics are the encoder's factors of the valid steps (the closed form).
    mu, var = learner.encoder(b1.obs, learner.scale.to_unit(b1.actions), b1.rewards, b1.next_obs)
    m = b1.mask.unsqueeze(-1)
    torch.testing.assert_close(p1["eta"], (mu / var * m).sum((1, 2)))
    torch.testing.assert_close(p1["precision"], 1.0 + (m / var).sum((1, 2)))
    # Two batches in sequence = both at once (concatenated along time; padding is masked).
    seq = learner.adapt(p1, b2)
    both = EpisodeBatch(**{f.name: torch.cat([getattr(b1, f.name), getattr(b2, f.name)], 2)
                           for f in dataclasses.fields(EpisodeBatch)})
    once = learner.adapt(p0, both)
    for k in ("eta", "precision"):
        torch.testing.assert_close(seq[k], once[k], rtol=1e-5, atol=1e-5)
    assert (seq["precision"] > p1["precision"]).all()
    # A task whose steps are all masked keeps its statistics exactly; the other still grows.
    mask = b1.mask.clone()
    mask[1] = 0
    p_masked = learner.adapt(p1, _with_mask(b1, mask))
    assert torch.equal(p_masked["precision"][1], p1["precision"][1])
    assert torch.equal(p_masked["eta"][1], p1["eta"][1])
    assert (p_masked["precision"][0] > p1["precision"][0]).all()


def test_explore_holds_one_sampled_z_per_slot_and_act_is_the_posterior_mean() -> None:
    pearl = _pearl()
    learner = pearl.learner()
    env = FAMILY.make_env(list(SETS["test"].tasks), 2)
    params = learner.adapt(learner.initial_params(2),
                           rollout(learner.explore(learner.initial_params(2)), env,
                                   torch.Generator().manual_seed(0)))
    obs = torch.full((2, 4, 2), 0.05)  # the same observation in every slot
    gen = torch.Generator().manual_seed(5)
    explore = learner.explore(params)
    first = explore(obs, gen)
    assert first.shape == (2, 4, 2)
    # Slots sampled different z: different actions at the same observation.
    for i in range(2):
        for e in range(1, 4):
            assert not torch.allclose(first[i, 0], first[i, e], atol=1e-6), (i, e)
    # The z is held for the rollout: the (deterministic) policy repeats itself...
    assert torch.equal(explore(obs, gen), first)
    # ...and a new rollout draws new ones.
    assert not torch.allclose(learner.explore(params)(obs, gen), first, atol=1e-6)
    # act with the mean: deterministic, whatever the generator, and tanh(mean) at the mean z.
    a1 = learner.act(params)(obs, torch.Generator().manual_seed(1))
    a2 = learner.act(params)(obs, torch.Generator().manual_seed(2))
    assert torch.equal(a1, a2)
    assert torch.equal(a1[:, :1].expand_as(a1), a1)
    mean = posterior(params["eta"], params["precision"])[0]
    want = learner.scale.to_env(learner.policy.deterministic(obs, mean.unsqueeze(1).expand(
        2, 4, -1)))
    torch.testing.assert_close(a1, want)
    assert (a1.abs() <= 0.1 + 1e-6).all()  # inside the env's box
    # act_with='sample' samples z per slot; deterministic=False samples the policy too.
    sampled = PEARLLearner(learner.encoder, learner.policy, learner.scale, act_with="sample")
    s = sampled.act(params)(obs, gen)
    assert not torch.allclose(s[:, 0], s[:, 1], atol=1e-6)
    noisy = PEARLLearner(learner.encoder, learner.policy, learner.scale, deterministic=False)
    n1 = noisy.act(params)
    first_noisy = n1(obs, gen)
    assert not torch.allclose(first_noisy, n1(obs, gen), atol=1e-6)


def test_serve_without_context_is_the_prior_mean_and_with_context_adapts() -> None:
    learner = _pearl().learner()
    rows = np.array([[0.1, -0.2], [0.3, 0.0], [0.0, 0.0]], dtype=np.float32)
    (name, dtype, shape), = learner.serving_spec()[1]
    assert (name, dtype, shape) == ("action", "float32", (-1, 2))
    plain = learner.serve({"obs": rows})
    assert plain.dtype == np.float32 and plain.shape == (3, 2)
    obs = torch.as_tensor(rows)
    with torch.no_grad():
        at_zero = learner.scale.to_env(learner.policy.deterministic(obs, torch.zeros(3, 3)))
    np.testing.assert_allclose(plain, at_zero.numpy(), rtol=0, atol=1e-7)
    via_act = learner.act(learner.initial_params(1))(obs[None], torch.Generator())[0]
    np.testing.assert_allclose(plain, via_act.numpy(), rtol=0, atol=1e-7)
    # With a context: the posterior mean after adapting on the context's episodes.
    env = FAMILY.make_env(list(SETS["test"].tasks[:1]), 1)
    batch = rollout(learner.explore(learner.initial_params(1)), env,
                    torch.Generator().manual_seed(3))
    steps = int(batch.mask.sum())
    dones = torch.zeros(steps)
    dones[-1] = 1.0
    ctx_obs, ctx_act = batch.obs[0, 0, :steps], batch.actions[0, 0, :steps]
    ctx_rew = batch.rewards[0, 0, :steps]
    served = learner.serve({"obs": rows, "context_obs": ctx_obs.ravel().tolist(),
                            "context_action": ctx_act.ravel().tolist(),
                            "context_reward": ctx_rew.tolist(), "context_done": dones.tolist()})
    adapted = learner.adapt(learner.initial_params(1),
                            episodes_from_steps(ctx_obs, ctx_act, ctx_rew, dones > 0.5))
    want = learner.act(adapted)(obs[None], torch.Generator())[0]
    np.testing.assert_allclose(served, want.numpy(), atol=1e-6)
    assert not np.allclose(served, plain, atol=1e-6)


# ---- 3. the update --------------------------------------------------------------------------

@pytest.mark.parametrize("learn_alpha", [False, True])
def test_gradient_step_trains_every_network_and_polyak_averages_the_targets(
        learn_alpha: bool) -> None:
    # kl_weight 0: the encoder moves through the critic's loss alone (the paper's scheme).
    pearl = _pearl(tau=0.3, kl_weight=0.0, learn_alpha=learn_alpha)
    pearl.collect_initial()
    rows = torch.as_tensor(np.flatnonzero(pearl.seen))
    before = {k: {n: v.clone() for n, v in m.state_dict().items()}
              for k, m in pearl._modules().items()}
    alpha = float(pearl.alpha)
    out = pearl.gradient_step(rows)
    assert all(math.isfinite(float(v)) for v in out.values()) and float(out["kl"]) >= 0
    for k, m in pearl._modules().items():
        assert all(not torch.equal(v, before[k][n]) for n, v in m.state_dict().items()), k
    for q in ("qf1", "qf2"):  # target <- 0.7 target + 0.3 online (the updated one)
        online = getattr(pearl, q).state_dict()
        for n, v in getattr(pearl, f"{q}_target").state_dict().items():
            torch.testing.assert_close(v, 0.7 * before[f"{q}_target"][n] + 0.3 * online[n])
    assert (float(pearl.alpha) != alpha) == learn_alpha


# ---- 4. resume ------------------------------------------------------------------------------

def test_resumed_training_is_bit_identical(tmp_path: Path) -> None:
    cfg = PEARLConfig(**TINY)
    straight = train_pearl(FAMILY, SETS["train"], cfg, 3, seed=0)
    saved: dict[int, Path] = {}

    def save(done: int, state_fn: Any) -> None:
        path = tmp_path / f"state{done}.pt"
        torch.save(state_fn(), path)
        saved[done] = path

    train_pearl(FAMILY, SETS["train"], cfg, 2, seed=0, resume=Resume(save=save))
    assert sorted(saved) == [1, 2]
    want = straight.training_state()
    for done in (1, 2):
        state = torch.load(saved[done], weights_only=True)
        assert state["iteration"] == done
        resumed = train_pearl(FAMILY, SETS["train"], cfg, 3, seed=0, resume=Resume(state=state))
        compared = _assert_same(want, resumed.training_state())
        assert compared > 30  # networks, Adam moments, both buffers, generators
    assert want["env_steps"] > 0 and bool(want["seen"].any())
    # A different seed does not give the same weights (the check can fail).
    one = train_pearl(FAMILY, SETS["train"], cfg, 1, seed=0).training_state()["modules"]
    other = train_pearl(FAMILY, SETS["train"], cfg, 1, seed=1).training_state()["modules"]
    for net in ("encoder", "policy", "qf1"):
        assert not all(torch.equal(v, other[net][k]) for k, v in one[net].items()), net
    # Training moved the weights away from their initialisation.
    init = _pearl().training_state()["modules"]
    assert not all(torch.equal(v, init["policy"][k]) for k, v in one["policy"].items())


# ---- 5. checkpoints -------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path: Path) -> None:
    pearl = train_pearl(FAMILY, SETS["train"], PEARLConfig(**TINY), 1, seed=0)
    config = save_checkpoint(pearl, tmp_path / "w.pt")
    assert config["learner"] == "pearl" and config["obs_dim"] == 2 and config["action_dim"] == 2
    assert config["action_low"] == [-0.1, -0.1] and config["action_high"] == [0.1, 0.1]
    config = json.loads(json.dumps(config))  # what the pipeline writes and reads back
    loaded = load_learner(tmp_path / "w.pt", config)
    original = pearl.learner()
    assert isinstance(loaded, PEARLLearner) and loaded.latent_dim == 3
    env = FAMILY.make_env(list(SETS["test"].tasks), 2)
    p0, q0 = original.initial_params(2), loaded.initial_params(2)
    b0 = rollout(original.explore(p0), env, torch.Generator().manual_seed(1))
    b1 = rollout(loaded.explore(q0), env, torch.Generator().manual_seed(1))
    assert torch.equal(b0.actions, b1.actions)
    p1, q1 = original.adapt(p0, b0), loaded.adapt(q0, b0)
    assert torch.equal(p1["eta"], q1["eta"]) and torch.equal(p1["precision"], q1["precision"])
    obs = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator()
    assert torch.equal(original.act(p1)(obs, gen), loaded.act(q1)(obs, gen))
    rows = np.array([[0.1, -0.2]], dtype=np.float32)
    np.testing.assert_array_equal(original.serve({"obs": rows}), loaded.serve({"obs": rows}))
    # Weights of another architecture are refused.
    bad = {**config, "algo_config": {**config["algo_config"], "latent_dim": 4}}
    with pytest.raises(ValueError, match="do not match"):
        load_learner(tmp_path / "w.pt", bad)


# ---- 6. config and registry -----------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("tau", 0.0), ("tau", 1.5), ("act_with", "bogus"), ("latent_dim", 0), ("discount", 0.0),
    ("kl_weight", -1.0), ("lr", float("nan")), ("hidden_sizes", ()), ("encoder_hidden", (0,)),
    ("num_train_steps_per_itr", -1), ("context_batch", 0)])
def test_config_validation_names_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        PEARLConfig(**{key: value})
    assert err.value.key == key


def test_registry_entry_and_episode_count() -> None:
    algo = registry.get("pearl")
    assert algo.action_spaces == frozenset({"continuous"})
    assert algo.config_cls is PEARLConfig
    cfg = PEARLConfig()
    assert algo.episodes(cfg, 10, 0) == 16 * 10 + 10 * 5 * (2 + 0 + 3)
    assert algo.episodes(cfg, 0, 0) == 0
    # The count is what a run actually plays (no early termination: every episode is full).
    family = Nav2DFamily(Nav2DFamilyConfig(max_steps=5, goal_tolerance=0.0))
    cfg = PEARLConfig(**{**TINY, "num_train_steps_per_itr": 1})
    pearl = train_pearl(family, SETS["train"], cfg, 2, seed=0)
    assert pearl.env_steps == algo.episodes(cfg, 2, 0) * 5 == (2 * 2 + 2 * 2 * 3) * 5
    with pytest.raises(ValueError, match="continuous"):
        PEARL(make_family("bandit"), [{}], PEARLConfig(**TINY), seed=0)


# ---- 7. learning ----------------------------------------------------------------------------

def test_learns_short_navigation() -> None:
    # Goals in [0.2, 0.5]^2, 20 steps from the origin: a random policy stays near the start
    # (return about -12.8); heading up-right to the goal earns about -2.5.
    family = Nav2DFamily(Nav2DFamilyConfig(max_steps=20, goal_low=0.2, goal_high=0.5))
    sets = sample_task_sets(family, {"train": 4, "test": 4}, 0)
    cfg = PEARLConfig(latent_dim=2, hidden_sizes=(32, 32), encoder_hidden=(32,),
                      meta_batch_size=4, batch_size=64, context_batch=20, lr=1e-3, tau=0.01,
                      num_initial_episodes=4, num_tasks_sample=4, num_episodes_prior=1,
                      num_episodes_posterior=1, num_extra_rl_episodes_posterior=1,
                      num_train_steps_per_itr=100, replay_capacity=1000)
    tasks = list(sets["test"].tasks)
    untrained = adapt_to_tasks(train_pearl(family, sets["train"], cfg, 0, seed=0).learner(),
                               family, tasks, 0, 2, seed=0).returns.mean()
    pearl = train_pearl(family, sets["train"], cfg, 10, seed=0)
    run = adapt_to_tasks(pearl.learner(), family, tasks, 1, 2, seed=0)
    random = adapt_to_tasks(RandomLearner(), family, tasks, 0, 2, seed=0).returns.mean()
    before, after = run.returns.mean(1)
    assert random < -10
    # Measured: -3.7 (seed 0; -2.8 to -3.7 over seeds 0-5), the untrained policy -5.3.
    assert before > random + 8, (before, random)
    assert before > untrained + 1, (before, untrained)
    assert math.isfinite(after) and after > before - 1.0, (before, after)
    assert (run.params["precision"] > 1).all()
