"""The Prefect flow: stages run through DVC (dvc.lock kept as `dvc repro` keeps it, up-to-date
stages skipped), all under one MLflow parent run; overrides checked like params.yaml before
anything runs; progress in the flow's logs; a Markdown artifact with the meta-test table and the
gate's decision; schedules checked before serving; a scheduled run served against a real
``prefect server``, and the prefect.yaml deployment run by a process worker."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
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
from tests.conftest import assert_gate_consistent, copy_repo

REPO = Path(__file__).resolve().parents[2]
STAGE_NAMES = ["tasks", "tune", "train", "evaluate", "register", "report"]
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "CI": "true",  # no DVC update checks
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
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (_merge(base[key], value) if isinstance(value, dict) and key in base
                    else value)
    return out


def make_project(root: Path, override: dict[str, Any] | None = None) -> Path:
    """A project directory (no DVC) whose params.yaml is the repo's, shrunk to seconds of work."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(_merge(params, TINY), override or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def make_dvc_project(root: Path) -> Path:
    """A git + DVC copy of the repo's tracked files (as a clone has them), tiny params."""
    copy_repo(root)
    make_project(root)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=True)
    return root


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, f"dvc {args}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Quiet, offline settings and a throwaway PREFECT_HOME, before Prefect reads them."""
    env = {**QUIET_ENV, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "DVC_SITE_CACHE_DIR": str(tmp_path_factory.mktemp("dvc-site-cache"))}
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


# --- checked before anything runs ------------------------------------------------------------

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


@pytest.mark.parametrize(("args", "named"), [
    (["--iterations", "0"], "train.num_iterations=0"),
    (["--trials", "-1"], "tune.n_trials=-1"),
    (["--family", "bogus"], "task.family='bogus'"),
    (["--algorithm", "ppo"], "algo.name='ppo'"),
    (["-S", "evaluate.seeds=[]"], "evaluate.seeds="),
    (["-S", "tune.nope=1"], "tune.nope"),             # DVC's -S: a new key needs '+'
    (["-S", "+tune.nope=1"], "tune.nope=1"),         # added, then refused by the schema
    (["-S", "train.num_iterations"], "'train.num_iterations'"),  # no '='
    (["-S", "evaluate.seeds=[0,"], "evaluate.seeds='[0,'"),      # not -S grammar
])
def test_a_bad_override_names_key_and_value_and_changes_nothing(
        prefect_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], named: str) -> None:
    from pipelines.cli import main

    root = make_project(tmp_path / "proj")
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())  # the DVC route's checks
    before = (root / "params.yaml").read_bytes()

    start = time.perf_counter()
    assert main(["flow", "--root", str(root), *args]) == 2
    assert time.perf_counter() - start < 10  # before a Prefect server, DVC or a stage starts

    err = capsys.readouterr().err.strip()
    assert err.startswith("metarl: error: ") and named in err, err
    assert len(err.splitlines()) == 1, err
    assert (root / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_overrides_are_applied_by_dvcs_own_set_param(prefect_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    from pipelines.flows import apply_overrides, override_list

    items = override_list(family="nav2d", iterations=5, trials=0,
                          overrides=["+task.nav2d.max_steps=50", "evaluate.seeds=[0,1]"])
    assert items == ['task.family="nav2d"', "train.num_iterations=5", "tune.n_trials=0",
                     "+task.nav2d.max_steps=50", "evaluate.seeds=[0,1]"]
    root = tmp_path / "proj"
    root.mkdir()
    params = root / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    params.write_text(original)

    text, config = apply_overrides(params, root, items)
    assert params.read_text() == original  # only a copy is changed
    assert text is not None and "# seed of the task sets" in text  # comments kept
    new, old = yaml.safe_load(text), yaml.safe_load(original)
    assert new["task"]["family"] == config.task.family == "nav2d"
    assert new["task"]["nav2d"] == {"max_steps": 50}
    assert new["train"]["num_iterations"] == config.train.num_iterations == 5
    assert new["tune"]["n_trials"] == config.tune.n_trials == 0
    assert new["evaluate"]["seeds"] == [0, 1]
    for section in ("train", "tune", "evaluate"):
        for key in {"train": ["num_iterations"], "tune": ["n_trials"],
                    "evaluate": ["seeds"]}[section]:
            new[section].pop(key)
            old[section].pop(key)
    new["task"].pop("nav2d")
    new["task"]["family"] = old["task"]["family"]
    assert new == old  # nothing else moved

    same = yaml.safe_load(original)["train"]["num_iterations"]
    assert apply_overrides(params, root, [f"train.num_iterations={same}"])[0] is None
    with pytest.raises(ConfigError, match=r"tune\.n_trials"):
        override_list(trials=True)  # type: ignore[arg-type]


def test_a_dvc_project_reads_its_own_params_file(prefect_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    from pipelines.flows import dvc_status, prepare

    root = make_project(tmp_path / "proj")
    other = root / "other.yaml"
    other.write_text((root / "params.yaml").read_text())
    assert not prepare(root, other).use_dvc  # no dvc.yaml: any params file, in-process
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    assert prepare(root).use_dvc
    with pytest.raises(ConfigError, match=r"params=.*other\.yaml.*DVC's stages read"):
        prepare(root, other)
    with pytest.raises(RuntimeError, match=r"git init && dvc init"):
        dvc_status(root)  # a dvc.yaml outside a DVC repository


# --- the stage through DVC: ran, skipped, failed ---------------------------------------------

class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, fmt: str, *args: Any) -> None:
        self.lines.append(fmt % args)


def _set_stage(root: Path, code: str) -> None:
    """A dvc.yaml whose stage ``tasks`` runs ``python -c code`` and writes out.txt."""
    (root / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"tasks": {"cmd": f"python -c {json.dumps(code)}", "outs": ["out.txt"]}}}))


