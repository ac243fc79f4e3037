"""The pipeline as a Prefect 3 flow: one task per stage, run locally or served on a schedule.

Each task only calls :func:`pipelines.runner.run_stage`, the same code path as
``metarl stage`` and ``dvc repro``; the flow adds ordering, retries, run history and
scheduling. All stages of one flow run nest under one MLflow parent run, keyed by the Prefect
flow-run id (``METARL_PIPELINE_RUN``).

- :func:`run_flow` runs it once, here. Without ``PREFECT_API_URL``, Prefect starts a temporary
  local server for the run (several seconds the first time).
- :func:`serve` schedules it (cron or interval) on a real Prefect server and runs the scheduled
  runs until interrupted. Prefect's temporary server has no scheduler, so this needs
  ``prefect server start`` (it works offline on 127.0.0.1) and ``PREFECT_API_URL``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.deployments.runner import EntrypointType
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import State

from metarl.config import ConfigError
from pipelines import tracking
from pipelines.runner import STAGES, run_stage
from pipelines.settings import load_project_config
from pipelines.stages.common import StageError

PIPELINE_RUN_ENV = "METARL_PIPELINE_RUN"
"""Environment variable that keys the MLflow parent run (see :mod:`pipelines.tracking`)."""

ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
"""Set by :func:`run_flow` unless already set: no analytics (offline machines), and time for
the temporary server to start on 2 busy cores (Prefect's default is 20 s)."""

RETRIES = {"register": 2}
"""Retries per stage. Only ``register`` talks to the tracking server and registry; the other
stages are deterministic compute, so a failure there would only fail again."""

RETRY_DELAY_SECONDS = 10
"""Wait before a retry."""

SERVER_HINT = ("start one with `prefect server start` (it works offline on 127.0.0.1) and "
               "export PREFECT_API_URL=http://127.0.0.1:4200/api")


def _transient(_task: Task[..., Any], _task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: not for errors that would repeat (bad config, missing inputs)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # unreadable result: retry, as Prefect would
            return True
    if isinstance(exc, ConfigError):
        return exc.key == "tracking.uri"  # an unreachable tracking server may come back
    return not isinstance(exc, StageError)


def _jsonable(result: Any) -> dict[str, Any]:
    """Return a stage's result as a JSON-able dict (non-JSON values become strings)."""
    data = json.loads(json.dumps(result, default=str))
    return data if isinstance(data, dict) else {"result": data}


def _stage_task(name: str) -> Task[[str, str], dict[str, Any]]:
    def run(root: str, params: str) -> dict[str, Any]:
        return _jsonable(run_stage(name, root, params))

    run.__name__ = run.__qualname__ = f"stage_{name}"
    run.__doc__ = f"Run pipeline stage ``{name}``."
    return task(name=name, task_run_name=name, retries=RETRIES.get(name, 0),
                retry_delay_seconds=RETRY_DELAY_SECONDS, retry_condition_fn=_transient,
                cache_policy=NO_CACHE, persist_result=False)(run)


STAGE_TASKS = {name: _stage_task(name) for name in STAGES}
"""Stage name → Prefect task, in pipeline order."""


def _params_path(root: Path, params: str | None) -> Path:
    return Path(params).resolve() if params else root / "params.yaml"


@flow(name="metarl-pipeline", description="tasks → tune → train → evaluate → register")
def pipeline_flow(root: str = ".", params: str | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage of the project at ``root`` in order; return stage → result.

    Raises:
        ConfigError: the params file is invalid (before any stage runs), or the tracking
            store cannot be reached.

    """
    root_path = Path(root).resolve()
    params_path = _params_path(root_path, params)
    # fail fast: a bad file is not worth retrying
    config = load_project_config(params_path, root_path)
    tracking.check_tracking_uri(tracking.tracking_uri(config.tracking, root_path))

    previous = os.environ.get(PIPELINE_RUN_ENV)
    os.environ[PIPELINE_RUN_ENV] = str(flow_run.id)
    try:
        return {name: stage(str(root_path), str(params_path))
                for name, stage in STAGE_TASKS.items()}
    finally:
        if previous is None:
            os.environ.pop(PIPELINE_RUN_ENV, None)
        else:
            os.environ[PIPELINE_RUN_ENV] = previous


def _set_env_defaults() -> None:
    """Apply :data:`ENV_DEFAULTS`; make Prefect (whose settings load on import) see them."""
    missing = {k: v for k, v in ENV_DEFAULTS.items() if k not in os.environ}
    if missing:
        os.environ.update(missing)
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def run_flow(root: Path | str = ".", params: Path | str | None = None) -> dict[str, Any]:
    """Run :func:`pipeline_flow` once, in this process; return stage → result.

    Without ``PREFECT_API_URL``, Prefect starts a temporary local server for the run. The
    params file is checked first, so a bad one fails before that server starts.

    Raises:
        ConfigError: the params file is invalid.

    """
    _set_env_defaults()
    load_project_config(_params_path(Path(root).resolve(), str(params) if params else None),
                        Path(root).resolve())
    return pipeline_flow(root=str(Path(root).resolve()),
                         params=str(Path(params).resolve()) if params else None)


def serve(root: Path | str = ".", params: Path | str | None = None, *,
          cron: str | None = None, name: str = "metarl-nightly",
          interval: float | None = None) -> None:
    """Serve :func:`pipeline_flow` for the project at ``root`` on a schedule, until interrupted.

    Creates (or updates) deployment ``metarl-pipeline/<name>`` with a ``cron`` schedule and/or
    one every ``interval`` seconds, then runs its scheduled runs here, one at a time, each in
    a subprocess. On exit the schedule is paused.

    Raises:
        ValueError: neither ``cron`` nor ``interval`` given.
        RuntimeError: no Prefect server configured (``PREFECT_API_URL`` unset).
        ConfigError: the params file is invalid.

    """
    if cron is None and interval is None:
        raise ValueError("serve: give a cron schedule or an interval")
    if not get_current_settings().api.url:
        raise RuntimeError("serve: PREFECT_API_URL is not set, and Prefect's temporary local "
                           f"server cannot run schedules; {SERVER_HINT}")
    root_path = Path(root).resolve()
    params_path = _params_path(root_path, str(params) if params else None)
    load_project_config(params_path, root_path)  # a bad file fails now, not at 3 a.m.
    pipeline_flow.serve(name=name, cron=cron, interval=interval, limit=1,
                 parameters={"root": str(root_path),
                             "params": str(params_path) if params else None},
                 entrypoint_type=EntrypointType.MODULE_PATH)
