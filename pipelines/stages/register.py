"""Stage ``register``: log the model, register a version, and gate the ``@champion`` alias.

The gate scores the model it registers: nothing is taken from ``metrics/meta_test.json``.
The checkpoint in ``models/`` is evaluated now, on the test tasks, seeds and protocol of
``evaluate``, and so is its reference: the current ``@champion`` (loaded from the registry as
data only, see :mod:`pipelines.model`), or, for a model name's first version, the best of the
baselines trained beside it (pretrained, scratch, random). Promotion is a paired decision:
per-task differences (candidate minus reference, in normalised units where the family has a
closed-form oracle, else in return units), a bootstrap interval of their mean, and
``@champion`` moves only when the interval's lower end is above ``register.margin``. Both
scores, the interval and the decision go on the version (tags and description) and in
``metrics/register.json``. Every new version gets ``@challenger``. ``metrics/summary.json``, the
pipeline's DVC metrics, puts the decision beside evaluate's headline scores (read from
``metrics/meta_test.json`` for that file only; see :func:`write_summary`).

Every version gets a model card (:mod:`pipelines.model_card`): family, algorithm, tuned
values, training budget, task-set hashes, evaluate's meta-test table, the gate's numbers, the
git commit, package versions and how to use it. It is the version's description (its first
paragraph the gate's one-sentence summary), the artifact ``model_card.md`` of the registering
run, and ``reports/model_card.md``. A reused version (below) gets the card of the gate that
re-ran, description and ``gate.*`` tags alike, so the registry, the artifact and the project's
files always tell the same story.

A failure leaves the registry as it was: everything that can fail without touching it runs
first, and a failure after the version is created (setting an alias, writing ``summary.json``,
``reports/model_card.md`` or ``register.json``) deletes that version (or, reused, puts its
description and tags back) and puts the aliases back; the files it wrote are removed. The
registration is also idempotent: a version carries a ``registration_key`` tag (a hash of the
checkpoint, the test set and the protocol), and registering the same key again — a Prefect
retry after a crash, a forced ``dvc repro`` — reuses that version instead of adding one.

Two registrations into one registry at once — queued ``dvc exp run`` jobs, parallel Prefect
runs, pipelines on several machines — take turns: the gate, from reading ``@champion`` to
moving it, runs under one exclusive lock (:func:`registry_lock`), so the champion is always
the better of the two, never the last writer. MLflow's registry has no compare-and-set, so the
lock lives beside it: an ``flock`` on ``<database>.register.lock`` for a local SQLite
registry, and a PostgreSQL advisory lock for a shared one — the tracking store's own server
when ``tracking.uri`` is ``postgresql://``, or, behind an MLflow tracking server, the server
that ``METARL_REGISTRY_LOCK=postgresql://...`` names (every registering machine sets it; the
Optuna or MLflow database's server does). A tracking server without it is not locked.
:func:`promote` moves ``@champion`` by hand (``metarl promote NAME VERSION``), to
roll back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from metarl.algos import registry
from metarl.algos.base import MetaLearner, RandomLearner, Served
from metarl.baselines.oracles import oracle_returns
from metarl.evaluation import (
    CurveSummary,
    comparable_score,
    meta_test,
    post_adapt_per_task,
    score_scale,
)
from metarl.tasks import TaskFamily, TaskSet
from pipelines import model_card, stats
from pipelines.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipelines.locks import LockTimeout, exclusive, is_postgresql
from pipelines.model import (
    ArtifactError,
    load_registered,
    log_model,
    registered_by,
    trained_model_uri,
)
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig, redact
from pipelines.stages.common import (
    StageError,
    checkpoint_files,
    device,
    family,
    load_task_set,
)
from pipelines.stages.evaluate import BASELINES, learners
from pipelines.stages.evaluate import headline as evaluate_headline
from pipelines.stages.evaluate import report as meta_test_report
from pipelines.tracking import git_commit, package_versions

LOCK_TIMEOUT = 900.0
"""Seconds a registration waits for another one on the same registry before giving up."""


REGISTRY_LOCK_ENV = "METARL_REGISTRY_LOCK"
"""A PostgreSQL URL whose server holds the registration lock (an advisory lock): set it where
the registry is an MLflow tracking *server*, on every machine that registers."""
REGISTRY_LOCK_NAME = "metarl-registry"
"""The advisory lock's name (one per PostgreSQL server: every model's registrations)."""


@contextmanager
def registry_lock(uri: str, timeout: float | None = None) -> Iterator[Path | str | None]:
    """Hold the exclusive registration lock of the registry at ``uri``; yield what was locked.

    * ``METARL_REGISTRY_LOCK`` set, or ``uri`` a ``postgresql://`` store: PostgreSQL's advisory
      lock :data:`REGISTRY_LOCK_NAME` on that server (yields the name); every machine whose
      registrations go to the one registry takes turns, and a holder that dies (its
      connection closes) releases it.
    * a ``sqlite:///`` store: an ``flock`` on ``<database>.register.lock`` (yields its path);
      the OS drops it when its holder exits, however it exits.
    * anything else (a tracking server with no lock URL): no lock (yields None); see the module
      docstring.

    Raises:
        StageError: another registration held the lock for ``timeout`` seconds.

    """
    wait = LOCK_TIMEOUT if timeout is None else timeout
    server = os.environ.get(REGISTRY_LOCK_ENV) or (uri if is_postgresql(uri) else None)
    if server is not None and not is_postgresql(server):
        raise StageError(f"{REGISTRY_LOCK_ENV}={redact(server)!r}: the registration lock is a "
                         "PostgreSQL advisory lock; give a postgresql://user:password@host/db "
                         "URL that every registering machine reaches")
    prefix = "sqlite:///"
    if server is None and not uri.startswith(prefix):
        yield None
        return
    where = server or uri[len(prefix):] + ".register.lock"
    try:
        with exclusive(where, REGISTRY_LOCK_NAME, wait) as held:
            yield Path(held) if server is None else held
    except LockTimeout:
        raise StageError(
            f"tracking.uri={redact(uri)!r}: another registration has held {redact(where)} for "
            f"{wait:.0f} s; wait for it to finish (a lock whose holder has exited is released) "
            "and re-run `metarl stage register`") from None


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


def registration_key(weights: Path, config_path: Path, test_hash: str, protocol: str) -> str:
    """What identifies one registration: checkpoint bytes, test set and evaluation protocol."""
    digest = hashlib.sha256()
    for part in (weights.read_bytes(), config_path.read_bytes(), test_hash.encode(),
                 protocol.encode()):
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


def repair_hint(name: str) -> str:
    """How to point ``@champion`` of ``name`` at a version that loads, or drop it."""
    return (f"repair the alias: `metarl promote {name} VERSION` (a version that loads) or "
            f"`MlflowClient().delete_registered_model_alias({name!r}, 'champion')`")


def load_version(version: Any, fam_name: str | None) -> MetaLearner:
    """The learner of a registered version, read as data only (see :mod:`pipelines.model`).

    Raises:
        StageError: the artifact is missing, unreadable or tampered with, or was trained on
            another family; the message says how to repair the alias.

    """
    name = version.name
    try:
        learner, ckpt = load_registered(f"models:/{name}/{version.version}")
    except ArtifactError as err:
        raise StageError(f"register.model_name={name!r}: version {version.version} cannot be "
                         f"loaded: {err}; {repair_hint(name)}") from None
    if fam_name is not None and ckpt.get("family") != fam_name:
        raise StageError(f"register.model_name={name!r}: version {version.version} was trained "
                         f"on family {ckpt.get('family')!r}, not {fam_name!r}; use another "
                         "model_name")
    return learner  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GateScores:
    """Per-task post-adaptation scores of the candidate and its possible references."""

    per_task: dict[str, np.ndarray]
    """Learner name → ``[N]`` return after the last adaptation step (seed-averaged)."""
    random_return: float
    """Random's mean return on the same tasks and seeds (the 0 of normalised scores)."""
    oracle: float
    """The oracle's mean return on those tasks (NaN where there is none)."""

    @property
    def scale(self) -> float | None:
        """``R_oracle - R_random``, the unit of the gate's comparison; None: raw returns."""
        return score_scale(self.random_return, self.oracle)

    def score(self, name: str) -> float:
        """The mean score of ``name``: normalised where there is a scale, else the raw return."""
        return comparable_score(float(self.per_task[name].mean()), self.random_return,
                                self.oracle)

    def compare(self, candidate: str, reference: str, level: float) -> stats.PairedComparison:
        """Paired bootstrap of ``candidate - reference`` in the gate's units.

        Tasks are resampled, each with both its scores (:func:`pipelines.stats.
        paired_comparison`).
        """
        unit = 1.0 if self.scale is None else self.scale
        return stats.paired_comparison(self.per_task[candidate] / unit,
                                       self.per_task[reference] / unit, stats.generator(),
                                       level=level)


