"""Stage ``tune``: Optuna search over the step sizes, scored on validation tasks only.

Each algorithm's registry entry says which of its keys are searched and in which range
(``search_space``: a key → ``tune.inner_lr`` or ``tune.outer_lr``, log-uniform). The objective,
named ``val_return_post_adapt`` in the study, trains with the same ``Algorithm.train`` as the
train stage and scores with the same :func:`metarl.evaluation.adaptation_curve` as evaluate, on
the *val* split. ``tune.sampler`` picks TPE, random search or CMA-ES, ``tune.pruner`` the
median pruner, successive halving or none; intermediate scores go to the pruner. The study
persists (a journal file by default, which ``optuna-dashboard tuning/study.journal`` opens)
under a name derived from everything that defines it, so a re-run resumes it and runs only the
trials still missing. A temporary or queued ``dvc exp run`` tunes in the project's own journal
(:func:`pipelines.tracking.workspace_root`) and leaves a copy of it as its DVC output.

Resuming is exact: the study ends with ``tune.n_trials`` finished (complete or pruned) trials,
the same ones, with the same values, whether or not a run was killed on the way.

* A worker runs trials one at a time, and the trial created after *k* others that did not
  fail (finished or running) is sampled by a sampler (each of ``tune.sampler``'s) seeded with
  ``tune.seed + k``; with one worker that is the trial after *k* finished ones, so it draws
  from the same seed and the same history (the samplers ignore failed trials; CMA-ES restores
  its state from the finished trials) however many times the study was interrupted.
* Many workers share a study: ``tune.n_workers`` processes of the stage on this machine (one
  torch thread each), and ``metarl tune-worker`` from any machine. Counting the trials and
  creating the next one happen under one lock (:func:`creation_lock`: a PostgreSQL advisory
  lock for a ``postgresql://`` storage, an ``flock`` on the journal's or SQLite file's
  directory otherwise), so the study ends with exactly ``tune.n_trials`` finished trials, none
  lost and none twice, and no two workers draw from the same seed.
* Each trial's MLflow run id is its user attribute ``mlflow_run_id``; the run's tags name the
  study and the trial number.
* Each trial records its worker (user attributes ``worker_host``, ``worker_pid`` and
  ``worker_started``, written with the trial itself). A run first marks FAIL the RUNNING trials
  of workers on this host that are gone (killed); with a database storage, Optuna's heartbeat
  does the same for workers on other hosts. The MLflow run of such a trial is ended as KILLED.
* A trial failed that way is retried once with its parameters (user attribute ``retry_of``).
* A trial's MLflow run ends FINISHED, with the tag ``optuna.trial_state`` (COMPLETE, PRUNED;
  a pruned one also ``optuna.pruned_at``, the iteration), so a pruned trial is never FAILED.
* Writers lock the journal with ``flock`` (:class:`FlockLock`), which a killed worker cannot
  leave behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
import yaml
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial, TrialState

from metarl.algos.base import MetaLearner
from metarl.algos.registry import TrainContext
from metarl.config import to_dict
from metarl.evaluation import adaptation_curve
from metarl.tasks import TaskFamily, TaskSet
from pipelines.io import atomic_write_bytes, atomic_write_text
from pipelines.locks import advisory_lock, file_lock, is_postgresql
from pipelines.paths import Paths
from pipelines.settings import PipelineConfig, TuneSection
from pipelines.stages.common import check_action_space, device, family, load_task_set
from pipelines.tracking import MlflowLogger, flatten, workspace_root
from pipelines.workers import Worker

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
"""The states of a finished trial: what ``tune.n_trials`` counts."""
STATE_TAG = "optuna.trial_state"
"""The MLflow tag holding the final state of a trial's run."""
HEARTBEAT_INTERVAL_S = 30
"""Database storages: a running trial's heartbeat is written every this many seconds ..."""
GRACE_PERIOD_S = 120
"""... and a trial whose heartbeat is older than this is failed by the next worker."""
POLL_S = 1.0
"""While the missing trials are running in other live workers: seconds between checks."""
METRIC_NAME = "val_return_post_adapt"
"""The study's objective: mean validation return after one adaptation step (maximised)."""
DEFAULT_SAMPLER, DEFAULT_PRUNER = TuneSection.sampler, TuneSection.pruner
"""Left out of the study's name when chosen, so a study begun before the keys existed goes on."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``tune.sampler`` seeded with ``seed`` (a fresh one per trial, see the module)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # the first trial has no search space yet: drawn at random, no warning about it
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """``tune.pruner``: ``median`` (after 2 trials), ``successive_halving`` or ``none``."""
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def validation_score(learner: MetaLearner, fam: TaskFamily, val: TaskSet,
                     episodes_per_task: int, seed: int, dev: str) -> float:
    """Mean return on the validation tasks after one adaptation step."""
    curve = adaptation_curve(learner, fam, val.tasks, 1, episodes_per_task, seed, dev)
    return float(curve[-1].mean())


def is_database(location: str) -> bool:
    """Whether ``tune.storage`` is a database URL (else a journal file path)."""
    return "://" in location


class FlockLock(BaseJournalFileLock):
    """Journal lock: an exclusive ``flock`` on the journal file itself.

    Optuna's default lock is a symlink beside the journal; a worker killed while holding it
    leaves it behind, and the next worker waits 30 s before breaking it. The kernel drops a
    ``flock`` when its holder dies, and locking the journal itself leaves no file behind.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Block until this process holds the lock."""
        import fcntl

        fd = os.open(self._path, os.O_RDWR)  # writable: NFS maps flock to POSIX locks
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock (closing the descriptor drops it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


PARENT_RUN_ENV = "METARL_TUNE_PARENT_RUN"
"""A worker process's trials are MLflow child runs of this run (the tune stage's, when it
started the worker)."""
STORAGE_ENV = "METARL_TUNE_STORAGE"
"""When set, replaces ``tune.storage`` (a database URL with its password belongs here)."""


def storage_location(config: PipelineConfig) -> str:
    """``METARL_TUNE_STORAGE`` when set, else ``tune.storage``."""
    return os.environ.get(STORAGE_ENV) or config.tune.storage


def journal_path(config: PipelineConfig, paths: Paths) -> Path:
    """The journal file: ``tune.storage`` under the project.

    For a temporary or queued experiment's copy, under the project it came from
    (:func:`pipelines.tracking.workspace_root`).
    """
    location = Path(storage_location(config))
    return location if location.is_absolute() else workspace_root(paths.root) / location


def storage(config: PipelineConfig, paths: Paths) -> optuna.storages.BaseStorage:
    """A journal file for a path; for a database URL, its storage with a heartbeat."""
    location = storage_location(config)
    if is_database(location):
        with warnings.catch_warnings():  # the heartbeat is "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(location,
                                              heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                              grace_period=GRACE_PERIOD_S)
    path = journal_path(config, paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()  # a DVC output even when no trial runs (n_trials: 0)
    from optuna.storages.journal import JournalFileBackend

    lock = None if sys.platform == "win32" else FlockLock(str(path))
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def copy_journal(config: PipelineConfig, paths: Paths) -> Path | None:
    """In an experiment's temporary copy, copy the project's journal to the copy's output.

    The copy's own ``tune.storage`` is the stage's DVC output: it gets a snapshot of the
    project's journal, read under the journal's lock. Returns its path, or None where there is
    nothing to copy (the same file, or a database).
    """
    location = storage_location(config)
    if is_database(location):
        return None
    source, target = journal_path(config, paths), paths.resolve(location)
    if target.resolve() == source.resolve():
        return None
    lock = FlockLock(str(source)) if sys.platform != "win32" else None
    if lock is not None:
        lock.acquire()
    try:
        with source.open("rb") as fh:
            data = fh.read()
    finally:
        if lock is not None:
            lock.release()
    atomic_write_bytes(target, data)
    return target


def creation_lock(location: str, journal: Path | None, name: str
                  ) -> contextlib.AbstractContextManager[object]:
    """The lock under which a worker counts the trials of study ``name`` and creates one.

    PostgreSQL: an advisory lock on the server (every machine's workers). A journal or a
    SQLite file: an ``flock`` on its directory (this machine's; the journal's own lock is taken
    inside, so it cannot be the file itself). Another database: none (one worker per study).
    """
    if is_postgresql(location):
        return advisory_lock(location, f"metarl-tune:{name}")
    if journal is not None:
        return file_lock(journal.parent)
    if location.startswith("sqlite:///"):
        return file_lock(Path(location[len("sqlite:///"):]).resolve().parent)
    return contextlib.nullcontext()


def study_name(config: PipelineConfig, train: TaskSet, val: TaskSet) -> str:
    """Name that changes whenever the search would mean something else."""
    tune = {k: v for k, v in to_dict(config.tune).items()
            if k not in ("n_trials", "storage", "n_workers")}
    for key, default in (("sampler", DEFAULT_SAMPLER), ("pruner", DEFAULT_PRUNER)):
        if tune[key] == default:  # the names of studies begun before these keys existed
            del tune[key]
    identity = json.dumps({"tune": tune, "algo": config.algo.identity(),
                           # the evaluator's trial (in-context learners train on it)
                           "trial_episodes": config.evaluate.episodes_per_trial,
                           "train": config.train.seed, "tasks": [train.content_hash,
                                                                 val.content_hash]},
                          sort_keys=True)
    return f"{config.algo.name}-{config.task.family}-" + hashlib.sha256(
        identity.encode()).hexdigest()[:12]


def worker() -> dict[str, Any]:
    """The owner of the trials this process creates: user attributes written with each."""
    me = Worker.current()
    return {"worker_host": me.host, "worker_pid": me.pid, "worker_started": me.started}


def lost_worker(trial: FrozenTrial, host: str) -> str | None:
    """The worker (``host:pid``) a RUNNING trial has lost, or None while it may still run.

    Only a worker of this ``host`` can be seen to be gone; a trial with no worker recorded
    (written before workers were) has lost it too.
    """
    attrs = trial.user_attrs
    pid, started = attrs.get("worker_pid"), attrs.get("worker_started")
    if not isinstance(pid, int) or pid <= 0:
        return "unknown"
    owner = Worker(str(attrs.get("worker_host")), pid,
                   started if isinstance(started, int) else None)
    if owner.host != host or not owner.is_gone():
        return None
    return f"{host}:{pid}"


def fail_stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Mark FAIL the RUNNING trials whose worker is gone; return those this call failed.

    On this host a worker is gone when its process is (a pid reused since counts as gone).
    A database storage's heartbeat also fails the trials of silent workers on other hosts.
    The MLflow run of a trial failed here is ended as KILLED.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # no-op without a heartbeat
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = lost_worker(trial, host)
        if owner is None:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "stale_worker", owner)
            if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                failed.append(trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile, or another worker failed it first
        _end_mlflow_run(trial.user_attrs.get("mlflow_run_id"))
    return failed


def _end_mlflow_run(run_id: object) -> None:
    if not isinstance(run_id, str):
        return
    with contextlib.suppress(Exception):  # e.g. recorded in another tracking store
        client = mlflow.MlflowClient()
        client.set_tag(run_id, STATE_TAG, TrialState.FAIL.name)
        client.set_terminated(run_id, status="KILLED")


def pending_retry(trials: Sequence[FrozenTrial], names: Sequence[str]) -> FrozenTrial | None:
    """The first trial failed as stale, with all its parameters, that was not retried yet."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        if (trial.state == TrialState.FAIL and "stale_worker" in trial.user_attrs
                and trial.number not in retried and set(trial.params) == set(names)):
            return trial
    return None


