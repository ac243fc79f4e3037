"""pytorch-maml-rl, the reference of ``metarl bench maml``, run beside ours in the same command.

``metarl bench maml --reference DIR`` trains the reference (a checkout of
https://github.com/tristandeleu/pytorch-maml-rl, its own ``configs/maml/2d-navigation.yaml``,
only ``num-batches`` set to our iteration count) with its own ``train.py`` and interpreter, then
scores its checkpoints with its own ``test.py``: the return before and after one adaptation
step on goals its sampler draws. Nothing of the reference is copied into metarl; its scripts
run unchanged through :mod:`pipelines.bench.maml_reference_launcher`, which times every iteration,
counts env steps and keeps a checkpoint every ``eval_every`` iterations.

Its post-adaptation returns are normalised like ours (random 0, straight-to-goal oracle 1),
with the random and oracle returns computed by metarl's 2D navigation on the reference's own
test goals (the two environments follow the same source: see :mod:`metarl.envs.nav2d`).

The reference needs an interpreter where it runs: PyTorch, ``gym`` 0.17 (its 4-tuple step
API), ``numpy < 2`` (it uses ``np.float_``), tqdm and PyYAML. ``--reference-python`` names that
interpreter (default: the running one).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metarl.algos.base import RandomLearner
from metarl.baselines.oracles import oracle_returns
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adaptation_curve, normalized

LAUNCHER = Path(__file__).with_name("maml_reference_launcher.py")
CONFIG = Path("configs") / "maml" / "2d-navigation.yaml"
REQUIRED = ("train.py", "test.py", str(CONFIG), "maml_rl")
SECONDS_PER_ITERATION_LIMIT = 120.0
STARTUP_SECONDS = 60.0
"""The reference is stopped (and the bench fails) past ``STARTUP_SECONDS`` plus this many
seconds per iteration: when one of its sampler workers dies, its main process waits forever."""


@dataclass(frozen=True)
class ReferenceEval:
    """The reference's checkpoint after ``iteration`` meta-iterations, on its test goals."""

    iteration: int
    test_pre: float
    test_post: float
    normalized_post: float
    num_goals: int


@dataclass(frozen=True)
class ReferenceResult:
    """Timing and scores of one reference training run."""

    revision: str
    hidden_sizes: tuple[int, ...]
    seconds_per_iteration: float
    env_steps_per_s: float
    training_seconds: float
    evals: list[ReferenceEval]


def check_reference(directory: Path, python: str) -> None:
    """Refuse a folder that is not a pytorch-maml-rl checkout, or a missing interpreter."""
    missing = [name for name in REQUIRED if not (directory / name).exists()]
    if missing:
        raise ValueError(
            f"--reference={str(directory)!r}: not a pytorch-maml-rl checkout (missing "
            f"{', '.join(missing)}); clone https://github.com/tristandeleu/pytorch-maml-rl and "
            "pass its folder")
    if shutil.which(python) is None:
        raise ValueError(f"--reference-python={python!r}: no such interpreter; pass the python "
                         "of an environment where the reference runs (torch, gym==0.17.3, "
                         "'numpy<2', tqdm, pyyaml)")


