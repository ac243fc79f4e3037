"""Multi-task pretraining: one policy trained by PPO on all training tasks pooled.

The baseline that asks whether meta-learning helps at all: the same network, the same
sampler and the same clipped surrogate as MAML's outer step, but no inner loop. At meta-test
it is fine-tuned with the same policy-gradient steps and step size as MAML
(:class:`~metarl.algos.base.GradientAdaptedPolicy`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from metarl.algos.base import GradientAdaptedPolicy, clipped_surrogate_loss, log_probs
from metarl.algos.maml import MAMLConfig, make_policy, task_batches
from metarl.logging import MetricLogger, NullLogger
from metarl.policies import act_fn, expand_params
from metarl.returns import advantages
from metarl.sampler import rollout
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, run_loop


def pretrain_multitask(
    family: TaskFamily,
    train_set: TaskSet,
    config: MAMLConfig,
    num_iterations: int,
    seed: int,
    device: torch.device | str = "cpu",
    logger: MetricLogger | None = None,
    resume: Resume | None = None,
    hook: Callable[[int, GradientAdaptedPolicy], None] | None = None,
) -> GradientAdaptedPolicy:
    """PPO on pooled training tasks for ``num_iterations`` rollouts of one meta-batch each.

    Uses MAML's network, batch sizes, clip range, outer learning rate and number of epochs, so
    with ``num_iterations = maml_iterations * (num_inner_steps + 1)`` both see the same number
    of episodes. ``resume`` and ``hook``: as for :func:`~metarl.algos.maml.train_maml`.
    """
    logger = logger or NullLogger()
    policy = make_policy(family, config.hidden_sizes, config.init_std).to(device)
    init = policy.init_params(torch.Generator().manual_seed(seed + 10_007))
    generator = torch.Generator(device=device).manual_seed(seed + 10_007)
    theta = {k: v.to(device).requires_grad_() for k, v in init.items()}
    optimizer = torch.optim.Adam(theta.values(), lr=config.outer_lr)
    draw = task_batches(train_set, config.meta_batch_size, np.random.default_rng(seed + 10_007))
    def step(it: int) -> None:
        tasks = draw()
        env = family.make_env(tasks, config.episodes_per_task, device=device)
        shared = expand_params({k: v.detach() for k, v in theta.items()}, len(tasks))
        batch = rollout(act_fn(policy, shared), env, generator)
        adv = advantages(batch, config.discount)
        with torch.no_grad():
            old_logp = log_probs(policy, shared, batch)
        for _ in range(config.num_outer_steps):
            logp = policy.task_log_prob(expand_params(theta, len(tasks)), batch.obs,
                                        batch.actions)
            loss = clipped_surrogate_loss(logp, old_logp, adv, batch.mask, config.clip_eps)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(theta.values(), config.max_grad_norm)
            optimizer.step()
        logger.log_metrics({"pretrain/return": float(batch.episode_returns.mean()),
                            "pretrain/loss": float(loss.detach())}, step=it)
        if hook is not None:
            hook(it, learner())

    def learner() -> GradientAdaptedPolicy:
        return GradientAdaptedPolicy(policy, {k: v.detach().clone() for k, v in theta.items()},
                                     config.inner_lr, config.discount)

    def get_state() -> State:
        return {"theta": {k: v.detach().cpu().clone() for k, v in theta.items()},
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "tasks": draw.state()}

    def set_state(state: State) -> None:
        with torch.no_grad():
            for k, v in theta.items():
                v.copy_(state["theta"][k])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        draw.load_state(state["tasks"])

    run_loop(step, num_iterations, get_state, set_state, resume)
    return learner()
