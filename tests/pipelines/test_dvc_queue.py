"""Queued DVC experiments keep their records: two `dvc exp run --queue` experiments run at once
(`dvc queue start -j 2`), each in a temporary copy that DVC deletes, and both land in the
project's own MLflow store and Optuna journal, with their own runs; their registrations take
turns, so the second is gated against the champion the first left, and `@champion` ends on the
better model."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from metarl.checkpoint import load_params, save_params
from pipelines.cli import main
from pipelines.stages import STAGE_NAMES
from pipelines.stages.register import registry_lock
from tests.conftest import copy_repo, tiny_params, write_params

NAME = "metarl-cartpole-maml"
EXPERIMENTS = {"exp-seed1": 1, "exp-seed2": 2}
"""Experiment name → its train.seed (two models, two studies)."""
TIMEOUT_S = 420.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "METARL_TUNE_STORAGE", "METARL_PIPELINE_RUN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(CI="true", DVC_NO_ANALYTICS="1", METARL_NO_PROGRESS="1", METARL_NUM_THREADS="1")
    return env


def _run(root: Path, *cmd: str, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), cwd=root, env=_env(), capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _params() -> dict[str, Any]:
    params = tiny_params()
    params["task"]["num_test"] = 6
    params["tune"]["n_trials"] = 1
    return params


def _weak_champion(root: Path, tmp_path: Path) -> None:
    """Version 1 of NAME, @champion: a checkpoint with noise on its weights, registered from
    another folder into the project's store (absolute paths to it)."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    params = _params()
    params["tune"]["n_trials"] = 0
    params["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "metarl",
                          "artifact_location": str(root / "mlartifacts")}
    params["allow_paths_outside_project"] = True
    write_params(other, params)
    for stage in ("tasks", "train"):
        assert main(["stage", stage, "--root", str(other)]) == 0
    weights = load_params(other / "models" / "maml.pt")
    g = torch.Generator().manual_seed(0)
    save_params({k: v + 3.0 * torch.randn(v.shape, generator=g) for k, v in weights.items()},
                other / "models" / "maml.pt")
    assert main(["stage", "register", "--root", str(other)]) == 0
    assert main(["promote", NAME, "1", "--root", str(other)]) == 0


def _wait_for_queue(root: Path) -> str:
    """`dvc queue status` once no experiment is queued or running."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status = _run(root, "dvc", "queue", "status").stdout
        rows = [line for line in status.splitlines() if line.split()[:1] and
                any(name in line for name in EXPERIMENTS)]
        if len(rows) == len(EXPERIMENTS) and not any(
                word in line for line in rows for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"queue still busy after {TIMEOUT_S} s:\n{status}"
        time.sleep(2)


def _wait_for_registrations(root: Path) -> float:
    """Seconds until both experiments' register stages are running (waiting for the lock)."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("metarl").experiment_id
    start = time.monotonic()
    while True:
        running = client.search_runs(
            [experiment_id], "tags.`metarl.stage` = 'register' and attributes.status = 'RUNNING'")
        if len(running) == len(EXPERIMENTS):
            time.sleep(3)  # past loading their checkpoints, to the lock
            return time.monotonic() - start
        status = _run(root, "dvc", "queue", "status").stdout
        assert "Failed" not in status, status
        assert time.monotonic() - start < TIMEOUT_S, f"no two registrations:\n{status}"
        time.sleep(1)


def _by_experiment(client: MlflowClient, experiment_id: str) -> dict[str, dict[str, Any]]:
    """Experiment name → its parent run and its runs by stage."""
    runs = client.search_runs([experiment_id], max_results=1000)
    parents = {r.data.tags["dvc.experiment"]: r for r in runs
               if "metarl.pipeline_key" in r.data.tags and "dvc.experiment" in r.data.tags}
    out = {}
    for name, parent in parents.items():
        stages = {r.data.tags["metarl.stage"]: r for r in runs
                  if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                  == stages.get("tune", parent).info.run_id]
        out[name] = {"parent": parent, "stages": stages, "trials": trials}
    return out


