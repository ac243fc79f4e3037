"""MAML for reinforcement learning, functional, with a clipped (ProMP-style) outer step.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", https://arxiv.org/abs/1703.03400; outer objective as in Rothfuss et al. (2018),
"ProMP", https://arxiv.org/abs/1810.06784 (PPO's clipped surrogate on post-update episodes).

Per meta-iteration: sample a meta-batch of training tasks; for each inner step roll out every
task's current policy and take one policy-gradient step per task (all tasks' gradients in one
batched backward pass, equal to ``vmap(grad(...))``); roll out the adapted policies; then
take ``num_outer_steps`` Adam steps on the clipped surrogate of the post-update episodes,
differentiating through the inner steps (second order unless ``first_order``). The inner loss
is the usual likelihood-ratio surrogate on fixed pre-update episodes (as in the MAML paper's
code): the dependence of the pre-update sampling distribution on ``theta`` is not
differentiated.

The same code serves discrete families (categorical policy) and continuous ones (Gaussian
policy with a learned ``log_std``, which the inner step adapts too); the losses only see
log-probabilities of the taken actions.

Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
https://arxiv.org/abs/1707.09835), with ``learn_inner_lr``: the inner step size is a tensor per
parameter (elementwise, ``log_std`` included), initialised at ``inner_lr`` and meta-learned by
the same outer optimiser through the inner steps, ``theta' = theta - alpha * grad`` (``*``
elementwise). The meta-learner then adapts with the learned ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.algos.base import (
    GradientAdaptedPolicy,
    StepSize,
    clipped_surrogate_loss,
    half_action_range,
    log_probs,
    pg_inner_step,
    probe_env,
)
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.checkpoint import learner_weights, load_policy, policy_config, save_params
from metarl.config import check, to_dict
from metarl.logging import MetricLogger, NullLogger
from metarl.policies import MLPPolicy, Params, act_fn, expand_params, make_policy_for
from metarl.returns import advantages
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, TaskBatches, run_meta_batches


@dataclass(frozen=True)
class MAMLConfig:
    """MAML hyperparameters (``algo.maml`` in params.yaml)."""

    hidden_sizes: tuple[int, ...] = (32, 32)
    """Widths of the policy's hidden layers."""
    init_std: float = 1.0
    """Initial standard deviation of a Gaussian policy, as a fraction of half the env's action
    range (continuous families only; 1.0 = the clip itself, e.g. 0.1 for nav2d, 2 for pendulum)."""
    inner_lr: float = 0.5
    """Step size alpha of each inner policy-gradient step (the initial one with
    ``learn_inner_lr``)."""
    learn_inner_lr: bool = False
    """Meta-SGD: meta-learn a per-parameter (elementwise) inner step size, initialised at
    ``inner_lr``, with the outer optimiser; adaptation at meta-test uses the learned one."""
    num_inner_steps: int = 1
    """Inner (adaptation) steps during meta-training."""
    first_order: bool = False
    """Drop second-order terms (FOMAML): cheaper, biased."""
    outer_lr: float = 3e-3
    """Adam step size of the meta-update."""
    num_outer_steps: int = 5
    """Clipped-surrogate Adam steps per meta-iteration (re-adapting each time)."""
    clip_eps: float = 0.2
    """PPO clip range of the outer objective."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    episodes_per_task: int = 20
    """Episodes per task per rollout (inner and outer)."""
    discount: float = 0.99
    """Discount of returns."""
    max_grad_norm: float = 1.0
    """Clip of the meta-gradient's global norm."""

    def __post_init__(self) -> None:
        check(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
              "hidden_sizes", self.hidden_sizes, "need at least one layer of width >= 1")
        check(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        check(self.inner_lr > 0, "inner_lr", self.inner_lr, "must be > 0")
        check(self.outer_lr > 0, "outer_lr", self.outer_lr, "must be > 0")
        check(self.num_inner_steps >= 1, "num_inner_steps", self.num_inner_steps, "must be >= 1")
        check(self.num_outer_steps >= 1, "num_outer_steps", self.num_outer_steps, "must be >= 1")
        check(0 < self.clip_eps < 1, "clip_eps", self.clip_eps, "must be in (0, 1)")
        check(self.meta_batch_size >= 1, "meta_batch_size", self.meta_batch_size, "must be >= 1")
        check(self.episodes_per_task >= 2, "episodes_per_task", self.episodes_per_task,
              "must be >= 2 (the baseline needs several episodes)")
        check(0 < self.discount <= 1, "discount", self.discount, "must be in (0, 1]")
        check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "must be > 0")


