"""``metarl adapt``: adapt a trained or registered meta-learner to tasks of the user's choosing.

The model is a registered version (``models:/name@champion``, ``models:/name/3``, ``runs:/…``),
a project's ``models/`` folder, or a folder this command wrote. It adapts exactly as the
evaluator does (:func:`metarl.evaluation.adapt_to_tasks`: gradient steps for a MAML-like
learner, the trial's context for RL²), prints the return before and after each step, and
writes to ``--out``:

- ``weights.pt`` and ``config.json``: the model as loaded (``weights_only`` tensors, JSON);
- ``adapted.pt``: the adapted per-task parameters (a tensor dict, first dim = the tasks);
- ``curve.json``: the tasks, the protocol and the returns per step and task.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metarl.api import ADAPTED_FILE, checkpoint_family, model_files
from metarl.checkpoint import load_learner, read_config, save_params
from metarl.evaluation import adapt_to_tasks
from metarl.tasks import TaskFamily, TaskSet
from pipelines.io import atomic_write_json

CURVE_FILE = "curve.json"


@dataclass(frozen=True)
class OpenedModel:
    """A loaded learner, its checkpoint config and the files it came from."""

    learner: Any
    config: dict[str, Any]
    weights: Path
    source: str


def is_registry_uri(uri: str) -> bool:
    """A URI MLflow resolves (``models:/…``, ``runs:/…``), not a local folder."""
    return "://" in uri or uri.startswith(("models:", "runs:"))


def resolve(uri: str, workdir: Path) -> Path:
    """Download the registered model of ``uri`` into ``workdir``; the folder of its files.

    The artifact is checked to load data only (:func:`pipelines.model.check_mlmodel`). Also
    ``metarl.load``'s resolver of ``models:/`` and ``runs:/`` URIs (entry-point group
    ``metarl.model_uris``), from ``MLFLOW_TRACKING_URI``, else (in a project folder) the
    store of its ``params.yaml``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.model import check_mlmodel

    if "MLFLOW_TRACKING_URI" not in os.environ and Path("params.yaml").is_file():
        from pipelines.runner import use_project_tracking

        use_project_tracking(".")  # inside a project: its tracking store
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                         dst_path=str(workdir)))
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"MODEL_URI={uri!r} does not resolve ({first}); list versions with "
                         "the MLflow UI (`mlflow ui`), or pass a models/ folder") from None
    check_mlmodel(local)
    return local


def open_model(uri: str, workdir: Path) -> OpenedModel:
    """Load the learner of ``uri``: a ``models:/`` or ``runs:/`` URI, or a local folder.

    Registered artifacts are downloaded into ``workdir`` and read as data only
    (:func:`pipelines.model.check_mlmodel`).

    Raises:
        ValueError: the URI does not resolve or its model does not load (why, in words).

    """
    if is_registry_uri(uri):
        folder = resolve(uri, workdir)
    else:
        folder = Path(uri)
        if not folder.is_dir():
            raise ValueError(f"MODEL_URI={uri!r}: no such folder, and not a models:/ or runs:/ "
                             "URI")
    weights, config_path = model_files(folder)
    config = read_config(config_path)
    try:
        learner = load_learner(weights, config)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"MODEL_URI={uri!r}: this version of metarl cannot load its model "
                         f"({err})") from None
    return OpenedModel(learner, config, weights, uri)


