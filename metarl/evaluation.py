"""Meta-test evaluation: one evaluator for every meta-learner and baseline.

For each held-out task and evaluation seed: roll out the learner's exploration policy, adapt,
and repeat, recording the mean episode return before adaptation and after each of ``1..K``
steps (the adaptation curve). Every learner sees the same tasks, start states and seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metarl.algos.base import MetaLearner
from metarl.sampler import rollout
from metarl.tasks import TaskFamily, TaskSet


def adaptation_curve(
    learner: MetaLearner,
    family: TaskFamily,
    tasks: Sequence[dict[str, float]],
    num_adapt_steps: int,
    episodes_per_task: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Mean episode return per task before and after each adaptation step, ``[K+1, N]``.

    Rollout ``k`` draws from its own generator seeded by ``(seed, k)``, so every learner gets
    the same start states at every step, however many random numbers its policy consumed.
    """
    return adaptation_curves(learner, family, tasks, num_adapt_steps, episodes_per_task, seed,
                             device)[0]


def adaptation_curves(
    learner: MetaLearner,
    family: TaskFamily,
    tasks: Sequence[dict[str, float]],
    num_adapt_steps: int,
    episodes_per_task: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`adaptation_curve` and, for envs that report success, the success rate.

    Returns:
        ``(returns [K+1, N], success [K+1, N] or None)``; the success rate is the share of a
        task's episodes that succeeded (Meta-World's per-episode ``success``), for envs with a
        ``success_rate()`` method, else None.

    """
    env = family.make_env(list(tasks), episodes_per_task, device=device)
    success_rate = getattr(env, "success_rate", None)
    params = {k: v.to(device) for k, v in learner.initial_params(len(tasks)).items()}
    curve, success = [], []
    for k in range(num_adapt_steps + 1):
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + k)
        batch = rollout(learner.explore(params) if k == 0 else learner.act(params), env,
                        generator)
        curve.append(batch.episode_returns.mean(-1).cpu().numpy())
        if success_rate is not None:
            success.append(success_rate().double().cpu().numpy())
        if k < num_adapt_steps:
            params = learner.adapt(params, batch)
    return np.stack(curve), (np.stack(success) if success else None)


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, num_resamples: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D)."""
    idx = rng.integers(0, len(values), size=(num_resamples, len(values)))
    means = values[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class CurveSummary:
    """Adaptation curve of one learner over the test tasks.

    Attributes:
        per_task: ``[num_seeds, K+1, N]`` raw mean returns.
        mean: ``[K+1]`` mean over seeds and tasks.
        ci_low, ci_high: ``[K+1]`` 95% bootstrap interval over tasks (seed-averaged).
        success: ``[K+1]`` mean success rate over seeds, tasks and episodes, for envs that
            report success (Meta-World), else None.

    """

    per_task: np.ndarray
    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    success: np.ndarray | None = None


def meta_test(
    learners: Mapping[str, MetaLearner],
    family: TaskFamily,
    task_set: TaskSet,
    num_adapt_steps: int,
    episodes_per_task: int,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
) -> dict[str, CurveSummary]:
    """Adaptation curves of every learner on ``task_set`` over ``seeds``."""
    out = {}
    for name, learner in learners.items():
        runs = [adaptation_curves(learner, family, task_set.tasks, num_adapt_steps,
                                  episodes_per_task, seed, device) for seed in seeds]
        per_task = np.stack([returns for returns, _ in runs])
        by_task = per_task.mean(0)  # [K+1, N]
        rng = np.random.default_rng(0)
        cis = np.array([bootstrap_ci(row, rng) for row in by_task])
        successes = [s for _, s in runs if s is not None]
        success = np.stack(successes).mean(axis=(0, 2)) if successes else None
        out[name] = CurveSummary(per_task, by_task.mean(1), cis[:, 0], cis[:, 1], success)
    return out


def normalized(value: np.ndarray | float, random_value: np.ndarray | float,
               best_value: float) -> np.ndarray:
    """``(R - R_random) / (R_best - R_random)``: 0 is random, 1 is the best possible."""
    return (np.asarray(value) - random_value) / (best_value - np.asarray(random_value))