def test_repro_stage_runs_skips_and_classifies_failures(prefect_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    from pipelines.flows import StageFailed, repro_stage

    root = tmp_path / "mini"
    root.mkdir()
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    _set_stage(root, "print('tasks done'); open('out.txt', 'w').write('x')")

    log = _Log()
    assert repro_stage("tasks", root, log) == "ran"
    assert "tasks | tasks done" in log.lines  # the stage's own output, forwarded
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["tasks"]["outs"][0]["md5"] == hashlib.md5(b"x").hexdigest()
    assert repro_stage("tasks", root, _Log()) == "skipped"

    cases = [  # the stage's code, retried?, the reason the error gives
        ("import sys; print('metarl: error: task.num_test=0: needs a task'); sys.exit(2)",
         False, "task.num_test=0: needs a task"),
        ("import sys; print('metarl: error: tracking.uri=http://x: unreachable'); sys.exit(2)",
         True, "tracking.uri=http://x: unreachable"),
        ("raise ConnectionError('registry down')", True, "exited with 1"),  # a crash
    ]
    for code, transient, reason in cases:
        _set_stage(root, code)
        with pytest.raises(StageFailed) as failed:
            repro_stage("tasks", root, _Log())
        assert failed.value.transient is transient, code
        assert failed.value.stage == "tasks"
        first, *rest = str(failed.value).splitlines()
        assert first.startswith("stage 'tasks' failed: ") and reason in first, first
        assert rest[0] == "--- its output ends:"
        assert any("failed to reproduce 'tasks'" in line for line in rest), rest

    (root / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"tasks": {"cmd": "true", "deps": ["missing.txt"]}}}))
    with pytest.raises(StageFailed) as failed:  # DVC refuses before running: no retry
        repro_stage("tasks", root, _Log())
    assert not failed.value.transient
    assert "missing.txt" in str(failed.value)


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
    assert retried(flows.StageFailed("register", "registry down", ["..."], transient=True))
    assert not retried(flows.StageFailed("register", "bad", ["..."], transient=False))


