"""The registry's gate: it scores the model it registers, pairs it with its reference, and
loads registered models as data only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from metarl.checkpoint import load_params, save_params
from pipelines.cli import main
from pipelines.stats import paired_comparison
from tests.conftest import tiny_params, write_params

NAME = "metarl-cartpole-maml"


def run_cli(root: Path, *args: str) -> int:
    return main([*args, "--root", str(root)])


def registry(root: Path) -> tuple[MlflowClient, dict[str, Any]]:
    """The client and the registry's state: versions and aliases of NAME."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    try:
        model = client.get_registered_model(NAME)
    except mlflow.exceptions.MlflowException:
        return client, {"versions": [], "aliases": {}}
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    return client, {"versions": versions,
                    "aliases": {k: str(v) for k, v in model.aliases.items()}}


def forge(root: Path, score: float = 1.0) -> None:
    """Write a meta_test.json that claims ``score`` for the model in models/."""
    path = root / "metrics" / "meta_test.json"
    summary = json.loads(path.read_text())
    summary["maml"]["normalized_post_adapt"] = score
    for key in list(summary["maml"]):
        if key.startswith("return_post_adapt_k"):
            summary["maml"][key] = 10_000.0
    path.write_text(json.dumps(summary))


def plant(root: Path, models: Path, noise_seed: int) -> None:
    """models/ = ``models`` with noise on the meta-learner's weights (a weak model)."""
    shutil.rmtree(root / "models")
    shutil.copytree(models, root / "models")
    good = load_params(models / "maml.pt")
    g = torch.Generator().manual_seed(noise_seed)
    save_params({k: v + 3.0 * torch.randn(v.shape, generator=g) for k, v in good.items()},
                root / "models" / "maml.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project trained for 10 iterations on 10 test tasks; evaluate has run."""
    root = tmp_path_factory.mktemp("gate") / "project"
    root.mkdir()
    params = tiny_params()
    params["task"]["num_test"] = 10
    params["train"]["num_iterations"] = 10
    params["tune"]["n_trials"] = 0
    write_params(root, params)
    for stage in ("tasks", "train", "evaluate"):
        assert run_cli(root, "stage", stage) == 0
    shutil.copytree(root / "models", root.parent / "good-models")
    return root


def test_paired_comparison_is_the_bootstrap_of_per_task_differences() -> None:
    new = np.array([1.0, 2.0, 3.0, 4.0])
    old = np.array([0.5, 1.5, 2.5, 3.5])  # +0.5 on every task: no spread at all
    cmp = paired_comparison(new, old, np.random.default_rng(0))
    assert (cmp.mean_difference, cmp.ci_low, cmp.ci_high, cmp.num_tasks) == (0.5, 0.5, 0.5, 4)
    same = paired_comparison(new, new, np.random.default_rng(0))
    assert (same.mean_difference, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    mixed = paired_comparison(np.array([1.0, 0.0, 1.0, 0.0]), np.zeros(4),
                              np.random.default_rng(0))
    # the exact bootstrap of four 0/1 differences: P(mean = 0) = P(mean = 1) = 1/16 > 2.5%
    assert (mixed.mean_difference, mixed.ci_low, mixed.ci_high) == (0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_comparison(new, old[:3], np.random.default_rng(0))


def test_gate_decisions_weak_better_equal_and_rollback(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, good = trained, trained.parent / "good-models"
    # 1. A planted weak model (noise on the weights) with forged metrics, as a first version:
    #    measured against the best baseline, not promoted, whatever meta_test.json claims.
    plant(root, good, noise_seed=1)
    forge(root)
    capsys.readouterr()
    assert run_cli(root, "stage", "register") == 0
    err = capsys.readouterr().err
    assert "meta_test.json says" in err and "stale or was edited" in err
    weak = json.loads((root / "metrics" / "register.json").read_text())
    assert weak["promoted"] is False and weak["version"] == 1
    assert weak["reference"] in ("pretrained", "scratch", "random")
    assert weak["reference_score"] == max(weak["baselines"].values())
    assert weak["score"] < 0 and weak["ci"][1] < 0, weak  # clearly worse than its reference
    client, state = registry(root)
    assert state["aliases"] == {"challenger": "1"}  # no champion: the gate said no
    version = client.get_model_version(NAME, "1")
    assert version.tags["gate.decision"] == "not promoted"
    assert float(version.tags["gate.score"]) == pytest.approx(weak["score"], abs=1e-6)
    assert "not promoted" in version.description and "bootstrap interval" in version.description

    # 2. Make it the champion by hand (what a rollback does), then register the trained model:
    #    paired against the champion on the same tasks and seeds, it is promoted.
    assert run_cli(root, "promote", NAME, "1") == 0
    assert registry(root)[1]["aliases"]["champion"] == "1"
    shutil.rmtree(root / "models")
    shutil.copytree(good, root / "models")
    assert run_cli(root, "stage", "evaluate") == 0
    assert run_cli(root, "stage", "register") == 0
    better = json.loads((root / "metrics" / "register.json").read_text())
    assert better["promoted"] is True and better["version"] == 2
    assert better["reference"] == "champion" and better["champion_version_before"] == 1
    assert better["champion_score_before"] == pytest.approx(weak["score"], abs=1e-6)
    assert better["ci"][0] > better["margin"]
    assert better["difference"] == pytest.approx(better["score"] - weak["score"], abs=1e-6)
    assert registry(root)[1]["aliases"] == {"champion": "2", "challenger": "2"}

    # 3. Another planted weak model with forged metrics against that champion: not promoted.
    plant(root, good, noise_seed=2)
    forge(root, score=5.0)
    assert run_cli(root, "stage", "register") == 0
    planted = json.loads((root / "metrics" / "register.json").read_text())
    assert planted["promoted"] is False and planted["version"] == 3
    assert planted["ci"][1] < 0
    assert registry(root)[1]["aliases"] == {"champion": "2", "challenger": "3"}

    # 4. A model equal to the champion (same weights, an edited config file): every per-task
    #    difference is 0, so the interval's lower end (0) is not above the margin.
    shutil.rmtree(root / "models")
    shutil.copytree(good, root / "models")
    config = json.loads((root / "models" / "maml.json").read_text())
    (root / "models" / "maml.json").write_text(json.dumps({**config, "note": "a copy"}))
    assert run_cli(root, "stage", "register") == 0
    equal = json.loads((root / "metrics" / "register.json").read_text())
    assert equal["version"] == 4 and equal["promoted"] is False
    assert (equal["difference"], equal["ci"]) == (0.0, [0.0, 0.0])
    assert registry(root)[1]["aliases"] == {"champion": "2", "challenger": "4"}

    # 5. Roll back: @champion to version 1 by hand; a version that does not exist is refused.
    assert run_cli(root, "promote", NAME, "1") == 0
    assert registry(root)[1]["aliases"]["champion"] == "1"
    capsys.readouterr()
    assert run_cli(root, "promote", NAME, "9") == 2
    err = capsys.readouterr().err
    assert "no such version" in err and "[1, 2, 3, 4]" in err
    assert registry(root)[1]["aliases"]["champion"] == "1"


def test_registered_model_stores_and_runs_no_code(trained: Path, tmp_path: Path) -> None:
    from pipelines.model import load_registered

    root = tmp_path / "project"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    shutil.rmtree(root / "models")
    shutil.copytree(trained.parent / "good-models", root / "models")
    assert run_cli(root, "stage", "register") == 0
    client, _ = registry(root)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    uri = f"models:/{NAME}/1"
    source = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(NAME, "1"),
        dst_path=str(tmp_path / "peek")))
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert "data/policy/weights.pt" in files and "data/policy/config.json" in files
    assert not [f for f in files if f.endswith((".py", ".pkl", ".pickle", ".cloudpickle"))]
    meta = (source / "MLmodel").read_text()
    assert "loader_module: pipelines.model" in meta and "python_model" not in meta
    obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    expected = mlflow.pyfunc.load_model(uri).predict(obs)

    # Plant code everywhere in the stored artifact: appended to every file, and as Python
    # files in every folder. Loading runs none of it and needs none of it.
    store = Path(client.get_model_version_download_uri(NAME, "1").removeprefix("file://"))
    marker = tmp_path / "pwned"
    payload = f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    stored = [p for p in store.rglob("*") if p.is_file()]
    assert stored, store
    folders = {p.parent for p in stored} | {store}
    for folder in folders:
        for name in ("python_model.py", "loader.py", "__init__.py", "model.py"):
            (folder / name).write_text(payload)
    for path in [p for p in stored if p.suffix not in (".pt", ".json", "")
                 and p.name != "MLmodel"]:
        path.write_text(path.read_text() + payload)  # requirements, conda, python_env
    assert mlflow.pyfunc.load_model(uri).predict(obs).tolist() == expected.tolist()
    learner, ckpt = load_registered(uri)
    assert ckpt["family"] == "cartpole" and learner is not None
    assert not marker.exists(), "code stored with the model ran"

    # Code appended to the data files too: they no longer load, and still nothing runs.
    for path in [p for p in stored if p.suffix in (".pt", ".json")]:
        path.write_bytes(path.read_bytes() + payload.encode())
    from pipelines.model import ArtifactError

    with pytest.raises(ArtifactError, match="does not load"):
        load_registered(uri)
    assert not marker.exists()

    # An MLmodel edited to load stored code is refused by metarl's own loader.
    mlmodel = store / "MLmodel"
    original = mlmodel.read_text()
    mlmodel.write_text(original.replace("loader_module: pipelines.model",
                                        "loader_module: loader\n    code: ."))
    with pytest.raises(ArtifactError, match="loader_module='loader'"):
        load_registered(uri)
    assert not marker.exists()


def test_broken_champion_artifact_is_a_one_line_error_and_changes_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "project"
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    shutil.rmtree(root / "models")
    shutil.copytree(trained.parent / "good-models", root / "models")
    assert run_cli(root, "stage", "register") == 0
    assert run_cli(root, "promote", NAME, "1") == 0
    client, before = registry(root)
    store = Path(client.get_model_version_download_uri(NAME, "1").removeprefix("file://"))
    shutil.rmtree(store / "data")  # the champion's weights are gone
    (root / "metrics" / "register.json").unlink()
    capsys.readouterr()
    assert run_cli(root, "stage", "register") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "version 1 cannot be loaded" in err and f"metarl promote {NAME} VERSION" in err
    assert registry(root)[1] == before
    assert not (root / "metrics" / "register.json").exists()
    # The same for a hand promotion: it refuses a version that does not load.
    assert run_cli(root, "promote", NAME, "1") == 2
    assert "cannot be loaded" in capsys.readouterr().err
