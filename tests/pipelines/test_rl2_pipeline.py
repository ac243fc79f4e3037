"""RL² through the pipeline's stages (``algo.name: rl2``), in process: tasks → tune → train →
evaluate → register, then the registered recurrent model loaded back with ``mlflow.pyfunc``."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pipelines.model import load_registered
from pipelines.runner import promote_version, run_stage
from tests.conftest import assert_gate_consistent, tiny_params, write_params


@pytest.mark.parametrize(("family", "obs_dim", "action_dim"),
                         [("cartpole", 4, 0), ("nav2d", 2, 2)])
def test_rl2_runs_every_stage_and_registers_a_recurrent_model(
        tmp_path: Path, family: str, obs_dim: int, action_dim: int) -> None:
    root = tmp_path / "project"
    root.mkdir()
    params = tiny_params()
    params["task"]["family"] = family
    params["task"][family]["max_steps"] = 40 if family == "cartpole" else 12
    params["algo"]["name"] = "rl2"
    write_params(root, params)
    for stage in ("tasks", "tune", "train", "evaluate", "register"):
        run_stage(stage, root)

    best = yaml.safe_load((root / "tuning/best_params.yaml").read_text())
    assert set(best["algo"]["rl2"]) == {"lr"}  # RL²'s learning rate, in tune.outer_lr's range
    lo, hi = params["tune"]["outer_lr"]
    assert lo <= best["algo"]["rl2"]["lr"] <= hi

    ckpt = json.loads((root / "models/rl2.json").read_text())
    assert (ckpt["learner"], ckpt["family"], ckpt["episodes_per_trial"]) == ("rl2", family, 3)
    assert ckpt["algo_config"]["lr"] == best["algo"]["rl2"]["lr"]  # the tuned value is used
    assert (root / "models/pretrained.pt").is_file() and (root / "models/config.json").is_file()
    curve = (root / "plots/train_curve.csv").read_text().splitlines()
    assert curve[0].startswith("iteration,train/return_pre_adapt,train/return_post_adapt")
    assert len(curve) == 1 + params["train"]["num_iterations"]

    summary = json.loads((root / "metrics/meta_test.json").read_text())
    assert summary["learner"] == "rl2"
    assert set(summary) >= {"rl2", "pretrained", "scratch", "random"} and "maml" not in summary
    k = params["evaluate"]["num_adapt_steps"]
    assert np.isfinite(summary["rl2"][f"return_post_adapt_k{k}"])
    assert summary["rl2"]["normalized_post_adapt"] is not None
    assert "success_rate_k0" not in summary["rl2"]  # only envs that report success
    curve = (root / "plots/adaptation_curve.csv").read_text().splitlines()
    assert curve[0] == "adapt_step,learner,return,ci_low,ci_high"
    assert {row.split(",")[1] for row in curve[1:]} == {"meta_learner", "pretrained", "scratch",
                                                        "random"}
    report = (root / "reports/meta_test.md").read_text()
    assert "| rl2 |" in report and "episode k + 1 of one trial" in report

    register = json.loads((root / "metrics/register.json").read_text())
    assert register["model_name"] == f"metarl-{family}-rl2"
    assert register["version"] == 1
    assert_gate_consistent(register)
    # the gate measured the checkpoint itself: the same score as evaluate's
    assert register["score"] == pytest.approx(summary["rl2"]["normalized_post_adapt"])

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/metarl-{family}-rl2@challenger")
    rng = np.random.default_rng(0)
    b, t = 3, 5
    obs = rng.normal(size=(b, obs_dim)).astype(np.float32)
    fresh = model.predict(obs)  # no context: the first step of a fresh trial
    assert fresh.shape == ((b, action_dim) if action_dim else (b,))
    assert fresh.dtype == (np.float32 if action_dim else np.int64)
    # the context of the task at hand: its last t steps, as flat lists in params
    context = {"context_obs": rng.normal(size=t * obs_dim).tolist(),
               "context_action": (rng.uniform(-0.1, 0.1, size=t * action_dim) if action_dim
                                  else rng.integers(0, 2, size=t)).tolist(),
               "context_reward": rng.normal(size=t).tolist(), "context_done": [0.0] * t}
    learner, _ = load_registered(f"models:/metarl-{family}-rl2@challenger")
    expected = learner.serve({"obs": obs, **context})
    np.testing.assert_array_equal(model.predict(obs, params=context), expected)

    # registering again re-evaluates the champion as an RL² model; the same checkpoint and
    # protocol is the same registration, so no version is added
    promote_version(f"metarl-{family}-rl2", 1, root)
    run_stage("register", root)
    again = json.loads((root / "metrics/register.json").read_text())
    assert again["version"] == 1 and again["reused_version"] and not again["promoted"]
    assert again["champion_score_before"] == pytest.approx(register["score"])


@pytest.mark.parametrize("family", ["bandit", "tabular_mdp", "pendulum"])
def test_rl2_trains_and_evaluates_on_the_other_families(tmp_path: Path, family: str) -> None:
    params = tiny_params()
    params["task"]["family"] = family
    if family == "bandit":
        params["task"]["bandit"]["num_pulls"] = 10
    elif family == "tabular_mdp":
        params["task"]["tabular_mdp"]["num_episodes"] = 2
    else:
        params["task"]["pendulum"].update(max_steps=10, oracle_episodes=2)
    params["algo"]["name"] = "rl2"
    write_params(tmp_path, params)
    for stage in ("tasks", "train", "evaluate"):
        run_stage(stage, tmp_path)
    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    k = params["evaluate"]["num_adapt_steps"]
    assert summary["learner"] == "rl2" and summary["oracle_kind"] == "closed-form"
    for name in ("rl2", "pretrained", "scratch", "random"):
        assert np.isfinite(summary[name][f"return_post_adapt_k{k}"]), name
    if family != "pendulum":  # the classic baselines are reported beside RL²
        assert summary["reference_baselines"]
    ckpt = json.loads((tmp_path / "models/rl2.json").read_text())
    assert ckpt["policy"] == ("gaussian" if family == "pendulum" else "categorical")


def test_meta_sgd_step_sizes_survive_the_train_stage(tmp_path: Path) -> None:
    # MAML with learned per-parameter step sizes: the checkpoint keeps them (inner_lr.<name>),
    # and evaluate adapts with them, not with the float.
    from pipelines.paths import Paths
    from pipelines.stages.common import load_checkpoint

    params = tiny_params()
    params["algo"]["maml"]["learn_inner_lr"] = True
    write_params(tmp_path, params)
    for stage in ("tasks", "train"):
        run_stage(stage, tmp_path)
    learner, _ = load_checkpoint(Paths(tmp_path), "maml")
    assert isinstance(learner.inner_lr, dict)
    assert set(learner.inner_lr) == set(learner.params)
    assert any(float((v - params["algo"]["maml"]["inner_lr"]).abs().max()) > 0
               for v in learner.inner_lr.values())  # learned, not the initial value
    pretrained, _ = load_checkpoint(Paths(tmp_path), "pretrained")
    assert isinstance(pretrained.inner_lr, float)


def test_no_normalised_score_when_random_already_scores_the_oracle(tmp_path: Path) -> None:
    # CartPole with a 3-step horizon: every policy survives 3 steps, random = oracle = 3, so
    # normalising would divide by zero; the scores are null and the gate compares raw returns.
    params = tiny_params()
    params["task"]["cartpole"]["max_steps"] = 3
    params["register"]["model_name"] = "test-degenerate"
    write_params(tmp_path, params)
    for stage in ("tasks", "train", "evaluate", "register", "register"):
        run_stage(stage, tmp_path)
    summary = json.loads((tmp_path / "metrics/meta_test.json").read_text())
    assert summary["oracle_return"] == summary["random_return"] == 3.0
    assert summary["maml"]["normalized_post_adapt"] is None
    assert "NaN" not in (tmp_path / "metrics/meta_test.json").read_text()
    register = json.loads((tmp_path / "metrics/register.json").read_text())
    assert register["score"] == 3.0 and register["reference_score"] == 3.0
    assert register["units"] == "return" and register["difference"] == 0.0
    assert register["version"] == 1 and register["reused_version"]
    assert not register["promoted"]
