"""Stage ``tune``: Optuna search over the step sizes, scored on validation tasks only.

MAML: ``inner_lr`` and ``outer_lr``; RL²: its learning rate ``lr`` (in ``tune.outer_lr``'s
range). The objective trains with the same :func:`~metarl.algos.maml.train_maml` /
:func:`~metarl.algos.rl2.train_rl2` as the train stage and
scores with the same :func:`metarl.evaluation.adaptation_curve` as evaluate, on the *val*
split. Intermediate scores go to a median pruner. The study persists (a journal file by
default) under a name derived from everything that defines it, so a re-run resumes it and runs
only the trials still missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import optuna
import yaml

from metarl.algos.base import MetaLearner
from metarl.algos.maml import train_maml
from metarl.algos.rl2 import train_rl2
from metarl.config import to_dict
from metarl.evaluation import adaptation_curve
from metarl.tasks import TaskFamily, TaskSet
from pipelines.io import atomic_write_text
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig
from pipelines.stages.common import device, family, load_task_set
from pipelines.tracking import MlflowLogger, flatten


def validation_score(learner: MetaLearner, fam: TaskFamily, val: TaskSet,
                     episodes_per_task: int, seed: int, dev: str) -> float:
    """Mean return on the validation tasks after one adaptation step."""
    curve = adaptation_curve(learner, fam, val.tasks, 1, episodes_per_task, seed, dev)
    return float(curve[-1].mean())


def storage(config: PipelineConfig, paths: Paths) -> optuna.storages.BaseStorage | str:
    """A journal file for a path, the URL itself for a database."""
    if "://" in config.tune.storage:
        return config.tune.storage
    path = paths.resolve(config.tune.storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()  # a DVC output even when no trial runs (n_trials: 0)
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def study_name(config: PipelineConfig, train: TaskSet, val: TaskSet) -> str:
    """Name that changes whenever the search would mean something else."""
    tune = {k: v for k, v in to_dict(config.tune).items() if k not in ("n_trials", "storage")}
    identity = json.dumps({"tune": tune, "algo": to_dict(config.algo),
                           "trial_episodes": config.evaluate.num_adapt_steps + 1,  # RL²'s trial
                           "train": config.train.seed, "tasks": [train.content_hash,
                                                                 val.content_hash]},
                          sort_keys=True)
    return f"{config.algo.name}-{config.task.family}-" + hashlib.sha256(
        identity.encode()).hexdigest()[:12]


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Run the missing trials and write ``tuning/best_params.yaml``; return the summary."""
    fam, dev = family(config), device(config)
    train, val = load_task_set(paths, "train", config), load_task_set(paths, "val", config)
    tune = config.tune
    study_storage = storage(config, paths)
    if tune.n_trials == 0:
        _write_best(paths.best_params, config.algo.name, {}, None)
        return {"n_trials": 0}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(config, train, val)
    study = optuna.create_study(
        study_name=name, storage=study_storage, load_if_exists=True,
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = tune.n_trials - len(study.get_trials(deepcopy=False, states=done_states))

    def objective(trial: optuna.Trial) -> float:
        if config.algo.name == "rl2":
            overrides = {"lr": trial.suggest_float("lr", *tune.outer_lr, log=True)}
        else:
            overrides = {
                "inner_lr": trial.suggest_float("inner_lr", *tune.inner_lr, log=True),
                "outer_lr": trial.suggest_float("outer_lr", *tune.outer_lr, log=True)}
        cfg = config.with_algo_overrides(overrides)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True,
                              tags={"metarl.stage": "tune-trial", "optuna.study": name}):
            mlflow.log_params({f"algo.{config.algo.name}.{k}": v for k, v in overrides.items()})
            logger = MlflowLogger(tune.num_iterations, f"trial {trial.number}")

            def report(it: int, learner: MetaLearner) -> None:
                if (it + 1) % tune.eval_every and it + 1 != tune.num_iterations:
                    return
                score = validation_score(learner, fam, val, tune.episodes_per_task,
                                         tune.seed, dev)
                mlflow.log_metric("tune/val_return_post_adapt", score, step=it + 1)
                trial.report(score, it + 1)
                trial.set_user_attr("last_score", score)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at iteration {it + 1}: {score:.1f}")

            try:
                if config.algo.name == "rl2":
                    train_rl2(fam, train, cfg.algo.rl2, config.evaluate.num_adapt_steps + 1,
                              tune.num_iterations, tune.seed, dev, logger=logger, hook=report)
                else:
                    train_maml(fam, train, cfg.algo.maml, tune.num_iterations, tune.seed, dev,
                               logger=logger, hook=report)
            finally:
                logger.close()
            return float(trial.user_attrs["last_score"])

    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    best = {k: float(v) for k, v in study.best_params.items()}
    _write_best(paths.best_params, config.algo.name, best, study.best_value)
    summary = {"study": name, "n_trials": len(study.trials), "best_value": study.best_value,
               "best_params": best}
    if mlflow.active_run() is not None:
        mlflow.log_params(flatten("tune", to_dict(tune)))
        mlflow.log_metric("tune/best_val_return_post_adapt", float(study.best_value))
        mlflow.log_params({f"tune.best.{k}": v for k, v in best.items()})
        mlflow.set_tags({"task_hash.train": train.content_hash,
                         "task_hash.val": val.content_hash, "optuna.study": name})
    return summary


def _write_best(path: Path, algo: str, best: dict[str, float], value: float | None) -> None:
    doc = {"algo": {algo: best}} if best else {"algo": {}}
    header = ("# Written by the tune stage (`metarl stage tune`); read by train.\n"
              f"# best validation return after one adaptation step: {value}\n")
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=True))


def read_best(path: Path, algo: str) -> dict[str, float]:
    """Tuned overrides for ``algo`` (empty when tuning was skipped)."""
    if not path.exists():
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    section = (doc.get("algo") or {}).get(algo) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: algo.{algo} must be a mapping, got {section!r}")
    return {str(k): v for k, v in section.items()}


__all__ = ["read_best", "run", "validation_score"]
