"""``metarl bench maml``: a seconds-long smoke run, bad options, and (slow) the learning level."""

from __future__ import annotations

import re

import pytest

from pipelines.bench.maml import BENCH_CONFIG, bench_maml
from pipelines.cli import main


def test_bench_maml_prints_timings_returns_and_score(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "maml", "--iterations", "2", "--eval-every", "1",
                 "--test-tasks", "3"]) == 0
    out = capsys.readouterr().out
    assert "20 tasks x 20 trajectories x horizon 100" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+ \|", line)]
    assert [int(r.split("|")[0]) for r in rows] == [1, 2]
    cells = [c.strip() for c in rows[-1].split("|")]
    seconds, steps_per_s = float(cells[1]), float(cells[2].replace(",", ""))
    assert 0 < seconds < 30 and steps_per_s > 1000
    assert all(-1000 < float(c) <= 0 for c in cells[3:7])  # returns: minus distances
    final = out.strip().splitlines()[-1]
    assert final.startswith("final checkpoint (iteration 2)")
    assert "normalised post-adaptation score" in final


@pytest.mark.parametrize("flag", ["--iterations", "--eval-every", "--test-tasks"])
def test_bench_maml_rejects_nonpositive_options(flag: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "maml", flag, "0"]) == 2
    assert f"{flag}=0: must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_maml_learns_2d_navigation_in_30_iterations() -> None:
    result = bench_maml(num_iterations=30, eval_every=30, seed=0, num_test_tasks=20)
    final = result["rows"][-1]
    assert result["random_return"] < -45 and result["oracle_return"] > -1
    # One adaptation step from the meta-learned start more than halves the gap to the oracle.
    assert final.test_post > final.test_pre + 15, final
    assert final.test_post > -20, final
    assert final.normalized_post > 0.65, final


def test_bench_maml_meta_sgd_flag_learns_step_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "maml", "--iterations", "2", "--eval-every", "2", "--test-tasks", "3",
                 "--meta-sgd"]) == 0
    out = capsys.readouterr().out
    assert "Meta-SGD: per-parameter alpha learned from 0.1" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+ \|", line)]
    assert [int(r.split("|")[0]) for r in rows] == [2]
    lines = out.strip().splitlines()
    assert lines[-1].startswith("final checkpoint (iteration 2)")
    assert lines[-2].startswith("learned inner step sizes: mean ")
    assert "log_std's: " in lines[-2]


def test_bench_maml_default_keeps_the_fixed_step_size() -> None:
    assert not BENCH_CONFIG.learn_inner_lr
    result = bench_maml(num_iterations=1, eval_every=1, num_test_tasks=2, meta_sgd=True)
    assert result["config"].learn_inner_lr and result["config"].inner_lr == 0.1
