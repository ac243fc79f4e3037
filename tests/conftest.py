"""Shared fixtures: quiet, offline tools and a tiny project configuration."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "METARL_NO_PROGRESS": "1",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_key, _value)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_env_restored() -> Any:
    """MLflow exports the URI a test hands to ``mlflow.set_tracking_uri`` as
    ``MLFLOW_TRACKING_URI``, which the stages of later tests would then take for the user's own
    setting (it overrides ``tracking.uri``): put the variable back as it was after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def tiny_params() -> dict[str, Any]:
    """The repo's params.yaml shrunk to a seconds-long run (same keys), with an empty section
    (its embedded defaults) for each family and algorithm the file leaves out, for tests to
    edit."""
    from metarl.algos import registry
    from metarl.families import FAMILIES

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in FAMILIES:
        params["task"].setdefault(name, {})
    for name in registry.algorithms():
        params["algo"].setdefault(name, {})
    params["task"].update(num_train=6, num_val=3, num_test=3)
    params["task"]["cartpole"]["max_steps"] = 30
    params["algo"]["maml"].update(meta_batch_size=3, episodes_per_task=4, hidden_sizes=[8])
    params["algo"]["reptile"].update(meta_batch_size=3, episodes_per_task=4, hidden_sizes=[8],
                                     num_inner_steps=2)
    params["algo"]["es_maml"].update(population_size=2, meta_batch_size=2, episodes_per_task=2,
                                     hidden_sizes=[8])
    params["algo"]["rl2"].update(hidden_size=8, meta_batch_size=3, trials_per_task=2,
                                 num_epochs=2, num_minibatches=2, bptt_length=10)
    params["algo"]["maml_q"].update(meta_batch_size=3, episodes_per_task=3, hidden_sizes=[8],
                                    num_outer_steps=2)
    params["algo"]["pearl"].update(hidden_sizes=[16], encoder_hidden=[16], meta_batch_size=3,
                                   batch_size=16, context_batch=8, num_initial_episodes=2,
                                   num_tasks_sample=2, num_episodes_prior=1,
                                   num_extra_rl_episodes_posterior=1, num_train_steps_per_itr=3,
                                   replay_capacity=200)
    params["algo"]["mql"].update(hidden_sizes=[16], context_hidden=8, history_length=4,
                                 batch_size=24, meta_batch_size=3, updates_per_iteration=3,
                                 random_iterations=1, buffer_size=200, adapt_buffer_size=100,
                                 adapt_steps=3, adapt_batch_size=8, propensity_steps=3)
    params["tune"].update(n_trials=2, num_iterations=2, eval_every=1, episodes_per_task=3)
    params["train"]["num_iterations"] = 2
    params["evaluate"].update(seeds=[0, 1], num_adapt_steps=2, episodes_per_task=3)
    return params


def run_tiny_family(root: Path, family: str, stages: tuple[str, ...] = ("tasks", "train",
                                                                       "evaluate")) -> None:
    """Run ``stages`` in-process for ``family`` on 2 tasks × 2 envs, horizon 20, 1 iteration."""
    from pipelines.runner import run_stage

    params = tiny_params()
    params["task"].update(family=family, num_train=2, num_val=2, num_test=2)
    params["task"][family]["max_steps"] = 20
    params["algo"]["maml"].update(meta_batch_size=2, episodes_per_task=2)
    params["train"]["num_iterations"] = 1
    params["evaluate"].update(seeds=[0], num_adapt_steps=1, episodes_per_task=2)
    write_params(root, params)
    for stage in stages:
        run_stage(stage, root)


def assert_gate_consistent(register: dict[str, Any]) -> None:
    """``metrics/register.json`` of a new version: promoted exactly when the gate says so."""
    low, high = register["ci"]
    assert low <= register["difference"] <= high
    assert register["promoted"] == (low > register["margin"])
    assert register["reference"] in ("champion", "pretrained", "scratch", "random")


def write_params(root: Path, params: dict[str, Any]) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory holding a tiny params.yaml (no git, no DVC)."""
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, tiny_params())
    return root


def imported_modules(path: Path, module_level_only: bool) -> set[str]:
    """Absolute module names a Python file imports (``from a import b`` gives ``a`` and
    ``a.b``); with ``module_level_only``, not the imports inside functions."""
    import ast

    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def copy_repo(dest: Path) -> Path:
    """The tracked files of this repo (as a fresh clone would have them) copied to ``dest``."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL server on loopback for the session (:mod:`pipelines.pgcluster`).

    Skips where PostgreSQL is not installed, except in CI (``CI=true``), where .ci/run installs
    it and a missing server is a failure.
    """
    from pipelines.pgcluster import ClusterError, bindir, throwaway_cluster

    try:
        bindir()
    except ClusterError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(err))
    with throwaway_cluster() as cluster:
        yield cluster


def fresh_database(cluster: Any, prefix: str) -> str:
    """A new database of ``cluster`` named ``<prefix>_<n>``; its URL."""
    fresh_database.count = getattr(fresh_database, "count", 0) + 1  # type: ignore[attr-defined]
    return str(cluster.create_database(f"{prefix}_{fresh_database.count}"))  # type: ignore[attr-defined]


MLFLOW_SERVER_TIMEOUT_S = 120.0


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port; its URL once /health answers."""
    from pipelines.pgcluster import free_port

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + MLFLOW_SERVER_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /health:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
