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

The parent run carries what tells pipeline runs apart in MLflow's runs table: the headline
params (:func:`headline_params`) from its first stage, the headline metrics of
``metrics/summary.json`` once ``register`` has written them (:func:`log_summary`), the git
commit, and for a ``dvc exp run`` the DVC experiment's name (``dvc.experiment``) and baseline
commit. Each stage run lists the task sets it reads as MLflow datasets (:func:`log_task_sets`).

**One store per project.** ``dvc exp run --temp`` and queued experiments run in a temporary
copy of the workspace (``<project>/.dvc/tmp/exps/...``) that DVC deletes afterwards; relative
store paths (``tracking.uri``'s SQLite file, ``tracking.artifact_location``, ``tune.storage``)
resolve against the project the copy was made from (:func:`workspace_root`), so every
experiment's runs, registrations and trials land in the project's own stores. MLflow records
absolute artifact URIs; :func:`relocate_artifacts` points a copied or moved project's SQLite
store back at its own artifact folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metarl.config import ConfigError
from pipelines.settings import PipelineConfig, TrackingSection, redact
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
EXPERIMENT_COPIES = (".dvc", "tmp", "exps")
"""Where DVC runs temporary (``standalone/tmp*``) and queued (``tmp*``) experiments: copies of
the workspace under ``<project>/.dvc/tmp/exps``, deleted once the experiment is saved."""
EXP_NAME_ENV = "DVC_EXP_NAME"
"""Set by DVC for a ``dvc exp run`` (workspace, temporary or queued): the experiment's name."""
EXP_BASELINE_ENV = "DVC_EXP_BASELINE_REV"
"""Set by DVC beside ``DVC_EXP_NAME``: the commit the experiment started from."""
SQLITE = "sqlite:///"
URI_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
               ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
               ("model_versions", "source"))
"""The columns of MLflow's SQL store that hold artifact URIs (see :func:`relocate_artifacts`)."""


def workspace_root(root: Path) -> Path:
    """The project whose stores ``root`` uses: itself, or the one a DVC experiment came from.

    For a temporary or queued experiment's copy (``<project>/.dvc/tmp/exps/...``) that is the
    project it was copied from. DVC exports that directory as ``DVC_ROOT`` to such a run too;
    the path says it without the environment (a stage run by hand in the copy, a Prefect flow
    pointed at it).
    """
    root = root.resolve()
    for parent in root.parents:
        if parent.parts[-len(EXPERIMENT_COPIES):] == EXPERIMENT_COPIES:
            return parent.parent.parent.parent
    return root


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///`` path absolute under ``root``."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + str((root / uri[len(SQLITE):]).resolve())
    return uri


