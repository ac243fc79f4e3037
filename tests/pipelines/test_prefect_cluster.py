"""prefect-cluster.yaml on real services: a ``prefect server``, a process work pool, two
workers, an MLflow server and Optuna on PostgreSQL. Two flow runs with different parameters run
at once, one per worker, each in its own clone of the project, and both land in the one MLflow
store and the one Optuna database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

from pipelines.stages import register, tune
from tests.conftest import fresh_database, mlflow_server
from tests.pipelines.test_flows import (
    _deployment_runs,
    _stop,
    _tail,
    make_dvc_project,
    prefect_env,  # noqa: F401  (a fixture prefect_server uses)
    prefect_server,  # noqa: F401
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RUNS = {"maml": "cartpole", "reptile": "cartpole"}
TIMEOUT_S = 420.0


def test_two_workers_run_two_flow_runs_at_once_into_one_store(
        prefect_server: dict[str, str], postgres: Any, tmp_path: Path) -> None:  # noqa: F811
    repo = make_dvc_project(tmp_path / "repo")  # the project's git repository, tiny params
    assert (repo / "prefect-cluster.yaml").read_text() == (
        REPO / "prefect-cluster.yaml").read_text()  # committed with the rest
    optuna_url = fresh_database(postgres, "flows_optuna")
    with mlflow_server(fresh_database(postgres, "flows_mlflow"), tmp_path / "artifacts",
                       tmp_path / "mlflow.log") as tracking:
        env = {**prefect_server, "METARL_REPOSITORY": str(repo), "MLFLOW_TRACKING_URI": tracking,
               tune.STORAGE_ENV: optuna_url, register.REGISTRY_LOCK_ENV: optuna_url,
               "METARL_NUM_THREADS": "1", "PWD": str(repo)}
        api_url = prefect_server["PREFECT_API_URL"]

        def prefect(*args: str) -> str:
            result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=repo, env=env,
                                    capture_output=True, text=True, timeout=120, check=False)
            assert result.returncode == 0, f"prefect {args}:\n{result.stdout}\n{result.stderr}"
            return result.stdout

        prefect("work-pool", "create", "metarl-cluster", "--type", "process")
        prefect("--no-prompt", "deploy", "--all", "--prefect-file", "prefect-cluster.yaml")
        for algorithm, family in RUNS.items():
            prefect("deployment", "run", "metarl-pipeline/metarl-cluster", "-p",
                    f"family={family}", "-p", f"algorithm={algorithm}", "-p", "trials=2")
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = []
        for i, log in enumerate(logs):
            with log.open("wb") as out:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool",
                     "metarl-cluster", "--limit", "1", "--name", f"worker-{i}"],
                    cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True))
        try:
            deadline, runs = time.monotonic() + TIMEOUT_S, []
            while time.monotonic() < deadline:
                runs = asyncio.run(_deployment_runs(api_url, "metarl-pipeline/metarl-cluster"))
                if all(r.state and r.state.is_final() for r in runs):
                    break
                time.sleep(2)
        finally:
            for proc in workers:
                _stop(proc)
        tails = "\n".join(_tail(log) for log in logs)
        assert len(runs) == 2 and all(r.state and r.state.is_completed() for r in runs), (
            f"{[(r.parameters, r.state_name) for r in runs]}\n{tails}")

        # at once: each run started before the other ended, each on a worker of its own
        (a, b) = runs
        assert a.start_time < b.end_time and b.start_time < a.end_time
        texts = [_tail(log, 10**6) for log in logs]
        ran_by = {str(r.id): [i for i, text in enumerate(texts)
                              if f"submitting flow run '{r.id}'" in text
                              and f"Aborted submission of flow run '{r.id}'" not in text]
                  for r in runs}
        assert sorted(ran_by.values()) == [[0], [1]], (ran_by, tails)
        # each in its own clone: the repository's own checkout was not touched
        assert not (repo / "metrics" / "register.json").exists()

        # both land in the one Optuna database and the one MLflow store and registry
        storage = optuna.storages.RDBStorage(optuna_url)
        studies = sorted(optuna.get_all_study_names(storage))
        assert [name.split("-")[0] for name in studies] == sorted(RUNS)
        for name in studies:
            done = optuna.load_study(study_name=name, storage=storage).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,))
            assert len(done) == 2, name
        client = MlflowClient(tracking)
        for algorithm, family in RUNS.items():
            (version,) = client.search_model_versions(f"name='metarl-{family}-{algorithm}'")
            assert version.source.startswith(("models:/", "mlflow-artifacts:"))
        assert os.listdir(tmp_path / "artifacts")
