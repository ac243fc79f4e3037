"""The gradient meta-learners beside MAML (Reptile, ...) through every stage, in process, with
no algorithm named anywhere in ``pipelines/``: tasks → tune → train → evaluate → register, then
the registered model served with and without the context of a task."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from metarl.algos import registry
from metarl.checkpoint import load_learner
from pipelines.runner import run_stage
from tests.conftest import assert_gate_consistent, tiny_params, write_params

ALGORITHMS = [name for name in ("reptile", "es_maml") if name in registry.algorithms()]


@pytest.mark.parametrize("family", ["cartpole", "nav2d"])
@pytest.mark.parametrize("algo", ALGORITHMS)
def test_runs_every_stage_and_registers_a_model_that_adapts(
        tmp_path: Path, algo: str, family: str) -> None:
    params = tiny_params()
    params["task"]["family"] = family
    params["task"][family]["max_steps"] = 30 if family == "cartpole" else 12
    params["algo"]["name"] = algo
    write_params(tmp_path, params)
    for stage in ("tasks", "tune", "train", "evaluate", "register"):
        run_stage(stage, tmp_path)

    entry = registry.get(algo)
    best = yaml.safe_load((tmp_path / "tuning/best_params.yaml").read_text())
    assert set(best["algo"][algo]) == set(entry.search_space)  # its own keys were searched
    ckpt = json.loads((tmp_path / f"models/{algo}.json").read_text())
    assert ckpt["learner"] == algo
    for key, value in best["algo"][algo].items():
        assert ckpt["algo_config"][key] == value  # the tuned values are the ones trained with
    curve = (tmp_path / "plots/train_curve.csv").read_text().splitlines()
    assert len(curve) == 1 + params["train"]["num_iterations"]

    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    assert summary["learner"] == algo and "maml" not in summary
    k = params["evaluate"]["num_adapt_steps"]
    assert np.isfinite(summary[algo][f"return_post_adapt_k{k}"])
    register = json.loads((tmp_path / "metrics/register.json").read_text())
    assert register["model_name"] == f"metarl-{family}-{algo}"
    assert_gate_consistent(register)
    assert register["score"] == pytest.approx(summary[algo]["normalized_post_adapt"])

    # the served model: the initialisation without context, one adaptation step with it
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/metarl-{family}-{algo}@challenger")
    learner = load_learner(tmp_path / f"models/{algo}.pt", ckpt)
    obs_dim = int(ckpt["obs_dim"])
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4, obs_dim)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs), learner.serve({"obs": obs}))
    discrete = family == "cartpole"
    t = 6
    context = {"context_obs": rng.normal(size=t * obs_dim).tolist(),
               "context_action": (rng.integers(0, 2, size=t) if discrete else
                                  rng.uniform(-0.1, 0.1, size=t * 2)).tolist(),
               "context_reward": rng.normal(size=t).tolist(),
               "context_done": [0.0] * (t - 1) + [1.0]}
    np.testing.assert_array_equal(model.predict(obs, params=context),
                                  learner.serve({"obs": obs, **context}))
