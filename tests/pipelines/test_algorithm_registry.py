"""The registry is the one door: an algorithm defined here runs through every stage."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from metarl.algos import registry
from pipelines.cli import main
from tests.conftest import REPO, assert_gate_consistent, tiny_params, write_params


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- add-your-own-algorithm -->\n```python\n(.*?)```", text, re.S)
    assert match, "README's 'Add your own algorithm' block"
    return match.group(1)


@pytest.fixture
def finetune() -> Iterator[None]:
    import sys
    import types

    code = readme_example()
    assert len(code.strip().splitlines()) <= 45
    module = types.ModuleType("readme_finetune")  # as if it were the user's own module
    sys.modules[module.__name__] = module
    exec(compile(code, "README.md", "exec"), module.__dict__)
    try:
        yield
    finally:
        registry.unregister("finetune")
        del sys.modules[module.__name__]


def test_the_readme_algorithm_runs_through_every_stage(finetune: None, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert "finetune" in registry.algorithms()
    params = tiny_params()
    params["algo"]["name"] = "finetune"
    params["algo"]["finetune"] = {"lr": 0.005, "batches_per_iteration": 2}
    write_params(tmp_path, params)
    for stage in ("tasks", "tune", "train", "evaluate", "register"):
        assert main(["stage", stage, "--root", str(tmp_path)]) == 0, capsys.readouterr().err
    best = (tmp_path / "tuning" / "best_params.yaml").read_text()
    assert "finetune:" in best and "lr:" in best  # its search space was searched
    ckpt = json.loads((tmp_path / "models" / "finetune.json").read_text())
    assert ckpt["learner"] == "finetune" and ckpt["algo"] == "finetune"
    summary = json.loads((tmp_path / "metrics" / "meta_test.json").read_text())
    assert summary["learner"] == "finetune" and "finetune" in summary
    register = json.loads((tmp_path / "metrics" / "register.json").read_text())
    assert register["model_name"] == "metarl-cartpole-finetune"
    assert_gate_consistent(register)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version_by_alias("metarl-cartpole-finetune", "challenger")
    assert version.tags["algo"] == "finetune"
    # the pretrained baseline got the algorithm's budget: 2 batches per iteration of 16
    # episodes, over the baselines' 3 tasks x 4 episodes a batch
    pretrain = (tmp_path / "plots" / "train_curve.csv").read_text().splitlines()
    assert len(pretrain) == 1 + params["train"]["num_iterations"] * 2


def test_unknown_algorithms_and_sections_are_refused_by_name(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    params = tiny_params()
    params["algo"]["name"] = "finetune"  # not registered here
    write_params(tmp_path, params)
    assert main(["stage", "tasks", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "algo.name='finetune'" in err and str(list(registry.algorithms())) in err
    assert {"maml", "rl2", "reptile"} <= set(registry.algorithms())
    params = tiny_params()
    params["algo"]["ppo"] = {"lr": 1.0}
    write_params(tmp_path, params)
    assert main(["stage", "tasks", "--root", str(tmp_path)]) == 2
    assert "algo.ppo=" in capsys.readouterr().err


def test_no_stage_names_an_algorithm() -> None:
    names = [n for n in registry.algorithms() if n != "finetune"]
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b|RL²|MAML", re.I)
    for path in [*sorted((REPO / "pipelines" / "stages").glob("*.py")),
                 REPO / "pipelines" / "model.py", REPO / "metarl" / "checkpoint.py"]:
        hits = [f"{path.name}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                if pattern.search(line)]
        assert not hits, hits


def test_an_entry_point_plugin_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import sys
    import types

    module = types.ModuleType("metarl_test_plugin")
    imported: list[str] = []
    module.__dict__["loaded"] = imported
    sys.modules["metarl_test_plugin"] = module
    entry = importlib.metadata.EntryPoint("mine", "metarl_test_plugin", registry.ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [entry] if group == registry.ENTRY_POINTS else [])
    real_import = registry.importlib.import_module
    monkeypatch.setattr(registry.importlib, "import_module",
                        lambda name: imported.append(name) or real_import(name))
    monkeypatch.setattr(registry, "_loaded", False)
    registry.algorithms()
    assert "metarl_test_plugin" in imported
    del sys.modules["metarl_test_plugin"]