def make_policy(family: TaskFamily, hidden_sizes: tuple[int, ...], init_std: float = 1.0
                ) -> MLPPolicy:
    """The policy network for ``family``'s observations and actions.

    Categorical for a discrete env; Gaussian (learned ``log_std``) for a continuous one, its
    initial standard deviation ``init_std`` times half the action range.
    """
    env = probe_env(family)
    return make_policy_for(env.discrete, env.obs_dim, env.num_actions, env.action_dim,
                           hidden_sizes, init_std * half_action_range(env))


def adapted_params(
    policy: MLPPolicy,
    theta: Params,
    inner_batches: list[tuple[EpisodeBatch, torch.Tensor]],
    lr: StepSize,
    first_order: bool,
) -> Params:
    """``theta`` after the inner steps on fixed ``(episodes, advantages)``, differentiably.

    ``lr``: a float, or per-parameter step-size tensors (Meta-SGD), differentiated through too.
    """
    params = expand_params(theta, inner_batches[0][0].obs.shape[0])
    for batch, adv in inner_batches:
        params = pg_inner_step(policy, params, batch, adv, lr, first_order=first_order)
    return params


def maml_objective(
    policy: MLPPolicy,
    theta: Params,
    inner_batches: list[tuple[EpisodeBatch, torch.Tensor]],
    post: EpisodeBatch,
    post_adv: torch.Tensor,
    old_logp: torch.Tensor,
    config: MAMLConfig,
    inner_lr: StepSize | None = None,
) -> torch.Tensor:
    """The meta-loss: clipped surrogate of the adapted policies on the post-update episodes.

    ``inner_lr``: the step size (Meta-SGD: per-parameter tensors); default ``config.inner_lr``.
    """
    lr = config.inner_lr if inner_lr is None else inner_lr
    params = adapted_params(policy, theta, inner_batches, lr, config.first_order)
    logp = policy.task_log_prob(params, post.obs, post.actions)
    return clipped_surrogate_loss(logp, old_logp, post_adv, post.mask, config.clip_eps)


