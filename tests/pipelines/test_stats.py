"""pipelines.stats against independent computations: exact bootstrap distributions enumerated
by hand on tiny cases, scipy's Mann-Whitney U, and the evaluate stage's records built on them."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from metarl.evaluation import CurveSummary
from pipelines import stats
from pipelines.stages import evaluate


def _exact_quantiles(scores: np.ndarray, statistic: Callable[[np.ndarray], float],
                     level: float) -> tuple[float, float]:
    """The percentile interval of the *exact* task bootstrap: every one of the N^N ordered
    draws of N tasks (all seeds of a drawn task kept), equally likely."""
    n = scores.shape[1]
    values = np.sort([statistic(scores[:, list(draw)])
                      for draw in itertools.product(range(n), repeat=n)])
    cdf = np.arange(1, len(values) + 1) / len(values)
    low = values[np.searchsorted(cdf, (1 - level) / 2)]
    high = values[np.searchsorted(cdf, 1 - (1 - level) / 2)]
    return float(low), float(high)


def _iqm_by_hand(a: np.ndarray) -> float:
    """Sort, drop the lowest and highest quarter, average the rest."""
    flat = np.sort(a.ravel())
    cut = int(0.25 * len(flat))
    return float(flat[cut:len(flat) - cut].mean())


# Level 0.8 puts the quantiles well inside steps of the exact CDF (10% and 90% vs steps at
# 3.7%/14.8% and 85.2%/96.3%), so 9999 resamples land on the exact values.
SCORES = np.array([[0.0, 1.0, 5.0],    # seed 0 on tasks 0, 1, 2
                   [2.0, 3.0, 9.0]])   # seed 1


def test_mean_and_iqm_intervals_are_the_exact_task_bootstrap() -> None:
    mean = stats.mean_interval(SCORES, stats.generator(), level=0.8)
    assert mean.value == pytest.approx(20 / 6)
    assert (mean.ci_low, mean.ci_high) == pytest.approx(
        _exact_quantiles(SCORES, lambda a: float(a.mean()), 0.8))
    assert (mean.ci_low, mean.ci_high) == pytest.approx((4 / 3, 16 / 3))
    iqm = stats.iqm_interval(SCORES, stats.generator(), level=0.8)
    assert iqm.value == _iqm_by_hand(SCORES) == 2.75  # mean of 1, 2, 3, 5
    assert (iqm.ci_low, iqm.ci_high) == pytest.approx(
        _exact_quantiles(SCORES, _iqm_by_hand, 0.8))
    assert (iqm.ci_low, iqm.ci_high) == pytest.approx((1.25, 5.5))
    assert stats.iqm(np.arange(1.0, 9.0)) == 4.5


def test_the_task_is_the_resampling_unit() -> None:
    """Every task's seeds average to 1: resampling tasks (seeds together) leaves no spread,
    where resampling the six scores one by one would."""
    scores = np.array([[0.0, 2.0, 1.0], [2.0, 0.0, 1.0]])
    est = stats.mean_interval(scores, stats.generator())
    assert (est.value, est.ci_low, est.ci_high) == (1.0, 1.0, 1.0)
    # two identical seeds: the same interval as one
    one = stats.mean_interval(SCORES[0], stats.generator())
    assert stats.mean_interval(np.stack([SCORES[0]] * 2), stats.generator()) == one


def test_intervals_are_reproducible_and_a_single_task_has_no_spread() -> None:
    x = np.random.default_rng(3).normal(size=(3, 12))
    assert stats.iqm_interval(x, stats.generator()) == stats.iqm_interval(x, stats.generator())
    other = stats.iqm_interval(x, np.random.default_rng(1))
    assert other.value == stats.iqm(x) and other != stats.iqm_interval(x, stats.generator())
    single = stats.mean_interval(np.array([[2.0], [4.0]]), stats.generator())
    assert (single.value, single.ci_low, single.ci_high) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="at least one task"):
        stats.mean_interval(np.zeros((2, 0)), stats.generator())


def test_probability_of_improvement_is_the_mann_whitney_statistic() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]])
    y = np.array([[0.0, 2.0, 5.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 2.0, 9.0]])
    est = stats.probability_of_improvement(x, y, stats.generator())
    u = mannwhitneyu(x, y, axis=0).statistic  # per task: pairs x > y, ties one half
    assert est.value == pytest.approx(float(np.mean(u / (2 * 3))))
    assert est.ci_low <= est.value <= est.ci_high
    reverse = stats.probability_of_improvement(y, x, stats.generator())
    assert est.value + reverse.value == pytest.approx(1.0)
    # by hand, one task: x {1, 3} vs y {0, 5}: 1 > 0 and 3 > 0 of four pairs
    assert stats.probability_of_improvement(np.array([[1.0], [3.0]]), np.array([[0.0], [5.0]]),
                                            stats.generator()).value == 0.5
    better = stats.probability_of_improvement(x + 10, x, stats.generator())
    assert (better.value, better.ci_low, better.ci_high) == (1.0, 1.0, 1.0)
    tie = stats.probability_of_improvement(x, x.copy(), stats.generator())
    assert tie.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same tasks"):
        stats.probability_of_improvement(x, y[:, :3], stats.generator())


def test_paired_comparison_is_the_exact_bootstrap_of_the_differences() -> None:
    diff = np.array([0.0, 0.0, 3.0])  # exact bootstrap means: 0, 1, 2, 3 w.p. 8, 12, 6, 1 /27
    for level, expected in ((0.9, (0.0, 2.0)), (0.95, (0.0, 3.0))):
        cmp = stats.paired_comparison(diff + 1.0, np.ones(3), stats.generator(), level=level)
        assert (cmp.mean_difference, cmp.ci_low, cmp.ci_high, cmp.num_tasks) == \
            pytest.approx((1.0, *expected, 3))


def _results(k_max: int = 2) -> dict[str, CurveSummary]:
    """Four learners, 2 seeds × 3 tasks, returns rising with the step for the first."""
    rng = np.random.default_rng(0)
    out = {}
    for name in ("maml", *evaluate.BASELINES):
        per_task = rng.integers(0, 20, size=(2, k_max + 1, 3)).astype(np.float32)
        if name == "maml":
            per_task += 30 * np.arange(k_max + 1)[None, :, None]
        out[name] = CurveSummary(per_task, per_task.mean(0).mean(1))
    return out


def test_evaluate_records_each_interval_by_its_rule() -> None:
    results = _results()
    oracle = 100.0
    summary = evaluate.summarize(results, oracle)
    assert summary["score_units"] == "normalized"
    random_mean = float(results["random"].mean[0])
    for name, s in results.items():
        m = summary[name]
        for k in range(3):  # 3 tasks at 95%: the exact interval is [min, max] of task means
            task_means = s.per_task[:, k, :].mean(0)
            assert m[f"ci95_k{k}"] == pytest.approx([task_means.min(), task_means.max()])
        post = (s.per_task[:, -1, :].astype(float) - random_mean) / (oracle - random_mean)
        assert m["score_mean"] == pytest.approx(m["normalized_post_adapt"], abs=1e-6)
        assert m["score_iqm"] == pytest.approx(_iqm_by_hand(post))
        assert m["score_iqm_ci95"][0] <= m["score_iqm"] <= m["score_iqm_ci95"][1]
    poi = summary["probability_of_improvement"]
    assert set(poi) == set(evaluate.BASELINES)
    assert poi["random"]["probability"] == 1.0  # maml's last step is 60 above any random score
    # no oracle: raw returns, the same probabilities (they do not depend on the units)
    raw = evaluate.summarize(results, float("nan"))
    assert raw["score_units"] == "return"
    assert raw["maml"]["score_mean"] == pytest.approx(results["maml"].mean[-1])
    assert {n: p["probability"] for n, p in raw["probability_of_improvement"].items()} == \
        pytest.approx({n: p["probability"] for n, p in poi.items()})

    flat = evaluate.flat_metrics(summary)
    assert flat["meta_test/improvement/random"] == 1.0
    assert flat["meta_test/maml/score_iqm"] == summary["maml"]["score_iqm"]
    assert flat["meta_test/return_post_adapt_k2"] == summary["maml"]["return_post_adapt_k2"]
    steps = evaluate.curve_metrics(summary)
    assert len(steps) == 3
    for k, step in enumerate(steps):
        assert step["meta_test/maml/return"] == pytest.approx(float(results["maml"].mean[k]))
        assert [step["meta_test/scratch/ci_low"], step["meta_test/scratch/ci_high"]] == \
            summary["scratch"][f"ci95_k{k}"]


def test_the_curve_csv_and_the_returns_hold_the_records_numbers() -> None:
    results = _results()
    summary = evaluate.summarize(results, 100.0)
    rows = list(csv.DictReader(io.StringIO(evaluate.curve_csv(summary))))
    assert len(rows) == 4 * 3
    first = rows[2]  # the meta-learner after 2 steps, under its generic name
    assert (first["adapt_step"], first["learner"]) == ("2", "meta_learner")
    assert float(first["return"]) == pytest.approx(summary["maml"]["return_post_adapt_k2"],
                                                   abs=1e-3)
    assert [float(first["ci_low"]), float(first["ci_high"])] == pytest.approx(
        summary["maml"]["ci95_k2"], abs=1e-3)
    # every return, per seed, step and task, survives the JSON round trip
    back = evaluate.results_of(json.loads(json.dumps(summary)))
    for name, s in results.items():
        assert back[name].per_task.shape == (2, 3, 3)
        assert np.array_equal(back[name].per_task, s.per_task)
    units, scores = evaluate.post_adapt_scores(back, 100.0)
    assert units == "normalized"
    assert scores["maml"].mean() == pytest.approx(summary["maml"]["score_mean"])
