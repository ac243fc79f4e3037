"""A table of bad inputs, each against a project that has run every stage: a one-line error
naming the key, exit 2, no output file changed, the registry as it was, no secret shown."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from metarl.tasks import TaskSet
from pipelines.cli import main
from tests.conftest import tiny_params, write_params

OUTPUTS = ("data", "tuning", "models", "train_state", "metrics", "plots", "reports")
NAME = "metarl-cartpole-maml"
SECRETS = ("s3cret", "t0ken")

ParamsEdit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> ParamsEdit:
    def edit(params: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


PARAMS_CASES: list[tuple[str, ParamsEdit, str]] = [
    ("unknown family", _set("task.family", "hopper"), "task.family"),
    ("unknown algorithm", _set("algo.name", "ppo"), "algo.name"),
    ("no train tasks", _set("task.num_train", 0), "task.num_train"),
    ("too many train tasks", _set("task.num_train", 10**9), "task.num_train"),
    ("negative test tasks", _set("task.num_test", -1), "task.num_test"),
    ("reversed range", _set("task.cartpole.pole_mass", [0.5, 0.1]), "task.cartpole.pole_mass"),
    ("negative range", _set("task.cartpole.cart_mass", [-1.0, 2.0]), "task.cartpole.cart_mass"),
    ("string range", _set("task.cartpole.gravity", "high"), "task.cartpole.gravity"),
    ("zero horizon", _set("task.cartpole.max_steps", 0), "task.cartpole.max_steps"),
    ("probability > 1", _set("task.cartpole.force_flip_prob", 1.5),
     "task.cartpole.force_flip_prob"),
    ("unknown family key", _set("task.cartpole.wind", 1.0), "task.cartpole.wind"),
    ("zero width", _set("algo.maml.hidden_sizes", [0]), "algo.maml.hidden_sizes"),
    ("huge width", _set("algo.maml.hidden_sizes", [10**6]), "algo.maml.hidden_sizes[0]"),
    ("too many layers", _set("algo.maml.hidden_sizes", [8] * 40), "algo.maml.hidden_sizes"),
    ("negative inner lr", _set("algo.maml.inner_lr", -1.0), "algo.maml.inner_lr"),
    ("nan outer lr", _set("algo.maml.outer_lr", float("nan")), "algo.maml.outer_lr"),
    ("empty meta-batch", _set("algo.maml.meta_batch_size", 0), "algo.maml.meta_batch_size"),
    ("clip > 1", _set("algo.maml.clip_eps", 2.0), "algo.maml.clip_eps"),
    ("discount > 1", _set("algo.maml.discount", 1.5), "algo.maml.discount"),
    ("huge rollout batch", _set("algo.maml.episodes_per_task", 10**6),
     "algo.maml.meta_batch_size"),
    ("huge GRU", _set("algo.rl2.hidden_size", 10**6), "algo.rl2.hidden_size"),
    ("lambda > 1", _set("algo.rl2.gae_lambda", 2.0), "algo.rl2.gae_lambda"),
    ("override of an unknown family", _set("algo.family_overrides", {"hopper": {}}),
     "algo.family_overrides.hopper"),
    ("bad override value", _set("algo.family_overrides", {"nav2d": {"maml": {"inner_lr": -1}}}),
     "algo.family_overrides.nav2d.maml.inner_lr"),
    ("no iterations", _set("train.num_iterations", 0), "train.num_iterations"),
    ("too many iterations", _set("train.num_iterations", 10**12), "train.num_iterations"),
    ("unknown device", _set("train.device", "tpu"), "train.device"),
    ("negative checkpoint interval", _set("train.checkpoint_every", -1),
     "train.checkpoint_every"),
    ("negative trials", _set("tune.n_trials", -1), "tune.n_trials"),
    ("too many trials", _set("tune.n_trials", 10**7), "tune.n_trials"),
    ("reversed search range", _set("tune.inner_lr", [1.0, 0.1]), "tune.inner_lr"),
    ("storage outside the project", _set("tune.storage", "../outside.journal"),
     "tune.storage"),
    ("absolute storage elsewhere", _set("tune.storage", "/tmp/metarl-elsewhere.journal"),
     "tune.storage"),
    ("password in the storage URL", _set("tune.storage", "postgresql://u:s3cret@127.0.0.1/db"),
     "tune.storage"),
    ("SQLite outside the project", _set("tracking.uri", "sqlite:///../elsewhere.db"),
     "tracking.uri"),
    ("token in the tracking URI", _set("tracking.uri", "http://u:t0ken@127.0.0.1:9"),
     "tracking.uri"),
    ("artifacts elsewhere", _set("tracking.artifact_location", "/tmp/metarl-artifacts"),
     "tracking.artifact_location"),
    ("no seeds", _set("evaluate.seeds", []), "evaluate.seeds"),
    ("no adaptation step", _set("evaluate.num_adapt_steps", 0), "evaluate.num_adapt_steps"),
    ("one episode", _set("evaluate.episodes_per_task", 1), "evaluate.episodes_per_task"),
    ("huge evaluation batch", _set("evaluate.episodes_per_task", 10**7), "task.num_test"),
    ("negative margin", _set("register.margin", -0.1), "register.margin"),
    ("confidence > 1", _set("register.confidence", 1.5), "register.confidence"),
    ("padded model name", _set("register.model_name", " x "), "register.model_name"),
    ("unknown section", _set("trainn", {}), "trainn"),
    ("section not a mapping", _set("train", [1, 2]), "train"),
]

RAW_CASES: list[tuple[str, str, str]] = [
    ("empty file", "", "params="),
    ("only a comment", "# nothing here\n", "params="),
    ("duplicate key", "task:\n  family: cartpole\n  family: nav2d\n", "task.family"),
    ("duplicate section", "train:\n  seed: 0\ntrain:\n  seed: 1\n", "train"),
    ("malformed YAML", "task:\n  family: [cartpole\n", "params="),
    ("not a mapping", "- task\n- train\n", "<root>"),
]


def _rehash(data: dict[str, Any]) -> None:
    data["content_hash"] = TaskSet(data["family"], data["split"], data["seed"],
                                   tuple(data["tasks"])).content_hash


def _task_edit(split: str, edit: Callable[[dict[str, Any]], None], rehash: bool = True
               ) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / "data" / "tasks" / f"{split}.json"
        data = json.loads(path.read_text())
        edit(data)
        if rehash:
            _rehash(data)
        path.write_text(json.dumps(data))

    return apply


def _copy_train_as_test(root: Path) -> None:
    shutil.copyfile(root / "data/tasks/train.json", root / "data/tasks/test.json")


def _truncate(root: Path) -> None:
    path = root / "data/tasks/test.json"
    path.write_text(path.read_text()[:40])


TASK_CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("train set as the test set", _copy_train_as_test, "register", "split='train'"),
    ("negative pole mass", _task_edit("test", lambda d: d["tasks"][0].update(pole_mass=-0.1)),
     "evaluate", "tasks[0].pole_mass=-0.1"),
    ("zero gravity", _task_edit("train", lambda d: d["tasks"][1].update(gravity=0.0)),
     "train", "tasks[1].gravity=0.0"),
    ("unknown field", _task_edit("train", lambda d: d["tasks"][0].update(wind=1.0)), "train",
     "tasks[0].wind=1.0"),
    ("missing field", _task_edit("test", lambda d: d["tasks"][2].pop("gravity")), "register",
     "tasks[2].gravity"),
    ("string field", _task_edit("val", lambda d: d["tasks"][0].update(cart_mass="x")), "tune",
     "tasks[0].cart_mass='x'"),
    ("edited, not rehashed", _task_edit("test", lambda d: d["tasks"][0].update(gravity=99.0),
                                        rehash=False), "evaluate", "content_hash"),
    ("truncated", _truncate, "register", "test.json"),
    ("another family", _task_edit("test", lambda d: d.update(family="nav2d")), "register",
     "family='nav2d'"),
    ("another schema", _task_edit("train", lambda d: d.update(schema_version=2)), "train",
     "schema_version=2"),
    ("no tasks", _task_edit("test", lambda d: d.update(tasks=[])), "evaluate", "tasks=[]"),
]


def _snapshot(root: Path) -> dict[str, str]:
    files = {}
    for top in OUTPUTS:
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _registry(root: Path) -> dict[str, Any]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    model = client.get_registered_model(NAME)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    return {"versions": versions, "aliases": {k: str(v) for k, v in model.aliases.items()}}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project that has run every stage once, with a champion."""
    root = tmp_path_factory.mktemp("fuzz") / "project"
    root.mkdir()
    write_params(root, tiny_params())
    for stage in ("tasks", "tune", "train", "evaluate", "register"):
        assert main(["stage", stage, "--root", str(root)]) == 0
    assert main(["promote", NAME, "1", "--root", str(root)]) == 0
    return root


