"""MLflow tracking: one parent run per pipeline run, a nested run per stage and per trial.

A pipeline run is identified by ``METARL_PIPELINE_RUN`` when set (the Prefect flow sets it to
its flow-run id) and otherwise by a hash of params.yaml and the git commit, so the stages that
one ``dvc repro`` runs as separate processes all nest under the same parent run.

The parent run is a container: it is created FINISHED and a stage never reopens it, so a stage
that fails later (a rerun of ``register``, say) marks its own run FAILED without flipping a
finished pipeline run. Each stage run records its owner (``metarl.host``, ``metarl.pid``);
a stage killed outright (``kill -9``) cannot end its run, so the next stage that starts ends
every RUNNING run whose owner process is gone — and the RUNNING runs nested under it, such as
its tuning trials — as KILLED.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metarl.config import ConfigError
from pipelines.settings import TrackingSection, redact
from pipelines.workers import Worker

URI_ENV = "MLFLOW_TRACKING_URI"

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "GIT_PYTHON_REFRESH": "quiet",
}
PACKAGES = ("metarl", "torch", "numpy", "gymnasium", "mlflow", "optuna", "prefect", "dvc")


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///`` path absolute under ``root``."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def tracking_uri(tracking: TrackingSection, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set (secrets belong there), else ``tracking.uri``."""
    return os.environ.get(URI_ENV) or resolve_uri(tracking.uri, root)


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before any work, when the tracking store cannot be reached.

    Raises:
        ConfigError: naming ``tracking.uri`` (or ``MLFLOW_TRACKING_URI``, where it came from)
            and how to fix it; a password in the URI is shown as ``***``.

    """
    key = URI_ENV if os.environ.get(URI_ENV) else "tracking.uri"
    shown = redact(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise ConfigError(key, shown, f"directory {db.parent} does not exist or is "
                              f"not writable; create it or point {key} elsewhere")
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = redact(str(getattr(err, "reason", err)))
            raise ConfigError(key, shown, f"MLflow server unreachable ({reason}); start "
                              "it (`mlflow server --host 127.0.0.1 --port 5000`) or fix "
                              f"{key}") from None


def setup(tracking: TrackingSection, root: Path) -> str:
    """Point MLflow at the configured store and experiment; return the resolved URI."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import mlflow

    uri = tracking_uri(tracking, root)
    check_tracking_uri(uri)
    user_value = os.environ.get(URI_ENV)
    mlflow.set_tracking_uri(uri)
    # MLflow also exports the URI as MLFLOW_TRACKING_URI; that variable is the user's own
    # setting here (it overrides params.yaml), so put it back as it was.
    if user_value is None:
        os.environ.pop(URI_ENV, None)
    if mlflow.get_experiment_by_name(tracking.experiment) is None:
        location = Path(tracking.artifact_location)
        location = location if location.is_absolute() else root / location
        mlflow.create_experiment(tracking.experiment, artifact_location=location.resolve().as_uri())
    mlflow.set_experiment(tracking.experiment)
    return uri


def git_commit(root: Path) -> str:
    """HEAD's commit, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def pipeline_key(params_path: Path, root: Path) -> str:
    """Identity of the current pipeline run (see the module docstring)."""
    env = os.environ.get("METARL_PIPELINE_RUN")
    if env:
        return env
    digest = hashlib.sha256(params_path.read_bytes() + git_commit(root).encode())
    return digest.hexdigest()[:16]


def _parent_run_id(key: str, root: Path) -> str:
    import mlflow

    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    found = mlflow.search_runs([experiment_id] if experiment_id else None,
                               filter_string=f"tags.`metarl.pipeline_key` = '{key}'",
                               max_results=1, output_format="list")
    if found:
        return str(found[0].info.run_id)
    tags = {"metarl.pipeline_key": key, "git_commit": git_commit(root)}
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    with mlflow.start_run(run_name=f"pipeline-{key[:8]}", tags=tags) as run:
        return str(run.info.run_id)


def owner_tags() -> dict[str, str]:
    """Which process owns a run: ``metarl.host``, ``metarl.pid``, ``metarl.started``."""
    return {f"metarl.{k}": v for k, v in Worker.current().as_strings().items()}


def end_stale_runs() -> list[str]:
    """End as KILLED the RUNNING runs of the experiment whose owner process has died.

    Only owners on this host are judged (their pid says nothing elsewhere); runs nested under
    a stale run go with it. Returns the ids ended.
    """
    import mlflow
    from mlflow import MlflowClient

    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    if experiment_id is None:
        return []
    running = mlflow.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                 output_format="list")
    stale = set()
    for r in running:
        tags = r.data.tags
        owner = Worker.from_strings(tags.get("metarl.host"), tags.get("metarl.pid"),
                                    tags.get("metarl.started"))
        if owner is not None and owner.is_gone():
            stale.add(r.info.run_id)
    grew = True
    while grew:  # children of stale runs, at any depth
        more = {r.info.run_id for r in running
                if r.data.tags.get("mlflow.parentRunId") in stale} - stale
        stale |= more
        grew = bool(more)
    client = MlflowClient()
    for run_id in sorted(stale):
        client.set_terminated(run_id, status="KILLED")
    return sorted(stale)


@contextmanager
def stage_run(stage: str, params_path: Path, root: Path) -> Iterator[Any]:
    """A run named ``stage`` nested under the pipeline's parent run (left as it is)."""
    import mlflow

    end_stale_runs()
    parent_id = _parent_run_id(pipeline_key(params_path, root), root)
    tags = {"metarl.stage": stage, "git_commit": git_commit(root),
            "mlflow.parentRunId": parent_id, **owner_tags()}
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        yield run


def flatten(prefix: str, data: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"prefix.a.b": 1}`` for ``log_params``."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: data}


class MlflowLogger:
    """:class:`metarl.logging.MetricLogger` that logs to the active run and ticks a progress bar."""

    def __init__(self, total: int, description: str, prefix: str = "") -> None:
        from tqdm.auto import tqdm

        self.prefix = prefix
        self.bar = tqdm(total=total, desc=description, unit="it",
                        disable=os.environ.get("METARL_NO_PROGRESS") == "1")
        self.last: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` and show the returns on the bar."""
        import mlflow

        metrics = {f"{self.prefix}{k}": v for k, v in metrics.items()}
        mlflow.log_metrics(metrics, step=step)
        self.last = metrics
        shown = {k.rsplit("/", 1)[-1]: f"{v:.1f}" for k, v in metrics.items() if "return" in k}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