class MAML:
    """Meta-trains an initialisation ``theta`` (see the module docstring).

    Args:
        policy: the network whose parameters are meta-learned.
        config: hyperparameters.
        seed: seeds the initial parameters (drawn on the CPU) and the rollouts.
        device: where parameters, environments and rollout noise live.

    """

    def __init__(self, policy: MLPPolicy, config: MAMLConfig, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.policy = policy.to(device)
        self.config = config
        self.device = torch.device(device)
        init = policy.init_params(torch.Generator().manual_seed(seed))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.theta = {k: v.to(self.device).requires_grad_() for k, v in init.items()}
        self.inner_lr: StepSize = config.inner_lr
        """The inner step size: ``config.inner_lr``, or (``learn_inner_lr``) a meta-learned
        tensor per parameter, initialised at ``config.inner_lr``."""
        meta_params = list(self.theta.values())
        if config.learn_inner_lr:
            self.inner_lr = {k: torch.full_like(v, config.inner_lr).requires_grad_()
                             for k, v in self.theta.items()}
            meta_params += list(self.inner_lr.values())
        self.meta_params = meta_params
        """What the outer optimiser updates: ``theta``, then the learned step sizes if any."""
        self.optimizer = torch.optim.Adam(meta_params, lr=config.outer_lr)

    def detached_inner_lr(self) -> StepSize:
        """The current inner step size, detached (a copy when learned)."""
        if isinstance(self.inner_lr, dict):
            return {k: v.detach().clone() for k, v in self.inner_lr.items()}
        return self.inner_lr

    def learner(self) -> GradientAdaptedPolicy:
        """The meta-learned policy (and step sizes) as a :class:`~metarl.algos.base.MetaLearner`."""
        return GradientAdaptedPolicy(self.policy, {k: v.detach().clone()
                                                   for k, v in self.theta.items()},
                                     self.detached_inner_lr(), self.config.discount)

    def training_state(self) -> State:
        """Parameters, learned step sizes, optimiser moments and the rollout generator."""
        learned = self.inner_lr if isinstance(self.inner_lr, dict) else None
        return {"theta": {k: v.detach().cpu().clone() for k, v in self.theta.items()},
                "inner_lr": None if learned is None else
                {k: v.detach().cpu().clone() for k, v in learned.items()},
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_training_state(self, state: State) -> None:
        """Continue from :meth:`training_state` (a MAML built with the same config and seed)."""
        learned = self.inner_lr if isinstance(self.inner_lr, dict) else None
        if (state["inner_lr"] is None) != (learned is None):
            raise ValueError("training state: its learned step sizes do not match "
                             f"learn_inner_lr={self.config.learn_inner_lr}")
        with torch.no_grad():  # in place: the optimiser holds these very tensors
            for k, v in self.theta.items():
                v.copy_(state["theta"][k])
            for k, v in (learned or {}).items():
                v.copy_(state["inner_lr"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())

    def meta_train_step(self, family: TaskFamily, tasks: list[dict[str, float]]
                        ) -> dict[str, float]:
        """One meta-iteration on ``tasks``; returns namespaced metrics."""
        cfg = self.config
        env = family.make_env(tasks, cfg.episodes_per_task, device=self.device)
        params = expand_params({k: v.detach() for k, v in self.theta.items()}, len(tasks))
        inner_batches = []
        lr = self.detached_inner_lr()
        for _ in range(cfg.num_inner_steps):
            batch = rollout(act_fn(self.policy, params), env, self.generator)
            adv = advantages(batch, cfg.discount)
            inner_batches.append((batch, adv))
            params = {k: v.detach() for k, v in
                      pg_inner_step(self.policy, params, batch, adv, lr).items()}
        post = rollout(act_fn(self.policy, params), env, self.generator)
        post_adv = advantages(post, cfg.discount)
        with torch.no_grad():
            old_logp = log_probs(self.policy, params, post)
        for _ in range(cfg.num_outer_steps):
            loss = maml_objective(self.policy, self.theta, inner_batches, post, post_adv,
                                  old_logp, cfg, self.inner_lr)
            self.optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.meta_params, cfg.max_grad_norm)
            self.optimizer.step()
        steps = sum(b.num_steps for b, _ in inner_batches) + post.num_steps
        extra = {}
        if isinstance(self.inner_lr, dict):
            flat = torch.cat([v.detach().flatten() for v in self.inner_lr.values()])
            extra = {"train/inner_lr_mean": float(flat.mean()),
                     "train/inner_lr_min": float(flat.min()),
                     "train/inner_lr_max": float(flat.max())}
        return {
            "train/return_pre_adapt": float(inner_batches[0][0].episode_returns.mean()),
            "train/return_post_adapt": float(post.episode_returns.mean()),
            "train/outer_loss": float(loss.detach()),
            "train/grad_norm": float(grad_norm),
            "train/env_steps": float(steps),
            **extra,
        }


def task_batches(task_set: TaskSet, batch_size: int, rng: np.random.Generator) -> TaskBatches:
    """A sampler of meta-batches: ``batch_size`` distinct tasks (with replacement if too few)."""
    return TaskBatches(task_set, batch_size, rng)


IterationHook = Callable[[int, GradientAdaptedPolicy], None]
"""Called after each iteration with the current learner (may raise to stop, e.g. to prune)."""


def train_maml(
    family: TaskFamily,
    train_set: TaskSet,
    config: MAMLConfig,
    num_iterations: int,
    seed: int,
    device: torch.device | str = "cpu",
    logger: MetricLogger | None = None,
    hook: IterationHook | None = None,
    resume: Resume | None = None,
) -> MAML:
    """Meta-train for ``num_iterations``; same seed ⇒ identical parameters on CPU.

    ``resume`` continues from a saved state and saves as it goes (:mod:`metarl.training`):
    a run stopped and resumed ends with the same parameters as one that never stopped.
    """
    logger = logger or NullLogger()
    maml = MAML(make_policy(family, config.hidden_sizes, config.init_std), config, seed, device)
    draw = task_batches(train_set, config.meta_batch_size, np.random.default_rng(seed))

    run_meta_batches("maml", maml, family, draw, num_iterations, logger, hook, resume)
    return maml


def save_checkpoint(maml: MAML, weights_path: Path) -> dict[str, Any]:
    """Write the meta-learned initialisation (and Meta-SGD's step sizes); return its config."""
    learner = maml.learner()
    save_params(learner_weights(learner), weights_path)
    c = maml.config
    return policy_config(maml.policy, c.hidden_sizes, c.inner_lr, c.discount, learner="maml",
                         algo_config=to_dict(c))


def _train(config: MAMLConfig, ctx: TrainContext) -> MAML:
    return train_maml(ctx.family, ctx.train_set, config, ctx.num_iterations, ctx.seed,
                      ctx.device, logger=ctx.logger, hook=ctx.hook,  # type: ignore[arg-type]
                      resume=ctx.resume)


register(Algorithm(
    name="maml", config_cls=MAMLConfig, train=_train, save=save_checkpoint,  # type: ignore[arg-type]
    load=load_policy,
    episodes=lambda c, iters, trial: (iters * (c.num_inner_steps + 1) * c.meta_batch_size
                                      * c.episodes_per_task),
    search_space={"inner_lr": "inner_lr", "outer_lr": "outer_lr"},
    batch_factors=lambda c, trial: (("algo.maml.meta_batch_size", c.meta_batch_size),
                                    ("algo.maml.episodes_per_task", c.episodes_per_task)),
    summary="a meta-learned initialisation adapted by policy-gradient steps (Finn et al. "
            "2017; Meta-SGD with learn_inner_lr)"))
