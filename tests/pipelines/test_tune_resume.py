"""``tune`` killed with SIGKILL resumes to the study an uninterrupted run gives.

A resumed study ends with exactly ``tune.n_trials`` finished trials, the same parameters and
values in the same order; the killed trial is FAIL (and retried); a pruned trial's MLflow run is
FINISHED with ``optuna.trial_state=PRUNED``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from pipelines.cli import main
from pipelines.stages import tune
from tests.conftest import REPO, tiny_params, write_params

N_TRIALS = 4
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
TIMEOUT_S = 60.0
"""Generous: a loaded 2-core machine; no assertion is about time."""


def make_project(root: Path, **tune_params: Any) -> Path:
    """A tiny project, its task sets written; trials of about a second."""
    params = tiny_params()
    params["tune"].update(n_trials=N_TRIALS, num_iterations=30, eval_every=1)
    params["tune"].update(tune_params)
    root.mkdir(parents=True)
    write_params(root, params)
    assert main(["stage", "tasks", "--root", str(root)]) == 0
    return root


def load(root: Path) -> optuna.Study | None:
    """The project's study, read from its journal (None before it exists)."""
    path = root / "tuning" / "study.journal"
    if not path.exists():
        return None
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    (name,) = names
    return optuna.load_study(study_name=name, storage=storage)


def study_of(root: Path) -> optuna.Study:
    study = load(root)
    assert study is not None
    return study


def outcomes(study: optuna.Study) -> list[tuple[dict[str, Any], float | None, str]]:
    """The finished trials' parameters, values and states, in order."""
    return [(t.params, t.value, t.state.name) for t in study.get_trials(states=DONE)]


def trial_runs(root: Path) -> list[Run]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments, "tags.`metarl.stage` = 'tune-trial'"))


def by_number(runs: list[Run]) -> dict[int, Run]:
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose study ran uninterrupted."""
    root = make_project(tmp_path_factory.mktemp("reference") / "project")
    assert main(["stage", "tune", "--root", str(root)]) == 0
    return root


def _killable(root: Path) -> FrozenTrial | None:
    """The RUNNING trial once at least one trial has finished, else None."""
    study = load(root)
    if study is None:
        return None
    trials = study.get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running and any(t.state in DONE for t in trials):
        return running[0]
    return None


def kill_tune_midway(root: Path, log: Path, rng: random.Random) -> int:
    """Start ``tune`` in a process, SIGKILL it during a trial after the first; its pid."""
    env = {**os.environ, "METARL_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stage", "tune",
                                 "--root", str(root)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while _killable(root) is None:
            assert proc.poll() is None, f"tune ended before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no trial finished:\n{log.read_text()}"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # trials take about a second
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    return proc.pid


@pytest.mark.slow
def test_killed_tune_resumes_to_the_uninterrupted_study(reference: Path, tmp_path: Path) -> None:
    root = make_project(tmp_path / "project")
    pid = kill_tune_midway(root, tmp_path / "tune.log", random.Random(0))
    killed = study_of(root)
    running = killed.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1, "the killed trial is left RUNNING"
    stale = running[0]
    assert stale.user_attrs["worker_pid"] == pid
    n_done = len(killed.get_trials(states=DONE))
    assert 1 <= n_done < N_TRIALS

    assert main(["stage", "tune", "--root", str(root)]) == 0
    study = study_of(root)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=DONE)) == N_TRIALS
    failed = study.trials[stale.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["stale_worker"] == f"{socket.gethostname()}:{pid}"
    assert outcomes(study) == outcomes(study_of(reference)), "new points, the same as unkilled"
    assert (root / "tuning/best_params.yaml").read_text() == (
        reference / "tuning/best_params.yaml").read_text()
    if set(stale.params) == {"inner_lr", "outer_lr"}:  # killed after sampling (almost always)
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == stale.number]
        assert [t.params for t in retries] == [stale.params]
        assert retries[0].state in DONE
    runs = by_number(trial_runs(root))
    if "mlflow_run_id" in stale.user_attrs:
        assert runs[stale.number].info.status == "KILLED"
        assert runs[stale.number].data.tags["optuna.trial_state"] == "FAIL"


def test_rerun_of_a_complete_study_runs_no_trial(reference: Path) -> None:
    before, runs_before = study_of(reference).trials, trial_runs(reference)
    assert main(["stage", "tune", "--root", str(reference)]) == 0
    after = study_of(reference).trials
    assert len(after) == len(before) == N_TRIALS
    assert [t.state for t in after] == [t.state for t in before]
    assert len(trial_runs(reference)) == len(runs_before) == N_TRIALS


def test_trial_runs_record_the_trial_state(reference: Path) -> None:
    runs = by_number(trial_runs(reference))
    for trial in study_of(reference).trials:
        run = runs[trial.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]


def test_pruned_and_failed_trials_in_mlflow(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path / "project", n_trials=3, num_iterations=2)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    assert main(["stage", "tune", "--root", str(root)]) == 0
    study = study_of(root)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                               TrialState.COMPLETE]
    runs = by_number(trial_runs(root))
    assert {n: (r.info.status, r.data.tags["optuna.trial_state"]) for n, r in runs.items()} == {
        0: ("FINISHED", "COMPLETE"), 1: ("FINISHED", "PRUNED"), 2: ("FINISHED", "COMPLETE")}
    assert runs[1].data.metrics["tune/val_return_post_adapt"] == study.trials[1].value
    assert runs[1].data.tags["optuna.pruned_at"] == "1"  # its first report (eval_every: 1)
    assert "optuna.pruned_at" not in runs[0].data.tags

    # a trial that raises is FAIL (its run FAILED) and stops the stage; a rerun samples the
    # same point for the same slot
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tune"]["n_trials"] = 4  # not part of the study's name: the same study, resumed
    write_params(root, params)

    def broken(self: optuna.trial.Trial) -> bool:
        raise RuntimeError("broken pruner")

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", broken)
    assert main(["stage", "tune", "--root", str(root)]) == 2
    monkeypatch.undo()
    assert main(["stage", "tune", "--root", str(root)]) == 0
    study = study_of(root)
    assert [t.state for t in study.trials][3:] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[4].params == study.trials[3].params
    assert "retry_of" not in study.trials[4].user_attrs  # no stale trial: a fresh sample
    runs = by_number(trial_runs(root))
    assert (runs[3].info.status, runs[3].data.tags["optuna.trial_state"]) == ("FAILED", "FAIL")
    assert (runs[4].info.status, runs[4].data.tags["optuna.trial_state"]) == (
        "FINISHED", "COMPLETE")


def test_stale_trials_only_those_of_dead_workers_here() -> None:
    study = optuna.create_study()
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = [{**tune.worker()},  # this process: alive
              {"worker_host": host, "worker_pid": dead.pid, "worker_started": None},
              {"worker_host": "elsewhere.example", "worker_pid": dead.pid},
              {**tune.worker(), "worker_started": -1},  # this pid, another start: reused
              {}]  # no owner recorded
    for attrs in owners:
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=attrs))
    failed = [t.number for t in tune.fail_stale_trials(study)]
    expected = [1, 3, 4] if tune.worker()["worker_started"] is not None else [1, 4]
    assert failed == expected
    assert [t.state == TrialState.FAIL for t in study.trials] == [
        n in expected for n in range(len(owners))]