def _start_trial(study: optuna.Study, user_attrs: dict[str, Any],
                 params: dict[str, Any] | None) -> optuna.Trial:
    """A new RUNNING trial created with its user attributes in one write (no ownerless gap)."""
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING, user_attrs=user_attrs,
        system_attrs={"fixed_params": params} if params else None)
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template))


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
               tags: dict[str, str]) -> FrozenTrial:
    """Run ``objective`` in the trial's MLflow run and tell the study how it ended.

    Whatever goes wrong, the trial is not left RUNNING: an exception makes it FAIL (and its
    MLflow run FAILED), then goes on.
    """
    tags = {**tags, "optuna.trial_number": str(trial.number)}
    try:
        parent = None if mlflow.active_run() else os.environ.get(PARENT_RUN_ENV) or None
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags,
                              parent_run_id=parent) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                with get_heartbeat_thread(trial._trial_id, study._storage):
                    value = objective(trial)
            except optuna.TrialPruned:
                frozen = study.tell(trial, state=TrialState.PRUNED)
                if frozen.last_step is not None:
                    mlflow.set_tag("optuna.pruned_at", str(frozen.last_step))
            except BaseException:
                mlflow.set_tag(STATE_TAG, TrialState.FAIL.name)
                raise
            else:
                frozen = study.tell(trial, value)  # FAIL when not finite
            mlflow.set_tag(STATE_TAG, frozen.state.name)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    return frozen