def test_artifact_has_the_table_and_the_gate(prefect_env: dict[str, str],
                                             tmp_path: Path) -> None:
    from pipelines.flows import artifact_markdown, prepare

    root = make_project(tmp_path / "proj")
    (root / "reports").mkdir()
    table = "| learner | after 0 steps |\n|---|---|\n| maml | 22.4 [20.8, 25.5] |"
    (root / "reports" / "meta_test.md").write_text(f"# Meta-test\n\n{table}\n")
    register = {"model_name": "metarl-cartpole-maml", "version": 3, "promoted": True,
                "reason": "promoted to @champion: beats the champion", "score": 0.61,
                "reference": "champion", "reference_score": 0.5, "difference": 0.11,
                "ci": [0.05, 0.17], "level": 0.95, "margin": 0.02, "units": "normalized",
                "champion_version_before": 2, "reused_version": False}
    outcomes = {name: {"status": "skipped", "seconds": 0.7, "result": {}}
                for name in STAGE_NAMES}
    outcomes["register"] = {"status": "ran", "seconds": 9.5, "result": register}

    text = artifact_markdown(prepare(root, overrides=["train.num_iterations=2"]), outcomes)
    assert table in text
    assert "## Gate decision: **promoted** to @champion" in text
    assert "`metarl-cartpole-maml` version 3" in text and "[0.05, 0.17]" in text
    assert "| register | ran | 9.5 |" in text and "| tasks | skipped: up to date | 0.7 |" in text
    assert "`train.num_iterations=2`" in text


# --- schedules ---------------------------------------------------------------------------------

def test_serve_needs_a_real_server(flows: ModuleType, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = make_project(tmp_path / "proj")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(RuntimeError, match="prefect server start"):
            flows.serve(root, cron="0 3 * * *")
    with pytest.raises(ValueError, match="cron"):
        flows.serve(root)


@pytest.mark.parametrize(("cron", "interval", "named"), [
    ("61 * * * *", None, "cron='61 * * * *'"),
    ("every night", None, "cron='every night'"),
    (None, 0, "interval=0"),
    (None, -60, "interval=-60"),
    (None, float("nan"), "interval=nan"),
    ("0 3 * * *", 60, "not both"),
])
def test_a_bad_schedule_is_one_line_naming_it(prefect_env: dict[str, str], cron: str | None,
                                              interval: float | None, named: str) -> None:
    from pipelines.flows import check_schedule

    with pytest.raises(ValueError) as err:
        check_schedule(cron, interval)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert "validation error" not in str(err.value)  # not pydantic's
    check_schedule("0 3 * * *", None)
    check_schedule(None, 3600)


@pytest.mark.parametrize(("args", "named"), [
    (["--cron", "61 * * * *"], "cron='61 * * * *'"), (["--interval", "0"], "interval=0.0")])
def test_serve_refuses_a_bad_schedule_with_exit_2(
        prefect_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], named: str) -> None:
    from pipelines.cli import main

    root = make_project(tmp_path / "proj")
    assert main(["serve", "--root", str(root), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metarl: error: serve: ") and named in err and "\n" not in err, err


# --- prefect.yaml -----------------------------------------------------------------------------

def test_prefect_yaml_deploys_the_flow_with_its_parameters(prefect_env: dict[str, str]) -> None:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    from pipelines.flows import OVERRIDE_NAMES, pipeline_flow

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment,) = spec["deployments"]
    assert deployment["name"] == "metarl-pipeline"
    assert deployment["work_pool"]["name"] == "metarl-process"
    assert spec.get("pull") is None  # `prefect deploy` points runs at the project directory
    path, name = deployment["entrypoint"].split(":")
    loaded: Any = load_flow_from_entrypoint(f"{REPO / path}:{name}")
    assert loaded.name == pipeline_flow.name == "metarl-pipeline"

    signature = inspect.signature(pipeline_flow.fn).parameters
    assert deployment["parameters"] == {k: p.default for k, p in signature.items()}
    schema = parameter_schema(pipeline_flow.fn).model_dump()["properties"]
    for key in ("root", *OVERRIDE_NAMES):  # the UI shows what each one does
        assert schema[key].get("description"), key


# --- end to end: the flow through DVC ---------------------------------------------------------

@pytest.fixture(scope="module")
def dvc_flow_run(flows: ModuleType,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One flow run (tuning off, by an override) in a fresh git + DVC copy of the repo."""
    root = make_dvc_project(tmp_path_factory.mktemp("dvc") / "repo")
    return root, flows.run_flow(root, trials=0)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _lock_outs(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", []) if "md5" in out}


def _flow_run_logs(flow_run_id: uuid.UUID, last: str | None = None,
                   timeout: float = 30.0) -> list[str]:
    """The run's log messages; with ``last``, waiting (up to ``timeout`` s) until one starts
    with it — Prefect ships logs in the background, so the last lines may arrive after the run
    ended on a loaded machine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[flow_run_id])))
        messages = [log.message for log in logs]
        if (last is None or any(m.startswith(last) for m in messages)
                or time.monotonic() > deadline):
            return messages
        time.sleep(0.5)