def gate_scores(learners_: dict[str, MetaLearner], config: PipelineConfig, fam: TaskFamily,
                test: TaskSet, dev: str) -> GateScores:
    """Evaluate ``learners_`` (``random`` among them) with ``evaluate``'s protocol."""
    ev = config.evaluate
    res: dict[str, CurveSummary] = meta_test(learners_, fam, test, ev.num_adapt_steps,
                                             ev.episodes_per_task, ev.seeds, dev)
    oracle = float(oracle_returns(fam, test.tasks).mean())
    random_return = float(res["random"].mean[0])
    per_task = {name: post_adapt_per_task(s) for name, s in res.items()}
    per_task["random"] = res["random"].per_task[:, 0, :].mean(0)  # random does not adapt
    return GateScores(per_task, random_return, oracle)


def _check_reported(paths: Paths, algo: str, measured: float, k: int) -> None:
    """Warn when ``metrics/meta_test.json`` disagrees with what the gate measured."""
    path = paths.metrics / "meta_test.json"
    try:
        reported = json.loads(path.read_text())[algo][f"return_post_adapt_k{k}"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(reported, float) and abs(reported - measured) > 1e-6 * max(1.0, abs(measured)):
        print(f"register: {path} says {algo} returns {reported:.4f} after {k} steps, but the "
              f"checkpoint in models/ returns {measured:.4f} on the same protocol: the file is "
              "stale or was edited (re-run `metarl stage evaluate`); the gate uses its own "
              "measurement", file=sys.stderr)


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Register the trained meta-learner; write metrics/register.json and summary.json."""
    fam, dev = family(config), device(config)
    test = load_task_set(paths, "test", config, fam)
    weights, config_path = checkpoint_files(paths, config.algo.name)
    candidates = learners(paths, config)  # fails now, before the registry, if a file is bad
    with registry_lock(mlflow.get_tracking_uri()):
        return _gate(config, paths, fam, test, dev, weights, config_path, candidates,
                     MlflowClient())


def _decide(config: PipelineConfig, fam: TaskFamily, test: TaskSet, dev: str,
            candidates: dict[str, MetaLearner], champion: Any | None) -> dict[str, Any]:
    """Score the candidate against its reference; the decision and its evidence."""
    algo, name = config.algo.name, config.model_name
    if champion is not None:
        pool = {algo: candidates[algo], "champion": load_version(champion, config.task.family),
                "random": RandomLearner()}
        scores = gate_scores(pool, config, fam, test, dev)
        reference = "champion"
    else:
        scores = gate_scores(candidates, config, fam, test, dev)
        reference = max(BASELINES, key=scores.score)  # the best baseline on these tasks
    level = config.register.confidence
    cmp = scores.compare(algo, reference, level)
    margin = config.register.margin
    promote = cmp.ci_low > margin
    units = "normalized" if scores.scale is not None else "return"
    against = f"champion v{champion.version}" if champion is not None else \
        f"the best baseline ({reference})"
    verdict = "promoted to @champion" if promote else "not promoted"
    reason = (f"{verdict}: {name} scores {scores.score(algo):.4f} vs {scores.score(reference):.4f}"
              f" for {against} ({units} post-adaptation score, {cmp.num_tasks} test tasks "
              f"{test.content_hash}, seeds {list(config.evaluate.seeds)}); mean paired "
              f"difference {cmp.mean_difference:+.4f}, {level:.0%} bootstrap interval "
              f"[{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}], lower end "
              f"{'>' if promote else '<='} margin {margin}")
    return {"promoted": promote, "reason": reason, "score": scores.score(algo),
            "reference": reference, "reference_score": scores.score(reference),
            "difference": cmp.mean_difference, "ci": [cmp.ci_low, cmp.ci_high],
            "level": level, "margin": margin, "units": units,
            "baselines": ({b: scores.score(b) for b in BASELINES} if champion is None else {}),
            "measured_return": float(scores.per_task[algo].mean())}


def _gate(config: PipelineConfig, paths: Paths, fam: TaskFamily, test: TaskSet, dev: str,
          weights: Path, config_path: Path, candidates: dict[str, MetaLearner],
          client: MlflowClient) -> dict[str, Any]:
    """Register ``weights`` and move the aliases (under the registry lock); see the module."""
    name, ev = config.model_name, config.evaluate
    champion = champion_version(client, name)
    decision = _decide(config, fam, test, dev, candidates, champion)
    _check_reported(paths, config.algo.name, decision.pop("measured_return"),
                    ev.num_adapt_steps)
    protocol = json.dumps([list(ev.seeds), ev.num_adapt_steps, ev.episodes_per_task])
    key = registration_key(weights, config_path, test.content_hash, protocol)
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
    before: tuple[str | None, dict[str, str]] | None = None  # a reused version's, to restore
    promote = bool(decision["promoted"])
    try:
        if version is None:
            # the model the train run logged (the version's source run), if models/ is still
            # what it logged; else logged to this run
            model_uri = (trained_model_uri(paths.models, weights, config_path)
                         or log_model(weights, config_path).model_uri)
            version = mlflow.register_model(model_uri, name, tags={
                "test_task_hash": test.content_hash, "family": config.task.family,
                "algo": config.algo.name, "registration_key": key, **registered_by(),
                **gate_tags(decision)})
            created = str(version.version)
        if str(version.version) == aliases["champion"]:
            promote = False  # the same registration is already the champion
            decision["reason"] = f"not promoted: version {version.version} is the champion"
        client.set_registered_model_alias(name, "challenger", version.version)
        if promote:
            client.set_registered_model_alias(name, "champion", version.version)
        result = {"model_name": name, "version": int(version.version), **decision,
                  "promoted": promote,
                  "champion_score_before": (decision["reference_score"]
                                            if champion is not None else None),
                  "champion_version_before": int(champion.version) if champion else None,
                  "test_task_hash": test.content_hash, "seeds": list(ev.seeds),
                  "reused_version": reused}
        after = {"champion": str(version.version) if promote else aliases["champion"],
                 "challenger": str(version.version)}
        card = model_card.render(card_facts(config, paths, test, result, version, after, key,
                                            candidates[config.algo.name], config_path))
        if reused:  # the gate re-ran: its card and tags replace the earlier ones
            before = (version.description, dict(version.tags))
            for tag, value in gate_tags(result).items():
                client.set_model_version_tag(name, version.version, tag, value)
        client.update_model_version(name, version.version,
                                    description=model_card.description(card))
        mlflow.log_metrics({"register/score": decision["score"],
                            "register/reference_score": decision["reference_score"],
                            "register/difference_ci_low": decision["ci"][0],
                            "register/promoted": float(promote)})
        mlflow.log_text(card, CARD_ARTIFACT)
        write_outputs(paths, result, config.algo.name, card)
    except BaseException:
        if created is None and not reused:  # register_model failed part-way
            leftover = _existing_version(client, name, key)
            created = str(leftover.version) if leftover is not None else None
        if before is not None and version is not None:
            _restore_version(client, name, str(version.version), *before, set(gate_tags(result)))
        _roll_back(client, name, aliases, created, model_existed)
        raise
    print(f"register: {name} version {version.version}: {decision['reason']}", file=sys.stderr)
    return result


CARD_ARTIFACT = "model_card.md"
"""The card's artifact path on the registering run (``reports/model_card.md`` in the project)."""


def card_path(paths: Paths) -> Path:
    """``reports/model_card.md``: the card of the version registered last."""
    return paths.reports / CARD_ARTIFACT


def _restore_version(client: MlflowClient, name: str, version: str, description: str | None,
                     tags: dict[str, str], changed: set[str]) -> None:
    """Put a reused version's description and ``changed`` tags back, each step on its own."""
    _quietly(client.update_model_version, name, version, description or "")
    for tag in sorted(changed):
        if tag in tags:
            _quietly(client.set_model_version_tag, name, version, tag, tags[tag])
        else:
            _quietly(client.delete_model_version_tag, name, version, tag)


def write_outputs(paths: Paths, result: dict[str, Any], algo: str, card: str) -> None:
    """``summary.json``, ``reports/model_card.md``, then ``register.json``: all or none.

    Each file is written atomically; when one fails, the files are put back as they were
    (removed where there was none), so a failed registration leaves the previous outputs,
    matching the registry it rolls back to, never a mix of old and new.
    """
    targets = (paths.metrics / "summary.json", card_path(paths), paths.metrics / "register.json")
    previous = {path: path.read_bytes() if path.is_file() else None for path in targets}
    try:
        write_summary(paths, result, algo)
        atomic_write_text(card_path(paths), card)
        atomic_write_json(paths.metrics / "register.json", result)  # last: only on success
    except BaseException:
        for path, data in previous.items():
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(path, data)
            except OSError:
                path.unlink(missing_ok=True)
        raise


def _task_file(paths: Paths, split: str) -> tuple[str, int | None]:
    """The content hash and size of ``data/tasks/<split>.json`` (``unknown`` if unreadable)."""
    try:
        data = json.loads(paths.task_set(split).read_text())
        return str(data["content_hash"]), len(data["tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown", None


def card_facts(config: PipelineConfig, paths: Paths, test: TaskSet, result: dict[str, Any],
               version: Any, aliases: dict[str, str | None], key: str, learner: MetaLearner,
               config_path: Path) -> model_card.CardFacts:
    """What the card of ``version`` says (see :mod:`pipelines.model_card`)."""
    algo = config.algo.name
    meta_test_ = read_meta_test(paths, algo, test.content_hash)
    table = (meta_test_report(meta_test_, config.evaluate.num_adapt_steps, test.content_hash,
                              config.evaluate.seeds) if meta_test_ is not None else None)
    summary = registry.get(algo).summary if algo in registry.algorithms() else ""
    run = mlflow.active_run()
    return model_card.CardFacts(
        record=result, gate_sentence=f"Registry gate: {result['reason']}.",
        checkpoint=json.loads(config_path.read_text()), algo_summary=summary,
        task_sets={"train": _task_file(paths, "train"), "val": _task_file(paths, "val"),
                   "test": (test.content_hash, len(test))},
        meta_test=table, aliases=aliases, registration_key=key,
        registered_by=getattr(version, "run_id", None),
        card_run=run.info.run_id if run is not None else None,
        written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        git_commit=git_commit(paths.root), packages=package_versions(),
        serving=cast(Served, learner).serving_spec(), example_task=dict(test.tasks[0]),
        num_adapt_steps=config.evaluate.num_adapt_steps)


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The gate's decision for ``metrics/summary.json`` (the whole record: register.json)."""
    return {**{key: result[key] for key in ("version", "promoted", "score", "reference",
                                           "reference_score", "difference")},
            "ci_low": result["ci"][0], "ci_high": result["ci"][1]}


def write_summary(paths: Paths, result: dict[str, Any], algo: str) -> Path:
    """Write ``metrics/summary.json``, the pipeline's DVC metrics: the headline scores.

    Evaluate's part comes from ``metrics/meta_test.json`` (see
    :func:`pipelines.stages.evaluate.headline`), the gate's from ``result`` (:func:`headline`).
    Evaluate's part is left out, with a warning, when ``meta_test.json`` is missing or is not
    this model's on these test tasks (re-run ``metarl stage evaluate``).
    """
    path = paths.metrics / "meta_test.json"
    meta_test_ = read_meta_test(paths, algo, result["test_task_hash"])
    try:
        part = evaluate_headline(meta_test_) if meta_test_ is not None else {}
    except (KeyError, TypeError):
        meta_test_, part = None, {}
    if meta_test_ is None:
        print(f"register: {path} is missing or not {algo}'s on test tasks "
              f"{result['test_task_hash']}; metrics/summary.json gets the gate's numbers only "
              "(re-run `metarl stage evaluate`)", file=sys.stderr)
    summary = paths.metrics / "summary.json"
    atomic_write_json(summary, {**part, "gate": headline(result)})
    return summary


def read_meta_test(paths: Paths, algo: str, test_hash: str) -> dict[str, Any] | None:
    """``metrics/meta_test.json`` when it is ``algo``'s on test tasks ``test_hash``, else None."""
    try:
        meta_test_ = json.loads((paths.metrics / "meta_test.json").read_text())
        fresh = meta_test_["learner"] == algo and meta_test_["test_task_hash"] == test_hash
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta_test_ if fresh else None


def gate_tags(decision: dict[str, Any]) -> dict[str, str]:
    """The gate's evidence as model-version tags (``gate.*``)."""
    return {"gate.decision": "promoted" if decision["promoted"] else "not promoted",
            "gate.reference": decision["reference"], "gate.units": decision["units"],
            "gate.score": f"{decision['score']:.6f}",
            "gate.reference_score": f"{decision['reference_score']:.6f}",
            "gate.difference": f"{decision['difference']:.6f}",
            "gate.ci_low": f"{decision['ci'][0]:.6f}", "gate.ci_high": f"{decision['ci'][1]:.6f}",
            "gate.level": str(decision["level"]), "gate.margin": str(decision["margin"])}


def promote(name: str, version: int) -> dict[str, Any]:
    """Point ``@champion`` of ``name`` at ``version`` by hand (a rollback), if it loads.

    Raises:
        StageError: no such version, or its artifact does not load (the alias is unchanged).

    """
    client = MlflowClient()
    with registry_lock(mlflow.get_tracking_uri()):
        try:
            target = client.get_model_version(name, str(version))
        except MlflowException:
            known = sorted(int(v.version) for v in client.search_model_versions(
                f"name='{name}'")) if "'" not in name else []
            raise StageError(f"promote {name!r} {version}: no such version (versions: "
                             f"{known or 'none'})") from None
        load_version(target, None)
        before = champion_version(client, name)
        client.set_registered_model_alias(name, "champion", target.version)
        client.set_model_version_tag(name, target.version, "gate.manual_promotion",
                                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return {"model_name": name, "champion": int(target.version),
            "previous_champion": int(before.version) if before is not None else None}
