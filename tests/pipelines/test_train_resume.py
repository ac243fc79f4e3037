"""Training survives being stopped: resumed from its saved state, it ends bit-identical."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from metarl.algos.maml import MAMLConfig, train_maml
from metarl.algos.pretrain import pretrain_multitask
from metarl.algos.reptile import ReptileConfig, train_reptile
from metarl.algos.rl2 import RL2Config, train_rl2
from metarl.checkpoint import load_params
from metarl.families import make_family
from metarl.tasks import sample_task_sets
from metarl.training import Resume, StateFn
from pipelines.cli import main
from tests.conftest import REPO, tiny_params, write_params

FAMILY = make_family("cartpole")
TASKS = sample_task_sets(FAMILY, {"train": 6}, 0)["train"]
SMALL = {"hidden_sizes": (8,), "meta_batch_size": 3, "episodes_per_task": 4}


def _maml(learn: bool) -> Callable[[Resume, int], dict[str, torch.Tensor]]:
    cfg = MAMLConfig(**SMALL, learn_inner_lr=learn)  # type: ignore[arg-type]

    def run(resume: Resume, n: int) -> dict[str, torch.Tensor]:
        maml = train_maml(FAMILY, TASKS, cfg, n, 0, resume=resume)
        extra = maml.inner_lr if isinstance(maml.inner_lr, dict) else {}
        return {**maml.theta, **{f"lr.{k}": v for k, v in extra.items()}}

    return run


def _reptile(optimizer: str) -> Callable[[Resume, int], dict[str, torch.Tensor]]:
    cfg = ReptileConfig(**SMALL, num_inner_steps=2, optimizer=optimizer)  # type: ignore[arg-type]

    def run(resume: Resume, n: int) -> dict[str, torch.Tensor]:
        return dict(train_reptile(FAMILY, TASKS, cfg, n, 0, resume=resume).theta)

    return run


def _pretrain(resume: Resume, n: int) -> dict[str, torch.Tensor]:
    return pretrain_multitask(FAMILY, TASKS, MAMLConfig(**SMALL), n, 0,  # type: ignore[arg-type]
                              resume=resume).params


def _rl2(resume: Resume, n: int) -> dict[str, torch.Tensor]:
    cfg = RL2Config(hidden_size=8, meta_batch_size=3, trials_per_task=2, num_epochs=2,
                    num_minibatches=2, bptt_length=10)
    return dict(train_rl2(FAMILY, TASKS, cfg, 2, n, 0, resume=resume).model.state_dict())


@pytest.mark.parametrize("train", [_maml(False), _maml(True), _reptile("sgd"),
                                   _reptile("adam"), _pretrain, _rl2],
                         ids=["maml", "meta-sgd", "reptile-sgd", "reptile-adam", "pretrain",
                              "rl2"])
def test_a_resumed_loop_ends_with_the_uninterrupted_parameters(train: Any) -> None:
    saved: dict[int, bytes] = {}

    def save(done: int, state: StateFn) -> None:
        buf = io.BytesIO()
        torch.save(state(), buf)  # what the pipeline writes, read back weights-only below
        saved[done] = buf.getvalue()

    full = train(Resume(save=save), 6)
    assert sorted(saved) == [1, 2, 3, 4, 5, 6]
    for stop in (2, 5):
        state = torch.load(io.BytesIO(saved[stop]), weights_only=True)
        assert state["iteration"] == stop
        resumed = train(Resume(state=state), 6)
        assert set(resumed) == set(full)
        for k in full:
            assert torch.equal(resumed[k], full[k]), (stop, k)
    # and an unsaved run from scratch differs from one resumed at the wrong place: the state
    # is what carries the run (parameters alone would not reproduce it)
    fresh = train(Resume(), 5)
    assert any(not torch.equal(fresh[k], full[k]) for k in full)


def _tensors(models: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_params(p) for p in sorted(models.glob("*.pt"))}


def _params() -> dict[str, Any]:
    params = tiny_params()
    params["tune"]["n_trials"] = 0
    params["train"].update(num_iterations=30, checkpoint_every=2)
    params["algo"]["maml"]["episodes_per_task"] = 8
    params["task"]["cartpole"]["max_steps"] = 60
    return params


@pytest.mark.slow
def test_train_stage_killed_then_rerun_is_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for root in (reference, killed):
        root.mkdir()
        write_params(root, _params())
        assert main(["stage", "tasks", "--root", str(root)]) == 0
    assert main(["stage", "train", "--root", str(reference)]) == 0
    assert not list((reference / "train_state").glob("*.pt")), "states deleted on success"
    assert (reference / "train_state" / "README").is_file()

    env = {**os.environ, "METARL_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stage", "train", "--root",
                             str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        state = killed / "train_state" / "maml.pt"
        deadline = time.monotonic() + 120
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random(0).uniform(0.0, 0.3))  # somewhere in the training
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it was killed"
    assert not (killed / "models").exists(), "a killed stage leaves no models/"
    left = sorted(p.name for p in (killed / "train_state").glob("*.pt"))
    assert left and left[0] in ("maml.pt", "pretrained.pt"), left

    capsys.readouterr()
    assert main(["stage", "train", "--root", str(killed)]) == 0
    assert "train: resuming " in capsys.readouterr().err
    want, got = _tensors(reference / "models"), _tensors(killed / "models")
    assert set(got) == set(want) == {"maml.pt", "pretrained.pt"}
    for name, tensors in want.items():
        for key, value in tensors.items():
            assert torch.equal(got[name][key], value), (name, key)
    curve = (reference / "plots" / "train_curve.csv").read_text()
    assert (killed / "plots" / "train_curve.csv").read_text() == curve
    assert len(curve.splitlines()) == 1 + 30
    assert not list((killed / "train_state").glob("*.pt"))


def test_a_state_of_another_configuration_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.stages import train as stage

    roots = {seed: tmp_path / f"seed{seed}" for seed in (0, 1)}
    params = _params()
    params["train"]["num_iterations"] = 4
    for root in roots.values():
        root.mkdir()
        write_params(root, params)
        assert main(["stage", "tasks", "--root", str(root)]) == 0
    assert main(["stage", "train", "--root", str(roots[0])]) == 0
    # roots[1]: a finished seed-1 run whose states were kept (the stage deletes its own)
    params["train"]["seed"] = 1
    write_params(roots[1], params)
    monkeypatch.setattr(stage, "clear_train_state", lambda paths: None)
    assert main(["stage", "train", "--root", str(roots[1])]) == 0
    monkeypatch.undo()
    params["train"]["seed"] = 0
    write_params(roots[1], params)
    capsys.readouterr()
    assert main(["stage", "train", "--root", str(roots[1])]) == 0
    err = capsys.readouterr().err
    assert "belongs to another configuration" in err and "resuming" not in err
    want, got = _tensors(roots[0] / "models"), _tensors(roots[1] / "models")
    for name, tensors in want.items():
        for key, value in tensors.items():
            assert torch.equal(got[name][key], value), (name, key)