def optimize(study: optuna.Study, n_trials: int, seed: int,
             objective: Callable[[optuna.Trial], float], tags: dict[str, str],
             names: Sequence[str], heartbeat: bool = False, sampler: str = DEFAULT_SAMPLER,
             lock: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
             ) -> int:
    """Run trials one at a time until the study holds ``n_trials`` finished ones.

    Under ``lock()`` (:func:`creation_lock`) the trials are counted and the next one created:
    sampled with ``sampler`` (:func:`make_sampler`) seeded with ``seed + k`` after *k* trials
    that did not fail, or retrying the parameters of a trial whose worker was killed. RUNNING
    trials of live workers on this host (on any host with a ``heartbeat`` storage) count as
    taken and are waited for; those of other hosts in a journal do not, as nothing tells
    whether they still run. Returns the trials this call ran.

    Raises:
        RuntimeError: a trial ended FAIL without an exception (a score that is not finite); the
            next trial would sample the same point again.

    """
    host, waited, ran = socket.gethostname(), False, 0
    while True:
        with lock():
            for lost in fail_stale_trials(study):
                recorded = lost.user_attrs
                owner = (f"{recorded.get('worker_host')}:{recorded['worker_pid']}"
                         if "worker_pid" in recorded else "none recorded")
                print(f"tune: trial {lost.number} lost its worker ({owner}); marked FAIL",
                      file=sys.stderr)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in DONE for t in trials)
            if finished >= n_trials:
                return ran
            running = [t for t in trials if t.state == TrialState.RUNNING]
            busy = [t.number for t in running
                    if heartbeat or t.user_attrs.get("worker_host") == host]
            trial = None
            if finished + len(busy) < n_trials:
                retry = pending_retry(trials, names)
                # a fresh Study per trial: no trial list cached from the previous one
                trial_study = optuna.load_study(
                    study_name=study.study_name, storage=study._storage,
                    sampler=make_sampler(sampler, seed + finished + len(running)),
                    pruner=study.pruner)
                attrs = worker() if retry is None else {**worker(), "retry_of": retry.number}
                trial = _start_trial(trial_study, attrs, None if retry is None else retry.params)
        if trial is None:
            if not waited:
                print(f"tune: waiting for trials {busy}, run by other workers", file=sys.stderr)
            waited = True
            time.sleep(POLL_S)
            continue
        frozen = _run_trial(trial_study, trial, objective, tags)
        ran += 1
        if frozen.state == TrialState.FAIL:
            raise RuntimeError(f"tune: trial {frozen.number} of {study.study_name} failed: its "
                               f"validation score is not finite "
                               f"({frozen.user_attrs.get('last_score')})")


