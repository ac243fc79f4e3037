"""Meta-test evaluation: one evaluator for every meta-learner and baseline.

For each held-out task and evaluation seed: roll out the learner's exploration policy, adapt,
and repeat, recording the mean episode return before adaptation and after each of ``1..K``
steps (the adaptation curve). Every learner sees the same tasks, start states and seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metarl.algos.base import MetaLearner, WrapsEnv
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
    run = adapt_to_tasks(learner, family, tasks, num_adapt_steps, episodes_per_task, seed,
                         device)
    return run.returns, run.success


@dataclass(frozen=True)
class Adaptation:
    """What :func:`adapt_to_tasks` did: the curve and the adapted per-task parameters.

    Attributes:
        returns: ``[K+1, N]`` mean episode return per task before and after each step.
        success: ``[K+1, N]`` success rate (envs that report it), else None.
        params: the learner's per-task parameters after the ``K`` steps (leading dim ``N``).

    """

    returns: np.ndarray
    success: np.ndarray | None
    params: dict[str, torch.Tensor]


def adapt_to_tasks(
    learner: MetaLearner,
    family: TaskFamily,
    tasks: Sequence[dict[str, float]],
    num_adapt_steps: int,
    episodes_per_task: int,
    seed: int,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> Adaptation:
    """Adapt ``learner`` to ``tasks`` as the evaluator does, keeping the adapted parameters.

    Rollout ``k`` (``episodes_per_task`` episodes per task) draws from its own generator
    seeded by ``(seed, k)``; after it, ``learner.adapt`` takes one step on those episodes.
    ``on_step(k, returns [N])`` is called after each rollout (a progress report).
    """
    env = family.make_env(list(tasks), episodes_per_task, device=device)
    if isinstance(learner, WrapsEnv):
        env = learner.wrap_env(env)
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
        if on_step is not None:
            on_step(k, curve[-1])
        if k < num_adapt_steps:
            params = learner.adapt(params, batch)
    return Adaptation(np.stack(curve), np.stack(success) if success else None, params)


@dataclass(frozen=True)
class CurveSummary:
    """Adaptation curve of one learner over the test tasks.

    Interval estimates are the pipeline's (:mod:`pipelines.stats`, scipy's bootstrap): this
    package keeps the measurements.

    Attributes:
        per_task: ``[num_seeds, K+1, N]`` mean episode return per seed, step and task.
        mean: ``[K+1]`` mean over seeds and tasks.
        success: ``[K+1]`` mean success rate over seeds, tasks and episodes, for envs that
            report success (Meta-World), else None.

    """

    per_task: np.ndarray
    mean: np.ndarray
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
        successes = [s for _, s in runs if s is not None]
        success = np.stack(successes).mean(axis=(0, 2)) if successes else None
        out[name] = CurveSummary(per_task, per_task.mean(0).mean(1), success)
    return out


def normalized(value: np.ndarray | float, random_value: np.ndarray | float,
               best_value: float) -> np.ndarray:
    """``(R - R_random) / (R_best - R_random)``: 0 is random, 1 is the best possible."""
    return (np.asarray(value) - random_value) / (best_value - np.asarray(random_value))


def score_scale(random_value: float, oracle: float) -> float | None:
    """The unit of the normalised score, ``R_oracle - R_random``, or None if there is none.

    This is the one rule every stage scores by: with a finite oracle return whose gap to
    random is not ~0, scores are normalised (random 0, oracle 1); without one (MuJoCo,
    Meta-World: NaN), or with random already at the oracle's return, raw returns are
    compared instead.
    """
    if not np.isfinite(oracle) or abs(oracle - random_value) < 1e-9:
        return None
    return float(oracle - random_value)


def normalized_score(value: float, random_value: float, oracle: float) -> float | None:
    """The normalised score of ``value``, or None when :func:`score_scale` has no unit."""
    if score_scale(random_value, oracle) is None:
        return None
    return float(normalized(value, random_value, oracle))


def comparable_score(value: float, random_value: float, oracle: float) -> float:
    """What two learners are compared by: the normalised score, else the raw return."""
    normed = normalized_score(value, random_value, oracle)
    return float(value) if normed is None else normed


def post_adapt_per_task(summary: CurveSummary) -> np.ndarray:
    """Each task's return after the last adaptation step, averaged over seeds, ``[N]``."""
    return summary.per_task[:, -1, :].mean(0)
