"""``tune.sampler`` and ``tune.pruner``: validated on load, each sampler resumes exactly, each
pruner prunes as it should, and the study names its objective and links its MLflow runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from metarl.config import to_dict
from metarl.tasks import TaskSet
from pipelines.cli import main
from pipelines.settings import SAMPLERS, PipelineConfig, load_config
from pipelines.stages import tune
from tests.conftest import tiny_params, write_params

NAMES = ("inner_lr", "outer_lr")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sampler", "grid", "tune.sampler='grid': unknown sampler; choose one of ['tpe', 'random', "
                        "'cmaes']"),
    ("pruner", "hyperband", "tune.pruner='hyperband': unknown pruner; choose one of ['median', "
                            "'successive_halving', 'none']"),
    ("pruner", None, "tune.pruner=None: expected a string"),  # YAML's null, not 'none'
])
def test_an_unknown_sampler_or_pruner_names_the_key_and_the_value(
        project: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any,
        message: str) -> None:
    params = tiny_params()
    params["tune"][key] = value
    write_params(project, params)
    assert main(["stage", "tasks", "--root", str(project)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (project / "data").exists()


def test_cmaes_needs_two_searched_keys_and_its_package(
        project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny_params()
    params["tune"]["sampler"] = "cmaes"
    params["algo"]["name"] = "rl2"
    write_params(project, params)
    assert main(["stage", "tasks", "--root", str(project)]) == 2
    assert ("tune.sampler='cmaes': CMA-ES needs two or more searched keys; algo.name='rl2' "
            "searches ['lr']: use tpe or random") in capsys.readouterr().err
    params["tune"]["n_trials"] = 0  # no tuning: nothing to refuse
    write_params(project, params)
    assert load_config(project / "params.yaml").tune.sampler == "cmaes"

    params["algo"]["name"] = "maml"
    params["tune"]["n_trials"] = 2
    write_params(project, params)
    assert load_config(project / "params.yaml").tune.sampler == "cmaes"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cmaes" else real(name, *a))
    assert main(["stage", "tasks", "--root", str(project)]) == 2
    assert "needs the cmaes package: `pip install cmaes`" in capsys.readouterr().err


def _tasks(split: str) -> TaskSet:
    return TaskSet(family="cartpole", split=split, seed=0, tasks=({"pole_mass": 0.1},))


def test_the_study_name_changes_only_with_a_sampler_or_pruner_that_is_not_the_default() -> None:
    config = PipelineConfig()
    train, val = _tasks("train"), _tasks("val")
    # the name a study begun before tune.sampler / tune.pruner existed has (the same formula,
    # without those keys): it still resumes
    before = {k: v for k, v in to_dict(config.tune).items()
              if k not in ("n_trials", "storage", "sampler", "pruner", "n_workers")}
    identity = json.dumps({"tune": before, "algo": config.algo.identity(),
                           "trial_episodes": config.evaluate.episodes_per_trial,
                           "train": config.train.seed,
                           "tasks": [train.content_hash, val.content_hash]}, sort_keys=True)
    old_name = "maml-cartpole-" + hashlib.sha256(identity.encode()).hexdigest()[:12]
    assert tune.study_name(config, train, val) == old_name
    more = dataclasses.replace(config, tune=dataclasses.replace(config.tune, n_workers=4))
    assert tune.study_name(more, train, val) == old_name  # how many run it is not what it is
    names = {old_name}
    for change in ({"sampler": "random"}, {"sampler": "cmaes"}, {"pruner": "none"},
                   {"pruner": "successive_halving"}):
        other = dataclasses.replace(config, tune=dataclasses.replace(config.tune, **change))
        names.add(tune.study_name(other, train, val))
    assert len(names) == 5


def _objective(trial: optuna.Trial) -> float:
    """A cheap stand-in for a training run: three reports, best near (0.3, 0.003)."""
    x = trial.suggest_float("inner_lr", 0.1, 1.0, log=True)
    y = trial.suggest_float("outer_lr", 1e-3, 1e-2, log=True)
    value = -(math.log(x / 0.3) ** 2 + math.log(y / 3e-3) ** 2)
    for step in (1, 2, 3):
        trial.report(value - (3 - step) - 10 * trial.number, step)  # later ones look worse
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def _study(path: Path, name: str, sampler: str, pruner: str) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               directions=["maximize"], sampler=tune.make_sampler(sampler, 0),
                               pruner=tune.make_pruner(pruner))


def _run(path: Path, name: str, n: int, sampler: str, pruner: str = "none") -> optuna.Study:
    study = _study(path, name, sampler, pruner)
    tune.optimize(study, n, 0, _objective, {"metarl.stage": "tune-trial"}, NAMES,
                  sampler=sampler)
    return study


def _outcomes(study: optuna.Study) -> list[tuple[dict[str, Any], float | None, str]]:
    return [(t.params, t.value, t.state.name) for t in study.get_trials(states=DONE)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tracking store for the trials' runs of this module (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracked(store: str) -> None:
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("trials")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_resumes_to_the_uninterrupted_study(
        tmp_path: Path, tracked: None, sampler: str) -> None:
    straight = _run(tmp_path / "straight.journal", "s", 6, sampler)
    _run(tmp_path / "resumed.journal", "s", 2, sampler)
    _run(tmp_path / "resumed.journal", "s", 4, sampler)  # a fresh process would do the same
    resumed = _run(tmp_path / "resumed.journal", "s", 6, sampler)
    assert len(straight.trials) == len(resumed.trials) == 6
    assert _outcomes(resumed) == _outcomes(straight)


def test_the_samplers_draw_differently(tmp_path: Path, tracked: None) -> None:
    drawn = {sampler: [t.params for t in _run(tmp_path / f"{sampler}.journal", "s", 12,
                                              sampler).trials]
             for sampler in SAMPLERS}
    # each starts with random draws of the same seeds (TPE: its first 10 trials, CMA-ES: its
    # first), then they part
    assert drawn["tpe"][:10] == drawn["random"][:10]
    assert drawn["tpe"][10:] != drawn["random"][10:]
    assert drawn["cmaes"][0] == drawn["random"][0]
    assert all(c != r for c, r in zip(drawn["cmaes"][1:], drawn["random"][1:], strict=True))


@pytest.mark.parametrize(("pruner", "states"), [
    ("none", ["COMPLETE"] * 5),
    # after 2 trials, a trial below the median of earlier ones at the same step is pruned
    ("median", ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "PRUNED"]),
])
def test_each_pruner_prunes_as_it_should(tmp_path: Path, tracked: None, pruner: str,
                                         states: list[str]) -> None:
    study = _run(tmp_path / "study.journal", "s", 5, "random", pruner)
    assert [t.state.name for t in study.trials] == states


def test_successive_halving_prunes_the_worse_trials(tmp_path: Path, tracked: None) -> None:
    study = _run(tmp_path / "study.journal", "s", 6, "random", "successive_halving")
    states = [t.state.name for t in study.trials]
    assert states[0] == "COMPLETE" and "PRUNED" in states
    assert isinstance(tune.make_pruner("successive_halving"),
                      optuna.pruners.SuccessiveHalvingPruner)


def test_the_study_names_its_objective_and_links_its_runs(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_params()
    params["tune"].update(sampler="random", pruner="none", n_trials=2)
    write_params(project, params)
    for stage in ("tasks", "tune"):
        assert main(["stage", stage, "--root", str(project)]) == 0
    storage = JournalStorage(JournalFileBackend(str(project / "tuning" / "study.journal")))
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.metric_names == ["val_return_post_adapt"]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.study"] == name
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["optuna.trial_state"] == trial.state.name == "COMPLETE"
    (tune_run,) = client.search_runs([run.info.experiment_id], "tags.`metarl.stage` = 'tune'")
    assert tune_run.data.tags["optuna.sampler"] == "random"
    assert tune_run.data.tags["optuna.pruner"] == "none"
    assert tune_run.data.params["tune.sampler"] == "random"
    parent = client.get_run(tune_run.data.tags["mlflow.parentRunId"])
    assert parent.data.params["tune.sampler"] == "random"
    assert parent.data.params["tune.pruner"] == "none"
