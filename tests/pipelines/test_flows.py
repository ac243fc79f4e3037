"""The Prefect flow: all five stages under one MLflow parent run, fail-fast config errors,
and a scheduled run served against a real ``prefect server``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from metarl.config import ConfigError
from tests.conftest import assert_gate_consistent

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = ["tasks", "tune", "train", "evaluate", "register"]
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "METARL_NO_PROGRESS": "1",
}
TINY = {
    "task": {"num_train": 6, "num_val": 3, "num_test": 3, "cartpole": {"max_steps": 30}},
    "tune": {"n_trials": 1, "num_iterations": 2, "eval_every": 1, "episodes_per_task": 4},
    "algo": {"maml": {"meta_batch_size": 3, "episodes_per_task": 4}},
    "train": {"num_iterations": 2},
    "evaluate": {"seeds": [0], "num_adapt_steps": 1, "episodes_per_task": 4},
    "tracking": {"uri": "sqlite:///mlflow.db"},  # relative: resolved under the project root
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (_merge(base[key], value) if isinstance(value, dict) and key in base
                    else value)
    return out


def make_project(root: Path, override: dict[str, Any] | None = None) -> Path:
    """A project directory whose params.yaml is the repo's, shrunk to seconds of work."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(_merge(params, TINY), override or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Quiet, offline settings and a throwaway PREFECT_HOME, before Prefect reads them."""
    env = {**QUIET_ENV, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home"))}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    for key in ("PREFECT_API_URL", "METARL_PIPELINE_RUN"):
        patch.delenv(key, raising=False)
    refresh = "prefect.context" in sys.modules  # Prefect reads its settings on import
    if refresh:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    yield env
    patch.undo()
    if refresh:
        refresh_global_settings_context()


@pytest.fixture(scope="module")
def flows(prefect_env: dict[str, str]) -> Iterator[ModuleType]:
    """``pipelines.flows`` against a temporary Prefect server (one for the module)."""
    from prefect.testing.utilities import prefect_test_harness

    import pipelines.flows

    with prefect_test_harness(server_startup_timeout=None):  # None: the 90 s env setting
        yield pipelines.flows


@pytest.mark.slow
def test_flow_runs_all_stages_under_one_parent_run(flows: ModuleType, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    root = make_project(tmp_path / "proj")
    results = flows.run_flow(root)

    assert list(results) == STAGE_NAMES
    json.dumps(results)  # JSON-able
    for rel in ("data/tasks/test.json", "models/maml.pt", "metrics/meta_test.json",
                "metrics/register.json"):
        assert (root / rel).is_file(), rel
    registered = json.loads((root / "metrics/register.json").read_text())
    assert registered == results["register"]
    assert registered["version"] == 1
    assert_gate_consistent(registered)
    assert results["tasks"]["test"] == results["evaluate"]["test_task_hash"]
    assert "METARL_PIPELINE_RUN" not in os.environ  # restored

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    challenger = client.get_model_version_by_alias(registered["model_name"], "challenger")
    assert int(challenger.version) == registered["version"]

    experiment = client.get_experiment_by_name("metarl")
    runs = client.search_runs([experiment.experiment_id])
    stage_runs = {r.data.tags["metarl.stage"]: r for r in runs
                  if r.data.tags.get("metarl.stage") in STAGE_NAMES}
    assert sorted(stage_runs) == sorted(STAGE_NAMES)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in stage_runs.values()}
    assert len(parents) == 1 and None not in parents
    parent = client.get_run(parents.pop())
    # The parent run is keyed by the Prefect flow run's id, and that flow run completed.
    flow_run_id = uuid.UUID(parent.data.tags["metarl.pipeline_key"])
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed()
    task_runs = {t.name for t in prefect_task_runs(flow_run_id)}
    assert task_runs == set(STAGE_NAMES)


def prefect_task_runs(flow_run_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_bad_params_fail_fast_naming_the_key(flows: ModuleType, tmp_path: Path) -> None:
    root = make_project(tmp_path / "bad", {"task": {"num_test": 0}})

    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"task\.num_test"):
        flows.run_flow(root)
    assert time.perf_counter() - start < 5  # checked before a server or a stage starts

    # Run directly (as a served deployment does), the flow checks before any task runs.
    state = flows.pipeline_flow(root=str(root), return_state=True)
    assert state.is_failed()
    assert "task.num_test" in state.message
    with pytest.raises(ConfigError, match=r"task\.num_test"):
        state.result()
    assert not (root / "data").exists()
    assert not (root / "mlflow.db").exists()


def test_retry_only_transient_errors(flows: ModuleType) -> None:
    from prefect.states import Failed

    from pipelines.stages.common import StageError

    def retried(exc: Exception) -> bool:
        return bool(flows._transient(None, None, Failed(data=exc)))

    assert flows.STAGE_TASKS["register"].retries == 2
    assert flows.STAGE_TASKS["train"].retries == 0
    assert retried(ConnectionError("registry down"))
    assert retried(ConfigError("tracking.uri", "http://x", "MLflow server unreachable"))
    assert not retried(ConfigError("task.num_test", 0, "a split needs at least one task"))
    assert not retried(StageError("models/maml.pt: missing"))


def test_serve_needs_a_real_server(flows: ModuleType, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = make_project(tmp_path / "proj")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(RuntimeError, match="prefect server start"):
            flows.serve(root, cron="0 3 * * *")
    with pytest.raises(ValueError, match="cron"):
        flows.serve(root)


# --- a scheduled run, served against a real `prefect server start` --------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prefect server exited:\n{_tail(log)}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{_tail(log)}")


async def _deployment_runs(api_url: str, deployment: str) -> list[Any]:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import ObjectNotFound

    async with PrefectClient(api_url) as client:
        try:
            dep = await client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return []
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


@pytest.mark.slow
def test_served_flow_completes_a_scheduled_run(prefect_env: dict[str, str],
                                               tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(prefect_env)
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL":
            f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_SERVER_UI_ENABLED": "false",
    })
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = serving = None
    try:
        with server_log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                cwd=tmp_path, start_new_session=True)
        _wait_healthy(f"{api_url}/health", server, server_log, timeout=90)

        code = textwrap.dedent(f"""
            from pipelines.flows import serve
            serve({str(root)!r}, None, interval=10, name="metarl-test")
        """)
        with serve_log.open("wb") as out:
            serving = subprocess.Popen(  # from another directory: the entrypoint is a module
                [sys.executable, "-c", code], env={**env, "PREFECT_API_URL": api_url},
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)

        deadline, completed, runs = time.monotonic() + 150, None, []
        while completed is None and time.monotonic() < deadline:
            assert serving.poll() is None, f"serve exited:\n{_tail(serve_log)}"
            runs = asyncio.run(_deployment_runs(api_url, "metarl-pipeline/metarl-test"))
            bad = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
            assert not bad, f"{bad[0].state}\n{_tail(serve_log)}"
            completed = next((r for r in runs if r.state and r.state.is_completed()), None)
            time.sleep(2)
        assert completed is not None, (f"no completed run in 150 s: "
                                       f"{[(r.name, r.state_name) for r in runs]}\n"
                                       f"{_tail(serve_log)}")
        assert completed.state_name == "Completed"
        assert completed.parameters["root"] == str(root)
        assert (root / "metrics" / "register.json").is_file()
        assert json.loads((root / "metrics" / "register.json").read_text())["version"] >= 1
    finally:
        for proc in (serving, server):  # serve first: it pauses its schedule on the server
            if proc is not None:
                _stop(proc)