def _expect_refusal(root: Path, stage: str, key: str, capsys: pytest.CaptureFixture[str]
                    ) -> None:
    before, registry = _snapshot(root), _registry(root)
    capsys.readouterr()
    assert main(["stage", stage, "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metarl: error: ") and err.count("\n") == 0, err
    assert key in err, err
    assert not any(secret in err for secret in SECRETS), err
    assert _snapshot(root) == before, "an output file changed"
    assert _registry(root) == registry


@pytest.mark.parametrize(("case", "edit", "key"), PARAMS_CASES, ids=[c[0] for c in PARAMS_CASES])
def test_bad_params(done: Path, capsys: pytest.CaptureFixture[str], case: str,
                    edit: ParamsEdit, key: str) -> None:
    original = (done / "params.yaml").read_text()
    params = yaml.safe_load(original)
    edit(params)
    write_params(done, params)
    try:
        _expect_refusal(done, "register", key, capsys)
    finally:
        (done / "params.yaml").write_text(original)


@pytest.mark.parametrize(("case", "text", "key"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bad_params_file(done: Path, capsys: pytest.CaptureFixture[str], case: str, text: str,
                         key: str) -> None:
    original = (done / "params.yaml").read_text()
    (done / "params.yaml").write_text(text)
    try:
        _expect_refusal(done, "train", key, capsys)
    finally:
        (done / "params.yaml").write_text(original)


@pytest.mark.parametrize(("case", "edit", "stage", "key"), TASK_CASES,
                         ids=[c[0] for c in TASK_CASES])
def test_bad_task_files(done: Path, capsys: pytest.CaptureFixture[str], case: str,
                        edit: Callable[[Path], None], stage: str, key: str) -> None:
    tasks = done / "data" / "tasks"
    saved = {p.name: p.read_bytes() for p in tasks.iterdir()}
    edit(done)
    edited = _snapshot(done)
    try:
        before = _registry(done)
        capsys.readouterr()
        assert main(["stage", stage, "--root", str(done)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("metarl: error: ") and err.count("\n") == 0, err
        assert key in err, err
        assert _snapshot(done) == edited, "an output file changed"
        assert _registry(done) == before
    finally:
        for name, data in saved.items():
            (tasks / name).write_bytes(data)


def test_the_table_is_large_enough() -> None:
    assert len(PARAMS_CASES) + len(RAW_CASES) + len(TASK_CASES) >= 40


def test_secrets_come_from_the_environment(done: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # MLFLOW_TRACKING_URI wins over params.yaml (here: a server that is not there), and its
    # password is not shown.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:s3cret@127.0.0.1:9")
    before = _snapshot(done)
    capsys.readouterr()
    assert main(["stage", "tasks", "--root", str(done)]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI='http://u:***@127.0.0.1:9'" in err and "s3cret" not in err
    assert _snapshot(done) == before
