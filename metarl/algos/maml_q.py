"""MAML on a Q-network: a meta-learned initialisation adapted by TD-learning steps.

Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks", https://arxiv.org/abs/1703.03400, with the inner and outer objective of DQN (Mnih et
al. 2015, "Human-level control through deep reinforcement learning") in place of the
policy-gradient surrogate: the simple form of meta-Q-learning, for discrete actions only.

The network ``Q(s, .)`` has one output per action; it is the tanh MLP of
:class:`~metarl.policies.CategoricalMLPPolicy` whose "logits" are read as Q-values, held
functionally as per-task parameters with a leading task dim (``task_mlp``: one batched matmul
per layer for all tasks).

The TD loss of per-task parameters ``phi_i`` on the task's steps (valid steps only, ``mask``)::

    L_i(phi_i) = mean_t  l( Q_phi_i(s_t, a_t) - y_t ),
    y_t = r_t + discount * (1 - terminated_t) * max_a' Q_target(s'_t, a')

(:func:`~metarl.offpolicy.td_target`: a truncated step bootstraps, a terminated one does not),
``l`` the square (``loss: mse``) or Huber's loss with ``delta = 1`` (``loss: huber``).
``Q_target`` is the same per-task parameters ``phi_i``, detached (a semi-gradient, DQN without
a separate target network: every inner step bootstraps from the parameters it starts from).

Per meta-iteration: draw a meta-batch of training tasks; roll out ``episodes_per_task``
epsilon-greedy episodes of ``theta`` per task; take ``num_inner_steps`` TD steps per task on
them (:func:`~metarl.algos.base.inner_step`, all tasks in one backward pass); roll out fresh
epsilon-greedy episodes of the adapted parameters; the meta-loss is the mean over tasks of the
adapted parameters' TD loss on those fresh episodes, back-propagated through the inner steps
to ``theta`` (second order unless ``first_order``; the detached targets are constants of
both orders); ``num_outer_steps`` Adam steps of ``outer_lr`` on these same episodes, each
re-adapting from the current ``theta``, the gradient's global norm clipped.

Exploration: ``epsilon`` is constant (no annealing): the evaluator's exploration rollout uses
the very policy meta-training collected the inner data with. After adaptation the learner acts
greedily (``argmax_a Q``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metarl.algos.base import TensorInfo, inner_step, probe_env, read_context
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.checkpoint import FORMAT_VERSION, load_params, save_params
from metarl.config import check, from_mapping, to_dict
from metarl.logging import MetricLogger, NullLogger
from metarl.offpolicy import td_target
from metarl.policies import ActFn, CategoricalMLPPolicy, Params, expand_params
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, TaskBatches, run_meta_batches

LOSSES = ("mse", "huber")


@dataclass(frozen=True)
class MAMLQConfig:
    """MAML-on-a-Q-network hyperparameters (``algo.maml_q`` in params.yaml).

    Defaults chosen on cartpole validation tasks (see the report of the change that added
    this file): 40 iterations at these values reach a greedy post-adaptation return of
    about 50-110 of 200 (random: about 22).
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the Q-network's hidden layers."""
    inner_lr: float = 0.1
    """Step size alpha of each inner TD step (also the evaluator's)."""
    num_inner_steps: int = 1
    """TD steps per task per adaptation, all on the same episodes."""
    first_order: bool = False
    """Drop second-order terms (FOMAML): cheaper, biased."""
    outer_lr: float = 3e-3
    """Adam step size of the meta-update."""
    num_outer_steps: int = 20
    """Adam steps per meta-iteration on the same pre- and post-adaptation episodes, each
    re-adapting from the current ``theta`` (off-policy TD reuses its data; one step is the
    textbook MAML update)."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    episodes_per_task: int = 10
    """Episodes per task per rollout (pre- and post-adaptation)."""
    discount: float = 0.95
    """Discount of the TD target."""
    epsilon: float = 0.2
    """Probability of a uniform random action in the exploration (and meta-training) rollouts;
    constant over iterations."""
    loss: str = "mse"
    """``mse``: squared TD error; ``huber``: Huber's loss (``delta = 1``) of the TD error."""
    max_grad_norm: float = 10.0
    """Clip of the meta-gradient's global norm."""

    def __post_init__(self) -> None:
        check(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
              "hidden_sizes", self.hidden_sizes, "need at least one layer of width >= 1")
        check(self.inner_lr > 0, "inner_lr", self.inner_lr, "must be > 0")
        check(self.num_inner_steps >= 1, "num_inner_steps", self.num_inner_steps, "must be >= 1")
        check(self.outer_lr > 0, "outer_lr", self.outer_lr, "must be > 0")
        check(self.num_outer_steps >= 1, "num_outer_steps", self.num_outer_steps, "must be >= 1")
        check(self.meta_batch_size >= 1, "meta_batch_size", self.meta_batch_size, "must be >= 1")
        check(self.episodes_per_task >= 1, "episodes_per_task", self.episodes_per_task,
              "must be >= 1")
        check(0 < self.discount <= 1, "discount", self.discount, "must be in (0, 1]")
        check(0 <= self.epsilon <= 1, "epsilon", self.epsilon, "must be in [0, 1]")
        check(self.loss in LOSSES, "loss", self.loss, f"choose one of {list(LOSSES)}")
        check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "must be > 0")


