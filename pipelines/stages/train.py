"""Stage ``train``: meta-train the chosen algorithm, and the multi-task baseline alike.

The algorithm (from the registry, :mod:`metarl.algos.registry`) writes ``models/<name>.pt``
and ``models/<name>.json``; the stage also writes ``models/pretrained.pt`` and
``models/config.json`` (the MLP network that the pretrained and from-scratch baselines
share), the pretrained policy trained on as many episodes as the meta-learner saw.
``models/<name>.json`` also records what meta-training used (``train_budget``: iterations,
episodes, env steps; see :func:`budget`), which the model card reports. The meta-learner is
logged as an MLflow model to the train run (:func:`pipelines.model.log_model`) and recorded in
``models/mlflow_model.json``, so the version ``register`` makes of it has this run as its
source.

The stage survives ``kill -9``: every ``train.checkpoint_every`` iterations each training
(the meta-learner, the pretrained baseline, the task-conditioned oracle) writes its whole state
atomically to ``train_state/<phase>.pt`` (a DVC ``persist`` output), with the metrics logged so
far and a hash of everything that defines the run. A rerun resumes each phase from its state
when the hash matches, and ends bit-identical (on CPU) to a run that was never interrupted;
the states are deleted once ``models/`` is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import mlflow
import torch

from metarl.algos.pretrain import pretrain_multitask
from metarl.algos.registry import TrainContext
from metarl.baselines.task_conditioned import TaskConditionedFamily, has_closed_form_oracle
from metarl.checkpoint import policy_config, save_params
from metarl.config import to_dict
from metarl.training import Resume, StateFn
from pipelines.io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.model import log_model, write_logged
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig
from pipelines.stages.common import (
    check_action_space,
    device,
    family,
    load_task_set,
    relative,
)
from pipelines.stages.tune import read_best
from pipelines.tracking import MlflowLogger, flatten


class _History(MlflowLogger):
    """Keeps every row for the training-curve CSV (and the training state) as well."""

    def __init__(self, total: int, description: str) -> None:
        super().__init__(total, description)
        self.rows: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        self.rows.append({"iteration": step, **metrics})

    def restore(self, rows: list[dict[str, float]]) -> None:
        """Take the rows of an interrupted run: logged to this run again, the bar advanced."""
        self.rows = [dict(r) for r in rows]
        for row in self.rows:
            step = int(row["iteration"])
            if mlflow.active_run() is not None:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "iteration"},
                                   step=step)
        self.bar.update(len(self.rows))


def _phase(paths: Paths, config: PipelineConfig, phase: str, iterations: int,
           identity: dict[str, Any], history: _History,
           train: Callable[[Resume], Any]) -> Any:
    """Run one training ``phase`` through its state file (see the module docstring)."""
    path = paths.train_state / f"{phase}.pt"
    key = hashlib.sha256(json.dumps({"phase": phase, "iterations": iterations, **identity},
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    state = None
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a state we cannot read is one we cannot trust
            print(f"train: {path} is unreadable ({type(err).__name__}); {phase} starts over",
                  file=sys.stderr)
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            state = saved["state"]
            history.restore(saved["history"])
            print(f"train: resuming {phase} at iteration {state['iteration']}/{iterations} "
                  f"from {relative(path, paths)}", file=sys.stderr)
        elif saved is not None:
            print(f"train: {path} belongs to another configuration; {phase} starts over",
                  file=sys.stderr)
    every = config.train.checkpoint_every

    def save(done: int, state_fn: StateFn) -> None:
        if every and (done % every == 0 or done == iterations):
            buf = io.BytesIO()
            torch.save({"key": key, "state": state_fn(), "history": history.rows}, buf)
            atomic_write_bytes(path, buf.getvalue())

    return train(Resume(state=state, save=save))


def budget(rows: list[dict[str, float]], num_iterations: int, num_episodes: int,
           max_steps: int) -> dict[str, int | None]:
    """What meta-training used, for the checkpoint (and the model card).

    ``num_env_steps`` sums the ``train/env_steps`` the algorithm logs each iteration; None
    when it logs none (then at most ``num_episodes * max_steps``).
    """
    counted = [row["train/env_steps"] for row in rows if "train/env_steps" in row]
    steps = int(sum(counted)) if counted and len(counted) == len(rows) else None
    return {"num_iterations": num_iterations, "num_episodes": num_episodes,
            "num_env_steps": steps, "max_steps": max_steps}


STATE_README = """Training state of an interrupted `metarl stage train` (one file per phase).
A rerun resumes from it; the stage deletes the files once models/ is written.
"""


def clear_train_state(paths: Paths) -> None:
    """Delete the phases' states; leave the folder (a DVC output) with its README."""
    paths.train_state.mkdir(parents=True, exist_ok=True)
    for path in paths.train_state.glob("*.pt"):
        path.unlink()
    atomic_write_text(paths.train_state / "README", STATE_README)


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Write ``models/`` (weights + config JSON) and ``plots/train_curve.csv``."""
    fam, dev = family(config), device(config)
    train = load_task_set(paths, "train", config, fam)
    tuned = read_best(paths.best_params, config.algo.name)
    config = config.with_algo_overrides(tuned)
    algo, section = config.algo.algorithm, config.algo.chosen
    cfg, iters, seed = config.algo.baselines, config.train.num_iterations, config.train.seed
    trial = config.evaluate.episodes_per_trial
    check_action_space(algo, fam, config)
    identity = {"algo": config.algo.identity(), "family": to_dict(config.task.family_config()),
                "train_task_hash": train.content_hash, "seed": seed, "device": dev,
                "trial": trial}
    history = _History(iters, f"meta-train {algo.name}")
    try:
        trained = _phase(paths, config, algo.name, iters, identity, history,
                         lambda r: algo.train(section, TrainContext(
                             fam, train, iters, seed, dev, trial, logger=history, resume=r)))
    finally:
        history.close()
    episodes = algo.episodes(section, iters, trial)
    # the same number of episodes as the meta-learner
    pre_iters = math.ceil(episodes / (cfg.meta_batch_size * cfg.episodes_per_task))
    pre_log = _History(pre_iters, "pretrain multi-task")
    try:
        pretrained = _phase(paths, config, "pretrained", pre_iters, identity, pre_log,
                            lambda r: pretrain_multitask(fam, train, cfg, pre_iters, seed, dev,
                                                         logger=pre_log, resume=r))
    finally:
        pre_log.close()

    oracle = None
    if not has_closed_form_oracle(fam, train.tasks):  # MuJoCo, Meta-World: train the oracle
        conditioned = TaskConditionedFamily(fam, train.tasks)
        oracle_log = _History(pre_iters, "oracle (task-conditioned)")
        try:
            oracle = _phase(paths, config, "oracle", pre_iters, identity, oracle_log,
                            lambda r: pretrain_multitask(conditioned, train, cfg, pre_iters,
                                                         seed, dev, logger=oracle_log,
                                                         resume=r))
        finally:
            oracle_log.close()

    common = {"family": config.task.family,
              "family_config": to_dict(config.task.family_config()), "algo": algo.name,
              "train_task_hash": train.content_hash, "tuned": tuned, "seed": config.train.seed}
    ckpt = policy_config(pretrained.policy, cfg.hidden_sizes, cfg.inner_lr, cfg.discount,
                         algo_config=to_dict(cfg), **common)
    with atomic_directory(paths.models) as tmp:
        saved = algo.save(trained, tmp / f"{algo.name}.pt")
        atomic_write_json(tmp / f"{algo.name}.json",
                          {**saved, **common, "train_budget": budget(history.rows, iters,
                                                                     episodes, fam.max_steps)})
        save_params(pretrained.params, tmp / "pretrained.pt")
        atomic_write_json(tmp / "config.json", ckpt)
        if oracle is not None:
            save_params(oracle.params, tmp / "oracle.pt")
            atomic_write_json(tmp / "oracle.json", policy_config(
                oracle.policy, cfg.hidden_sizes, cfg.inner_lr, cfg.discount,
                algo_config=to_dict(cfg), oracle="task-conditioned",
                feature_mean=conditioned.mean.tolist(), feature_scale=conditioned.scale.tolist(),
                **common))
        if mlflow.active_run() is not None:  # this run is the registered version's source
            weights, model_config = tmp / f"{algo.name}.pt", tmp / f"{algo.name}.json"
            write_logged(tmp, log_model(weights, model_config), weights, model_config)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history.rows[0]))
    writer.writeheader()
    writer.writerows(history.rows)
    atomic_write_text(paths.plots / "train_curve.csv", buf.getvalue())
    clear_train_state(paths)
    final = history.rows[-1]
    if mlflow.active_run() is not None:
        mlflow.log_params(flatten("algo", config.algo.identity()))
        mlflow.log_params(flatten("train", to_dict(config.train)))
        mlflow.set_tag("task_hash.train", train.content_hash)
        mlflow.log_artifacts(str(paths.models), artifact_path="checkpoint")
    return {**{k: v for k, v in final.items() if k != "iteration"}, "tuned": tuned}
