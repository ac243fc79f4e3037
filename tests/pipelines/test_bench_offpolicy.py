"""``metarl bench offpolicy``: equal budgets, a learning curve against env steps, a table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from metarl.algos import registry
from pipelines import stats
from pipelines.bench.budget import iterations_within
from pipelines.bench.offpolicy import Curve, Row, bench_offpolicy, steps_to_reach
from pipelines.cli import main

TINY = {"maml": {"meta_batch_size": 4, "episodes_per_task": 4, "hidden_sizes": (8,)},
        "rl2": {"meta_batch_size": 4, "hidden_size": 8, "num_epochs": 1}}


def test_budgets_curves_and_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    budget, own = 8_000, {"rl2": 4_000}
    result = bench_offpolicy(["maml", "rl2"], "point_sparse", budget, seeds=(0, 1), rounds=2,
                             split="val", eval_seeds=(0,), points=3, overrides=TINY,
                             budgets=own)
    out = capsys.readouterr().out
    for row in result["rows"]:
        algo = registry.get(row.name)
        config = algo.config_cls(**TINY[row.name])
        budget = own.get(row.name, 8_000)
        # as many iterations as fit, and no more: the env steps used stay within the budget
        assert row.iterations == iterations_within(algo, config, budget, 20, 3)
        assert 0 < row.env_steps <= budget
        assert row.returns.shape == (2, 3, 20)  # seeds x rounds 0..2 x the 20 val goals
        assert row.success is not None and ((0 <= row.success) & (row.success <= 1)).all()
        for curve in row.curves:  # evaluations along training, the final one last
            steps = [p[0] for p in curve.points]
            assert steps == sorted(steps) and len(steps) >= 2 and steps[-1] == row.env_steps
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{row.name} "))
        est = stats.mean_interval(row.returns[:, 2], stats.generator())
        assert f"{est.value:.2f} [{est.ci_low:.2f}, {est.ci_high:.2f}]" in line
    csv = result["curves"].splitlines()
    assert csv[0].startswith("algorithm,seed,env_steps,return_r0")
    assert len(csv) == 1 + sum(len(c.points) for r in result["rows"] for c in r.curves)
    assert "val tasks (20)" in out and "budget 8,000 env steps per seed, rl2: 4,000" in out


def _row(name: str, points: list[tuple[float, float]], budget: float) -> Row:
    curve = Curve([(s, np.full((2, 4), v), None) for s, v in points])
    final = np.full((1, 2, 4), points[-1][1])
    return Row(name, 1, budget, 1.0, final, None, [curve])


def test_steps_to_reach_reads_the_mean_curve() -> None:
    row = _row("pearl", [(100, 0.1), (1_000, 0.5), (10_000, 0.9)], 10_000)
    assert steps_to_reach(row, 0.5) == 1_000
    assert steps_to_reach(row, 0.95) is None
    two = replace(row, curves=[row.curves[0], Curve([(200, np.zeros((2, 4)), None),
                                                     (2_000, np.ones((2, 4)), None),
                                                     (20_000, np.ones((2, 4)), None)])])
    assert steps_to_reach(two, 0.75) == 1_500  # the seeds' means: 0.05 at 150, 0.75 at 1,500


def test_iterations_within_counts_an_initial_collection() -> None:
    class Fake:
        @staticmethod
        def episodes(config: object, n: int, trial: int) -> int:
            return 50 + 10 * n  # 50 episodes before the first iteration

    assert iterations_within(Fake, None, (50 + 10 * 7) * 20, 20, 1) == 7  # type: ignore[arg-type]
    assert iterations_within(Fake, None, 10, 20, 1) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(("argv", "said"), [
    (["--set", "maml.foo=1"], "--set maml.foo=1: unknown key"),
    (["--algorithms", "nope"], "--algorithms='nope': unknown algorithm"),
    (["--budget", "0"], "--budget=0"),
    (["--budget-of", "maml"], "--budget-of 'maml': give NAME=STEPS"),
    (["--budget-of", "pearl=100"], "--budget-of pearl=100: give NAME=STEPS with NAME one of"),
])
def test_bad_input_is_named(argv: list[str], said: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.txt"
    assert main(["bench", "offpolicy", "--algorithms", "maml", *argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert said in captured.err
    assert "seed 0:" not in captured.out  # refused before anything trained
    assert not out.exists()


def test_step_counter_counts_and_shows_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.bench.budget import StepCounter

    monkeypatch.delenv("METARL_NO_PROGRESS", raising=False)
    counter = StepCounter(100, "pearl seed 0")
    counter.log_metrics({"train/env_steps": 40.0}, 0)
    counter.log_metrics({"train/loss": 1.0}, 1)
    assert counter.env_steps == 40.0 and counter.bar.n == 40 and counter.bar.total == 100
    counter.close()
    assert counter.bar is None
    monkeypatch.setenv("METARL_NO_PROGRESS", "1")
    quiet = StepCounter(100, "x")
    quiet.log_metrics({"train/env_steps": 5.0}, 0)
    assert quiet.bar is None and quiet.env_steps == 5.0


def test_runs_made_apart_combine_into_the_one_table(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    common = ["bench", "offpolicy", "--protocol", "point_dense", "--seeds", "0", "--points",
              "2", "--episodes", "1", "--split", "val"]
    sets = {"maml": ["maml.meta_batch_size=4", "maml.episodes_per_task=4",
                     "maml.hidden_sizes=[8]"],
            "rl2": ["rl2.meta_batch_size=4", "rl2.hidden_size=8", "rl2.num_epochs=1"]}
    files = {}
    for name, budget in (("maml", "4000"), ("rl2", "2000")):
        files[name] = tmp_path / f"{name}.json"
        assert main([*common, "--algorithms", name, "--budget", budget, "--set", *sets[name],
                     "--json", str(files[name])]) == 0
    together = tmp_path / "table.txt"
    capsys.readouterr()
    assert main(["bench", "offpolicy", "--combine", str(files["maml"]), str(files["rl2"]),
                 "--out", str(together), "--curves", str(tmp_path / "c.csv"),
                 "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = together.read_text()
    assert "budget 4,000 env steps per seed, rl2: 2,000" in text
    for name in ("maml", "rl2"):  # each row as its own run printed it
        doc = json.loads(files[name].read_text())
        (row,) = doc["rows"]
        mean = np.mean(np.asarray(row["returns"])[:, -1])
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{name} "))
        assert f"{mean:.2f} [" in line.split("|")[6]
    assert (tmp_path / "c.csv").read_text().count("\n") == 1 + 2 * 2  # 2 points per run
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["bench", "offpolicy", "--combine", str(bad)]) == 2
    assert "--combine" in capsys.readouterr().err