def prefect_task_runs(flow_run_id: uuid.UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _stage_runs(root: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metarl")
    assert experiment is not None
    return [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("metarl.stage") in STAGE_NAMES]


@pytest.mark.slow
def test_flow_runs_the_stages_through_dvc(dvc_flow_run: tuple[Path, dict[str, Any]]) -> None:
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    root, results = dvc_flow_run
    assert list(results) == STAGE_NAMES
    json.dumps(results)  # JSON-able
    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(STAGE_NAMES,
                                                                                "ran")

    # The override is in params.yaml, and DVC recorded the same value.
    assert yaml.safe_load((root / "params.yaml").read_text())["tune"]["n_trials"] == 0
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["tune"]["params"]["params.yaml"]["tune"]["n_trials"] == 0
    # DVC's view is true: nothing to do, the lock's hashes are the files', and `dvc repro`
    # leaves the lock as the flow wrote it.
    assert json.loads(dvc(root, "status", "--json").stdout or "{}") == {}
    outs = _lock_outs(root)
    for rel in ("metrics/register.json", "metrics/meta_test.json", "reports/meta_test.md",
                "tuning/best_params.yaml", "metrics/summary.json"):
        assert outs[rel] == _md5(root / rel), rel
    before = (root / "dvc.lock").read_bytes()
    repro = dvc(root, "repro")
    assert "Running stage" not in repro.stdout + repro.stderr
    assert (root / "dvc.lock").read_bytes() == before

    registered = json.loads((root / "metrics/register.json").read_text())
    assert registered == results["register"]["result"]
    assert registered["version"] == 1
    assert_gate_consistent(registered)
    assert results["tasks"]["result"]["test"] == results["evaluate"]["result"]["test_task_hash"]
    assert "METARL_PIPELINE_RUN" not in os.environ  # restored

    # One MLflow parent run, keyed by the Prefect flow run (passed on to the DVC processes).
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    challenger = client.get_model_version_by_alias(registered["model_name"], "challenger")
    assert int(challenger.version) == registered["version"]
    stage_runs = {r.data.tags["metarl.stage"]: r for r in _stage_runs(root)}
    assert sorted(stage_runs) == sorted(STAGE_NAMES)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in stage_runs.values()}
    assert len(parents) == 1 and None not in parents
    parent = client.get_run(parents.pop())
    flow_run_id = uuid.UUID(parent.data.tags["metarl.pipeline_key"])
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["metarl-meta-test"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert flow_run.state is not None and flow_run.state.is_completed()
    assert {t.name for t in prefect_task_runs(flow_run_id)} == set(STAGE_NAMES)

    # Progress in the flow run's logs: each stage, DVC's own lines, the headline, the gate.
    logs = _flow_run_logs(flow_run_id, last="gate: ")
    for name in STAGE_NAMES:
        assert f"{name}: started" in logs
        assert any(line.startswith(f"{name}: ran (") for line in logs), name
        assert f"{name} | Running stage '{name}':" in logs
    assert any(line.startswith("params: tune.n_trials=0 written into") for line in logs)
    assert f"gate: {registered['model_name']} version 1: " in "\n".join(logs)

    # The artifact: the meta-test table as evaluate wrote it, and the gate's decision.
    markdown = str(artifact.data)
    assert (root / "reports/meta_test.md").read_text().strip() in markdown
    decision = "**promoted**" if registered["promoted"] else "**not promoted**"
    assert f"## Gate decision: {decision}" in markdown
    assert f"`{registered['model_name']}` version 1" in markdown
    assert "| train | ran |" in markdown


@pytest.mark.slow
def test_a_second_flow_run_skips_every_stage(flows: ModuleType,
                                             dvc_flow_run: tuple[Path, dict[str, Any]]) -> None:
    root, _ = dvc_flow_run
    lock, runs = (root / "dvc.lock").read_bytes(), len(_stage_runs(root))

    results = flows.run_flow(root, trials=0)

    assert {name: r["status"] for name, r in results.items()} == dict.fromkeys(STAGE_NAMES,
                                                                                "skipped")
    assert results["register"]["result"]["version"] == 1  # reported from the workspace
    assert (root / "dvc.lock").read_bytes() == lock
    assert len(_stage_runs(root)) == runs  # no stage ran, so no new MLflow run
    assert json.loads(dvc(root, "status", "--json").stdout or "{}") == {}


# --- a real `prefect server start`: a served schedule, a deployment on a process worker -------

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


@pytest.fixture(scope="module")
def prefect_server(prefect_env: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `prefect server start` on loopback; yields the environment that points at it."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(prefect_env)
    env.update({
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
        "PREFECT_SERVER_UI_ENABLED": "false",
    })
    log = tmp / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            start_new_session=True)
    try:
        api_url = f"http://127.0.0.1:{port}/api"
        _wait_healthy(f"{api_url}/health", server, log, timeout=90)
        yield {**env, "PREFECT_API_URL": api_url}
    finally:
        _stop(server)


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


async def _run_logs(api_url: str, flow_run_id: uuid.UUID) -> list[str]:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with PrefectClient(api_url) as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[flow_run_id])))
    return [log.message for log in logs]


