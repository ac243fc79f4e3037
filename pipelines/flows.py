"""The pipeline as a Prefect 3 flow: one task per stage, run through DVC, run locally or served.

In a DVC project (a ``dvc.yaml`` at the root) each task runs ``dvc repro --single-item
<stage>`` in a subprocess, so a flow run and ``dvc repro`` agree on what is up to date: an
up-to-date stage is skipped, and a stage that runs updates ``dvc.lock`` (and DVC's cache) exactly
as ``dvc repro`` would. The stage itself is ``metarl stage <name>`` (dvc.yaml's ``cmd``), the
same code path as ``dvc repro``; DVC's output and the stage's are forwarded to the flow run's
logs. A project without ``dvc.yaml`` has no DVC view to keep: there each task calls
:func:`pipelines.runner.run_stage` in-process and every stage runs.

Overrides (``family``, ``algorithm``, ``iterations``, ``trials`` and any ``key=value`` in
``overrides``, the grammar of ``dvc exp run -S``, applied by DVC's own code) are validated like
the params file before anything runs, then written into ``params.yaml``, as ``dvc exp run -S``
does, so that ``dvc.lock`` and the file agree afterwards. A bad one fails naming the key and
the value and leaves ``params.yaml`` as it was.

All stages of one flow run nest under one MLflow parent run, keyed by the Prefect flow-run id
(``METARL_PIPELINE_RUN``, passed on to the stage processes). The flow ends with a Markdown
artifact, ``metarl-meta-test``: the stages' outcomes, the meta-test table and the gate's decision.

- :func:`run_flow` runs it once, here. Without ``PREFECT_API_URL``, Prefect starts a temporary
  local server for the run (several seconds the first time).
- :func:`serve` schedules it (cron or interval) on a real Prefect server and runs the scheduled
  runs until interrupted. Prefect's temporary server has no scheduler, so this needs
  ``prefect server start`` (it works offline on 127.0.0.1) and ``PREFECT_API_URL``.
- ``prefect.yaml`` deploys it to a process work pool, for ``prefect worker start``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import State
from pydantic import ValidationError

from metarl.config import ConfigError
from pipelines import tracking
from pipelines.io import atomic_write_text
from pipelines.paths import Paths
from pipelines.runner import STAGES, run_stage
from pipelines.settings import PipelineConfig, load_project_config, redact
from pipelines.stages.common import StageError

PIPELINE_RUN_ENV = "METARL_PIPELINE_RUN"
"""Environment variable that keys the MLflow parent run (see :mod:`pipelines.tracking`)."""

ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}
"""Set by :func:`run_flow` unless already set: no analytics (offline machines), and time for
the temporary server to start on 2 busy cores (Prefect's default is 20 s)."""

STAGE_ENV_DEFAULTS = {
    "DVC_NO_ANALYTICS": "1",
    "METARL_NO_PROGRESS": "1",
    "PYTHONUNBUFFERED": "1",
}
"""Set for the ``dvc repro`` subprocesses unless already set: no analytics daemon (it crashes
offline), no progress bars (carriage-return animations are noise in a log), and unbuffered
output so that each line reaches the flow's log as it is printed."""

RETRIES = {"register": 2}
"""Retries per stage. Only ``register`` talks to the tracking server and registry; the other
stages are deterministic compute, so a failure there would only fail again."""

RETRY_DELAY_SECONDS = 10
"""Wait before a retry."""

OUTPUT_TAIL_LINES = 25
"""Lines of a failed stage's output that its error carries."""

ARTIFACT_KEY = "metarl-meta-test"
"""Key of the flow's Markdown artifact (the meta-test table and the gate's decision)."""

DEFAULT_CRON = "0 3 * * *"
"""The schedule ``metarl serve`` uses when given neither ``--cron`` nor ``--interval``."""

OVERRIDE_NAMES = ("family", "algorithm", "iterations", "trials", "overrides")
"""The flow's override parameters (also :func:`run_flow`'s and :func:`serve`'s keywords)."""

SERVER_HINT = ("start one with `prefect server start` (it works offline on 127.0.0.1) and "
               "export PREFECT_API_URL=http://127.0.0.1:4200/api")

_RAN = re.compile(r"^Running stage '(?P<stage>[^']+)'")
_RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run")
_EXITED = re.compile(r"exited with (?P<code>-?\d+)")
_ERROR = re.compile(r"^metarl: error: (?P<message>.*)")
_CONFIG_MESSAGE = re.compile(r"^(?P<key>[A-Za-z_][\w.\[\]]*)=")

STATUS_TEXT = {"ran": "ran", "skipped": "skipped: up to date",
               "restored": "restored from DVC's run cache (not run)"}
"""How each stage outcome reads in the log."""


class StageFailed(RuntimeError):
    """A stage run through DVC failed; the message ends with the tail of its output.

    Attributes:
        stage: the stage's name.
        transient: whether a retry may succeed (see :func:`classify_failure`).

    """

    def __init__(self, stage: str, message: str, tail: Sequence[str], transient: bool) -> None:
        self.stage = stage
        self.transient = transient
        super().__init__(f"stage {stage!r} failed: {message}\n--- its output ends:\n"
                         + "\n".join(tail))


def classify_failure(lines: Sequence[str]) -> tuple[str, bool]:
    """Read a failed ``dvc repro`` run's output: one-line reason, and whether to retry.

    Not retried: DVC refused before running the stage (a missing dependency, a broken
    dvc.yaml), or the stage stopped on a configuration error (``metarl: error: key=value: ...``)
    other than an unreachable tracking server. Retried: another DVC process held the lock, the
    stage crashed or was killed, or it failed otherwise (the registry or the network).
    """
    text = "\n".join(lines)
    errors = [m["message"] for line in lines if (m := _ERROR.match(line))]
    exited = _EXITED.search(text)
    reason = errors[-1] if errors else next(
        (line.removeprefix("ERROR: ") for line in reversed(lines) if line.startswith("ERROR")),
        lines[-1] if lines else "no output")
    if "Unable to acquire lock" in text:
        return reason, True
    if exited is None:
        return reason, False  # DVC stopped before the stage's command ran
    config = _CONFIG_MESSAGE.match(errors[-1]) if errors else None
    if exited["code"] == "2" and config is not None:
        return reason, config["key"] == "tracking.uri"
    return reason, True


def _transient(_task: Task[..., Any], _task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: not for errors that would repeat (bad config, missing inputs)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # unreadable result: retry, as Prefect would
            return True
    if isinstance(exc, StageFailed):
        return exc.transient
    if isinstance(exc, ConfigError):
        return exc.key == "tracking.uri"  # an unreachable tracking server may come back
    return not isinstance(exc, StageError)


# --- overrides --------------------------------------------------------------------------------

def override_list(family: str | None = None, algorithm: str | None = None,
                  iterations: int | None = None, trials: int | None = None,
                  overrides: Sequence[str] | None = None) -> list[str]:
    """The flow's override parameters as ``dvc exp run -S`` overrides, in the order applied.

    ``family`` sets ``task.family``, ``algorithm`` ``algo.name``, ``iterations``
    ``train.num_iterations``, ``trials`` ``tune.n_trials``; ``overrides`` (``key=value``,
    ``+key=value`` for a key the file leaves out) come last and win.

    Raises:
        ConfigError: a value of the wrong type, naming the key.

    """
    items: list[str] = []
    for key, value in (("task.family", family), ("algo.name", algorithm)):
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError(key, value, "expected a name (a string)")
            items.append(f"{key}={json.dumps(value)}")  # quoted: the name, whatever it is
    for key, number in (("train.num_iterations", iterations), ("tune.n_trials", trials)):
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, int):
                raise ConfigError(key, number, "expected a whole number")
            items.append(f"{key}={number}")
    for item in overrides or ():
        if not isinstance(item, str) or "=" not in item.lstrip("~"):
            raise ConfigError("overrides", item, "expected key=value (as `dvc exp run -S`), "
                              "e.g. train.num_iterations=5 or +task.nav2d.max_steps=50")
        items.append(item)
    return items


def _hydra_reason(err: BaseException) -> str:
    cause = str(err.__cause__ or err)
    return " ".join(line for line in cause.splitlines() if not line.startswith("See https://"))


def apply_overrides(params_path: Path, root: Path,
                    items: Sequence[str]) -> tuple[str | None, PipelineConfig]:
    """Apply ``items`` to a copy of the params file and validate the result like the file.

    DVC's own ``-S`` code applies them (:func:`dvc.utils.hydra.apply_overrides`); the result is
    checked by :func:`~pipelines.settings.load_project_config`, as every stage checks the file.
    The params file itself is not touched.

    Returns:
        The new file text (``None`` when the overrides change no value) and its config.

    Raises:
        ConfigError: an override DVC cannot apply, or a value the params file may not hold,
            naming the key and the value.

    """
    if not items:
        return None, load_project_config(params_path, root)
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    load_project_config(params_path, root)  # the file as it is, first: its own errors
    original = params_path.read_text()
    with tempfile.TemporaryDirectory(prefix="metarl-params-") as tmp:
        copy = Path(tmp) / "params.yaml"
        copy.write_text(original)
        for item in items:  # one at a time, so an error names its override
            try:
                dvc_apply_overrides(copy, [item])
            except InvalidArgumentError as err:
                key, _, value = item.partition("=")
                raise ConfigError(key.lstrip("+~"), value, f"cannot apply override "
                                  f"{item!r}: {_hydra_reason(err)}") from None
        text = copy.read_text()
        config = load_project_config(copy, root)
    changed = yaml.safe_load(text) != yaml.safe_load(original)
    return (text if changed else None), config


# --- the run plan ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What one flow run does, checked before anything runs."""

    root: Path
    """Project directory."""
    params_path: Path
    """The params file the stages read."""
    use_dvc: bool
    """Run the stages through ``dvc repro`` (the project has a ``dvc.yaml``)."""
    overrides: tuple[str, ...]
    """``-S`` overrides applied to the params file."""
    new_params: str | None
    """The params file's text with the overrides applied; ``None``: unchanged."""
    config: PipelineConfig
    """The validated configuration the stages will read."""


def _params_path(root: Path, params: str | None) -> Path:
    return Path(params).resolve() if params else root / "params.yaml"


def _stage_env() -> dict[str, str]:
    env = {**STAGE_ENV_DEFAULTS, **os.environ}
    # dvc.yaml's commands are `metarl ...`: find this interpreter's, not another on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc_status(root: Path) -> dict[str, Any]:
    """``dvc status --json`` of the project at ``root``: stage → what changed ({} when clean).

    Raises:
        RuntimeError: DVC cannot run there, with what to do.

    """
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root,
                            env=_stage_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RuntimeError(
            f"root={str(root)!r}: has a dvc.yaml, but DVC cannot run there "
            f"({reason[-1] if reason else f'exit {result.returncode}'}); make it a DVC "
            "project (`git init && dvc init` in a copy of the repo, or a clone of it), or "
            "remove dvc.yaml to run the stages in-process without DVC")
    data = json.loads(result.stdout or "{}")
    return data if isinstance(data, dict) else {}


def prepare(root: Path | str = ".", params: Path | str | None = None, *,
            family: str | None = None, algorithm: str | None = None,
            iterations: int | None = None, trials: int | None = None,
            overrides: Sequence[str] | None = None) -> Plan:
    """Check everything a flow run needs before any stage runs; write nothing.

    Raises:
        ConfigError: an invalid params file or override, naming the key and the value; or a
            params file other than ``<root>/params.yaml`` in a DVC project.

    """
    root_path = Path(root).resolve()
    params_path = _params_path(root_path, str(params) if params else None)
    use_dvc = (root_path / "dvc.yaml").is_file()
    if use_dvc and params_path != root_path / "params.yaml":
        raise ConfigError("params", str(params_path), "DVC's stages read <root>/params.yaml "
                          "only; change it with overrides (`-S key=value`), or run the "
                          "stages without DVC (a project without dvc.yaml)")
    items = override_list(family, algorithm, iterations, trials, overrides)
    new_params, config = apply_overrides(params_path, root_path, items)
    return Plan(root_path, params_path, use_dvc, tuple(items), new_params, config)


def _write_params(plan: Plan) -> None:
    assert plan.new_params is not None
    mode = plan.params_path.stat().st_mode & 0o777
    atomic_write_text(plan.params_path, plan.new_params)
    os.chmod(plan.params_path, mode)  # keep the file's permissions (the temp file's are 0600)


# --- results: what each stage left in the workspace --------------------------------------------

def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def stage_summary(name: str, root: Path) -> dict[str, Any]:
    """The headline of what stage ``name`` left in the project (ran or up to date).

    tasks: each split's content hash; tune: the tuned values; train: the last iteration's
    metrics; evaluate: the meta-learner's returns and scores; register: the gate's record
    (``metrics/register.json``); report: the page. Empty when the files are missing or
    unreadable.
    """
    paths = Paths(root)
    try:
        if name == "tasks":
            return {split: _read_json(paths.task_set(split))["content_hash"]
                    for split in ("train", "val", "test")}
        if name == "tune":
            tuned = yaml.safe_load(paths.best_params.read_text()) or {}
            return dict(tuned.get("algo") or {})
        if name == "train":
            with (paths.plots / "train_curve.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            return {k: float(v) for k, v in rows[-1].items()} if rows else {}
        if name == "evaluate":
            meta = _read_json(paths.metrics / "meta_test.json")
            learner = meta["learner"]
            post = max((k for k in meta[learner] if k.startswith("return_post_adapt_k")),
                       key=lambda k: int(k.rsplit("k", 1)[1]), default=None)
            return {"learner": learner, "test_task_hash": meta.get("test_task_hash"),
                    "return_pre": meta[learner].get("return_pre_adapt"),
                    "return_post": meta[learner].get(post) if post else None,
                    "normalized_pre": meta[learner].get("normalized_pre_adapt"),
                    "normalized_post": meta[learner].get("normalized_post_adapt")}
        if name == "register":
            return dict(_read_json(paths.metrics / "register.json"))
        if name == "report":
            page = paths.reports / "report.html"
            return {"report": str(page), "bytes": page.stat().st_size}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return {}
    return {}


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "n/a"


def headline(name: str, summary: dict[str, Any]) -> str:
    """One line for the log from :func:`stage_summary`."""
    s = summary
    if not s:
        return "no outputs to report" if name != "tune" else "no tuned values (tuning skipped)"
    if name == "tasks":
        return "task sets " + ", ".join(f"{k} {v}" for k, v in s.items())
    if name == "tune":
        return "tuned " + "; ".join(f"algo.{algo}: " + ", ".join(
            f"{k}={_num(v)}" for k, v in values.items()) for algo, values in s.items())
    if name == "train":
        pre, post = s.get("train/return_pre_adapt"), s.get("train/return_post_adapt")
        done = int(s["iteration"]) + 1 if isinstance(s.get("iteration"), float) else "?"
        return (f"after {done} iterations: mean return {_num(pre)} before adaptation, "
                f"{_num(post)} after")
    if name == "evaluate":
        return (f"{s['learner']} on the test tasks: return {_num(s['return_pre'])} → "
                f"{_num(s['return_post'])} after adaptation (normalised "
                f"{_num(s['normalized_pre'], 2)} → {_num(s['normalized_post'], 2)})")
    if name == "report":
        return f"{s['report']} ({s['bytes'] / 1e3:.0f} kB, opens offline)"
    decision = "promoted to @champion" if s.get("promoted") else "not promoted"
    return (f"{s.get('model_name')} version {s.get('version')}: {decision} (score "
            f"{_num(s.get('score'))} vs {_num(s.get('reference_score'))} for "
            f"{s.get('reference')}; interval {[round(c, 4) for c in s.get('ci', [])]}, margin "
            f"{s.get('margin')})")


def _stage_row(name: str, outcome: dict[str, Any]) -> str:
    text = headline(name, outcome.get("result") or {}).replace("|", "\\|")
    return (f"| {name} | {STATUS_TEXT.get(outcome['status'], outcome['status'])} | "
            f"{outcome['seconds']:.1f} | {text} |")


def gate_markdown(register: dict[str, Any]) -> str:
    """The gate's decision (``metrics/register.json``) as Markdown."""
    if not register:
        return "## Gate decision\n\nmetrics/register.json is missing or unreadable.\n"
    decision = "**promoted** to @champion" if register.get("promoted") else "**not promoted**"
    low, high = (register.get("ci") or [math.nan, math.nan])[:2]
    rows = [("model", f"`{register.get('model_name')}` version {register.get('version')}"
             + (" (an existing version, reused)" if register.get("reused_version") else "")),
            ("compared with", f"{register.get('reference')} "
             f"(score {_num(register.get('reference_score'), 4)})"),
            ("score", f"{_num(register.get('score'), 4)} ({register.get('units')})"),
            ("mean paired difference", _num(register.get("difference"), 4)),
            (f"{_num(register.get('level'), 2)} bootstrap interval",
             f"[{_num(low, 4)}, {_num(high, 4)}]"),
            ("margin (lower end must exceed it)", _num(register.get("margin"), 4)),
            ("champion before", str(register.get("champion_version_before") or "none"))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"## Gate decision: {decision}\n\n| | |\n|---|---|\n{table}\n\n"
            f"{register.get('reason', '')}\n")


def artifact_markdown(plan: Plan, outcomes: dict[str, dict[str, Any]]) -> str:
    """The flow's artifact: the stages' outcomes, reports/meta_test.md and the gate's decision."""
    paths = Paths(plan.root)
    try:
        meta_test = (paths.reports / "meta_test.md").read_text().strip()
    except OSError:
        meta_test = "reports/meta_test.md is missing."
    register = outcomes.get("register", {}).get("result") or stage_summary("register",
                                                                           plan.root)
    how = ("through DVC (`dvc repro --single-item`)" if plan.use_dvc
           else "in-process (no dvc.yaml here)")
    overrides = (" with overrides " + ", ".join(f"`{o}`" for o in plan.overrides)
                 if plan.overrides else "")
    stages = "\n".join(_stage_row(name, outcome) for name, outcome in outcomes.items())
    return (f"# metarl pipeline: {plan.config.task.family} / {plan.config.algo.name}\n\n"
            f"Project `{plan.root}`, stages run {how}{overrides}.\n\n"
            f"| stage | outcome | seconds | result |\n|---|---|---|---|\n{stages}\n\n"
            f"{meta_test}\n\n{gate_markdown(register)}")


# --- the stages as tasks -----------------------------------------------------------------------

def repro_stage(name: str, root: Path, log: Any) -> str:
    """Run ``dvc repro --single-item name`` in ``root``, forwarding its output to ``log``.

    Returns:
        ``"ran"``, ``"skipped"`` (up to date) or ``"restored"`` (from DVC's run cache).

    Raises:
        StageFailed: DVC or the stage failed; with the output's tail.

    """
    status = "skipped"
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", name],
                            cwd=root, env=_stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip())
            if not line.strip():
                continue
            tail.append(line)
            log.info("%s | %s", name, line)
            if (m := _RAN.match(line)) and m["stage"] == name:
                status = "ran"
            elif (m := _RESTORED.match(line)) and m["stage"] == name:
                status = "restored"
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted or cancelled: do not leave the stage running
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if code != 0:
        reason, transient = classify_failure(list(tail))
        raise StageFailed(name, reason, tail, transient)
    return status


def _stage_task(name: str) -> Task[[str, str, bool], dict[str, Any]]:
    def run(root: str, params: str, use_dvc: bool) -> dict[str, Any]:
        log = get_run_logger()
        log.info("%s: started", name)
        start = time.perf_counter()
        if use_dvc:
            status = repro_stage(name, Path(root), log)
        else:
            run_stage(name, root, params)
            status = "ran"
        seconds = time.perf_counter() - start
        summary = stage_summary(name, Path(root))
        log.info("%s: %s (%.1f s); %s", name, STATUS_TEXT[status], seconds,
                 headline(name, summary))
        return {"status": status, "seconds": round(seconds, 2), "result": summary}

    run.__name__ = run.__qualname__ = f"stage_{name}"
    run.__doc__ = f"Run pipeline stage ``{name}``; return its outcome and headline."
    return task(name=name, task_run_name=name, retries=RETRIES.get(name, 0),
                retry_delay_seconds=RETRY_DELAY_SECONDS, retry_condition_fn=_transient,
                cache_policy=NO_CACHE, persist_result=False)(run)


STAGE_TASKS = {name: _stage_task(name) for name in STAGES}
"""Stage name → Prefect task, in pipeline order."""


@flow(name="metarl-pipeline", description="tasks → tune → train → evaluate → register, "
      "through DVC: up-to-date stages are skipped and dvc.lock is kept as `dvc repro` keeps it")
def pipeline_flow(root: str = ".", params: str | None = None, family: str | None = None,
                  algorithm: str | None = None, iterations: int | None = None,
                  trials: int | None = None,
                  overrides: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage of the project at ``root`` in order; return stage → outcome.

    An outcome is ``{"status": "ran" | "skipped" | "restored", "seconds": ..., "result":
    ...}``, the result being the headline of what the stage left (see :func:`stage_summary`).
    Overrides are written into params.yaml (as ``dvc exp run -S`` does) once all are valid.

    Args:
        root: project directory; "." is the working directory (a deployment's project).
        params: params file (default <root>/params.yaml, the only one DVC reads).
        family: task.family for this run, e.g. nav2d (its embedded defaults unless
            params.yaml has its section).
        algorithm: algo.name for this run, e.g. rl2 (a registered algorithm).
        iterations: train.num_iterations, meta-training iterations.
        trials: tune.n_trials, tuning trials (0 skips tuning).
        overrides: more params.yaml values, key=value as `dvc exp run -S` takes them
            (+key=value adds a key the file leaves out), e.g. evaluate.seeds=[0,1].

    Raises:
        ConfigError: the params file or an override is invalid (before any stage runs and
            before params.yaml is written), or the tracking store cannot be reached.
        StageFailed: a stage failed under DVC (its output's tail in the message).

    """
    log = get_run_logger()
    plan = prepare(root, params, family=family, algorithm=algorithm, iterations=iterations,
                   trials=trials, overrides=overrides)
    # fail fast: a bad file or an unreachable store is not worth retrying
    tracking.check_tracking_uri(tracking.tracking_uri(plan.config.tracking, plan.root))
    if plan.use_dvc:
        stale = dvc_status(plan.root)
        log.info("DVC project %s: stages run through `dvc repro --single-item`; DVC sees "
                 "changes in %s", plan.root, ", ".join(stale) or "no stage")
    else:
        log.info("%s has no dvc.yaml: stages run in-process, every one of them",
                 plan.root)
    if plan.new_params is not None:
        _write_params(plan)
        log.info("params: %s written into %s (as `dvc exp run -S` does)",
                 " ".join(plan.overrides), plan.params_path)
    elif plan.overrides:
        log.info("params: %s change no value", " ".join(plan.overrides))

    previous = os.environ.get(PIPELINE_RUN_ENV)
    os.environ[PIPELINE_RUN_ENV] = str(flow_run.id)
    try:
        outcomes = {name: stage(str(plan.root), str(plan.params_path), plan.use_dvc)
                    for name, stage in STAGE_TASKS.items()}
    finally:
        if previous is None:
            os.environ.pop(PIPELINE_RUN_ENV, None)
        else:
            os.environ[PIPELINE_RUN_ENV] = previous
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=artifact_markdown(plan, outcomes),
                             description="metarl: the meta-test table and the gate's decision")
    log.info("gate: %s", headline("register", outcomes["register"]["result"]))
    return outcomes


def _set_env_defaults() -> None:
    """Apply :data:`ENV_DEFAULTS`; make Prefect (whose settings load on import) see them."""
    missing = {k: v for k, v in ENV_DEFAULTS.items() if k not in os.environ}
    if missing:
        os.environ.update(missing)
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _parameters(root: Path, params: Path | str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameters for ``root``/``params`` and the given overrides."""
    unknown = set(overrides) - set(OVERRIDE_NAMES)
    if unknown:
        raise TypeError(f"unknown override parameters {sorted(unknown)}; valid: "
                        f"{list(OVERRIDE_NAMES)}")
    values = {k: overrides.get(k) for k in OVERRIDE_NAMES}
    values["overrides"] = list(values["overrides"]) if values["overrides"] else None
    return {"root": str(root), "params": str(Path(params).resolve()) if params else None,
            **values}


def run_flow(root: Path | str = ".", params: Path | str | None = None,
             **overrides: Any) -> dict[str, Any]:
    """Run :func:`pipeline_flow` once, in this process; return stage → outcome.

    ``overrides``: the flow's ``family``, ``algorithm``, ``iterations``, ``trials`` and
    ``overrides``. Without ``PREFECT_API_URL``, Prefect starts a temporary local server for the
    run. The params file, the overrides and DVC are checked first, so a bad value fails before
    that server starts.

    Raises:
        ConfigError: the params file or an override is invalid.
        RuntimeError: DVC cannot run in a project with a dvc.yaml; a stage failed.

    """
    _set_env_defaults()
    root_path = Path(root).resolve()
    parameters = _parameters(root_path, params, overrides)
    plan = prepare(root_path, params, **{k: parameters[k] for k in OVERRIDE_NAMES})
    if plan.use_dvc:
        dvc_status(plan.root)
    return pipeline_flow(**parameters)


def check_schedule(cron: str | None, interval: float | None) -> None:
    """Refuse a schedule Prefect would reject, with one line naming the value.

    Raises:
        ValueError: neither or both given, a cron string Prefect cannot parse, or an interval
            that is not a positive number of seconds.

    """
    if (cron is None) == (interval is None):
        raise ValueError("serve: give a cron schedule or an interval"
                         + (", not both" if cron is not None else ""))
    if interval is not None:
        if (isinstance(interval, bool) or not isinstance(interval, int | float)
                or not math.isfinite(interval) or interval <= 0):
            raise ValueError(f"serve: interval={interval!r}: must be a positive number of "
                             "seconds, e.g. 3600 (hourly)")
        return
    assert cron is not None
    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ValueError(f"serve: cron={cron!r}: not a cron schedule; give five fields, "
                         "minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\" "
                         "(03:00 every day)") from None


def serve(root: Path | str = ".", params: Path | str | None = None, *,
          cron: str | None = None, name: str = "metarl-nightly",
          interval: float | None = None, **overrides: Any) -> None:
    """Serve :func:`pipeline_flow` for the project at ``root`` on a schedule, until interrupted.

    Creates (or updates) deployment ``metarl-pipeline/<name>`` with a ``cron`` schedule or
    one every ``interval`` seconds, then runs its scheduled runs here, one at a time, each in
    a subprocess. ``overrides`` (as :func:`run_flow`'s) become the deployment's default
    parameters; each run may change them (the Prefect UI's "Custom run"). On exit the schedule
    is paused.

    Raises:
        ValueError: no schedule, both, or an invalid one (see :func:`check_schedule`).
        RuntimeError: no Prefect server configured (``PREFECT_API_URL`` unset), or DVC cannot
            run in a project with a dvc.yaml.
        ConfigError: the params file or an override is invalid.

    """
    check_schedule(cron, interval)
    if not get_current_settings().api.url:
        raise RuntimeError("serve: PREFECT_API_URL is not set, and Prefect's temporary local "
                           f"server cannot run schedules; {SERVER_HINT}")
    root_path = Path(root).resolve()
    parameters = _parameters(root_path, params, overrides)
    # a bad file or override fails now, not at 3 a.m.
    plan = prepare(root_path, params, **{k: parameters[k] for k in OVERRIDE_NAMES})
    if plan.use_dvc:
        dvc_status(plan.root)
    pipeline_flow.serve(name=name, cron=cron, interval=interval, limit=1,
                        parameters=parameters, entrypoint_type=EntrypointType.MODULE_PATH)
