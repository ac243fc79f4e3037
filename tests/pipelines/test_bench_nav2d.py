"""``metarl bench nav2d``: equal env-step budgets, the final checkpoint scored, a table."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import stats
from pipelines.bench.nav2d import bench_nav2d, comparison, env_steps_per_iteration
from pipelines.cli import main


def test_every_algorithm_gets_the_same_budget_and_a_scored_row(
        capsys: pytest.CaptureFixture[str]) -> None:
    budget = 250_000
    result = bench_nav2d(budget=budget, seeds=(0, 1), num_adapt_steps=2, split="val")
    rows = result["rows"]
    assert [r.name for r in rows][:2] == ["maml", "reptile"]
    for row in rows:
        config = comparison("maml")[row.name]
        per_iteration = env_steps_per_iteration(row.name, config, 100, 3)
        # as many iterations as fit in the budget, and no more
        assert row.iterations == max(1, budget // per_iteration)
        assert row.env_steps / 2 <= max(budget, per_iteration)
        assert row.returns.shape == (2, 3, 40)  # seeds x (K+1) x the 40 validation goals
        np.testing.assert_allclose(
            row.normalized, (row.returns - result["random_return"])
            / (result["oracle_return"] - result["random_return"]))
    out = capsys.readouterr().out
    for row in rows:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{row.name} "))
        est = stats.mean_interval(row.normalized[:, 2], stats.generator())
        assert f"{est.value:6.3f} [{est.ci_low:5.3f}, {est.ci_high:5.3f}]" in line
    assert "val goals (40)" in out and "budget 250,000 env steps per seed" in out


@pytest.mark.parametrize(("argv", "said"), [
    (["--set", "reptile.foo=1"], "--set reptile.foo=1: unknown key"),
    (["--set", "reptile.outer_lr=-1"], "--set reptile.outer_lr=-1.0: must be > 0"),
    (["--set", "outer_lr=1"], "--set 'outer_lr=1': expected ALGO.KEY=VALUE"),
    (["--algorithms", "ppo"], "--algorithms ['ppo']"),
    (["--budget", "0"], "--budget=0"),
])
def test_bad_options_exit_2_naming_the_value(argv: list[str], said: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nav2d", *argv]) == 2
    captured = capsys.readouterr()
    assert said in captured.err
    assert "seed 0:" not in captured.out  # refused before anything trained
