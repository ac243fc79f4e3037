"""Stage ``train``: meta-train MAML and, on the same budget, the multi-task baseline."""

from __future__ import annotations

import csv
import io
from typing import Any

import mlflow

from metarl.algos.maml import train_maml
from metarl.algos.pretrain import pretrain_multitask
from metarl.checkpoint import policy_config, save_params
from metarl.config import to_dict
from pipelines.io import atomic_directory, atomic_write_json, atomic_write_text
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig
from pipelines.stages.common import device, family, load_task_set
from pipelines.stages.tune import read_best
from pipelines.tracking import MlflowLogger, flatten


class _History(MlflowLogger):
    """Keeps every row for the training-curve CSV as well."""

    def __init__(self, total: int, description: str) -> None:
        super().__init__(total, description)
        self.rows: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        self.rows.append({"iteration": step, **metrics})


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Write ``models/`` (weights + config JSON) and ``plots/train_curve.csv``."""
    fam, dev = family(config), device(config)
    train = load_task_set(paths, "train", config)
    tuned = read_best(paths.best_params, config.algo.name)
    config = config.with_algo_overrides(tuned)
    cfg, iters = config.algo.maml, config.train.num_iterations
    history = _History(iters, "meta-train maml")
    try:
        maml = train_maml(fam, train, cfg, iters, config.train.seed, dev, logger=history)
    finally:
        history.close()
    pre_iters = iters * (cfg.num_inner_steps + 1)  # same number of episodes as MAML
    pre_log = MlflowLogger(pre_iters, "pretrain multi-task")
    try:
        pretrained = pretrain_multitask(fam, train, cfg, pre_iters, config.train.seed, dev,
                                        logger=pre_log)
    finally:
        pre_log.close()

    ckpt = policy_config(maml.policy, cfg.hidden_sizes, cfg.inner_lr, cfg.discount,
                         family=config.task.family,
                         family_config=to_dict(config.task.family_config()),
                         algo=config.algo.name, algo_config=to_dict(cfg),
                         train_task_hash=train.content_hash, tuned=tuned,
                         seed=config.train.seed)
    with atomic_directory(paths.models) as tmp:
        save_params(maml.learner().params, tmp / "maml.pt")
        save_params(pretrained.params, tmp / "pretrained.pt")
        atomic_write_json(tmp / "config.json", ckpt)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history.rows[0]))
    writer.writeheader()
    writer.writerows(history.rows)
    atomic_write_text(paths.plots / "train_curve.csv", buf.getvalue())
    final = history.rows[-1]
    if mlflow.active_run() is not None:
        mlflow.log_params(flatten("algo", to_dict(config.algo)))
        mlflow.log_params(flatten("train", to_dict(config.train)))
        mlflow.set_tag("task_hash.train", train.content_hash)
        mlflow.log_artifacts(str(paths.models), artifact_path="checkpoint")
    return {"train/return_post_adapt": final["train/return_post_adapt"],
            "train/return_pre_adapt": final["train/return_pre_adapt"], "tuned": tuned}
