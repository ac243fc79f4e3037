"""Bad input: one-line errors naming key and value, exit 2, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from tests.conftest import tiny_params, write_params


def run_cli(root: Path, *args: str) -> int:
    return main([*args, "--root", str(root)])


def outputs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()} - {"params.yaml", "mlflow.db", "mlartifacts"}


@pytest.mark.parametrize(
    ("edit", "key", "value"),
    [
        (lambda p: p["task"].update(family="hopper"), "task.family", "'hopper'"),
        (lambda p: p["algo"].update(name="ppo2"), "algo.name", "'ppo2'"),
        (lambda p: p["task"]["cartpole"].update(pole_mass=[0.5, 0.1]),
         "task.cartpole.pole_mass", "(0.5, 0.1)"),
        (lambda p: p["task"]["cartpole"].update(cart_mass=[-1.0, 2.0]),
         "task.cartpole.cart_mass", "(-1.0, 2.0)"),
        (lambda p: p["task"].update(num_test=0), "task.num_test", "0"),
        (lambda p: p["train"].update(num_iteration=5), "train.num_iteration", "5"),
        (lambda p: p["algo"]["maml"].update(inner_lr="fast"), "algo.maml.inner_lr", "'fast'"),
        (lambda p: p["algo"]["maml"].update(inner_lr=float("inf")), "algo.maml.inner_lr", "inf"),
        (lambda p: p["evaluate"].update(seeds=[]), "evaluate.seeds", "()"),
    ],
)
def test_bad_params_name_key_and_value(project: Path, capsys: pytest.CaptureFixture[str],
                                       edit, key: str, value: str) -> None:
    params = tiny_params()
    edit(params)
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, "the error is one line"
    assert f"{key}={value}" in err
    assert outputs(project) == set(), "nothing written on bad input"


def test_malformed_yaml(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "params.yaml").write_text("task:\n  family: [cartpole\n")
    assert run_cli(project, "stage", "tasks") == 2
    err = capsys.readouterr().err
    assert "malformed YAML at line" in err and "params=" in err
    assert outputs(project) == set()


def test_missing_task_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(project, "stage", "train") == 2
    err = capsys.readouterr().err
    assert "data/tasks/train.json: task file missing" in err and "metarl stage tasks" in err
    assert not (project / "models").exists()


def test_corrupt_task_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(project, "stage", "tasks") == 0
    path = project / "data" / "tasks" / "train.json"
    data = json.loads(path.read_text())
    data["tasks"][0]["gravity"] = 99.0
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert run_cli(project, "stage", "train") == 2
    assert "content_hash" in capsys.readouterr().err
    assert not (project / "models").exists()
    path.write_text(path.read_text()[:50])  # truncated
    assert run_cli(project, "stage", "train") == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_unreachable_tracking_uri(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tiny_params()
    params["tracking"]["uri"] = "http://127.0.0.1:9"
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 2
    err = capsys.readouterr().err
    assert "tracking.uri='http://127.0.0.1:9'" in err and "unreachable" in err
    assert outputs(project) == set()


def test_register_with_a_corrupt_checkpoint_fails_and_leaves_the_registry(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for stage in ("tasks", "train", "evaluate", "register"):
        assert run_cli(project, "stage", stage) == 0, capsys.readouterr().err
    name = "metarl-cartpole-maml"  # the default: metarl-<family>-<algo>
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert run_cli(project, "promote", name, "1") == 0
    first = json.loads((project / "metrics" / "register.json").read_text())
    # Registering the same checkpoint again re-evaluates both on the same tasks and seeds:
    # the same weights score the same, and the same registration is reused.
    assert run_cli(project, "stage", "register") == 0
    again = json.loads((project / "metrics" / "register.json").read_text())
    assert again["champion_score_before"] == pytest.approx(first["score"], abs=1e-9)
    assert again["reused_version"] is True and again["promoted"] is False

    # A corrupt checkpoint: register fails before the registry, which does not change.
    (project / "models" / "maml.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert run_cli(project, "stage", "register") == 2
    assert "maml.pt" in capsys.readouterr().err
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(int(v.version) for v in versions) == [1]
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 1


def test_register_failure_after_registering_rolls_back_and_retry_is_idempotent(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.stages.register as register

    for stage in ("tasks", "train", "evaluate"):
        assert run_cli(project, "stage", stage) == 0, capsys.readouterr().err
    name = "metarl-cartpole-maml"
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")

    def broken_write(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    # First registration fails after the version was created: the registered model is gone
    # again (it did not exist before), and no register.json was written.
    monkeypatch.setattr(register, "atomic_write_json", broken_write)
    assert run_cli(project, "stage", "register") == 2
    assert "disk full" in capsys.readouterr().err
    assert client.search_registered_models(f"name='{name}'") == []
    assert not (project / "metrics" / "register.json").exists()
    monkeypatch.undo()

    # register_model itself fails after creating the version; or logging the metrics fails:
    # same outcome, and register.json is written only on success.
    real_register = register.mlflow.register_model

    def half_register(*args: Any, **kwargs: Any) -> Any:
        real_register(*args, **kwargs)
        raise OSError("connection reset")

    def broken_metrics(*args: Any, **kwargs: Any) -> None:
        raise OSError("tracking server down")

    for target, broken, message in ((register.mlflow, half_register, "connection reset"),
                                    (register.mlflow, broken_metrics, "tracking server down")):
        attr = "register_model" if broken is half_register else "log_metrics"
        monkeypatch.setattr(target, attr, broken)
        assert run_cli(project, "stage", "register") == 2
        assert message in capsys.readouterr().err
        monkeypatch.undo()
        assert client.search_registered_models(f"name='{name}'") == []
        assert not (project / "metrics" / "register.json").exists()

    assert run_cli(project, "stage", "register") == 0
    first = json.loads((project / "metrics" / "register.json").read_text())
    assert first["reused_version"] is False and first["version"] == 1
    assert run_cli(project, "promote", name, "1") == 0
    champion = client.get_model_version_by_alias(name, "champion").version

    # The same checkpoint, test set and score again (a retry): the same version, no new one.
    assert run_cli(project, "stage", "register") == 0
    again = json.loads((project / "metrics" / "register.json").read_text())
    assert again["version"] == first["version"] and again["reused_version"] is True
    assert again["promoted"] is False
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # A challenger the gate promotes (another checkpoint; the decision is forced here, the
    # gate itself is tested in test_register_gate.py) whose registration fails at the alias:
    # versions and both aliases are as they were.
    (project / "models" / "maml.json").write_text(
        json.dumps({**json.loads((project / "models" / "maml.json").read_text()), "n": 1}))
    real_decide = register._decide

    def promoting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**real_decide(*args, **kwargs), "promoted": True}

    monkeypatch.setattr(register, "_decide", promoting)
    real_set = MlflowClient.set_registered_model_alias

    def failing_champion(self: MlflowClient, model: str, alias: str, version: object) -> None:
        if alias == "champion" and str(version) != str(champion):
            raise OSError("registry unreachable")
        real_set(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", failing_champion)
    assert run_cli(project, "stage", "register") == 2
    monkeypatch.undo()
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == [champion]
    assert client.get_model_version_by_alias(name, "champion").version == champion
    assert client.get_model_version_by_alias(name, "challenger").version == champion


def test_params_file_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tmp_path, "stage", "tasks") == 2
    assert "params=" in capsys.readouterr().err


def test_help_lists_stages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stage", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "tasks → tune → train → evaluate → register" in out


def test_version_names_metarl_and_its_stack(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"metarl {importlib.metadata.version('metarl')} (Python ")
    assert f"torch {importlib.metadata.version('torch')}" in out


def test_help_and_version_import_no_heavy_package() -> None:
    # what makes `metarl --help` fast: it imports neither torch nor MLflow & co.
    import subprocess
    import sys

    code = ("import sys\nfrom pipelines.cli import main\nfor argv in (['--help'], "
            "['adapt', '--help'], ['--version']):\n    try:\n        main(argv)\n"
            "    except SystemExit:\n        pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'mlflow', 'optuna', 'prefect', 'dvc', "
            "'gymnasium', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("LOADED []"), out[-300:]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["adpt", "x"], "did you mean 'adapt'?"),
        (["stage", "trian"], "did you mean 'train'?"),
        (["adapt", "x", "--stpes", "3"], "--stpes: did you mean --steps?"),
        (["bench", "rl2", "--cell", "10x5"], "--cell: did you mean --cells?"),
    ],
)
def test_typos_exit_2_with_the_closest_name(argv: list[str], said: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert said in err
    # the usage shown is the command's own, not the top level's
    assert err.startswith(f"usage: metarl {argv[0]}") or argv[0] == "adpt"


@pytest.mark.parametrize("argv", [["adapt", "x", "--step", "3"], ["play", "--epi", "2"],
                                  ["bench", "maml", "--iter", "3"]])
def test_abbreviated_options_are_refused(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"unrecognized arguments: {argv[-2]}" in capsys.readouterr().err


def test_tune_with_zero_trials_still_writes_its_outputs(project: Path) -> None:
    params = tiny_params()
    params["tune"]["n_trials"] = 0
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 0
    assert run_cli(project, "stage", "tune") == 0
    assert (project / "tuning" / "study.journal").is_file()
    assert "algo: {}" in (project / "tuning" / "best_params.yaml").read_text()


def test_family_overrides_apply_to_the_chosen_family_only(project: Path) -> None:
    from pipelines.settings import load_config

    params = tiny_params()
    params["algo"]["family_overrides"] = {"nav2d": {"maml": {"inner_lr": 0.05,
                                                              "init_std": 3.0}}}
    write_params(project, params)
    assert load_config(project / "params.yaml").algo.maml.inner_lr == params["algo"]["maml"][
        "inner_lr"]
    params["task"]["family"] = "nav2d"
    write_params(project, params)
    config = load_config(project / "params.yaml")
    assert (config.algo.maml.inner_lr, config.algo.maml.init_std) == (0.05, 3.0)


def test_bad_family_override_names_the_key(project: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    params = tiny_params()
    params["algo"]["family_overrides"] = {"nav2d": {"maml": {"inner_lr": -1.0}}}
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 2
    assert "algo.family_overrides.nav2d.maml.inner_lr=-1.0" in capsys.readouterr().err
    params["algo"]["family_overrides"] = {"hopper": {}}
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 2
    assert "algo.family_overrides.hopper" in capsys.readouterr().err
    params["algo"]["family_overrides"] = {"nav2d": {"ppo": {}}}
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 2
    assert "algo.family_overrides.nav2d.ppo" in capsys.readouterr().err
    params["algo"]["family_overrides"] = {"nav2d": {"rl2": {"bptt_length": -3}}}
    write_params(project, params)
    assert run_cli(project, "stage", "tasks") == 2
    assert "algo.family_overrides.nav2d.rl2.bptt_length=-3" in capsys.readouterr().err


def test_registry_lock_serialises_registrations_and_dies_with_its_holder(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pipelines.stages.common import StageError
    from pipelines.stages.register import registry_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with registry_lock("http://127.0.0.1:5000") as path:
        assert path is None  # a server's registry: nothing to lock locally
    with registry_lock(uri, timeout=1) as path:
        assert path == tmp_path / "mlflow.db.register.lock"
        with pytest.raises(StageError, match=r"tracking.uri=.*mlflow.db.*held .*register.lock"):
            with registry_lock(uri, timeout=0.3):
                pass
    with registry_lock(uri, timeout=0.3):  # released on exit
        pass
    # Another process holds it, then dies without letting go: the OS releases it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pipelines.stages.register import "
         "registry_lock\nwith registry_lock(sys.argv[1]):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n", uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StageError, match="another registration"):
            with registry_lock(uri, timeout=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with registry_lock(uri, timeout=5):
        pass


def test_register_waiting_on_a_held_registry_fails_cleanly_then_succeeds(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.stages.register as register

    for stage in ("tasks", "train", "evaluate"):
        assert run_cli(project, "stage", stage) == 0, capsys.readouterr().err
    name = "metarl-cartpole-maml"
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setattr(register, "LOCK_TIMEOUT", 0.5)
    capsys.readouterr()
    with register.registry_lock(uri):  # another registration is under way
        assert run_cli(project, "stage", "register") == 2
    err = capsys.readouterr().err
    assert "another registration" in err and "mlflow.db.register.lock" in err
    client = MlflowClient(tracking_uri=uri)
    assert client.search_registered_models(f"name='{name}'") == []
    assert not (project / "metrics" / "register.json").exists()
    assert run_cli(project, "stage", "register") == 0
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 1
