"""One MLflow store per project: a DVC experiment's temporary copy writes to the project's stores,
a copied project keeps its artifacts, the parent run carries the headline, the task sets are
datasets, and a registered version's source run is the run that trained it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from metarl.checkpoint import load_params, save_params
from pipelines import tracking
from pipelines.cli import main
from pipelines.model import ArtifactError, load_registered
from pipelines.runner import use_project_tracking
from pipelines.settings import TrackingSection, load_config
from tests.conftest import REPO, tiny_params, write_params

NAME = "metarl-cartpole-maml"


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def runs(root: Path) -> list[Run]:
    c = client(root)
    return list(c.search_runs([c.get_experiment_by_name("metarl").experiment_id]))


def stage_runs(root: Path, stage: str) -> list[Run]:
    return sorted((r for r in runs(root) if r.data.tags.get("metarl.stage") == stage),
                  key=lambda r: r.info.start_time)


def run_cli(root: Path, *args: str) -> None:
    assert main([*args, "--root", str(root)]) == 0, args


@pytest.fixture(autouse=True)
def _own_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The project's params.yaml decides the store (not a URI or experiment name around us)."""
    for key in ("MLFLOW_TRACKING_URI", "METARL_TUNE_STORAGE", "METARL_PIPELINE_RUN",
                "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(key, raising=False)


def test_an_experiment_copy_resolves_to_the_project_it_came_from(tmp_path: Path) -> None:
    ws = (tmp_path / "project").resolve()
    for copy in (ws / ".dvc/tmp/exps/standalone/tmpab12cd", ws / ".dvc/tmp/exps/tmpq1w2e3"):
        assert tracking.workspace_root(copy) == ws
        assert tracking.workspace_root(copy / "sub") == ws
        assert tracking.tracking_uri(TrackingSection(), copy) == f"sqlite:///{ws}/mlflow.db"
        assert tracking.artifact_root(TrackingSection(), copy) == ws / "mlartifacts"
    for own in (ws, ws / "sub", ws / ".dvc/tmp/exps", ws / ".dvc/tmp/other/tmpx"):
        assert tracking.workspace_root(own) == own
    assert tracking.tracking_uri(TrackingSection(uri="sqlite:///db/m.db"), ws) == \
        f"sqlite:///{ws}/db/m.db"


def _study(journal: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def test_stages_in_experiment_copies_write_to_the_project(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `dvc exp run --temp` / a queued run does: the stages run in a copy of the workspace
    under .dvc/tmp/exps, which DVC deletes afterwards; the runs, the experiment's artifact root
    and the Optuna study are the project's, and a second copy resumes the same study."""
    ws = (tmp_path / "project").resolve()
    params = tiny_params()
    first = ws / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12cd"
    first.mkdir(parents=True)
    write_params(first, params)
    monkeypatch.setenv("DVC_EXP_NAME", "shaky-lamb")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    run_cli(first, "stage", "tasks")
    run_cli(first, "stage", "tune")

    assert not (first / "mlflow.db").exists() and not (first / "mlartifacts").exists()
    experiment = client(ws).get_experiment_by_name("metarl")
    assert experiment.artifact_location == (ws / "mlartifacts").as_uri()
    (tune_run,) = stage_runs(ws, "tune")
    trials = stage_runs(ws, "tune-trial")
    assert len(trials) == params["tune"]["n_trials"]
    assert all(r.info.artifact_uri.startswith((ws / "mlartifacts").as_uri() + "/")
               for r in [tune_run, *trials])
    parent = client(ws).get_run(tune_run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "exp-shaky-lamb"
    assert parent.data.tags["dvc.experiment"] == "shaky-lamb"
    assert parent.data.tags["dvc.baseline_rev"] == "a" * 40
    assert tune_run.data.tags["dvc.experiment"] == "shaky-lamb"

    # The study is in the project's journal; the copy's own journal (its DVC output) is a
    # snapshot of it, and each trial names its MLflow run.
    journal = ws / "tuning" / "study.journal"
    assert (first / "tuning" / "study.journal").read_bytes() == journal.read_bytes()
    study = _study(journal)
    assert len(study.trials) == params["tune"]["n_trials"]
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
        r.info.run_id for r in trials}

    # Another copy (the next experiment) with the same params resumes the study: no new trial.
    shutil.rmtree(first)
    second = ws / ".dvc" / "tmp" / "exps" / "tmpq1w2e3"
    second.mkdir(parents=True)
    write_params(second, params)
    monkeypatch.setenv("DVC_EXP_NAME", "brave-owl")
    run_cli(second, "stage", "tasks")
    run_cli(second, "stage", "tune")
    assert len(_study(journal).trials) == params["tune"]["n_trials"]
    assert len(stage_runs(ws, "tune-trial")) == params["tune"]["n_trials"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in stage_runs(ws, "tune")}
    assert len(parents) == 2, "each experiment has its own pipeline run"


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose pipeline ran (no tuning), its version 1 made @champion by hand."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME",
                                                  "METARL_PIPELINE_RUN")}
    root = tmp_path_factory.mktemp("store") / "project"
    root.mkdir()
    params = tiny_params()
    params["tune"]["n_trials"] = 0
    write_params(root, params)
    try:
        for stage in ("tasks", "tune", "train", "evaluate", "register"):
            run_cli(root, "stage", stage)
        run_cli(root, "promote", NAME, "1")
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    return root


def test_the_parent_run_has_the_headline_params_and_metrics(registered: Path) -> None:
    (train_run,) = stage_runs(registered, "train")
    parent = client(registered).get_run(train_run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    config = load_config(registered / "params.yaml")
    expected = {k: str(v) for k, v in tracking.headline_params(config).items()}
    assert parent.data.params == expected
    assert expected["task.family"] == "cartpole" and expected["algo.name"] == "maml"
    assert expected["train.num_iterations"] == "2" and expected["evaluate.seeds"] == "[0, 1]"
    summary = json.loads((registered / "metrics" / "summary.json").read_text())
    # the `dvc exp show` columns: every number of summary.json, a boolean as 0/1
    assert parent.data.metrics == {f"{group}.{key}": float(value)
                                   for group, values in summary.items()
                                   for key, value in values.items() if key != "reference"}
    assert {"meta_learner.post", "pretrained.post", "gate.ci_low"} <= set(parent.data.metrics)
    assert parent.data.metrics["gate.version"] == 1.0
    assert parent.data.metrics["gate.promoted"] == float(summary["gate"]["promoted"])
    assert parent.data.tags["gate.reference"] == summary["gate"]["reference"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=False).stdout.strip()
    assert parent.data.tags["git_commit"] in (head, "unknown")  # the project is no checkout
    assert "dvc.experiment" not in parent.data.tags  # a plain run, not `dvc exp run`


def test_every_stage_run_lists_its_task_sets_as_datasets(registered: Path) -> None:
    files = {split: json.loads((registered / f"data/tasks/{split}.json").read_text())
             for split in ("train", "val", "test")}
    reads = {"tasks": ["train", "val", "test"], "tune": ["train", "val"], "train": ["train"],
             "evaluate": ["test"], "register": ["test"]}
    for stage, splits in reads.items():
        (run,) = stage_runs(registered, stage)
        inputs = run.inputs.dataset_inputs
        got = sorted((i.dataset.name, i.dataset.digest,
                      {t.key: t.value for t in i.tags}["mlflow.data.context"],
                      json.loads(i.dataset.profile)["num_rows"]) for i in inputs)
        assert got == sorted((f"cartpole-{s}", files[s]["content_hash"], s,
                              len(files[s]["tasks"])) for s in splits), stage
        sources = {json.loads(i.dataset.source)["uri"] for i in inputs}
        assert sources == {f"data/tasks/{s}.json" for s in splits}  # project-relative


def test_a_version_s_source_run_is_the_run_that_trained_it(registered: Path) -> None:
    c = client(registered)
    (train_run,) = stage_runs(registered, "train")
    (register_run,) = stage_runs(registered, "register")
    version = c.get_model_version(NAME, "1")
    assert version.run_id == train_run.info.run_id
    assert version.tags["registered_by_run"] == register_run.info.run_id
    logged = json.loads((registered / "models" / "mlflow_model.json").read_text())
    assert logged["run_id"] == train_run.info.run_id
    assert version.source == f"models:/{logged['model_id']}"
    mlflow.set_tracking_uri(f"sqlite:///{registered / 'mlflow.db'}")
    assert mlflow.get_logged_model(logged["model_id"]).source_run_id == train_run.info.run_id


def _plant(root: Path) -> None:
    """Replace models/maml.pt by other weights (a checkpoint put there by hand)."""
    weights = load_params(root / "models" / "maml.pt")
    g = torch.Generator().manual_seed(0)
    save_params({k: v + torch.randn(v.shape, generator=g) for k, v in weights.items()},
                root / "models" / "maml.pt")


def _load_champion(root: Path) -> Any:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return load_registered(f"models:/{NAME}@champion")


def test_a_copied_project_keeps_its_artifacts(registered: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """MLflow stores absolute artifact URIs; a copy (`cp -r`) is pointed at its own folder
    when it sets up tracking, and keeps loading its champion once the original is gone."""
    original_root = client(registered).get_experiment_by_name("metarl").artifact_location
    assert original_root == (registered / "mlartifacts").resolve().as_uri()

    copy = tmp_path / "copy"
    shutil.copytree(registered, copy, symlinks=True)
    assert client(copy).get_experiment_by_name("metarl").artifact_location == original_root
    capsys.readouterr()
    use_project_tracking(copy)
    assert "artifact URIs now point there" in capsys.readouterr().err
    own = (copy / "mlartifacts").resolve().as_uri()
    c = client(copy)
    assert c.get_experiment_by_name("metarl").artifact_location == own
    assert all(r.info.artifact_uri.startswith(own + "/") for r in runs(copy))
    assert c.get_model_version_download_uri(NAME, "1").startswith(own + "/")
    # the original's store is untouched
    assert client(registered).get_experiment_by_name("metarl").artifact_location == original_root
    use_project_tracking(copy)  # repaired: nothing more to do
    assert "artifact URIs" not in capsys.readouterr().err

    # Moved: a copy of the copy, the copy deleted. Before set-up its store points at a folder
    # that is gone; after, its champion loads from its own folder, and its runs write there.
    moved = tmp_path / "moved"
    shutil.copytree(copy, moved, symlinks=True)
    shutil.rmtree(copy)
    with pytest.raises(ArtifactError, match="MLmodel file is missing"):  # copy/ is gone
        _load_champion(moved)
    use_project_tracking(moved)
    _, ckpt = _load_champion(moved)
    assert ckpt["family"] == "cartpole" and ckpt["algo"] == "maml"
    run_cli(moved, "stage", "tasks")
    newest = stage_runs(moved, "tasks")[-1]
    assert newest.info.artifact_uri.startswith((moved / "mlartifacts").resolve().as_uri() + "/")


def test_a_changed_checkpoint_is_logged_by_register(registered: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """models/ no longer what train logged: register logs the files it registers itself."""
    root = tmp_path / "project"
    shutil.copytree(registered, root, symlinks=True)
    _plant(root)
    capsys.readouterr()
    run_cli(root, "stage", "register")
    assert "changed since the train run" in capsys.readouterr().err
    record = json.loads((root / "metrics" / "register.json").read_text())
    assert record["version"] == 2 and record["reused_version"] is False
    register_run = stage_runs(root, "register")[-1]
    version = client(root).get_model_version(NAME, "2")
    assert version.run_id == register_run.info.run_id == version.tags["registered_by_run"]


def test_two_processes_set_up_a_fresh_store_at_once(tmp_path: Path) -> None:
    """`dvc queue start -j 2` on a new project: both create the store and the experiment."""
    root = tmp_path / "project"
    root.mkdir()
    write_params(root, tiny_params())
    code = ("import sys; from pipelines.runner import use_project_tracking; "
            "use_project_tracking(sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    experiments = [e.name for e in client(root).search_experiments()]
    assert sorted(experiments) == ["Default", "metarl"]
