"""Stage ``register``: log the model, register a version, and gate the ``@champion`` alias.

Every new version gets ``@challenger``. It also gets ``@champion`` when there is none yet, or
when its normalised post-adaptation score beats the current champion's by more than
``register.margin`` — the champion re-evaluated now, on the same test tasks, seeds and protocol
(so a changed test set never compares apples with oranges).

A failure leaves the registry as it was: everything that can fail without touching it runs
first, and a failure after the version is created (setting an alias, writing
``register.json``) deletes that version and puts the aliases back. The registration is also
idempotent: a version carries a ``registration_key`` tag (a hash of the checkpoint, the test set
and the score), and registering the same key again — a Prefect retry after a crash, a forced
``dvc repro`` — reuses that version instead of adding one.

Two registrations into one local (SQLite) registry at once — queued ``dvc exp run`` jobs,
parallel Prefect runs — take turns: the gate, from reading ``@champion`` to moving it, runs
under an exclusive lock on ``<database>.register.lock``, so the champion is always the better
of the two, never the last writer. MLflow's registry has no compare-and-set, so against a
tracking *server* this lock cannot be taken and concurrent registrations are the user's to
serialise.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from metarl.algos.base import RandomLearner
from metarl.baselines.task_conditioned import has_closed_form_oracle
from metarl.checkpoint import load_learner, read_config
from metarl.evaluation import meta_test, normalized
from metarl.tasks import TaskFamily, TaskSet
from pipelines.io import atomic_write_json
from pipelines.model import log_model
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig
from pipelines.stages.common import (
    StageError,
    checkpoint_files,
    device,
    family,
    load_task_set,
)

LOCK_TIMEOUT = 900.0
"""Seconds a registration waits for another one on the same registry before giving up."""


@contextmanager
def registry_lock(uri: str, timeout: float | None = None) -> Iterator[Path | None]:
    """Hold the exclusive registration lock of a ``sqlite:///`` registry (yields its path).

    Any other URI yields None without locking (see the module docstring). The lock is an
    ``flock`` on ``<database>.register.lock``: the OS drops it when its holder exits, however it
    exits, so a crashed registration never blocks the next one.

    Raises:
        StageError: another registration held the lock for ``timeout`` seconds.

    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield None
        return
    import fcntl  # POSIX; the SQLite store is local by definition

    wait = LOCK_TIMEOUT if timeout is None else timeout
    path = Path(uri[len(prefix):] + ".register.lock")
    with path.open("a") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StageError(
                        f"tracking.uri={uri!r}: another registration has held {path} for "
                        f"{wait:.0f} s; wait for it to finish (a lock whose process has exited "
                        f"is released by the OS) and re-run `metarl stage register`") from None
                time.sleep(0.2)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alias_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The version under ``@alias`` of model ``name``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_version(client: MlflowClient, name: str) -> Any | None:
    """The version under ``@champion``, or None."""
    return alias_version(client, name, "champion")


def _version_str(version: Any | None) -> str | None:
    return None if version is None else str(version.version)


def registration_key(weights: Path, config_path: Path, test_hash: str, score: float) -> str:
    """What identifies one registration: checkpoint bytes, test set and gate score."""
    digest = hashlib.sha256()
    for part in (weights.read_bytes(), config_path.read_bytes(), test_hash.encode(),
                 f"{score:.6f}".encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:32]


def _existing_version(client: MlflowClient, name: str, key: str) -> Any | None:
    """The ready version tagged with ``key``, or None (also when the search fails)."""
    if "'" in name:  # cannot be quoted in a filter string; no reuse for such names
        return None
    try:
        found = client.search_model_versions(
            f"name='{name}' and tags.registration_key='{key}'")
    except MlflowException as err:
        print(f"register: searching {name!r} for an earlier registration failed ({err}); "
              "registering a new version", file=sys.stderr)
        return None
    ready = [v for v in found if getattr(v, "status", "READY") == "READY"]
    return max(ready, key=lambda v: int(v.version)) if ready else None


def _quietly(step: Callable[..., Any], *args: Any) -> None:
    try:
        step(*args)
    except MlflowException:
        pass  # the error being rolled back for is the one to report


def _roll_back(client: MlflowClient, name: str, aliases: dict[str, str | None],
               created: str | None, model_existed: bool) -> None:
    """Put the aliases back and delete what this call created; each step on its own."""
    for alias, version in aliases.items():
        if version is not None:
            _quietly(client.set_registered_model_alias, name, alias, version)
        elif alias_version(client, name, alias) is not None:
            _quietly(client.delete_registered_model_alias, name, alias)
    if created is not None:
        _quietly(client.delete_model_version, name, created)
    if not model_existed:
        try:  # only if no one else registered a version meanwhile
            empty = not client.search_model_versions(f"name='{name}'")
        except MlflowException:
            empty = False
        if empty:
            _quietly(client.delete_registered_model, name)


