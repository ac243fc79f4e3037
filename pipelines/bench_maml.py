"""``metarl bench maml``: MAML on the MAML paper's 2D navigation, timed end to end.

The setting of Finn et al. (2017), section 5.3, as pytorch-maml-rl's ``2d-navigation.yaml``
runs it: goals uniform in ``[-0.5, 0.5]^2``, horizon 100, velocity clipped to ±0.1; a
meta-batch of 20 tasks × 20 trajectories; ONE inner policy-gradient step with ``alpha = 0.1``
(linear-feature baseline, normalised advantages, discount 0.99); second-order meta-gradient.
The outer step is the clipped (PPO/ProMP) surrogate with Adam (see :mod:`metarl.algos.maml`).
Fresh goals every meta-iteration, as in the paper.

Every ``eval_every`` iterations (and at the end) the current initialisation is evaluated on a
fixed set of fresh goals (never trained on) with the meta-test evaluator: mean return before
and after one adaptation step, and the normalised post-adaptation score, random 0 (uniform
actions) and the straight-to-goal oracle 1 (optimal here). Timings exclude the evaluations:
seconds per meta-iteration and env-steps/s over training (rollouts, both advantage fits, the
inner step and the outer steps), one torch thread.

Choices, measured on this setting (2-core CPU, one thread): a 32×32 policy (64×64 costs about
twice as much per iteration and scored no better), initial std 0.3 per axis (0.1 learned much
worse, 1.0 slower), two clipped Adam outer steps at lr 0.01 (five at 3e-3 learned slower per
second). The normalised score plateaus near 0.8 (about -13 after adaptation) from roughly
iteration 60, across network sizes, outer learning rates and decay, discounts, and with or
without advantage normalisation; the adapted policy's mean stops about 0.13 from the goal on
average, i.e. one policy-gradient step locates the goal only that precisely. A TRPO outer step
as in the paper (conjugate gradient on exact second-order Fisher-vector products, max KL 0.01)
took about 2 s per iteration here and was no better per iteration, so it is not used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from metarl.algos.base import RandomLearner
from metarl.algos.maml import MAML, MAMLConfig, make_policy
from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
from metarl.evaluation import adaptation_curve, normalized

BENCH_CONFIG = MAMLConfig(
    hidden_sizes=(32, 32),
    init_std=3.0,            # 0.3 per axis: 3 × the 0.1 velocity clip
    inner_lr=0.1,
    num_inner_steps=1,
    first_order=False,
    outer_lr=0.01,
    num_outer_steps=2,
    clip_eps=0.2,
    meta_batch_size=20,
    episodes_per_task=20,
    discount=0.99,
    max_grad_norm=1.0,
)
"""The paper's sizes and inner step; network, initial std and outer optimiser chosen for speed
and final score on this setting (see the module docstring of :mod:`pipelines.bench_maml`)."""


@dataclass(frozen=True)
class EvalRow:
    """One evaluation on the held-out goals."""

    iteration: int
    seconds_per_iteration: float
    env_steps_per_s: float
    train_pre: float
    train_post: float
    test_pre: float
    test_post: float
    normalized_post: float


def _evaluate(maml: MAML, family: Nav2DFamily, test: list[dict[str, float]], seed: int
              ) -> tuple[float, float]:
    curve = adaptation_curve(maml.learner(), family, test, 1, BENCH_CONFIG.episodes_per_task,
                             seed)
    return float(curve[0].mean()), float(curve[1].mean())


def bench_maml(num_iterations: int = 100, eval_every: int = 10, seed: int = 0,
               num_test_tasks: int = 40, config: MAMLConfig | None = None) -> dict[str, Any]:
    """Meta-train on 2D navigation for ``num_iterations``; print and return the results."""
    torch.set_num_threads(1)
    config = config or BENCH_CONFIG
    family = Nav2DFamily(Nav2DFamilyConfig())
    rng = np.random.default_rng(seed)
    test = family.sample(num_test_tasks, np.random.default_rng(seed + 1_000_003))
    oracle = float(family.oracle_returns(test).mean())
    random_return = float(adaptation_curve(RandomLearner(), family, test, 0,
                                           config.episodes_per_task, seed)[0].mean())
    maml = MAML(make_policy(family, config.hidden_sizes, config.init_std), config, seed)
    print(f"MAML on 2D navigation: {config.meta_batch_size} tasks x {config.episodes_per_task} "
          f"trajectories x horizon {family.max_steps}, 1 inner PG step (alpha "
          f"{config.inner_lr}), {config.num_outer_steps} clipped Adam outer steps (lr "
          f"{config.outer_lr}), policy MLP {'x'.join(map(str, config.hidden_sizes))}, "
          "second order, torch threads 1")
    print(f"{num_test_tasks} held-out goals: random {random_return:.1f}, "
          f"straight-to-goal oracle {oracle:.2f} (normalised 0 and 1)")
    header = (f"{'iter':>5} | {'s/iter':>6} | {'env-steps/s':>11} | {'train pre':>9} | "
              f"{'train post':>10} | {'test pre':>8} | {'test post':>9} | {'normalised':>10}")
    print(header)
    print("-" * len(header))
    rows: list[EvalRow] = []
    elapsed, steps = 0.0, 0.0
    for it in range(1, num_iterations + 1):
        tasks = family.sample(config.meta_batch_size, rng)
        start = time.perf_counter()
        metrics = maml.meta_train_step(family, tasks)
        elapsed += time.perf_counter() - start
        steps += metrics["train/env_steps"]
        if it % eval_every and it != num_iterations:
            continue
        pre, post = _evaluate(maml, family, test, seed)
        row = EvalRow(it, elapsed / it, steps / elapsed, metrics["train/return_pre_adapt"],
                      metrics["train/return_post_adapt"], pre, post,
                      float(normalized(post, random_return, oracle)))
        rows.append(row)
        print(f"{it:>5} | {row.seconds_per_iteration:>6.3f} | {row.env_steps_per_s:>11,.0f} | "
              f"{row.train_pre:>9.1f} | {row.train_post:>10.1f} | {row.test_pre:>8.1f} | "
              f"{row.test_post:>9.1f} | {row.normalized_post:>10.3f}", flush=True)
    final = rows[-1]
    print(f"final checkpoint (iteration {final.iteration}): return {final.test_pre:.1f} before, "
          f"{final.test_post:.1f} after one adaptation step; normalised post-adaptation score "
          f"{final.normalized_post:.3f}; {final.seconds_per_iteration:.3f} s/iteration, "
          f"{final.env_steps_per_s:,.0f} env-steps/s, {elapsed:.1f} s of training")
    return {"rows": rows, "random_return": random_return, "oracle_return": oracle,
            "training_seconds": elapsed, "config": replace(config)}