def _revision(directory: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"


def _launch(python: str, directory: Path, log: Path, every: int, script: str,
            args: list[str], timeout: float, what: str) -> dict[str, Any]:
    """Run one reference script through the launcher; its log (timestamps, env steps)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if os.environ.get("METARL_NO_PROGRESS"):
        env["TQDM_DISABLE"] = "1"  # the reference's own progress bars
    command = [python, str(LAUNCHER), str(log), str(every), script, *args]
    # its own process group: a stop takes its sampler workers down with it
    process = subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the reference's {what} ran past {timeout:.0f} s and was stopped (one of its "
            "sampler workers probably failed: its error is above)") from None
    finally:  # also on Ctrl-C (its new session does not get the terminal's SIGINT)
        _stop(process)  # and any worker it left behind
    if status != 0:
        raise RuntimeError(f"the reference's {what} exited with status {status} (its error is "
                           "above); check that --reference-python has torch, gym==0.17.3, "
                           "'numpy<2', tqdm and pyyaml")
    return json.loads(log.read_text())


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the reference's process group (main process, sampler workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def nav2d_yardsticks(goals: list[dict[str, float]], episodes: int, seed: int
                     ) -> tuple[float, float]:
    """Mean returns of uniform random actions and of the straight-to-goal oracle on ``goals``.

    The 0 and the 1 of the normalised score.
    """
    family = Nav2DFamily(Nav2DFamilyConfig())
    random_return = adaptation_curve(RandomLearner(), family, goals, 0, episodes, seed)[0]
    return float(random_return.mean()), float(oracle_returns(family, goals).mean())


def _score(directory: Path, python: str, folder: Path, iteration: int, num_goals: int,
           episodes: int, seed: int, workers: int,
           yardsticks: dict[tuple[float, ...], tuple[float, float]]) -> ReferenceEval:
    """The reference's ``test.py`` on one checkpoint, normalised on its own goals.

    ``yardsticks`` caches the random and oracle returns per goal set (every checkpoint is
    scored on the same goals: same seed).
    """
    batches = math.ceil(num_goals / 20)
    output = folder / f"test-{iteration}.npz"
    _launch(python, directory, folder / f"test-{iteration}.json", 0, "test.py",
            ["--config", str(folder / "config.json"), "--policy",
             str(folder / f"policy-{iteration}.th"), "--output", str(output),
             "--meta-batch-size", "20", "--num-batches", str(batches), "--seed", str(seed),
             "--num-workers", str(workers)],
            timeout=STARTUP_SECONDS + SECONDS_PER_ITERATION_LIMIT * batches,
            what=f"test.py (iteration {iteration})")
    with np.load(output, allow_pickle=True) as logs:
        goals = [{"goal_x": float(t["goal"][0]), "goal_y": float(t["goal"][1])}
                 for t in logs["tasks"]]
        pre, post = float(logs["train_returns"].mean()), float(logs["valid_returns"].mean())
    key = tuple(v for g in goals for v in (g["goal_x"], g["goal_y"]))
    if key not in yardsticks:
        yardsticks[key] = nav2d_yardsticks(goals, episodes, seed)
    random_return, oracle = yardsticks[key]
    return ReferenceEval(iteration, pre, post, float(normalized(post, random_return, oracle)),
                         len(goals))


def run_reference(directory: Path, python: str, num_iterations: int, eval_every: int,
                  seed: int, num_goals: int, workers: int = 1) -> ReferenceResult:
    """Train the reference for ``num_iterations`` and score its checkpoints."""
    directory = directory.resolve()
    check_reference(directory, python)
    config = yaml.safe_load((directory / CONFIG).read_text())
    config["num-batches"] = num_iterations
    with tempfile.TemporaryDirectory(prefix="metarl-maml-reference-") as tmp:
        folder = Path(tmp)
        (folder / "2d-navigation.yaml").write_text(yaml.safe_dump(config))
        revision = _revision(directory)
        print(f"reference: pytorch-maml-rl ({revision}) train.py, "
              f"{num_iterations} iterations, {workers} sampler worker(s)", flush=True)
        log = _launch(python, directory, folder / "train.json", eval_every, "train.py",
                      ["--config", str(folder / "2d-navigation.yaml"), "--output-folder",
                       str(folder), "--seed", str(seed), "--num-workers", str(workers)],
                      timeout=STARTUP_SECONDS + SECONDS_PER_ITERATION_LIMIT * num_iterations,
                      what="train.py")
        stamps = log["stamps"]
        if len(stamps) != num_iterations + 1:
            raise RuntimeError(f"the reference's train.py ran {len(stamps) - 1} of "
                               f"{num_iterations} iterations")
        seconds = stamps[-1] - stamps[0]
        checkpoints = sorted({*range(eval_every, num_iterations + 1, eval_every),
                              num_iterations})
        evals: list[ReferenceEval] = []
        yardsticks: dict[tuple[float, ...], tuple[float, float]] = {}
        for iteration in checkpoints:
            evals.append(_score(directory, python, folder, iteration, num_goals,
                                int(config["fast-batch-size"]), seed, workers, yardsticks))
            e = evals[-1]
            print(f"reference iteration {iteration}: {e.test_pre:.1f} before, {e.test_post:.1f} "
                  f"after adaptation ({e.normalized_post:.3f}) on {e.num_goals} goals",
                  flush=True)
    return ReferenceResult(revision, tuple(config["hidden-sizes"]),
                           seconds / num_iterations, log["env_steps"] / seconds, seconds, evals)

