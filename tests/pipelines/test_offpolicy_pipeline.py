"""The off-policy meta-learners (PEARL, MQL) and MAML on a Q-network through every stage, in
process, on the families each supports: tasks → tune → train → evaluate → register, then the
registered model served with and without the context of a task."""

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
from pipelines.stages.common import StageError
from tests.conftest import assert_gate_consistent, tiny_params, write_params

CASES = [("maml_q", "cartpole", 30), ("maml_q", "bandit", 10), ("maml_q", "tabular_mdp", 5),
         ("pearl", "nav2d", 12), ("pearl", "pendulum", 20), ("mql", "nav2d", 12),
         ("mql", "pendulum", 20)]
HORIZON_KEY = {"bandit": "num_pulls", "tabular_mdp": "horizon"}


def _params(algo: str, family: str, horizon: int) -> dict:
    params = tiny_params()
    params["task"]["family"] = family
    params["task"][family][HORIZON_KEY.get(family, "max_steps")] = horizon
    params["algo"]["name"] = algo
    return params


@pytest.mark.parametrize(("algo", "family", "horizon"), CASES)
def test_runs_every_stage_and_registers_a_model_that_adapts(
        tmp_path: Path, algo: str, family: str, horizon: int) -> None:
    params = _params(algo, family, horizon)
    write_params(tmp_path, params)
    for stage in ("tasks", "tune", "train", "evaluate", "register"):
        run_stage(stage, tmp_path)

    entry = registry.get(algo)
    best = yaml.safe_load((tmp_path / "tuning/best_params.yaml").read_text())
    assert set(best["algo"][algo]) == set(entry.search_space)
    ckpt = json.loads((tmp_path / f"models/{algo}.json").read_text())
    assert ckpt["learner"] == algo
    for key, value in best["algo"][algo].items():
        assert ckpt["algo_config"][key] == value  # trained with the tuned values
    curve = (tmp_path / "plots/train_curve.csv").read_text().splitlines()
    assert len(curve) == 1 + params["train"]["num_iterations"]

    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    assert summary["learner"] == algo
    k = params["evaluate"]["num_adapt_steps"]
    assert np.isfinite(summary[algo][f"return_post_adapt_k{k}"])
    register = json.loads((tmp_path / "metrics/register.json").read_text())
    assert register["model_name"] == f"metarl-{family}-{algo}"
    assert_gate_consistent(register)
    assert register["score"] == pytest.approx(summary[algo]["normalized_post_adapt"])

    # the served model: without context (prior / initialisation), and adapted on a context
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/metarl-{family}-{algo}@challenger")
    learner = load_learner(tmp_path / f"models/{algo}.pt", ckpt)
    obs_dim = int(ckpt["obs_dim"])
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4, obs_dim)).astype(np.float32)
    bare = model.predict(obs)
    np.testing.assert_array_equal(bare, learner.serve({"obs": obs}))
    discrete = algo == "maml_q"
    action_dim = 0 if discrete else int(ckpt.get("action_dim", 1))
    t = 24
    context = {"context_obs": rng.normal(size=t * obs_dim).tolist(),
               "context_action": (rng.integers(0, 2, size=t) if discrete else
                                  rng.uniform(-0.5, 0.5, size=t * action_dim)).tolist(),
               "context_reward": rng.normal(size=t).tolist(),
               "context_done": [0.0] * (t - 1) + [1.0]}
    served = model.predict(obs, params=context)
    np.testing.assert_array_equal(served, learner.serve({"obs": obs, **context}))
    assert served.shape == bare.shape


@pytest.mark.parametrize(("algo", "family"), [("pearl", "cartpole"), ("mql", "bandit"),
                                              ("maml_q", "nav2d")])
def test_an_unsupported_action_space_is_refused_naming_the_key(
        tmp_path: Path, algo: str, family: str) -> None:
    write_params(tmp_path, _params(algo, family, 10))
    run_stage("tasks", tmp_path)
    with pytest.raises(StageError, match=r"algo\.name.*actions"):
        run_stage("train", tmp_path)
    assert not (tmp_path / f"models/{algo}.pt").exists()


@pytest.mark.parametrize("algo", ["pearl", "mql"])
def test_trains_evaluates_and_registers_on_a_mujoco_family(tmp_path: Path, algo: str) -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium.envs.mujoco")
    params = _params(algo, "cheetah_vel", 20)
    params["tune"]["n_trials"] = 1
    params["task"].update(num_train=3, num_val=2, num_test=2)
    write_params(tmp_path, params)
    for stage in ("tasks", "tune", "train", "evaluate", "register"):
        run_stage(stage, tmp_path)
    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    k = params["evaluate"]["num_adapt_steps"]
    assert summary["learner"] == algo and np.isfinite(summary[algo][f"return_post_adapt_k{k}"])
    ckpt = json.loads((tmp_path / f"models/{algo}.json").read_text())
    assert ckpt["obs_dim"] == 17 and ckpt["action_dim"] == 6  # HalfCheetah's
    register = json.loads((tmp_path / "metrics/register.json").read_text())
    assert register["model_name"] == f"metarl-cheetah_vel-{algo}"
    assert_gate_consistent(register)