@dataclass
class Search:
    """A study and everything a worker needs to run its trials."""

    study: optuna.Study
    objective: Callable[[optuna.Trial], float]
    names: tuple[str, ...]
    lock: Callable[[], contextlib.AbstractContextManager[object]]
    heartbeat: bool
    train: TaskSet
    val: TaskSet

    def optimize(self, tune: TuneSection) -> int:
        """Run trials until the study is complete (:func:`optimize`); the number run here."""
        return optimize(self.study, tune.n_trials, tune.seed, self.objective,
                        {"metarl.stage": "tune-trial", "optuna.study": self.study.study_name},
                        self.names, heartbeat=self.heartbeat, sampler=tune.sampler,
                        lock=self.lock)


def search(config: PipelineConfig, paths: Paths) -> Search:
    """Create (or load) the study of ``config`` and its objective."""
    fam, dev = family(config), device(config)
    train = load_task_set(paths, "train", config, fam)
    val = load_task_set(paths, "val", config, fam)
    tune = config.tune
    algo = config.algo.algorithm
    check_action_space(algo, fam, config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(config, train, val)
    location = storage_location(config)
    study = optuna.create_study(
        study_name=name, storage=storage(config, paths), load_if_exists=True,
        directions=["maximize"], sampler=make_sampler(tune.sampler, tune.seed),
        pruner=make_pruner(tune.pruner))
    if study.metric_names != [METRIC_NAME]:
        with warnings.catch_warnings():  # "experimental" in some Optuna versions
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])

    def objective(trial: optuna.Trial) -> float:
        overrides = {key: trial.suggest_float(key, *getattr(tune, space), log=True)
                     for key, space in algo.search_space.items()}
        cfg = config.with_algo_overrides(overrides)
        mlflow.log_params({f"algo.{algo.name}.{k}": v for k, v in overrides.items()})
        logger = MlflowLogger(tune.num_iterations, f"trial {trial.number}")

        def report(it: int, learner: MetaLearner) -> None:
            if (it + 1) % tune.eval_every and it + 1 != tune.num_iterations:
                return
            score = validation_score(learner, fam, val, tune.episodes_per_task, tune.seed, dev)
            mlflow.log_metric("tune/val_return_post_adapt", score, step=it + 1)
            trial.report(score, it + 1)
            trial.set_user_attr("last_score", score)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at iteration {it + 1}: {score:.1f}")

        try:
            algo.train(cfg.algo.chosen, TrainContext(
                fam, train, tune.num_iterations, tune.seed, dev,
                config.evaluate.episodes_per_trial, logger=logger, hook=report))
        finally:
            logger.close()
        return float(trial.user_attrs["last_score"])

    journal = None if is_database(location) else journal_path(config, paths)
    return Search(study, objective, tuple(algo.search_space),
                  lambda: creation_lock(location, journal, name), is_database(location),
                  train, val)