def make_qnet(family: TaskFamily, hidden_sizes: tuple[int, ...]) -> CategoricalMLPPolicy:
    """The Q-network for ``family``: ``obs_dim`` inputs, one output per discrete action.

    Raises:
        ValueError: the family's actions are continuous.

    """
    env = probe_env(family)
    if not env.discrete:
        raise ValueError(f"{family.name}: maml_q needs discrete actions (its are continuous)")
    return CategoricalMLPPolicy(env.obs_dim, env.num_actions, hidden_sizes)


def td_losses(qnet: CategoricalMLPPolicy, params: Params, batch: EpisodeBatch, discount: float,
              loss: str = "mse", target_params: Params | None = None) -> torch.Tensor:
    """Per-task TD losses ``[N]`` of per-task ``params`` on ``batch`` (module docstring).

    Args:
        qnet: the network (its own parameters are not used).
        params: per-task parameters, leading dim ``N``.
        batch: the tasks' steps, ``[N, E, T]``; padding (``mask`` 0) counts for nothing.
        discount: discount of the target.
        loss: ``mse`` or ``huber``.
        target_params: the parameters of ``Q_target`` (default: ``params``); detached.

    """
    q = qnet.task_mlp(params, batch.obs).gather(-1, batch.actions.long().unsqueeze(-1))
    with torch.no_grad():
        target_p = params if target_params is None else target_params
        next_value = qnet.task_mlp({k: v.detach() for k, v in target_p.items()},
                                   batch.next_obs).max(-1).values
    y = td_target(batch.rewards, next_value, batch.terminated, discount)
    err = q.squeeze(-1) - y
    per_step = err.square() if loss == "mse" else F.huber_loss(err, torch.zeros_like(err),
                                                              reduction="none", delta=1.0)
    dims = tuple(range(1, per_step.dim()))
    return (per_step * batch.mask).sum(dims) / batch.mask.sum(dims).clamp(min=1)


def td_adapt(qnet: CategoricalMLPPolicy, params: Params, batch: EpisodeBatch, lr: float,
             num_steps: int, discount: float, loss: str, first_order: bool = True) -> Params:
    """``num_steps`` TD steps per task on ``batch`` (:func:`~metarl.algos.base.inner_step`).

    With ``first_order=False`` and ``params`` that require grad, the result is differentiable
    to second order (the targets stay constants).
    """
    def per_task(p: Params) -> torch.Tensor:
        return td_losses(qnet, p, batch, discount, loss)

    for _ in range(num_steps):
        params = inner_step(per_task, params, lr, first_order)
    return params


def epsilon_greedy(qnet: CategoricalMLPPolicy, params: Params, epsilon: float) -> ActFn:
    """Acting function: ``argmax_a Q`` per slot, a uniform random action with prob. ``epsilon``.

    Both draws are made at every step (whatever ``epsilon``), so the generator advances alike.
    """
    def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        greedy = qnet.task_mlp(params, obs).argmax(-1)
        explore = torch.rand(greedy.shape, generator=generator, device=obs.device) < epsilon
        uniform = torch.randint(0, qnet.num_actions, greedy.shape, generator=generator,
                                device=obs.device)
        return torch.where(explore, uniform, greedy)

    return act


def greedy(qnet: CategoricalMLPPolicy, params: Params) -> ActFn:
    """Acting function ``argmax_a Q(s, a)`` (no randomness)."""
    return lambda obs, generator: qnet.task_mlp(params, obs).argmax(-1)


