"""The continuous families through the pipeline's stage functions, in process: tasks → train →
evaluate → register, then the registered model loaded back with ``mlflow.pyfunc``."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipelines.cli import main
from pipelines.runner import run_stage
from tests.conftest import assert_gate_consistent, tiny_params, write_params

TINY_FAMILY = {
    "nav2d": {"max_steps": 10},
    "pendulum": {"max_steps": 10, "oracle_episodes": 2},
}
ACTION_DIM = {"nav2d": 2, "pendulum": 1}


def _params(family: str) -> dict:
    params = tiny_params()
    params["task"]["family"] = family
    params["task"][family].update(TINY_FAMILY[family])
    params["algo"]["maml"].update(init_std=3.0, inner_lr=0.1)
    params["register"]["model_name"] = f"test-{family}-maml"
    return params


@pytest.mark.parametrize("family", ["nav2d", "pendulum"])
def test_continuous_family_runs_tasks_train_evaluate_register(tmp_path: Path, family: str
                                                               ) -> None:
    root = tmp_path / "project"
    root.mkdir()
    params = _params(family)
    write_params(root, params)
    for stage in ("tasks", "train", "evaluate", "register"):
        run_stage(stage, root)

    tasks = json.loads((root / "data/tasks/test.json").read_text())
    assert tasks["family"] == family
    ckpt = json.loads((root / "models/config.json").read_text())
    assert (ckpt["policy"], ckpt["action_dim"], ckpt["family"]) == (
        "gaussian", ACTION_DIM[family], family)
    assert ckpt["init_std"] == pytest.approx(3.0 * (0.1 if family == "nav2d" else 2.0))

    summary = json.loads((root / "metrics/meta_test.json").read_text())
    assert set(summary) >= {"maml", "pretrained", "scratch", "random"}
    assert summary["random"]["normalized_pre_adapt"] == pytest.approx(0.0, abs=1e-9)
    assert summary["oracle_return"] > summary["random_return"]
    if family == "nav2d":  # the optimal return is known: about -0.5 over 10 steps
        assert -1.5 < summary["oracle_return"] <= 0
    for name in ("maml", "pretrained", "scratch"):
        assert np.isfinite(summary[name]["return_post_adapt_k2"]), name

    register = json.loads((root / "metrics/register.json").read_text())
    assert register["version"] == 1
    assert_gate_consistent(register)

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{params['register']['model_name']}@challenger")
    obs_dim = {"nav2d": 2, "pendulum": 3}[family]
    obs = np.random.default_rng(0).uniform(-0.5, 0.5, size=(5, obs_dim)).astype(np.float32)
    actions = model.predict(obs)
    assert actions.dtype == np.float32
    assert actions.shape == (5, ACTION_DIM[family])
    assert np.isfinite(actions).all()
    assert len(np.unique(actions.round(6), axis=0)) == 5, "the mean depends on the observation"
    assert model.predict({"obs": obs}).tolist() == actions.tolist()
    outputs = model.metadata.get_output_schema().to_dict()
    spec = outputs[0]["tensor-spec"]
    assert (spec["dtype"], tuple(spec["shape"])) == ("float32", (-1, ACTION_DIM[family]))


@pytest.mark.parametrize(
    ("family", "edit", "key", "value"),
    [
        ("nav2d", {"goal_low": 0.5, "goal_high": 0.5}, "task.nav2d.goal_low", "0.5"),
        ("nav2d", {"action_clip": 0}, "task.nav2d.action_clip", "0.0"),
        ("nav2d", {"reward": "l1"}, "task.nav2d.reward", "'l1'"),
        ("pendulum", {"mass": [2.0, 1.0]}, "task.pendulum.mass", "(2.0, 1.0)"),
        ("pendulum", {"gravity": [-9.8, 10.0]}, "task.pendulum.gravity", "(-9.8, 10.0)"),
    ],
)
def test_bad_family_params_stop_with_key_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str, edit: dict, key: str,
    value: str,
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    params = _params(family)
    params["task"][family].update(edit)
    write_params(root, params)
    assert main(["stage", "tasks", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, "one line"
    assert f"{key}={value}: " in err
    assert not (root / "data").exists(), "nothing written on bad input"
    # The same params file is fine once fixed (the section emptied: its embedded defaults).
    params["task"][family] = {}
    write_params(root, params)
    assert main(["stage", "tasks", "--root", str(root)]) == 0
