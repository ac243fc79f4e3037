"""The pipeline against real shared services on loopback: an MLflow tracking server on
PostgreSQL with proxied artifacts, the registration lock as a PostgreSQL advisory lock, and two
registrations at once that take turns, so ``@champion`` ends where a serial order puts it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from metarl.checkpoint import load_learner
from pipelines.runner import run_stage
from pipelines.stages import register
from pipelines.stages.common import StageError
from tests.conftest import REPO, fresh_database, mlflow_server, tiny_params, write_params

pytestmark = pytest.mark.slow  # real servers: tens of seconds

TIMEOUT_S = 120.0
NAME = "metarl-cartpole-maml"


def _register_in_process(root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stage", "register",
                             "--root", str(root)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_registry_lock_on_postgresql_is_exclusive_and_dies_with_its_holder(
        postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = fresh_database(postgres, "lock")
    monkeypatch.setenv(register.REGISTRY_LOCK_ENV, url)
    with register.registry_lock("http://127.0.0.1:5000", timeout=1) as held:
        assert held == f"PostgreSQL advisory lock {register.REGISTRY_LOCK_NAME!r}"
        with pytest.raises(StageError, match="another registration has held"):
            with register.registry_lock("http://127.0.0.1:5000", timeout=0.3):
                pass
    with register.registry_lock("http://127.0.0.1:5000", timeout=0.3):
        pass  # released on exit
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom pipelines.stages.register import "
         "registry_lock\nwith registry_lock('http://x'):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n"], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, register.REGISTRY_LOCK_ENV: url})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StageError, match="another registration"):
            with register.registry_lock("http://x", timeout=0.3):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with register.registry_lock("http://x", timeout=10):
            pass  # the server dropped the dead session's lock
    finally:
        if holder.poll() is None:
            holder.kill()
    monkeypatch.setenv(register.REGISTRY_LOCK_ENV, "mysql://somewhere/db")
    with pytest.raises(StageError, match=r"METARL_REGISTRY_LOCK=.*PostgreSQL advisory lock"):
        with register.registry_lock("http://x"):
            pass


def test_pipeline_on_an_mlflow_server_on_postgresql_and_registrations_take_turns(
        postgres: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = fresh_database(postgres, "mlflow")
    lock_url = fresh_database(postgres, "locks")
    artifacts = tmp_path / "artifacts"
    with mlflow_server(backend, artifacts, tmp_path / "server.log") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
        monkeypatch.setenv(register.REGISTRY_LOCK_ENV, lock_url)
        projects = []
        for seed in (0, 1):
            root = tmp_path / f"p{seed}"
            root.mkdir()
            params = tiny_params()
            params["tune"]["n_trials"] = 0
            params["train"]["seed"] = seed
            write_params(root, params)
            for stage in ("tasks", "tune", "train", "evaluate"):
                run_stage(stage, root)
            projects.append(root)
        assert not (tmp_path / "p0" / "mlflow.db").exists(), "nothing went to a local store"

        # Both registrations wait on the lock the test holds, then go at once: they must take
        # turns, so the second one's gate sees the first one's outcome.
        env = {**os.environ, "METARL_NO_PROGRESS": "1"}
        with register.registry_lock(server, timeout=5):
            procs = [_register_in_process(root, env) for root in projects]
            time.sleep(3.0)
            assert all(p.poll() is None for p in procs), "registrations did not wait"
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        results = [json.loads((root / "metrics/register.json").read_text())
                   for root in projects]

        client = MlflowClient()
        champion = client.get_model_version_by_alias(NAME, "champion") if any(
            r["promoted"] for r in results) else None

        def after(r: dict[str, Any]) -> int | None:
            return r["version"] if r["promoted"] else r["champion_version_before"]

        orders = [(a, b) for a, b in (results, results[::-1])
                  if b["champion_version_before"] == after(a)]
        assert orders, f"no serial order explains the two gates: {results}"
        final = after(orders[0][1])
        assert (None if champion is None else int(champion.version)) == final

        # The model loads from the server (artifacts proxied) and serves as the checkpoint.
        version = results[0]["version"]
        mv = client.get_model_version(NAME, str(version))
        assert mv.source.startswith(("models:/", "mlflow-artifacts:")), mv.source
        assert any(artifacts.rglob("MLmodel")), "the artifacts live at the server's destination"
        # a fresh directory: nothing local to read
        shutil.rmtree(tmp_path / "p1" / "mlartifacts", ignore_errors=True)
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
        ckpt = json.loads((projects[0] / "models/maml.json").read_text())
        learner = load_learner(projects[0] / "models/maml.pt", ckpt)
        obs = np.random.default_rng(0).normal(size=(5, int(ckpt["obs_dim"]))).astype(np.float32)
        np.testing.assert_array_equal(model.predict(obs), learner.serve({"obs": obs}))
