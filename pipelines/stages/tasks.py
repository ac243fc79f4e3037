"""Stage ``tasks``: sample the train / val / test task sets and write them as hashed JSON."""

from __future__ import annotations

import mlflow

from metarl.config import to_dict
from metarl.tasks import sample_task_sets
from pipelines.io import atomic_write_text
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig
from pipelines.stages.common import family
from pipelines.tracking import flatten


def run(config: PipelineConfig, paths: Paths) -> dict[str, str]:
    """Write ``data/tasks/{train,val,test}.json``; return each split's content hash."""
    t = config.task
    fam = family(config)
    sets = sample_task_sets(fam, {"train": t.num_train, "val": t.num_val, "test": t.num_test},
                            t.seed)
    for split, task_set in sets.items():
        task_set.check(fam, source=f"sampled {split} tasks")  # a family that fails its own check
    for split, task_set in sets.items():
        atomic_write_text(paths.task_set(split), task_set.to_json())
    hashes = {split: s.content_hash for split, s in sets.items()}
    if mlflow.active_run() is not None:
        mlflow.log_params(flatten("task", to_dict(t)))
        mlflow.set_tags({f"task_hash.{split}": h for split, h in hashes.items()})
    return hashes
