"""Interval estimates of meta-test scores, from ``scipy.stats.bootstrap``: the one place.

Every interval the pipeline reports comes from here: the adaptation curve's bands, the mean
and the interquartile mean (IQM) of the post-adaptation scores, the probability of
improvement of one learner over another, and the register gate's paired difference.

The resampling unit is the **task**. The test tasks are a sample of the family's task
distribution (not a fixed suite of games, as in Agarwal et al.'s Atari setting, where a
bootstrap stratified by task resamples only the runs within each task), so task-to-task
spread is the main uncertainty a result has. A learner's scores are ``[num_seeds, num_tasks]``;
a resample draws tasks with replacement and keeps all the seeds of a drawn task together:
scipy's *paired* form, the seeds' rows being the paired samples. Two learners compared on the
same tasks are resampled together too (paired), so the spread they share cancels.

Intervals are percentile intervals (rliable's default) over ``NUM_RESAMPLES`` resamples,
drawn from the ``rng`` the caller passes: the same seed gives the same numbers. One task
leaves nothing to resample: its interval is the point estimate.

References: Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (NeurIPS; IQM, probability of improvement); Efron & Tibshirani 1993 (bootstrap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

NUM_RESAMPLES = 9999
"""Bootstrap resamples per interval (scipy's default)."""
LEVEL = 0.95
"""Default confidence level."""
METHOD = "percentile"
"""scipy's interval method: the quantiles of the bootstrap distribution."""
SEED = 0
"""Seed of the generator each interval of a stage draws from (:func:`generator`)."""
IQM_CUT = 0.25
"""The share of scores the IQM drops at each end."""


def generator() -> np.random.Generator:
    """A fresh generator seeded with :data:`SEED`.

    Each interval gets its own, so a number never depends on what was estimated before it (and
    intervals of equal-sized samples resample the same tasks: common random numbers).
    """
    return np.random.default_rng(SEED)


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its interval.

    Attributes:
        value: the statistic on the scores as measured.
        ci_low, ci_high: the bootstrap interval.
        level: its confidence level.

    """

    value: float
    ci_low: float
    ci_high: float
    level: float

    @property
    def interval(self) -> list[float]:
        """``[ci_low, ci_high]`` (the form ``metrics/*.json`` stores)."""
        return [self.ci_low, self.ci_high]


def _by_seed(scores: np.ndarray) -> np.ndarray:
    """``scores`` as ``[num_seeds, num_tasks]`` floats (a 1-D array is one seed)."""
    array = np.asarray(scores, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[0] == 0:
        raise ValueError(f"scores must be [num_tasks] or [num_seeds, num_tasks] with at least "
                         f"one task, got shape {array.shape}")
    return array


def _tasks_bootstrap(samples: list[np.ndarray], statistic: Callable[[np.ndarray], np.ndarray],
                     rng: np.random.Generator, level: float,
                     num_resamples: int) -> tuple[float, float]:
    """Interval of ``statistic`` when the tasks (the last axis of every sample) are resampled.

    ``samples``: 1-D arrays over the same tasks (a learner's seeds; two learners' seeds);
    ``statistic`` gets them stacked, ``[num_samples, ..., num_tasks]``, and reduces the first
    and last axes.
    """
    num_tasks = len(samples[0])
    if num_tasks < 2:  # nothing to resample
        value = float(statistic(np.stack(samples)))
        return value, value
    result = stats.bootstrap(
        tuple(samples), lambda *rows, axis: statistic(np.stack(rows)), paired=True,
        vectorized=True, n_resamples=num_resamples, confidence_level=level, method=METHOD,
        rng=rng)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(stacked: np.ndarray) -> np.ndarray:
    """Mean over seeds and tasks of ``[num_seeds, ..., num_tasks]``."""
    return np.asarray(stacked.mean(axis=(0, -1)))


def _iqm(stacked: np.ndarray) -> np.ndarray:
    """IQM over seeds and tasks of ``[num_seeds, ..., num_tasks]``."""
    pooled = np.moveaxis(stacked, 0, -2)  # [..., num_seeds, num_tasks]
    pooled = pooled.reshape(*pooled.shape[:-2], -1)
    return np.asarray(stats.trim_mean(pooled, IQM_CUT, axis=-1))


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all ``scores``: the mean of the middle 50% (scipy's trim_mean)."""
    return float(stats.trim_mean(np.asarray(scores, dtype=float), IQM_CUT, axis=None))


def mean_interval(scores: np.ndarray, rng: np.random.Generator, level: float = LEVEL,
                  num_resamples: int = NUM_RESAMPLES) -> Estimate:
    """Mean over tasks × seeds of ``scores`` (``[num_tasks]`` or ``[num_seeds, num_tasks]``)."""
    by_seed = _by_seed(scores)
    low, high = _tasks_bootstrap(list(by_seed), _mean, rng, level, num_resamples)
    return Estimate(float(by_seed.mean()), low, high, level)


def iqm_interval(scores: np.ndarray, rng: np.random.Generator, level: float = LEVEL,
                 num_resamples: int = NUM_RESAMPLES) -> Estimate:
    """IQM over tasks × seeds of ``scores`` (``[num_tasks]`` or ``[num_seeds, num_tasks]``)."""
    by_seed = _by_seed(scores)
    low, high = _tasks_bootstrap(list(by_seed), _iqm, rng, level, num_resamples)
    return Estimate(iqm(by_seed), low, high, level)


def curve_band(per_task: np.ndarray, level: float = LEVEL,
               num_resamples: int = NUM_RESAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The interval of the mean return after each adaptation step.

    Args:
        per_task: ``[num_seeds, K+1, num_tasks]`` (:attr:`metarl.evaluation.CurveSummary.
            per_task`).
        level: confidence level.
        num_resamples: bootstrap resamples.

    Returns:
        ``(low [K+1], high [K+1])``, each step's from its own :func:`generator`.

    """
    per_task = np.asarray(per_task, dtype=float)
    bounds = [mean_interval(per_task[:, k, :], generator(), level, num_resamples)
              for k in range(per_task.shape[1])]
    return (np.array([b.ci_low for b in bounds]), np.array([b.ci_high for b in bounds]))


def _improvement(stacked: np.ndarray, num_x: int) -> np.ndarray:
    """P(X > Y) of ``[num_x + num_y, ..., num_tasks]``: X's seeds first, then Y's."""
    x, y = stacked[:num_x], stacked[num_x:]
    wins = (x[:, None] > y[None, :]).mean(axis=(0, 1))  # [..., num_tasks], every seed pair
    ties = (x[:, None] == y[None, :]).mean(axis=(0, 1))
    return np.asarray((wins + 0.5 * ties).mean(axis=-1))


def probability_of_improvement(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                               level: float = LEVEL,
                               num_resamples: int = NUM_RESAMPLES) -> Estimate:
    """P(X > Y): the chance that learner X scores above Y on a task of the distribution.

    Agarwal et al. 2021: per task, the Mann-Whitney U statistic over every pair of X's and Y's
    seeds, divided by the number of pairs (a tie counts one half), averaged over tasks. X and
    Y are resampled together (the same tasks). 0.5 is "no better"; it is invariant to any
    increasing transformation of the scores that is the same on a task (e.g. normalisation).

    Args:
        x: X's scores, ``[num_tasks]`` or ``[num_seeds, num_tasks]``.
        y: Y's scores on the same tasks (any number of seeds).
        rng: the bootstrap's generator.
        level: confidence level.
        num_resamples: bootstrap resamples.

    """
    xs, ys = _by_seed(x), _by_seed(y)
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must score the same tasks, got {xs.shape[1]} and "
                         f"{ys.shape[1]}")

    def statistic(stacked: np.ndarray) -> np.ndarray:
        return _improvement(stacked, len(xs))

    low, high = _tasks_bootstrap([*xs, *ys], statistic, rng, level, num_resamples)
    return Estimate(float(statistic(np.concatenate([xs, ys]))), low, high, level)


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against a reference on the same tasks and seeds.

    Attributes:
        mean_difference: mean over tasks of ``candidate - reference`` (per-task scores).
        ci_low, ci_high: bootstrap interval of that mean (tasks resampled, pairs together).
        level: the interval's confidence level.
        num_tasks: how many paired tasks.

    """

    mean_difference: float
    ci_low: float
    ci_high: float
    level: float
    num_tasks: int


def paired_comparison(candidate: np.ndarray, reference: np.ndarray, rng: np.random.Generator,
                      num_resamples: int = NUM_RESAMPLES,
                      level: float = LEVEL) -> PairedComparison:
    """Bootstrap the mean per-task difference ``candidate - reference`` (both ``[N]``).

    scipy's paired form: a resample draws tasks, and each drawn task brings both its scores,
    so task-to-task spread, which both share, does not widen the interval.
    """
    candidate, reference = np.asarray(candidate, float), np.asarray(reference, float)
    if candidate.shape != reference.shape or candidate.ndim != 1 or len(candidate) == 0:
        raise ValueError(f"paired scores must be two equal non-empty 1-D arrays, got shapes "
                         f"{candidate.shape} and {reference.shape}")

    def difference(stacked: np.ndarray) -> np.ndarray:
        return np.asarray((stacked[0] - stacked[1]).mean(axis=-1))

    low, high = _tasks_bootstrap([candidate, reference], difference, rng, level, num_resamples)
    return PairedComparison(float((candidate - reference).mean()), low, high, level,
                            len(candidate))