@pytest.mark.slow
def test_served_flow_completes_a_scheduled_run(prefect_server: dict[str, str],
                                               tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj")  # no dvc.yaml: the stages run in-process
    api_url = prefect_server["PREFECT_API_URL"]
    serve_log = tmp_path / "serve.log"
    serving = None
    try:
        code = textwrap.dedent(f"""
            from pipelines.flows import serve
            serve({str(root)!r}, None, interval=10, name="metarl-test", iterations=1)
        """)
        with serve_log.open("wb") as out:
            serving = subprocess.Popen(  # from another directory: the entrypoint is a module
                [sys.executable, "-c", code], env=prefect_server, stdout=out,
                stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)

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
        assert completed.parameters["iterations"] == 1  # serve's overrides: the defaults
        assert yaml.safe_load((root / "params.yaml").read_text())["train"]["num_iterations"] == 1
        assert json.loads((root / "metrics" / "register.json").read_text())["version"] >= 1
    finally:
        if serving is not None:  # before the server: it pauses its schedule there
            _stop(serving)


@pytest.mark.slow
def test_prefect_yaml_deployment_runs_on_a_process_worker(
        prefect_server: dict[str, str], dvc_flow_run: tuple[Path, dict[str, Any]],
        tmp_path: Path) -> None:
    """README's steps: create the pool, `prefect deploy --all`, run with a parameter, worker."""
    root, _ = dvc_flow_run  # up to date: the run's override reruns evaluate and register only
    (root / "prefect.yaml").write_text((REPO / "prefect.yaml").read_text())
    api_url = prefect_server["PREFECT_API_URL"]

    def prefect(*args: str, timeout: float = 120) -> str:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=root,
                                env={**prefect_server, "PWD": str(root)}, capture_output=True,
                                text=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"prefect {args}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    prefect("work-pool", "create", "metarl-process", "--type", "process")
    prefect("--no-prompt", "deploy", "--all")
    prefect("deployment", "run", "metarl-pipeline/metarl-pipeline", "-p",
            'overrides=["evaluate.episodes_per_task=3"]')
    prefect("worker", "start", "--pool", "metarl-process", "--run-once", timeout=300)

    (run,) = asyncio.run(_deployment_runs(api_url, "metarl-pipeline/metarl-pipeline"))
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters["root"] == "."  # the deployment's working directory: the project
    assert run.parameters["overrides"] == ["evaluate.episodes_per_task=3"]
    logs = asyncio.run(_run_logs(api_url, run.id))
    for name in ("tasks", "tune", "train"):
        assert any(line.startswith(f"{name}: skipped: up to date (") for line in logs), name
    for name in ("evaluate", "register"):
        assert any(line.startswith(f"{name}: ran (") for line in logs), name
    assert yaml.safe_load((root / "params.yaml").read_text())["evaluate"][
        "episodes_per_task"] == 3
    assert json.loads(dvc(root, "status", "--json").stdout or "{}") == {}
    assert json.loads((root / "metrics/register.json").read_text())["version"] == 2
