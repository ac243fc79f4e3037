"""``metarl bench maml --reference``: the launcher, the timing and scoring, bad checkouts.

The real pytorch-maml-rl cannot be fetched in CI, so these tests build a stand-in checkout
with its layout and command lines: a ``train.py`` that loops with ``tqdm.trange``, saves
``policy.th`` every iteration and calls ``get_returns`` on episodes of known lengths, and a
``test.py`` that writes the reference's ``results.npz`` (tasks, train/valid returns), its
returns derived from the iteration stored in the checkpoint it was given. The run against
the real reference is recorded in ``pipelines/bench/maml.py``'s docstring.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from metarl.algos.base import RandomLearner
from metarl.baselines.oracles import oracle_returns
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adaptation_curve, normalized
from pipelines.bench.maml_reference import run_reference
from pipelines.cli import main

TRAIN = '''
import argparse, json, os, time, yaml, torch
from tqdm import trange
from maml_rl.utils.reinforcement_learning import get_returns

class Episodes:
    def __init__(self, lengths):
        self.lengths = lengths

p = argparse.ArgumentParser()
p.add_argument("--config"); p.add_argument("--output-folder"); p.add_argument("--seed", type=int)
p.add_argument("--num-workers", type=int)
a = p.parse_args()
config = yaml.safe_load(open(a.config))
os.makedirs(a.output_folder, exist_ok=True)
json.dump(config, open(os.path.join(a.output_folder, "config.json"), "w"))
assert torch.lstsq(torch.ones(2, 1), 2 * torch.eye(2))[0].flatten().tolist() == [0.5, 0.5]
for batch in trange(config["num-batches"]):
    time.sleep(0.01)
    get_returns([Episodes([100, 60]), Episodes([100, 100])])   # pre-update: 360 steps
    get_returns([Episodes([100, 40])])                          # post-update: 140 steps
    torch.save({"iteration": batch + 1}, os.path.join(a.output_folder, "policy.th"))
'''

TEST = '''
import argparse, json, numpy as np, torch
from maml_rl.utils.reinforcement_learning import get_returns
p = argparse.ArgumentParser()
for name in ("--config", "--policy", "--output"):
    p.add_argument(name)
for name in ("--meta-batch-size", "--num-batches", "--seed", "--num-workers"):
    p.add_argument(name, type=int)
a = p.parse_args()
json.load(open(a.config))
iteration = torch.load(a.policy)["iteration"]
rng = np.random.default_rng(a.seed)
n = a.meta_batch_size * a.num_batches
tasks = [{"goal": goal} for goal in rng.uniform(-0.5, 0.5, size=(n, 2))]
np.savez(open(a.output, "wb"), tasks=tasks, train_returns=np.full((n, 20), -40.0),
         valid_returns=np.full((n, 20), -50.0 + iteration))
'''


def fake_reference(root: Path, train: str = TRAIN) -> Path:
    """A folder with pytorch-maml-rl's layout and command lines (see the module docstring)."""
    (root / "maml_rl" / "utils").mkdir(parents=True)
    (root / "maml_rl" / "__init__.py").write_text("")
    (root / "maml_rl" / "utils" / "__init__.py").write_text("")
    (root / "maml_rl" / "utils" / "reinforcement_learning.py").write_text(textwrap.dedent('''
        def get_returns(episodes):
            return [sum(e.lengths) for e in episodes]
    '''))
    (root / "configs" / "maml").mkdir(parents=True)
    (root / "configs" / "maml" / "2d-navigation.yaml").write_text(
        "env-name: 2DNavigation-v0\nhidden-sizes: [64, 64]\nfast-batch-size: 20\n"
        "num-batches: 500\n")
    (root / "train.py").write_text(train)
    (root / "test.py").write_text(TEST)
    return root