class MAMLQLearner:
    """The meta-learned Q-network initialisation as a MetaLearner and a Served model.

    ``explore``: epsilon-greedy; ``adapt``: ``num_inner_steps`` TD steps on the episodes
    (detached); ``act``: greedy.

    Args:
        qnet: the network.
        params: the initialisation ``theta`` (no task dim).
        config: the hyperparameters it adapts and explores with.

    """

    def __init__(self, qnet: CategoricalMLPPolicy, params: Params, config: MAMLQConfig) -> None:
        self.qnet = qnet
        self.params = params
        self.config = config

    def initial_params(self, num_tasks: int) -> Params:
        """``theta`` broadcast over tasks."""
        return expand_params({k: v.detach() for k, v in self.params.items()}, num_tasks)

    def explore(self, params: Params) -> ActFn:
        """Epsilon-greedy in ``Q`` (``config.epsilon``)."""
        return epsilon_greedy(self.qnet, params, self.config.epsilon)

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """``num_inner_steps`` TD steps per task on ``episodes``, detached."""
        c = self.config
        new = td_adapt(self.qnet, params, episodes, c.inner_lr, c.num_inner_steps, c.discount,
                       c.loss)
        return {k: v.detach() for k, v in new.items()}

    def act(self, params: Params) -> ActFn:
        """Greedy in ``Q``."""
        return greedy(self.qnet, params)

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """``obs float32 [-1, obs_dim]`` → ``action int64 [-1]``."""
        return [("obs", "float32", (-1, self.qnet.obs_dim))], [("action", "int64", (-1,))]

    def serve(self, inputs: dict[str, Any]) -> np.ndarray:
        """The greedy action per observation row.

        With a :data:`~metarl.algos.base.CONTEXT`, of the Q-network adapted on it first (its
        episodes, :meth:`adapt`; a ``context_done`` step counts as terminated).
        """
        q = self.qnet
        obs = torch.as_tensor(np.asarray(inputs["obs"], dtype=np.float32)).reshape(-1, q.obs_dim)
        context = read_context(inputs, q.obs_dim, 0)
        params = self.params
        if context.steps:
            adapted = self.adapt(self.initial_params(1), context.episodes())
            params = {k: v[0] for k, v in adapted.items()}
        with torch.no_grad():
            return q.mlp(params, obs).argmax(-1).numpy().astype(np.int64)