def tracking_uri(tracking: TrackingSection, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set (secrets belong there), else ``tracking.uri``.

    A relative SQLite path is under :func:`workspace_root`.
    """
    return os.environ.get(URI_ENV) or resolve_uri(tracking.uri, workspace_root(root))


def artifact_root(tracking: TrackingSection, root: Path) -> Path:
    """``tracking.artifact_location`` as an absolute path (relative: under the workspace)."""
    location = Path(tracking.artifact_location)
    return (location if location.is_absolute() else workspace_root(root) / location).resolve()


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before any work, when the tracking store cannot be reached.

    Raises:
        ConfigError: naming ``tracking.uri`` (or ``MLFLOW_TRACKING_URI``, where it came from)
            and how to fix it; a password in the URI is shown as ``***``.

    """
    key = URI_ENV if os.environ.get(URI_ENV) else "tracking.uri"
    shown = redact(uri)
    if uri.startswith(SQLITE):
        db = Path(uri[len(SQLITE):])
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
    location = artifact_root(tracking, root)
    server = uri.startswith(("http://", "https://"))
    with store_lock(uri):  # two queued experiments may meet a store that does not exist yet
        experiment = mlflow.get_experiment_by_name(tracking.experiment)
        if experiment is None:
            # a tracking server keeps the artifacts where it is told (--artifacts-destination,
            # proxied to every machine); a local store, under the project
            mlflow.create_experiment(tracking.experiment,
                                     artifact_location=None if server else location.as_uri())
        elif not server and not Path(tracking.artifact_location).is_absolute():
            relocate_artifacts(uri, experiment.artifact_location, location,
                               workspace_root(root))
    mlflow.set_experiment(tracking.experiment)
    return uri


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a ``sqlite:///`` store, an exclusive ``flock`` on the database file while held.

    MLflow creates its tables on first use and the experiment on the first stage; two processes
    doing that at once (``dvc queue start -j 2`` on a fresh project) collide. The lock is on the
    database file itself (created empty if missing: SQLite reads an empty file as an empty
    database), so no file is left beside it; SQLite's own locks are POSIX locks, which an
    ``flock`` does not touch. Any other URI: no lock.
    """
    if not uri.startswith(SQLITE) or sys.platform == "win32":
        yield
        return
    import fcntl

    db = Path(uri[len(SQLITE):])
    with db.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _uri_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI, else None."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    return Path(urllib.request.url2pathname(parsed.path))


def relocate_artifacts(uri: str, recorded: str, location: Path, root: Path) -> int:
    """Point a copied or moved project's SQLite store at the project's own artifact folder.

    MLflow cannot record relative artifact locations: the experiment's artifact root, each
    run's, each logged model's and each model version's are stored as absolute ``file://`` URIs
    (:data:`URI_COLUMNS`). A project copied (``cp -r``) or moved with its ``mlflow.db`` and its
    artifact folder would read, and write, the artifacts of the folder it came from, or find
    none. So when the store is a SQLite file inside the project ``root``, the experiment's
    ``recorded`` root is ``<another folder>/<tracking.artifact_location>`` and ``location`` (the
    same relative path here) exists, every URI under the old root is rewritten to ``location``
    in one transaction. Anything else is left as it is. Returns how many values changed.
    """
    old = _uri_path(recorded)
    if not uri.startswith(SQLITE) or old is None or old == location or not location.is_dir():
        return 0
    db = Path(uri[len(SQLITE):]).resolve()
    relative = location.relative_to(root) if location.is_relative_to(root) else None
    if (relative is None or not db.is_relative_to(root)
            or old.parts[-len(relative.parts):] != relative.parts):
        return 0  # not this project's own store and folder: nothing moved along with it
    old_uri, new_uri = recorded.rstrip("/"), location.as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:  # one transaction
        tables = {name for (name,) in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in URI_COLUMNS:
            if table not in tables or column not in {
                    row[1] for row in con.execute(f"PRAGMA table_info({table})")}:
                continue  # an older schema
            changed += con.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                (new_uri, len(old_uri) + 1, old_uri, len(old_uri) + 1, old_uri + "/")).rowcount
    print(f"tracking: {db} recorded its artifacts under {old}, not this project's {location}; "
          f"{changed} artifact URIs now point there (the project was copied or moved)",
          file=sys.stderr)
    return changed


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
    """Identity of the current pipeline run (see the module docstring).

    A DVC experiment's name is part of it: two experiments with the same params are two runs.
    """
    env = os.environ.get("METARL_PIPELINE_RUN")
    if env:
        return env
    digest = hashlib.sha256(params_path.read_bytes() + git_commit(root).encode()
                            + os.environ.get(EXP_NAME_ENV, "").encode())
    return digest.hexdigest()[:16]


def experiment_tags(root: Path) -> dict[str, str]:
    """The git commit and, under ``dvc exp run``, the DVC experiment's name and baseline."""
    commit = git_commit(root)
    tags = {"git_commit": commit}
    if commit != "unknown":  # MLflow's own column in the runs table
        tags["mlflow.source.git.commit"] = commit
    for key, env in (("dvc.experiment", EXP_NAME_ENV), ("dvc.baseline_rev", EXP_BASELINE_ENV)):
        if os.environ.get(env):
            tags[key] = os.environ[env]
    return tags


def headline_params(config: PipelineConfig) -> dict[str, Any]:
    """What tells pipeline runs apart, for the parent run: family, algorithm, budgets, seeds."""
    t, tune, ev = config.task, config.tune, config.evaluate
    return {"task.family": t.family, "task.seed": t.seed, "task.num_train": t.num_train,
            "task.num_val": t.num_val, "task.num_test": t.num_test,
            "algo.name": config.algo.name, "train.num_iterations": config.train.num_iterations,
            "train.seed": config.train.seed, "train.device": config.train.device,
            "tune.n_trials": tune.n_trials, "tune.num_iterations": tune.num_iterations,
            "tune.sampler": tune.sampler, "tune.pruner": tune.pruner,
            "evaluate.seeds": list(ev.seeds), "evaluate.num_adapt_steps": ev.num_adapt_steps,
            "evaluate.episodes_per_task": ev.episodes_per_task,
            "register.model_name": config.model_name, "register.margin": config.register.margin}


def _parent_run_id(key: str, root: Path, params: dict[str, Any] | None = None) -> str:
    import mlflow

    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    found = mlflow.search_runs([experiment_id] if experiment_id else None,
                               filter_string=f"tags.`metarl.pipeline_key` = '{key}'",
                               max_results=1, output_format="list")
    if found:
        return str(found[0].info.run_id)
    tags = {"metarl.pipeline_key": key, **experiment_tags(root)}
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    name = os.environ.get(EXP_NAME_ENV)
    run_name = f"exp-{name}" if name else f"pipeline-{key[:8]}"
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        if params:
            mlflow.log_params(params)
        return str(run.info.run_id)


def summary_metrics(summary: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """``metrics/summary.json`` flattened: numbers as metrics, strings as tags.

    Keys are dotted (``meta_learner.post``, ``gate.ci_low``); a boolean is 0/1, a string
    (``gate.reference``) a tag.
    """
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for key, value in flatten("", summary).items():
        if isinstance(value, (bool, int, float)):
            metrics[key] = float(value)
        elif isinstance(value, str):
            tags[key] = value
    return metrics, tags


def log_summary(parent_id: str, path: Path) -> dict[str, float]:
    """Put the headline of ``path`` (``metrics/summary.json``) on the parent run.

    The parent run is FINISHED and stays so: its metrics are logged by id. The names are the
    ``dvc exp show`` columns, so MLflow's runs table compares pipeline runs as DVC does.
    Returns the metrics logged (none when the file is missing or unreadable).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    metrics, tags = summary_metrics(summary if isinstance(summary, dict) else {})
    now = int(time.time() * 1000)
    MlflowClient().log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
    return metrics


def log_task_sets(root: Path, splits: Sequence[str]) -> list[str]:
    """Log ``data/tasks/<split>.json`` as MLflow datasets, inputs of the active run.

    One dataset per split: a table with a row per task, named ``<family>-<split>``, its digest
    the task set's content hash, its source the project-relative path, its context the split
    (``train``, ``val``, ``test``). A missing or unreadable file is skipped (the stage itself
    says what is wrong with it). Returns the digests logged.
    """
    import mlflow
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    logged = []
    for split in splits:
        rel = f"data/tasks/{split}.json"
        try:
            data = json.loads((root / rel).read_text())
            digest, family, tasks = str(data["content_hash"]), str(data["family"]), data["tasks"]
            frame = pd.DataFrame(list(tasks))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=rel, name=f"{family}-{split}", digest=digest)
        mlflow.log_input(dataset, context=split, tags={"task_hash": digest})
        logged.append(digest)
    return logged


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
def stage_run(stage: str, params_path: Path, root: Path,
              params: dict[str, Any] | None = None) -> Iterator[Any]:
    """A run named ``stage`` nested under the pipeline's parent run (left as it is).

    ``params``: what a parent run created now records (:func:`headline_params`).
    """
    import mlflow

    end_stale_runs()
    parent_id = _parent_run_id(pipeline_key(params_path, root), root, params)
    tags = {"metarl.stage": stage, **experiment_tags(root),
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