@pytest.mark.slow
def test_reference_is_timed_counted_and_scored_per_checkpoint(tmp_path: Path) -> None:
    ref = run_reference(fake_reference(tmp_path / "ref"), sys.executable, num_iterations=5,
                        eval_every=2, seed=3, num_goals=30)
    assert ref.hidden_sizes == (64, 64)
    # checkpoints every 2 iterations and the final one, each the policy of that iteration
    assert [e.iteration for e in ref.evals] == [2, 4, 5]
    assert [e.test_post for e in ref.evals] == [-48.0, -46.0, -45.0]
    assert all(e.test_pre == -40.0 and e.num_goals == 40 for e in ref.evals)  # 2 batches of 20
    # 500 env steps per iteration, counted through get_returns; each iteration sleeps 10 ms
    assert ref.env_steps_per_s * ref.training_seconds == pytest.approx(5 * 500)
    assert 0.01 <= ref.seconds_per_iteration < 5
    # normalised on the reference's own goals with metarl's random and oracle returns
    goals = np.random.default_rng(3).uniform(-0.5, 0.5, size=(40, 2))
    tasks = [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]
    family = Nav2DFamily(Nav2DFamilyConfig())
    oracle = float(oracle_returns(family, tasks).mean())
    random_return = float(adaptation_curve(RandomLearner(), family, tasks, 0, 20, 3)[0].mean())
    assert random_return < -45 and oracle > -1
    assert ref.evals[-1].normalized_post == pytest.approx(
        float(normalized(-45.0, random_return, oracle)))


@pytest.mark.slow
def test_bench_maml_prints_ours_and_the_reference_side_by_side(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "maml", "--iterations", "2", "--eval-every", "1", "--test-tasks", "3",
                 "--reference", str(fake_reference(tmp_path / "ref"))]) == 0
    out = capsys.readouterr().out
    table = out[out.index("side by side"):].splitlines()
    ours = next(line for line in table if line.startswith("metarl ("))
    theirs = next(line for line in table if line.startswith("pytorch-maml-rl "))
    ours_s, theirs_s = float(ours.split("|")[2]), float(theirs.split("|")[2])
    assert theirs.split("|")[1].strip() == "64x64" and ours.split("|")[1].strip() == "32x32"
    assert theirs.split("|")[5].strip().startswith("-48.0 (")   # final = iteration 2
    assert "20 of its test.py" in theirs and "3 held-out" in ours
    speedup = re.search(r"metarl: ([\d.]+)x the reference's", table[-1])
    assert speedup is not None
    assert float(speedup.group(1)) == pytest.approx(theirs_s / ours_s, rel=0.05)


def test_a_folder_that_is_not_the_reference_is_refused_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.py").write_text("")
    assert main(["bench", "maml", "--reference", str(tmp_path)]) == 2
    err = capsys.readouterr()
    assert f"--reference='{tmp_path}': not a pytorch-maml-rl checkout (missing test.py, " in err.err
    assert "clone https://github.com/tristandeleu/pytorch-maml-rl" in err.err
    assert "MAML on 2D navigation" not in err.out    # refused before our training started


def test_a_missing_reference_interpreter_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "maml", "--reference", str(fake_reference(tmp_path / "ref")),
                 "--reference-python", "/no/such/python"]) == 2
    assert "--reference-python='/no/such/python': no such interpreter" in capsys.readouterr().err


def test_a_failing_reference_is_reported_with_its_status(tmp_path: Path) -> None:
    broken = TRAIN.replace("time.sleep(0.01)", "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match=r"train.py exited with status 3"):
        run_reference(fake_reference(tmp_path / "ref", broken), sys.executable, 2, 1, 0, 20)


@pytest.mark.slow
def test_a_hung_reference_is_stopped_with_its_workers(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    import pipelines.bench.maml_reference as reference

    pid_file = tmp_path / "worker.pid"
    # a sampler worker that never returns, and a main process that waits for it
    hung = TRAIN.replace("time.sleep(0.01)", (
        "import subprocess; w = subprocess.Popen(['sleep', '600']); "
        f"open({str(pid_file)!r}, 'w').write(str(w.pid)); w.wait()"))
    monkeypatch.setattr(reference, "SECONDS_PER_ITERATION_LIMIT", 1.0)
    monkeypatch.setattr(reference, "STARTUP_SECONDS", 4.0)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"train.py ran past 6 s and was stopped"):
        run_reference(fake_reference(tmp_path / "ref", hung), sys.executable, 2, 1, 0, 20)
    assert time.monotonic() - start < 60
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the reference's worker {worker} outlived it")