class MAMLQ:
    """Meta-trains a Q-network initialisation ``theta`` (see the module docstring).

    Args:
        qnet: the network whose parameters are meta-learned.
        config: hyperparameters.
        seed: seeds the initial parameters (drawn on the CPU) and the rollouts.
        device: where parameters, environments and rollout noise live.

    """

    def __init__(self, qnet: CategoricalMLPPolicy, config: MAMLQConfig, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.qnet = qnet.to(device)
        self.config = config
        self.device = torch.device(device)
        init = qnet.init_params(torch.Generator().manual_seed(seed))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.theta = {k: v.to(self.device).requires_grad_() for k, v in init.items()}
        self.optimizer = torch.optim.Adam(list(self.theta.values()), lr=config.outer_lr)

    def learner(self) -> MAMLQLearner:
        """The current initialisation as a :class:`MAMLQLearner` (a copy)."""
        return MAMLQLearner(self.qnet, {k: v.detach().clone() for k, v in self.theta.items()},
                            self.config)

    def training_state(self) -> State:
        """Parameters, Adam's moments and the rollout generator."""
        return {"theta": {k: v.detach().cpu().clone() for k, v in self.theta.items()},
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_training_state(self, state: State) -> None:
        """Continue from :meth:`training_state` (a MAMLQ built with the same config and seed)."""
        with torch.no_grad():  # in place: the optimiser holds these very tensors
            for k, v in self.theta.items():
                v.copy_(state["theta"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())

    def meta_loss(self, pre: EpisodeBatch, post: EpisodeBatch) -> torch.Tensor:
        """Mean over tasks of the TD loss on ``post`` of ``theta`` adapted on ``pre``.

        Differentiable in ``theta`` through the inner steps (second order unless
        ``first_order``).
        """
        c = self.config
        adapted = td_adapt(self.qnet, expand_params(self.theta, pre.obs.shape[0]), pre,
                           c.inner_lr, c.num_inner_steps, c.discount, c.loss, c.first_order)
        return td_losses(self.qnet, adapted, post, c.discount, c.loss).mean()

    def meta_train_step(self, family: TaskFamily, tasks: list[dict[str, Any]]
                        ) -> dict[str, float]:
        """One meta-iteration on ``tasks``; returns namespaced metrics."""
        c = self.config
        env = family.make_env(tasks, c.episodes_per_task, device=self.device)
        learner = self.learner()
        params = learner.initial_params(len(tasks))
        pre = rollout(learner.explore(params), env, self.generator)
        post = rollout(learner.explore(learner.adapt(params, pre)), env, self.generator)
        losses = []
        for _ in range(c.num_outer_steps):
            loss = self.meta_loss(pre, post)
            losses.append(float(loss.detach()))
            self.optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(list(self.theta.values()),
                                                       c.max_grad_norm)
            self.optimizer.step()
        return {"train/return_pre_adapt": float(pre.episode_returns.mean()),
                "train/return_post_adapt": float(post.episode_returns.mean()),
                "train/td_loss": losses[0],
                "train/grad_norm": float(grad_norm),
                "train/env_steps": float(pre.num_steps + post.num_steps)}


def train_maml_q(
    family: TaskFamily,
    train_set: TaskSet,
    config: MAMLQConfig,
    num_iterations: int,
    seed: int,
    device: torch.device | str = "cpu",
    logger: MetricLogger | None = None,
    hook: Callable[[int, MAMLQLearner], None] | None = None,
    resume: Resume | None = None,
) -> MAMLQ:
    """Meta-train for ``num_iterations``; same seed ⇒ identical parameters on CPU.

    ``hook(iteration, learner)`` after each iteration; ``resume`` continues from a saved state
    (:mod:`metarl.training`) and ends with the parameters of an uninterrupted run.
    """
    logger = logger or NullLogger()
    algo = MAMLQ(make_qnet(family, config.hidden_sizes), config, seed, device)
    draw = TaskBatches(train_set, config.meta_batch_size, np.random.default_rng(seed))

    run_meta_batches("maml_q", algo, family, draw, num_iterations, logger, hook, resume)
    return algo


def save_checkpoint(algo: MAMLQ, weights_path: Path) -> dict[str, Any]:
    """Write ``theta``; return the JSON config :func:`load_checkpoint` rebuilds it from."""
    save_params(algo.learner().params, weights_path)
    q = algo.qnet
    return {"format_version": FORMAT_VERSION, "learner": "maml_q", "obs_dim": q.obs_dim,
            "num_actions": q.num_actions, "hidden_sizes": list(q.hidden_sizes),
            "algo_config": to_dict(algo.config)}


def load_checkpoint(weights_path: Path, config: dict[str, Any]) -> MAMLQLearner:
    """The :class:`MAMLQLearner` of a checkpoint (weights only).

    Raises:
        ValueError: fields missing, or weights that do not fit the config's architecture.

    """
    missing = [k for k in ("obs_dim", "num_actions", "hidden_sizes", "algo_config")
               if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; re-train to produce a full one")
    algo_config = from_mapping(MAMLQConfig, config["algo_config"], "checkpoint algo_config")
    qnet = CategoricalMLPPolicy(int(config["obs_dim"]), int(config["num_actions"]),
                                tuple(int(h) for h in config["hidden_sizes"]))
    params = load_params(weights_path)
    expected = dict(qnet.named_parameters())
    if set(params) != set(expected) or any(params[k].shape != v.shape
                                           for k, v in expected.items()):
        raise ValueError(f"{weights_path}: parameters do not match the Q-network in its config "
                         "(obs_dim, num_actions, hidden_sizes)")
    return MAMLQLearner(qnet, params, algo_config)


def _train(config: MAMLQConfig, ctx: TrainContext) -> MAMLQ:
    return train_maml_q(ctx.family, ctx.train_set, config, ctx.num_iterations, ctx.seed,
                        ctx.device, logger=ctx.logger, hook=ctx.hook, resume=ctx.resume)


register(Algorithm(
    name="maml_q", config_cls=MAMLQConfig, train=_train,  # type: ignore[arg-type]
    save=save_checkpoint, load=load_checkpoint,  # type: ignore[arg-type]
    episodes=lambda c, iters, trial: iters * 2 * c.meta_batch_size * c.episodes_per_task,
    search_space={"inner_lr": "inner_lr", "outer_lr": "outer_lr"},
    batch_factors=lambda c, trial: (("algo.maml_q.meta_batch_size", c.meta_batch_size),
                                    ("algo.maml_q.episodes_per_task", c.episodes_per_task)),
    action_spaces=frozenset({"discrete"}),
    step_note="maml_q's step k is num_inner_steps TD steps on the episodes of rollout k.",
    summary="a meta-learned Q-network initialisation adapted by TD steps, epsilon-greedy "
            "exploration, greedy acting (MAML with DQN's loss; discrete actions)"))
