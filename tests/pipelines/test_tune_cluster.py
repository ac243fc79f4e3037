"""Tuning on PostgreSQL with many workers: ``tune.n_workers`` processes of the stage and
``metarl tune-worker`` processes share one study on a real server (started on loopback by the
``postgres`` fixture). The study ends with exactly ``tune.n_trials`` finished trials, none
twice; a random search gives the same trials with two workers as with one; a worker killed
with SIGKILL mid-trial has its trial failed and retried by the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from pipelines.runner import run_stage
from pipelines.stages import tune
from tests.conftest import REPO, fresh_database, tiny_params, write_params

pytestmark = pytest.mark.slow  # real servers: tens of seconds

N_TRIALS = 4
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
TIMEOUT_S = 180.0


def make_project(root: Path, **tune_params: Any) -> Path:
    params = tiny_params()
    params["tune"].update(n_trials=N_TRIALS, num_iterations=12, eval_every=4, sampler="random",
                          pruner="none")
    params["tune"].update(tune_params)
    root.mkdir(parents=True)
    write_params(root, params)
    run_stage("tasks", root)
    return root


def study_at(url: str) -> optuna.Study:
    storage = optuna.storages.RDBStorage(url)
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def points(study: optuna.Study) -> list[tuple[float, ...]]:
    return sorted(tuple(t.params[k] for k in sorted(t.params)) for t in study.get_trials()
                  if t.state in DONE)


def _worker(root: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, tune.STORAGE_ENV: url, "METARL_NUM_THREADS": "1",
           "METARL_NO_PROGRESS": "1"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "tune-worker", "--root",
                                 str(root)], env=env, cwd=REPO, stdout=out, stderr=out)


def _wait_for_a_trial_of(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        assert time.monotonic() < deadline, "the worker started no trial"
        assert proc.poll() is None, log.read_text()
        if optuna.get_all_study_names(optuna.storages.RDBStorage(url)) and any(
                t.user_attrs.get("worker_pid") == proc.pid
                for t in study_at(url).get_trials(states=(TrialState.RUNNING,))):
            return
        time.sleep(0.05)


def test_many_workers_give_exactly_n_trials_the_same_as_one(
        postgres: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    studies = {}
    for n_workers in (2, 1):
        url = fresh_database(postgres, "tune")
        monkeypatch.setenv(tune.STORAGE_ENV, url)
        root = make_project(tmp_path / f"w{n_workers}", n_workers=n_workers, num_iterations=20)
        joined = None
        if n_workers > 1:  # a worker from elsewhere is running a trial when the stage starts
            log = tmp_path / "joined.log"
            joined = _worker(root, url, log)
            _wait_for_a_trial_of(joined, url, log)
        summary = run_stage("tune", root)
        if joined is not None:
            assert joined.wait(TIMEOUT_S) == 0, (tmp_path / "joined.log").read_text()
        study = study_at(url)
        trials = study.get_trials()
        assert [t.state for t in trials].count(TrialState.COMPLETE) == N_TRIALS
        assert len(trials) == N_TRIALS, "no trial lost, failed or created twice"
        assert len(set(points(study))) == N_TRIALS, "no point drawn twice"
        pids = {t.user_attrs["worker_pid"] for t in trials}
        assert len(pids) >= n_workers, pids  # (the stage's own worker process may join late)
        if joined is not None:
            assert joined.pid in pids and os.getpid() in pids
        assert summary["n_trials"] == N_TRIALS and "n_ignored" not in summary
        studies[n_workers] = (points(study), summary["best_params"])
        best = (root / "tuning/best_params.yaml").read_text()
        assert str(summary["best_params"]["inner_lr"])[:6] in best
        assert (root / "tuning/study.journal").stat().st_size == 0  # DVC's output, empty
    assert studies[2] == studies[1], "random search: the same trials and best with 3 workers"


def test_a_killed_worker_s_trial_is_retried_and_the_study_completes(
        postgres: Any, tmp_path: Path) -> None:
    url = fresh_database(postgres, "kill")
    root = make_project(tmp_path / "p", num_iterations=20)
    workers = [_worker(root, url, tmp_path / f"worker{i}.log") for i in range(2)]
    victim, survivor = workers
    try:
        deadline, killed = time.monotonic() + TIMEOUT_S, None
        while killed is None:
            assert time.monotonic() < deadline, "no trial of the first worker started"
            assert victim.poll() is None, (tmp_path / "worker0.log").read_text()
            with_names = optuna.get_all_study_names(optuna.storages.RDBStorage(url))
            if with_names:
                for t in study_at(url).get_trials(states=(TrialState.RUNNING,)):
                    if t.user_attrs.get("worker_pid") == victim.pid and t.params:
                        os.kill(victim.pid, signal.SIGKILL)
                        killed = t
                        break
            time.sleep(0.05)
        victim.wait(10)
        assert survivor.wait(TIMEOUT_S) == 0, (tmp_path / "worker1.log").read_text()
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    trials = {t.number: t for t in study_at(url).get_trials()}
    assert sum(t.state in DONE for t in trials.values()) == N_TRIALS
    lost = trials[killed.number]
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["stale_worker"].endswith(f":{victim.pid}")
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state in DONE and retry.params == killed.params
    assert retry.user_attrs["worker_pid"] == survivor.pid
    assert "lost its worker" in (tmp_path / "worker1.log").read_text()
