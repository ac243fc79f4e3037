"""The real pipeline end to end: `dvc repro` in a fresh copy of the repo, checked via MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.stages import STAGE_NAMES
from tests.conftest import assert_gate_consistent, copy_repo, tiny_params, write_params


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.pop("METARL_PIPELINE_RUN", None)
    return env


def _run(cmd: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (
        f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo")
    params = tiny_params()
    write_params(root, params)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit",
                 "-qm", "tiny"]):
        _run(cmd, root)

    first = _run(["dvc", "repro"], root)
    assert _stages_run(first.stdout) == set(STAGE_NAMES)
    for rel in ("data/tasks/train.json", "data/tasks/val.json", "data/tasks/test.json",
                "tuning/best_params.yaml", "tuning/study.journal", "models/maml.pt",
                "models/pretrained.pt", "models/config.json", "metrics/meta_test.json",
                "plots/adaptation_curve.csv", "plots/adaptation_curve.png",
                "reports/meta_test.md", "metrics/register.json", "metrics/summary.json",
                "reports/model_card.md", "reports/report.html",
                "reports/figures/adaptation_curve.png", "reports/figures/scores.png",
                "reports/figures/improvement.png"):
        assert (root / rel).is_file(), rel
    summary = json.loads((root / "metrics" / "meta_test.json").read_text())
    assert set(summary) >= {"maml", "pretrained", "scratch", "random"}
    assert summary["random"]["normalized_pre_adapt"] == pytest.approx(0.0, abs=1e-9)

    # MLflow: one parent run, a nested run per stage, hashes and versions logged.
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    stage_runs = {r.data.tags["metarl.stage"]: r for r in runs
                  if r.data.tags.get("metarl.stage") in STAGE_NAMES}
    assert set(stage_runs) == set(STAGE_NAMES)
    parents = {r.data.tags["mlflow.parentRunId"] for r in stage_runs.values()}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.data.tags["version.torch"].startswith("2.")
    test_hash = json.loads((root / "data/tasks/test.json").read_text())["content_hash"]
    assert stage_runs["evaluate"].data.tags["task_hash.test"] == test_hash
    assert "meta_test/return_post_adapt_k1" in stage_runs["evaluate"].data.metrics
    k_max = params["evaluate"]["num_adapt_steps"]
    curve = client.get_metric_history(stage_runs["evaluate"].info.run_id, "meta_test/maml/return")
    assert sorted(m.step for m in curve) == list(range(k_max + 1))  # one metric over steps
    assert {m.step: m.value for m in curve}[k_max] == pytest.approx(
        summary["maml"][f"return_post_adapt_k{k_max}"])

    # The report: the gate's decision on one offline page; `dvc plots show` draws every plot.
    page = (root / "reports" / "report.html").read_text()
    assert "Registry gate" in page and page.count('<img src="data:image/png;base64,') == 3
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], root).stdout)
    assert not plots.get("errors"), plots["errors"]
    assert set(plots["data"]) == {"plots/adaptation_curve.csv", "plots/train_curve.csv",
                                  "reports/figures/adaptation_curve.png",
                                  "reports/figures/scores.png", "reports/figures/improvement.png"}
    band = plots["data"]["plots/adaptation_curve.csv"][0]["content"]
    assert {r["learner"] for r in band["data"]["values"]} == {"meta_learner", "pretrained",
                                                              "scratch", "random"}
    trials = [r for r in runs if r.data.tags.get("metarl.stage") == "tune-trial"]
    assert len(trials) == params["tune"]["n_trials"]
    assert all(r.data.tags["mlflow.parentRunId"] == stage_runs["tune"].info.run_id
               for r in trials)

    name = "metarl-cartpole-maml"  # register.model_name is empty: metarl-<family>-<algo>
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert int(challenger.version) == 1
    register = json.loads((root / "metrics" / "register.json").read_text())
    assert_gate_consistent(register)
    # The version's description is its model card, the project's reports/model_card.md, which
    # names the commit the pipeline ran at and the test tasks the gate used.
    card = (root / "reports" / "model_card.md").read_text()
    assert challenger.description == card
    head = _run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    assert f"Git commit `{head}`" in card and f"| test | `{test_hash}` |" in card
    headline = json.loads((root / "metrics" / "summary.json").read_text())
    assert headline["gate"]["version"] == register["version"] == 1
    assert headline["meta_learner"]["post"] == pytest.approx(
        summary["maml"]["normalized_post_adapt"])

    # The registered model loads in a fresh process and acts.
    code = ("import mlflow, numpy as np; "
            f"m = mlflow.pyfunc.load_model('models:/{name}@challenger'); "
            "print(m.predict(np.zeros((5, 4), np.float32)).tolist())")
    loaded = _run([sys.executable, "-c", code], root)
    actions = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert len(actions) == 5 and set(actions) <= {0, 1}

    # The README's Python example, as written (the tiny model's alias is @challenger).
    readme = (root / "README.md").read_text().split("<!-- api-example")[1]
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (root / "example.py").write_text(example.replace("@champion", "@challenger"))
    printed = _run([sys.executable, "example.py"], root).stdout.strip().splitlines()[-1]
    before, after = (float(x) for x in printed.split(" -> "))
    assert 0 < before <= 200 and 0 < after <= 200, printed

    # Nothing changed: nothing reruns.
    again = _run(["dvc", "repro"], root)
    assert _stages_run(again.stdout) == set()

    # A train param changed: train and what follows rerun, nothing before.
    params["train"]["num_iterations"] = 3
    write_params(root, params)
    changed = _run(["dvc", "repro"], root)
    assert _stages_run(changed.stdout) == {"train", "evaluate", "register", "report"}
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 2

    # An evaluation setting: evaluate and register are out of date, nothing before them.
    params["evaluate"]["episodes_per_task"] = 4
    write_params(root, params)
    status = json.loads(_run(["dvc", "status", "--json", "dvc.yaml"], root).stdout or "{}")
    assert set(status) == {"evaluate", "register"}, status
    params["evaluate"]["episodes_per_task"] = 3
    write_params(root, params)
    assert json.loads(_run(["dvc", "status", "--json", "dvc.yaml"], root).stdout or "{}") == {}
    # The headline metrics: `dvc metrics show` lists metrics/summary.json only.
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], root).stdout)
    assert {f for rev in shown.values() for f in rev.get("data", {})} == {
        "metrics/summary.json"}

    # A physics change: every stage after it is out of date (its code is a dependency).
    physics = root / "metarl" / "envs" / "cartpole.py"
    physics.write_text(physics.read_text() + "\n# a change to the physics file\n")
    status = json.loads(_run(["dvc", "status", "--json", "dvc.yaml"], root).stdout or "{}")
    assert set(STAGE_NAMES) <= set(status), status