@pytest.mark.slow
def test_queued_experiments_land_in_the_project_store(tmp_path: Path) -> None:
    root = copy_repo(tmp_path / "repo")
    write_params(root, _params())
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "t"],
                ["git", "config", "user.email", "t@example.invalid"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "tiny"]):
        _run(root, *cmd)
    _weak_champion(root, tmp_path)

    for name, seed in EXPERIMENTS.items():
        _run(root, "dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={seed}")
    started = time.monotonic()
    try:
        # Hold the project's registry lock until both experiments are in `register`: their
        # registrations then certainly meet, and must take turns (the copies lock the
        # project's database, not their own).
        with registry_lock(f"sqlite:///{root / 'mlflow.db'}", timeout=5):
            # the workers it starts keep its stdout: a file, not a pipe that would never close
            with (tmp_path / "queue-start.log").open("w") as log:
                subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=_env(),
                               stdout=log, stderr=subprocess.STDOUT, timeout=120, check=True)
            waited = _wait_for_registrations(root)
        status = _wait_for_queue(root)
    finally:
        _run(root, "dvc", "queue", "stop", "--kill", check=False)
    print(f"\n{status}\n2 queued experiments in {time.monotonic() - started:.0f} s")
    logs = {name: _run(root, "dvc", "queue", "logs", name, check=False).stdout
            for name in EXPERIMENTS}
    for name in EXPERIMENTS:
        assert any(name in line and "Success" in line for line in status.splitlines()), (
            f"{name} did not succeed:\n{status}\n{logs[name][-4000:]}")
    shown = _run(root, "dvc", "exp", "show", "--csv").stdout

    # Everything is in the project's store (the copies and their files are gone).
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metarl")
    assert experiment.artifact_location == (root / "mlartifacts").resolve().as_uri()
    records = _by_experiment(client, experiment.experiment_id)
    assert set(records) == set(EXPERIMENTS)
    train_runs = {}
    for name, record in records.items():
        stages, parent = record["stages"], record["parent"]
        assert set(stages) == set(STAGE_NAMES), name
        assert all(r.info.status == "FINISHED" for r in [parent, *stages.values()])
        assert parent.data.params["train.seed"] == str(EXPERIMENTS[name])
        assert parent.info.run_name == f"exp-{name}"
        assert len(record["trials"]) == 1
        train_runs[stages["train"].info.run_id] = name
    intervals = sorted((min(r.info.start_time for r in rec["stages"].values()),
                        max(r.info.end_time for r in rec["stages"].values()))
                       for rec in records.values())
    assert intervals[1][0] < intervals[0][1], "the two experiments ran at the same time"

    # The study of each is in the project's journal, its trial linked to the run of its tune.
    storage = JournalStorage(JournalFileBackend(str(root / "tuning" / "study.journal")))
    studies = storage.get_all_studies()
    assert len(studies) == 2
    trial_runs = {r.info.run_id for rec in records.values() for r in rec["trials"]}
    assert {t.user_attrs["mlflow_run_id"] for s in studies
            for t in storage.get_all_trials(s._study_id)} == trial_runs

    # Registrations took turns: version 2 (the first to register) was gated against the weak
    # champion and promoted; version 3 against version 2, the champion it left.
    versions = {int(v.version): v for v in client.search_model_versions(f"name='{NAME}'")}
    assert sorted(versions) == [1, 2, 3]
    for number in (2, 3):
        version = versions[number]
        assert version.run_id in train_runs, "the source run is the experiment's train run"
        name = train_runs[version.run_id]
        assert version.tags["registered_by_run"] == \
            records[name]["stages"]["register"].info.run_id
        assert version.tags["gate.reference"] == "champion"
        assert records[name]["parent"].data.metrics["gate.version"] == number
    assert versions[2].tags["gate.decision"] == "promoted", versions[2].description
    assert "| reference | @champion (version 1): " in versions[2].description
    assert "| reference | @champion (version 2): " in versions[3].description
    champion = client.get_model_version_by_alias(NAME, "champion")
    third = versions[3].tags
    better = 3 if third["gate.decision"] == "promoted" else 2
    assert int(champion.version) == better
    assert (float(third["gate.ci_low"]) > float(third["gate.margin"])) == (better == 3)
    print(f"champion: version {champion.version}; version 3 vs 2: score "
          f"{third['gate.score']} vs {third['gate.reference_score']}, interval "
          f"[{third['gate.ci_low']}, {third['gate.ci_high']}], {third['gate.decision']}")

    registering = sorted((rec["stages"]["register"].info.start_time,
                          rec["stages"]["register"].info.end_time) for rec in records.values())
    assert registering[1][0] < registering[0][1], "both registrations were under way at once"
    print(f"both register stages ran at once ({waited:.0f} s to reach them), in turns")

    # `dvc exp show` lists both, each with the version it registered.
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(shown))}
    for name in EXPERIMENTS:
        print(name, {k: rows[name][k] for k in ("State", "gate.version", "gate.promoted",
                                                "gate.reference", "meta_learner.post")
                     if k in rows[name]})
    assert {name: float(rows[name]["gate.version"]) for name in EXPERIMENTS} == {
        name: records[name]["parent"].data.metrics["gate.version"] for name in EXPERIMENTS}