def read_tasks(family: TaskFamily, task: str | None, task_file: Path | None
               ) -> tuple[dict[str, Any], ...]:
    """The tasks of ``--task`` (JSON: one task or a list) or ``--task-file``, checked.

    Each task is validated as the pipeline's task files are (:meth:`TaskSet.check`); a task
    set file must be of the model's family.
    """
    if (task is None) == (task_file is None):
        raise ValueError("give exactly one of --task JSON and --task-file FILE")
    source = "--task" if task is not None else str(task_file)
    text = task if task is not None else Path(task_file).read_text()  # type: ignore[arg-type]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not JSON ({err.msg} at character {err.pos})") from None
    if isinstance(data, dict) and "tasks" in data and "schema_version" in data:
        task_set = TaskSet.from_json(text, source=source)
        if task_set.family != family.name:
            raise ValueError(f"{source}: family={task_set.family!r} but the model is of "
                             f"family {family.name!r}")
        tasks = task_set.tasks
    else:
        items = data if isinstance(data, list) else [data]
        if not items or not all(isinstance(t, dict) for t in items):
            raise ValueError(f"{source}: expected a task (a JSON object) or a list of tasks")
        tasks = tuple(items)
    TaskSet(family.name, "adapt", 0, tasks).check(family, source=source)
    return tasks


def adapt_model(uri: str, task: str | None = None, task_file: Path | None = None,
                steps: int = 3, episodes: int = 20, seed: int = 0,
                out: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """``metarl adapt``: adapt, print the table, write ``out``; the curve as a dict."""
    for name, value in (("--steps", steps), ("--episodes", episodes)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    with tempfile.TemporaryDirectory(prefix="metarl-adapt-") as tmp:
        model = open_model(uri, Path(tmp))
        family = checkpoint_family(model.config)
        tasks = read_tasks(family, task, task_file)
        bar = _progress(steps + 1)
        run = adapt_to_tasks(model.learner, family, tasks, steps, episodes, seed, device,
                             on_step=lambda k, r: bar.update(1))
        bar.close()
        result = {"model": uri, "family": family.name,
                  "learner": model.config.get("learner", model.config.get("algo")),
                  "tasks": list(tasks), "steps": steps, "episodes_per_task": episodes,
                  "seed": seed, "returns": run.returns.T.tolist(),
                  "mean_return": run.returns.mean(1).tolist()}
        print(table(run.returns, tasks))
        if out is not None:
            _write(out, model, run.params, result)
    return result


def _progress(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="adapting (rollouts)", unit="step", file=sys.stderr,
                disable=bool(os.environ.get("METARL_NO_PROGRESS")))


def table(returns: np.ndarray, tasks: tuple[dict[str, Any], ...]) -> str:
    """Return per adaptation step: the mean over tasks and (up to 6) each task's."""
    shown = min(len(tasks), 6)
    head = ["step", "mean return"] + [f"task {i}" for i in range(shown)]
    rows = [[("before" if k == 0 else f"after {k}"), f"{returns[k].mean():.1f}"]
            + [f"{returns[k, i]:.1f}" for i in range(shown)] for k in range(len(returns))]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines = [" | ".join(h.rjust(w) for h, w in zip(row, widths, strict=True))
             for row in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _write(out: Path, model: OpenedModel, params: dict[str, Any], result: dict[str, Any]
           ) -> None:
    """Write the model, its adapted parameters and the curve to ``out`` (all or nothing)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copyfile(model.weights, tmp / "weights.pt")
        atomic_write_json(tmp / "config.json", model.config)
        save_params(params, tmp / ADAPTED_FILE)
        atomic_write_json(tmp / CURVE_FILE, result)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_adapted(folder: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A folder ``metarl adapt`` wrote: ``(learner, adapted params, curve)``."""
    from metarl.checkpoint import load_params

    folder = Path(folder)
    for name in ("weights.pt", "config.json", ADAPTED_FILE, CURVE_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: {name} is missing; write the folder with "
                             "`metarl adapt MODEL_URI --out FOLDER`")
    learner = load_learner(folder / "weights.pt", read_config(folder / "config.json"))
    curve = json.loads((folder / CURVE_FILE).read_text())
    return learner, load_params(folder / ADAPTED_FILE), curve


__all__ = ["ADAPTED_FILE", "adapt_model", "is_registry_uri", "load_adapted", "open_model",
           "read_tasks", "resolve"]
