"""ES-MAML: the antithetic estimator on a known gradient, the batched population, determinism,
resume, its registry entry, and a run through the pipeline's stages."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.algos import es_maml as es
from metarl.algos import registry
from metarl.algos.es_maml import (
    ESMAML,
    ESMAMLConfig,
    antithetic_noise,
    centered_ranks,
    es_gradient,
    evaluate_population,
    hill_climb_adaptation,
    perturbed,
    train_es_maml,
)
from metarl.config import ConfigError, from_mapping
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.policies import CategoricalMLPPolicy, Params, expand_params
from metarl.tasks import sample_task_sets
from metarl.training import Resume, StateFn
from tests.conftest import tiny_params, write_params

torch.set_num_threads(1)

FAMILY = CartPoleFamily(CartPoleFamilyConfig(max_steps=15))
TRAIN = sample_task_sets(FAMILY, {"train": 6}, 0)["train"]
TASKS = list(TRAIN.tasks[:2])
SMALL = {"hidden_sizes": (8,), "population_size": 3, "meta_batch_size": 2,
         "episodes_per_task": 3}


def _config(**kw: Any) -> ESMAMLConfig:
    return ESMAMLConfig(**{**SMALL, **kw})


def _es(**kw: Any) -> ESMAML:
    cfg = _config(**kw)
    return ESMAML(CategoricalMLPPolicy(4, 2, cfg.hidden_sizes), cfg, seed=0)


# --- the estimator -------------------------------------------------------------------------

C = {"a": torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4),
     "b": torch.tensor([0.5, -2.0, 1.0, 0.0, 3.0], dtype=torch.float64)}
THETA = {"a": torch.zeros(3, 4, dtype=torch.float64), "b": torch.ones(5, dtype=torch.float64)}
DIM = 17


def _quadratic(population: Params) -> torch.Tensor:
    """``f(theta) = -1/2 |theta - c|^2`` of each member (leading dim)."""
    return -0.5 * sum(((v - C[k]) ** 2).flatten(1).sum(1) for k, v in population.items())


def _estimate(num_pairs: int, seed: int, sigma: float = 0.1, shaping: str = "none") -> Params:
    noise = antithetic_noise(THETA, num_pairs, torch.Generator().manual_seed(seed))
    return es_gradient(_quadratic(perturbed(THETA, noise, sigma)), noise, sigma, shaping)


def _flat(params: Params) -> torch.Tensor:
    return torch.cat([params[k].flatten() for k in sorted(params)])


TRUE_GRAD = _flat({k: C[k] - THETA[k] for k in C})  # -(theta - c)


def test_antithetic_estimate_of_a_quadratic_is_unbiased_with_error_one_over_sqrt_p() -> None:
    # For a quadratic the antithetic difference is exact: (f+ - f-) / 2 sigma = g . eps, so the
    # estimate is mean_i (g . eps_i) eps_i: unbiased, with E|err|^2 = (D + 1) |g|^2 / P.
    rms = {}
    for num_pairs in (16, 256):
        errors = torch.stack([_flat(_estimate(num_pairs, seed)) - TRUE_GRAD
                              for seed in range(200)])
        rms[num_pairs] = float(errors.square().sum(1).mean().sqrt() / TRUE_GRAD.norm())
        expected = ((DIM + 1) / num_pairs) ** 0.5
        assert rms[num_pairs] == pytest.approx(expected, rel=0.15), num_pairs
        # the mean over seeds converges on the gradient (bias well under the spread / sqrt(200))
        bias = float((errors.mean(0)).norm() / TRUE_GRAD.norm())
        assert bias < 3 * expected / 200 ** 0.5, num_pairs
    assert rms[16] / rms[256] == pytest.approx(4.0, rel=0.15)  # sqrt(256 / 16)


def test_the_estimate_does_not_depend_on_sigma_for_a_quadratic() -> None:
    for sigma in (1e-3, 1.0):
        got, want = _flat(_estimate(8, 0, sigma)), _flat(_estimate(8, 0, 0.1))
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9), sigma


@pytest.mark.parametrize("shaping", ["rank", "zscore"])
def test_shaped_estimates_point_along_the_gradient(shaping: str) -> None:
    got = _flat(_estimate(256, 0, shaping=shaping))
    cosine = float(got @ TRUE_GRAD / (got.norm() * TRUE_GRAD.norm()))
    assert cosine > 0.85


def test_centered_ranks_hand_computed() -> None:
    got = centered_ranks(torch.tensor([3.0, 1.0, 2.0, 2.0, 7.0]))
    # ranks 3, 0, 1.5, 1.5, 4 over 4
    assert torch.allclose(got, torch.tensor([0.25, -0.5, -0.125, -0.125, 0.5]))
    assert torch.equal(centered_ranks(torch.tensor([5.0])), torch.zeros(1))


def test_the_population_is_theta_plus_and_minus_each_perturbation() -> None:
    noise = antithetic_noise(THETA, 3, torch.Generator().manual_seed(0))
    pop = perturbed(THETA, noise, 0.2)
    for k in THETA:
        assert pop[k].shape == (6, *THETA[k].shape)
        assert torch.allclose(pop[k][:3], THETA[k] + 0.2 * noise[k])
        assert torch.allclose(pop[k][3:], THETA[k] - 0.2 * noise[k])
        assert torch.allclose(pop[k].mean(0), THETA[k])


# --- the batched population ----------------------------------------------------------------

@pytest.mark.parametrize("adaptation", ["pg", "hill_climb"])
def test_members_are_independent_in_the_one_batched_evaluation(adaptation: str) -> None:
    cfg = _config(adaptation=adaptation, num_queries=2, sigma=0.5)
    policy = CategoricalMLPPolicy(4, 2, cfg.hidden_sizes)
    theta = policy.init_params(torch.Generator().manual_seed(0))
    noise = antithetic_noise(theta, cfg.population_size, torch.Generator().manual_seed(1))
    other = {k: v.clone() for k, v in noise.items()}
    for v in other.values():  # pair 1 only: members 1 and 1 + P
        v[1] = torch.randn(v[1].shape, generator=torch.Generator().manual_seed(2))

    def run(eps: Params) -> es.PopulationScores:
        return evaluate_population(policy, perturbed(theta, eps, cfg.sigma), FAMILY, TASKS, cfg,
                                   torch.Generator().manual_seed(3))

    first, second = run(noise), run(other)
    assert first.pre.shape == first.post.shape == (6, len(TASKS))
    changed = [1, 1 + cfg.population_size]
    same = [m for m in range(6) if m not in changed]
    assert torch.equal(first.pre[same], second.pre[same])
    assert torch.equal(first.post[same], second.post[same])
    assert not torch.equal(first.pre[changed], second.pre[changed])


def test_the_whole_population_is_one_env_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # every rollout covers 2P x T rows of E envs: the batch_factors the registry reports
    calls: list[tuple[int, int]] = []
    real = es.rollout

    def counted(act: Any, env: Any, generator: torch.Generator) -> Any:
        calls.append((env.num_tasks, env.num_envs))
        return real(act, env, generator)

    monkeypatch.setattr(es, "rollout", counted)
    algo = registry.get("es_maml")
    for adaptation, rollouts in (("pg", 2), ("hill_climb", 2 + 3)):
        calls.clear()
        cfg = _config(adaptation=adaptation, num_queries=3)
        train_es_maml(FAMILY, TRAIN, cfg, 2, 0)
        size = int(np.prod([v for _, v in algo.batch_factors(cfg, 2)]))
        assert calls == [(2 * 3 * 2, 3)] * (2 * rollouts)
        assert all(n * e == size for n, e in calls)
        assert algo.episodes(cfg, 2, 2) == sum(n * e for n, e in calls)


def test_hill_climbing_keeps_a_query_only_when_it_scores_higher(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(adaptation="hill_climb", num_queries=3, query_sigma=0.5)
    policy = CategoricalMLPPolicy(4, 2, cfg.hidden_sizes)
    theta = policy.init_params(torch.Generator().manual_seed(0))
    params = expand_params(theta, 8)
    long = CartPoleFamily(CartPoleFamilyConfig(max_steps=60))  # room to improve on
    env = long.make_env(TRAIN.tasks[:1] * 8, cfg.episodes_per_task)
    scores: list[torch.Tensor] = []
    real = es.rollout

    def scored(act: Any, env: Any, generator: torch.Generator) -> Any:
        batch = real(act, env, generator)
        scores.append(batch.episode_returns.mean(-1))
        return batch

    monkeypatch.setattr(es, "rollout", scored)
    out = hill_climb_adaptation(policy, params, env, cfg, torch.Generator().manual_seed(0))
    best = scores[0]
    kept = torch.zeros(8, dtype=torch.bool)
    for score in scores[1:]:
        kept |= score > best
        best = torch.maximum(best, score)
    assert torch.equal(out.pre_returns, scores[0])
    assert 0 < int(kept.sum()) < 8  # some rows moved, some did not (seeded)
    moved = (out.params["net.0.weight"] != params["net.0.weight"]).flatten(1).any(1)
    assert torch.equal(moved, kept)
    assert out.num_steps > 0 and out.accept_rate is not None and 0 < out.accept_rate < 1


# --- the update, determinism, resume -------------------------------------------------------

@pytest.mark.parametrize("shaping", ["none", "rank"])
def test_sgd_step_is_outer_lr_times_the_es_gradient_of_the_scored_population(
        shaping: str) -> None:
    trainer = _es(optimizer="sgd", outer_lr=0.1, fitness_shaping=shaping)
    theta0 = {k: v.detach().clone() for k, v in trainer.theta.items()}
    rollouts = torch.Generator().set_state(trainer.generator.get_state())
    noise_gen = torch.Generator().set_state(trainer.noise_generator.get_state())
    trainer.meta_train_step(FAMILY, TASKS)
    cfg = trainer.config
    noise = antithetic_noise(theta0, cfg.population_size, noise_gen)
    scores = evaluate_population(trainer.policy, perturbed(theta0, noise, cfg.sigma), FAMILY,
                                 TASKS, cfg, rollouts)
    want = es_gradient(scores.post.mean(1), noise, cfg.sigma, shaping)
    for k, v in trainer.theta.items():
        assert torch.allclose(v.detach() - theta0[k], 0.1 * want[k], atol=1e-6), k
    assert max(float(g.abs().max()) for g in want.values()) > 0  # it moved


def _train(seed: int, **kw: Any) -> dict[str, torch.Tensor]:
    out = train_es_maml(FAMILY, TRAIN, _config(**kw), 2, seed)
    return {k: v.detach().clone() for k, v in out.theta.items()}


@pytest.mark.parametrize("adaptation", ["pg", "hill_climb"])
def test_same_seed_same_parameters(adaptation: str) -> None:
    first, second, other = (_train(s, adaptation=adaptation, num_queries=2) for s in (0, 0, 1))
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_resumed_run_ends_with_the_uninterrupted_parameters(optimizer: str) -> None:
    saved: dict[int, bytes] = {}

    def save(done: int, state: StateFn) -> None:
        buf = io.BytesIO()
        torch.save(state(), buf)  # read back weights-only, as the pipeline does
        saved[done] = buf.getvalue()

    def run(resume: Resume, n: int) -> dict[str, torch.Tensor]:
        out = train_es_maml(FAMILY, TRAIN, _config(optimizer=optimizer), n, 0, resume=resume)
        return {k: v.detach() for k, v in out.theta.items()}

    full = run(Resume(save=save), 4)
    state = torch.load(io.BytesIO(saved[2]), weights_only=True)
    resumed = run(Resume(state=state), 4)
    for k in full:
        assert torch.equal(resumed[k], full[k]), k
    # the noise generator is part of the state: without it the run would differ
    state["loop"]["es_maml"]["noise_generator"] = torch.Generator().manual_seed(9).get_state()
    assert any(not torch.equal(run(Resume(state=state), 4)[k], full[k]) for k in full)


# --- config, registry, learner -------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("adaptation", "es"), ("optimizer", "rmsprop"), ("fitness_shaping", "softmax"),
    ("sigma", 0.0), ("population_size", 0), ("num_queries", 0), ("query_sigma", -1.0),
    ("episodes_per_task", 1), ("discount", 1.5), ("inner_lr", 0.0), ("hidden_sizes", [0]),
])
def test_a_bad_value_is_refused_by_its_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"algo\.es_maml\.{key}="):
        from_mapping(ESMAMLConfig, {key: value}, "algo.es_maml")


def test_registered_with_its_budget_and_a_gradient_learner() -> None:
    algo = registry.get("es_maml")
    assert algo.config_cls is ESMAMLConfig and set(algo.search_space) == {"inner_lr"}
    cfg = ESMAMLConfig(population_size=4, meta_batch_size=5, episodes_per_task=3)
    assert algo.episodes(cfg, 10, 4) == 10 * 8 * 5 * 3 * 2
    hill = ESMAMLConfig(population_size=4, meta_batch_size=5, episodes_per_task=3,
                        adaptation="hill_climb", num_queries=6)
    assert algo.episodes(hill, 10, 4) == 10 * 8 * 5 * 3 * (6 + 2)
    assert "policy-gradient step" in algo.step_note
    learner = _es(inner_lr=0.3).learner()
    assert learner.inner_lr == 0.3
    params = learner.initial_params(2)
    assert params["net.0.weight"].shape == (2, 8, 4)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    trainer = train_es_maml(FAMILY, TRAIN, _config(), 1, 0)
    algo = registry.get("es_maml")
    config = algo.save(trainer, tmp_path / "es_maml.pt")
    config = json.loads(json.dumps(config))
    assert config["learner"] == "es_maml" and config["algo_config"]["population_size"] == 3
    loaded = algo.load(tmp_path / "es_maml.pt", config)
    for k, v in trainer.learner().params.items():
        assert torch.equal(loaded.params[k], v), k  # type: ignore[attr-defined]


# --- learning and the pipeline -------------------------------------------------------------

def test_post_adaptation_return_and_the_gain_from_adapting_rise_on_cartpole() -> None:
    # ~5 s. Seeds 0, 1, 2 give post 26 -> 57, 33 -> 60, 24 -> 32 and gain 5 -> 28, 10 -> 31,
    # 2 -> 14 (first 5 iterations -> last 10): the population learns to gain from its step.
    family = CartPoleFamily(CartPoleFamilyConfig(max_steps=100))
    train = sample_task_sets(family, {"train": 20}, 0)["train"]
    rows: list[dict[str, float]] = []

    class Log:
        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            rows.append(metrics)

    train_es_maml(family, train, ESMAMLConfig(hidden_sizes=(16,), meta_batch_size=5,
                                              episodes_per_task=5), 40, 0,
                  logger=Log())  # type: ignore[arg-type]
    post = np.array([r["train/return_post_adapt"] for r in rows])
    gain = post - np.array([r["train/return_pre_adapt"] for r in rows])
    assert post[-10:].mean() > post[:5].mean() + 15, post
    assert gain[-10:].mean() > gain[:5].mean() + 10, gain


def test_tasks_train_evaluate_in_process(tmp_path: Path) -> None:
    from pipelines.runner import run_stage

    params = tiny_params()
    params["algo"]["name"] = "es_maml"
    params["tune"]["n_trials"] = 0
    write_params(tmp_path, params)
    for stage in ("tasks", "tune", "train", "evaluate"):
        run_stage(stage, tmp_path)
    ckpt = json.loads((tmp_path / "models" / "es_maml.json").read_text())
    cfg = from_mapping(ESMAMLConfig, ckpt["algo_config"], "algo.es_maml")
    iters = params["train"]["num_iterations"]
    assert ckpt["learner"] == "es_maml"
    assert ckpt["train_budget"]["num_episodes"] == es.episodes(cfg, iters)
    summary = json.loads((tmp_path / "metrics" / "meta_test.json").read_text())
    assert summary["learner"] == "es_maml"
    k = params["evaluate"]["num_adapt_steps"]
    assert np.isfinite(summary["es_maml"][f"return_post_adapt_k{k}"])
    report = (tmp_path / "reports" / "meta_test.md").read_text()
    assert "ES-MAML's step k is a policy-gradient step" in report


def test_the_machine_size_check_counts_the_whole_population(tmp_path: Path) -> None:
    # P = 1024 pairs x 20 tasks x 2 episodes x 200 steps: 16.4 M env steps, one batch that fits
    # (the GPU run's size); 3 episodes (24.6 M) is refused, naming the population
    from pipelines.settings import load_config

    params = tiny_params()
    params["algo"]["name"] = "es_maml"
    params["task"]["cartpole"]["max_steps"] = 200
    params["algo"]["es_maml"].update(population_size=1024, meta_batch_size=20,
                                     episodes_per_task=2)
    load_config(write_params(tmp_path, params))
    params["algo"]["es_maml"]["episodes_per_task"] = 3
    with pytest.raises(ConfigError, match=r"algo\.es_maml\.population_size=1024: .*24,576,000"):
        load_config(write_params(tmp_path, params))
