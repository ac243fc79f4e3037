"""MLflow run statuses tell the truth: failed stages FAILED, killed ones KILLED, and a later
failure never flips a finished pipeline run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from tests.conftest import REPO, tiny_params, write_params


def _runs(root: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metarl")
    return list(client.search_runs([experiment.experiment_id]))


def _by_stage(root: Path, stage: str) -> list:
    return sorted((r for r in _runs(root) if r.data.tags.get("metarl.stage") == stage),
                  key=lambda r: r.info.start_time)


@pytest.mark.slow
def test_failed_and_killed_stages_and_the_parent_run(project: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    params = tiny_params()
    params["tune"]["n_trials"] = 0
    params["train"].update(num_iterations=200, checkpoint_every=1)
    params["task"]["cartpole"]["max_steps"] = 100
    write_params(project, params)
    assert main(["stage", "tasks", "--root", str(project)]) == 0
    (tasks_run,) = _by_stage(project, "tasks")
    parent_id = tasks_run.data.tags["mlflow.parentRunId"]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert tasks_run.info.status == "FINISHED"
    assert tasks_run.data.tags["metarl.pid"] == str(os.getpid())

    # A failing stage: its own run FAILED, the finished pipeline run stays FINISHED.
    assert main(["stage", "register", "--root", str(project)]) == 2
    (register_run,) = _by_stage(project, "register")
    assert register_run.info.status == "FAILED"
    assert register_run.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"

    # kill -9 during train: its run is left RUNNING (nothing can end it) with a trial-like
    # child run; the next stage that starts ends both as KILLED.
    env = {**os.environ, "METARL_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stage", "train", "--root",
                             str(project)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        state = project / "train_state" / "maml.pt"
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (train_run,) = _by_stage(project, "train")
    assert train_run.info.status == "RUNNING"
    child = client.create_run(train_run.info.experiment_id,
                              tags={"mlflow.parentRunId": train_run.info.run_id,
                                    "metarl.stage": "tune-trial"})
    unrelated = client.create_run(train_run.info.experiment_id)  # no owner: not judged
    assert main(["stage", "tasks", "--root", str(project)]) == 0
    assert client.get_run(train_run.info.run_id).info.status == "KILLED"
    assert client.get_run(child.info.run_id).info.status == "KILLED"
    assert client.get_run(unrelated.info.run_id).info.status == "RUNNING"
    assert client.get_run(parent_id).info.status == "FINISHED"