def score_version(version: Any, config: PipelineConfig, fam: TaskFamily, test: TaskSet,
                  dev: str) -> float:
    """Normalised post-adaptation score of a registered version on ``test``, evaluated now."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=tmp))
        ckpt = read_config(next(p for p in local.rglob("*.json")
                                if p.name in ("config.json", "rl2.json")))
        if ckpt.get("family") != config.task.family:
            raise StageError(f"register.model_name={version.name!r}: its champion was trained "
                             f"on family {ckpt.get('family')!r}, not {config.task.family!r}; "
                             "use another model_name")
        learner = load_learner(next(local.rglob("*.pt")), ckpt)
    ev = config.evaluate
    res = meta_test({"champion": learner, "random": RandomLearner()}, fam, test,
                    ev.num_adapt_steps, ev.episodes_per_task, ev.seeds, dev)
    oracle = float(fam.oracle_returns(list(test.tasks)).mean())
    if not np.isfinite(oracle) or abs(oracle - res["random"].mean[0]) < 1e-9:
        # no closed-form oracle (MuJoCo, Meta-World), or random already at the oracle's
        # return (nothing to normalise by): compare raw returns, as run() does
        return float(res["champion"].mean[-1])
    return float(normalized(res["champion"].mean[-1], res["random"].mean[0], oracle))


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Register the trained meta-learner; write metrics/register.json."""
    fam, dev = family(config), device(config)
    test = load_task_set(paths, "test", config)
    metrics_path = paths.metrics / "meta_test.json"
    if not metrics_path.exists():
        raise StageError(f"{metrics_path}: missing; run `metarl stage evaluate` first")
    summary = json.loads(metrics_path.read_text())
    if summary.get("test_task_hash") != test.content_hash:
        raise StageError(f"{metrics_path}: test_task_hash={summary.get('test_task_hash')!r} "
                         f"is stale (test set is {test.content_hash}); re-run evaluate")
    algo = config.algo.name
    if algo not in summary:
        raise StageError(f"{metrics_path}: no results for algo.name={algo!r} (it holds "
                         f"{summary.get('learner')!r}); re-run `metarl stage evaluate`")
    weights, config_path = checkpoint_files(paths, algo)
    ckpt = read_config(config_path)
    load_learner(weights, ckpt)  # fail now, not after registering, if the checkpoint is bad
    # The gate compares like with like: the normalised score where the family has a
    # closed-form oracle, else the raw post-adaptation return (margin in return units), as
    # score_version computes for the champion.
    new_score = summary[algo]["normalized_post_adapt"]
    if not has_closed_form_oracle(fam, test.tasks) or new_score is None:
        new_score = summary[algo][f"return_post_adapt_k{config.evaluate.num_adapt_steps}"]
    new_score = float(new_score)
    with registry_lock(mlflow.get_tracking_uri()):
        return _gate(config, paths, fam, test, dev, weights, config_path, ckpt, new_score,
                     MlflowClient())


def _gate(config: PipelineConfig, paths: Paths, fam: TaskFamily, test: TaskSet, dev: str,
          weights: Path, config_path: Path, ckpt: dict[str, Any], new_score: float,
          client: MlflowClient) -> dict[str, Any]:
    """Register ``weights`` and move the aliases (under the registry lock); see the module."""
    name, margin = config.model_name, config.register.margin
    champion = champion_version(client, name)
    champion_score = (score_version(champion, config, fam, test, dev)
                      if champion is not None else None)
    promote = champion_score is None or new_score > champion_score + margin

    key = registration_key(weights, config_path, test.content_hash, new_score)
    aliases = {"champion": _version_str(champion),
               "challenger": _version_str(alias_version(client, name, "challenger"))}
    version = _existing_version(client, name, key)
    reused = version is not None
    try:
        client.get_registered_model(name)
        model_existed = True
    except MlflowException:
        model_existed = False
    created: str | None = None
    try:
        if version is None:
            info = log_model(weights, config_path, int(ckpt["obs_dim"]))
            version = mlflow.register_model(info.model_uri, name, tags={
                "test_task_hash": test.content_hash,
                "normalized_post_adapt": f"{new_score:.4f}", "family": config.task.family,
                "algo": config.algo.name, "registration_key": key})
            created = str(version.version)
        if str(version.version) == aliases["champion"]:
            promote = False  # the same registration is already the champion
        client.set_registered_model_alias(name, "challenger", version.version)
        if promote:
            client.set_registered_model_alias(name, "champion", version.version)
        mlflow.log_metrics({"register/score": new_score, "register/promoted": float(promote)})
        if champion_score is not None:
            mlflow.log_metric("register/champion_score_before", champion_score)
        result = {"model_name": name, "version": int(version.version), "promoted": promote,
                  "score": new_score, "champion_score_before": champion_score,
                  "champion_version_before": int(champion.version) if champion else None,
                  "margin": margin, "test_task_hash": test.content_hash,
                  "reused_version": reused}
        atomic_write_json(paths.metrics / "register.json", result)  # last: only on success
    except BaseException:
        if created is None and not reused:  # register_model failed part-way
            leftover = _existing_version(client, name, key)
            created = str(leftover.version) if leftover is not None else None
        _roll_back(client, name, aliases, created, model_existed)
        raise
    return result