def work(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """``metarl tune-worker``: run trials of the project's study until it is complete.

    Writes nothing but the study (and the trials' MLflow runs); the tune stage, run anywhere
    after, writes the best parameters.
    """
    if config.tune.n_trials == 0:
        return {"n_trials": 0, "ran": 0}
    found = search(config, paths)
    ran = found.optimize(config.tune)
    return {"study": found.study.study_name, "n_trials": config.tune.n_trials, "ran": ran}


WORKER_WAIT_S = 60.0
"""After the study is complete: seconds to wait for the stage's worker processes to exit."""


@contextlib.contextmanager
def local_workers(n: int, paths: Paths) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``n`` ``metarl tune-worker`` processes of this project (one torch thread each).

    Their trials are child runs of the active MLflow run. When the block ends they are waited
    for (they exit once the study is complete), or, when it raised, terminated.
    """
    env = {**os.environ, "METARL_NUM_THREADS": "1", "METARL_NO_PROGRESS": "1",
           "OMP_NUM_THREADS": "1"}
    active = mlflow.active_run()
    if active is not None:
        env[PARENT_RUN_ENV] = active.info.run_id
    command = [sys.executable, "-m", "pipelines.cli", "tune-worker", "--root", str(paths.root),
               "--params", str(paths.params)]
    if n == 0:
        yield []
        return
    procs = [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL)  # its summary; errors go to stderr
             for _ in range(n)]
    try:
        yield procs
    except BaseException:
        for proc in procs:
            proc.terminate()
        raise
    finally:
        deadline = time.monotonic() + WORKER_WAIT_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for proc in procs:
        if proc.returncode:
            print(f"tune: worker process {proc.pid} exited with status {proc.returncode}; "
                  "the study was completed without it", file=sys.stderr)


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Run the missing trials and write ``tuning/best_params.yaml``; return the summary."""
    tune = config.tune
    if is_database(storage_location(config)) and not paths.study_journal.exists():
        # the study lives in the database; DVC's output is there all the same (an empty
        # journal: a valid, empty study if tune.storage goes back to the file)
        paths.study_journal.parent.mkdir(parents=True, exist_ok=True)
        paths.study_journal.touch()
    if tune.n_trials == 0:
        if not is_database(storage_location(config)):
            storage(config, paths)  # the journal is a DVC output even when no trial runs
            copy_journal(config, paths)
        _write_best(paths.best_params, config.algo.name, {}, None)
        return {"n_trials": 0}
    found = search(config, paths)
    study, name = found.study, found.study.study_name
    try:
        with local_workers(tune.n_workers - 1, paths):
            found.optimize(tune)
    finally:  # the DVC output of an experiment's copy, even when a trial failed
        copy_journal(config, paths)
    used, counts = _finished(study, tune.n_trials)
    scored = [(t.value, t) for t in used if t.state == TrialState.COMPLETE and t.value is not None]
    if not scored:
        raise RuntimeError(f"tune: study {name} has no complete trial among its first "
                           f"{len(used)} finished ones (all pruned)")
    best_value, best_trial = max(scored, key=lambda pair: pair[0])  # the first of equal ones
    best = {k: float(v) for k, v in best_trial.params.items()}
    _write_best(paths.best_params, config.algo.name, best, best_value)
    summary: dict[str, Any] = {"study": name, **counts, "best_value": best_value,
                               "best_params": best}
    if mlflow.active_run() is not None:
        mlflow.log_params(flatten("tune", to_dict(tune)))
        mlflow.log_metric("tune/best_val_return_post_adapt", best_value)
        mlflow.log_params({f"tune.best.{k}": v for k, v in best.items()})
        mlflow.set_tags({"task_hash.train": found.train.content_hash,
                         "task_hash.val": found.val.content_hash, "optuna.study": name,
                         "optuna.sampler": tune.sampler, "optuna.pruner": tune.pruner})
    return summary


def _finished(study: optuna.Study, n_trials: int) -> tuple[list[FrozenTrial], dict[str, int]]:
    """The first ``n_trials`` finished trials, and the counts for the summary."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in DONE]
    counts = {"n_trials": min(len(finished), n_trials),
              "n_failed": sum(t.state == TrialState.FAIL for t in trials)}
    if len(finished) > n_trials:
        counts["n_ignored"] = len(finished) - n_trials
        print(f"tune: study {study.study_name} holds {len(finished)} finished trials, more than "
              f"tune.n_trials={n_trials}; the best of the first {n_trials} is used",
              file=sys.stderr)
    return finished[:n_trials], counts


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


__all__ = ["fail_stale_trials", "read_best", "run", "search", "storage", "validation_score",
           "work"]
