"""Run a stage by name: load and validate params, set up tracking, open the MLflow runs.

The CLI (and so ``dvc repro``) and the Prefect flow both call :func:`run_stage`, so the stage
logic has one code path whichever way it is started.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig, load_project_config
from pipelines.stages import STAGE_NAMES, evaluate, register, report, tasks, train, tune

STAGES: dict[str, Callable[[PipelineConfig, Paths], Any]] = {
    "tasks": tasks.run,
    "tune": tune.run,
    "train": train.run,
    "evaluate": evaluate.run,
    "register": register.run,
    "report": report.run,
}
"""Stage name → stage function, in pipeline order."""
assert tuple(STAGES) == STAGE_NAMES
SPLITS_READ = {"tune": ("train", "val"), "train": ("train",), "evaluate": ("test",),
               "register": ("test",), "report": ("train", "val", "test")}
"""The task sets each stage reads: the MLflow datasets of its run (``tasks`` writes all three,
and logs them once written)."""


def configure_torch() -> None:
    """Use one intra-op thread unless ``METARL_NUM_THREADS`` says otherwise.

    The networks are tiny, and beside a second busy process on 2 cores a multi-threaded torch
    slows down many times.
    """
    import torch

    torch.set_num_threads(int(os.environ.get("METARL_NUM_THREADS", "1")))


def promote_version(name: str, version: int, root: Path | str = ".",
                    params: Path | str | None = None) -> dict[str, Any]:
    """``metarl promote``: move ``@champion`` by hand, with the project's tracking settings."""
    paths = Paths(Path(root).resolve())
    config = load_project_config(Path(params) if params else paths.params, paths.root)
    tracking.setup(config.tracking, paths.root)
    return register.promote(name, version)


def use_project_tracking(root: Path | str = ".", params: Path | str | None = None) -> str:
    """Point MLflow at the project's tracking store (params.yaml or MLFLOW_TRACKING_URI)."""
    paths = Paths(Path(root).resolve())
    config = load_project_config(Path(params) if params else paths.params, paths.root)
    return tracking.setup(config.tracking, paths.root)


def tune_worker(root: Path | str = ".", params: Path | str | None = None) -> dict[str, Any]:
    """``metarl tune-worker``: join the project's study and run trials until it is complete."""
    paths = Paths(Path(root).resolve(), Path(params).resolve() if params else None)
    config = load_project_config(paths.params, paths.root)
    tracking.setup(config.tracking, paths.root)
    configure_torch()
    return tune.work(config, paths)


def run_stage(name: str, root: Path | str = ".", params: Path | str | None = None) -> Any:
    """Run stage ``name`` of the project at ``root`` inside its nested MLflow run."""
    if name not in STAGES:
        raise ValueError(f"stage={name!r}: unknown; choose one of {list(STAGES)}")
    paths = Paths(Path(root).resolve(), Path(params).resolve() if params else None)
    params_path = paths.params
    config = load_project_config(params_path, paths.root)
    tracking.setup(config.tracking, paths.root)
    configure_torch()
    with tracking.stage_run(name, params_path, paths.root,
                            tracking.headline_params(config)) as run:
        tracking.log_task_sets(paths.root, SPLITS_READ.get(name, ()))
        result = STAGES[name](config, paths)
        if name == "tasks":
            tracking.log_task_sets(paths.root, ("train", "val", "test"))
        if name == "register":  # the headline is complete: put it on the pipeline's run
            tracking.log_summary(run.data.tags["mlflow.parentRunId"],
                                 paths.metrics / "summary.json")
        return result
