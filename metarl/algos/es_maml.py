"""ES-MAML: MAML by evolution strategies, hessian-free, never differentiating the adaptation.

Song, Gao, Yang, Choromanski, Pacchiano & Tang (2019), "ES-MAML: Simple Hessian-Free Meta
Learning", https://arxiv.org/abs/1910.01215.

The meta-objective is the Gaussian smoothing of the post-adaptation return,
``J(theta) = E_eps E_task [R(U(theta + sigma * eps, task))]``, where ``U`` is an adaptation
operator, treated as a black box. Its gradient is estimated with ``P`` antithetic pairs,

    grad J ~ 1 / (2 sigma P) * sum_i (F(theta + sigma eps_i) - F(theta - sigma eps_i)) eps_i,

``F`` being a member's post-adaptation return averaged over the meta-batch of tasks (shaped by
rank or z-score with ``fitness_shaping``), and then ascended with Adam or SGD. ``U`` is one of

* ``pg`` (the paper's "hybrid" ES-MAML): one policy-gradient step (REINFORCE with the linear
  baseline, :func:`~metarl.algos.base.pg_inner_step`) on the member's episodes of the task;
* ``hill_climb`` (the paper's zero-order operator): ``num_queries`` sequential queries
  ``best + query_sigma * g``, ``g ~ N(0, I)``, each kept when its return beats the best so far.

Either way the adapted member is then scored on fresh episodes of the task.

The whole population is one batch: the ``2P`` members times the ``T`` tasks of the meta-batch
are the ``2P * T`` rows of ONE batched env (member-major: row ``m * T + j`` is member ``m`` on
task ``j``), each with ``episodes_per_task`` envs, and the members' parameters are the policy's
leading batch dimension (:meth:`~metarl.policies.MLPPolicy.task_mlp`'s batched matrix products).
Every rollout, advantage and inner step is one batched call over all rows; no Python loop runs
over members or tasks. Rows share nothing but the random streams, so a member's returns depend
on its own parameters only.

At meta-test the learner is a :class:`~metarl.algos.base.GradientAdaptedPolicy` with
``inner_lr``: each evaluator step is the ``pg`` operator's policy-gradient step. With
``adaptation: hill_climb`` the initialisation was meta-trained for the zero-order operator but
is still adapted by gradient steps at meta-test (the evaluator's protocol hands a learner its
episodes, not the env to query); the registry's ``step_note`` says so in reports.

``train/return_pre_adapt`` and ``train/return_post_adapt`` are means over the perturbed
population (the smoothed objective), not of ``theta`` itself, which is never rolled out.

Defaults: chosen on cartpole's validation tasks (the pipeline's task sets, 40 iterations, the
evaluator's 3 steps of 20 episodes). ``sigma = 0.05``, Adam at ``outer_lr = 0.03`` and
``inner_lr = 1.0`` keep the initialisation uncommitted while its gain from adapting grows
(returns before → after 1 and 3 steps: 46 → 83 → 96 with seed 0, 27 → 48 → 61 with seed 1;
MAML's defaults: 26 → 181 → 199). ``outer_lr = 0.01`` barely moves in 40 iterations;
``sigma = 0.1`` with ``outer_lr = 0.05`` (``inner_lr`` 0.5 or 1) ends within 40-50 iterations
at about 125 before and after adapting, the pretrained baseline's level (seemingly: balance the
unflipped tasks, give up the flipped ones, which one gradient step cannot then leave); so do
the defaults after about 60 iterations. ``tune`` searches ``inner_lr`` only: ``tune.outer_lr``'s
range is sized for MAML's surrogate loss, below the step ES needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.algos.base import GradientAdaptedPolicy, pg_inner_step
from metarl.algos.maml import make_policy, task_batches
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.checkpoint import load_policy, policy_config, save_params
from metarl.config import check, to_dict
from metarl.envs.base import BatchedEnv
from metarl.logging import MetricLogger, NullLogger
from metarl.policies import MLPPolicy, Params, act_fn
from metarl.returns import advantages
from metarl.sampler import rollout
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, run_meta_batches

ADAPTATIONS = ("pg", "hill_climb")
OPTIMIZERS = ("adam", "sgd")
FITNESS_SHAPINGS = ("rank", "zscore", "none")


@dataclass(frozen=True)
class ESMAMLConfig:
    """ES-MAML hyperparameters (``algo.es_maml`` in params.yaml)."""

    hidden_sizes: tuple[int, ...] = (32, 32)
    """Widths of the policy's hidden layers; empty: a linear policy (ES-MAML's navigation)."""
    init_std: float = 1.0
    """Initial standard deviation of a Gaussian policy, as a fraction of half the env's action
    range (continuous families only)."""
    population_size: int = 16
    """Antithetic pairs ``P`` per meta-iteration: ``2P`` perturbed parameter sets."""
    sigma: float = 0.05
    """Standard deviation of the ES perturbations of ``theta`` (parameter units)."""
    outer_lr: float = 0.03
    """Step size of the meta-update (Adam's learning rate, or SGD's)."""
    optimizer: str = "adam"
    """``adam`` or ``sgd``, ascending the ES gradient."""
    fitness_shaping: str = "rank"
    """How the members' returns enter the estimator: ``rank`` (centred ranks in [-0.5, 0.5],
    ties averaged), ``zscore`` (minus the mean, over the std) or ``none`` (raw returns: the
    unbiased estimator of the smoothed gradient)."""
    adaptation: str = "pg"
    """The adaptation operator in meta-training: ``pg`` (one policy-gradient step, the paper's
    hybrid) or ``hill_climb`` (zero-order hill climbing with ``num_queries`` queries)."""
    inner_lr: float = 1.0
    """Step size of the policy-gradient step: the ``pg`` operator's and the evaluator's."""
    num_queries: int = 4
    """``hill_climb``: sequential queries ``K`` per member and task (one rollout each)."""
    query_sigma: float = 0.05
    """``hill_climb``: standard deviation of each query's perturbation (parameter units)."""
    meta_batch_size: int = 10
    """Tasks per meta-iteration, shared by every member."""
    episodes_per_task: int = 10
    """Episodes per member and task in each rollout."""
    discount: float = 0.99
    """Discount of returns in the policy-gradient step."""

    def __post_init__(self) -> None:
        check(all(h >= 1 for h in self.hidden_sizes), "hidden_sizes", self.hidden_sizes,
              "every layer needs a width >= 1 (an empty list: a linear policy)")
        check(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        check(self.population_size >= 1, "population_size", self.population_size,
              "must be >= 1 (antithetic pairs; 2x as many members)")
        check(self.sigma > 0, "sigma", self.sigma, "must be > 0")
        check(self.outer_lr > 0, "outer_lr", self.outer_lr, "must be > 0")
        check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
              f"choose one of {list(OPTIMIZERS)}")
        check(self.fitness_shaping in FITNESS_SHAPINGS, "fitness_shaping", self.fitness_shaping,
              f"choose one of {list(FITNESS_SHAPINGS)}")
        check(self.adaptation in ADAPTATIONS, "adaptation", self.adaptation,
              f"choose one of {list(ADAPTATIONS)}")
        check(self.inner_lr > 0, "inner_lr", self.inner_lr, "must be > 0")
        check(self.num_queries >= 1, "num_queries", self.num_queries, "must be >= 1")
        check(self.query_sigma > 0, "query_sigma", self.query_sigma, "must be > 0")
        check(self.meta_batch_size >= 1, "meta_batch_size", self.meta_batch_size, "must be >= 1")
        check(self.episodes_per_task >= 2, "episodes_per_task", self.episodes_per_task,
              "must be >= 2 (the baseline of the policy-gradient step needs several episodes)")
        check(0 < self.discount <= 1, "discount", self.discount, "must be in (0, 1]")

    @property
    def rollouts_per_member(self) -> int:
        """Rollouts of each member's rows per iteration: before, (queries,) after adapting."""
        return 2 if self.adaptation == "pg" else self.num_queries + 2


def antithetic_noise(theta: Params, num_pairs: int, generator: torch.Generator) -> Params:
    """``eps_i ~ N(0, I)`` for ``i < num_pairs``, each the shape of ``theta`` (leading dim P)."""
    return {k: torch.randn((num_pairs, *v.shape), generator=generator, device=v.device,
                           dtype=v.dtype) for k, v in theta.items()}


def perturbed(theta: Params, noise: Params, sigma: float) -> Params:
    """The population ``[theta + sigma eps_1..P, theta - sigma eps_1..P]`` (leading dim 2P)."""
    return {k: theta[k].unsqueeze(0) + sigma * torch.cat([eps, -eps]) for k, eps in noise.items()}


def centered_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks of ``values`` (1-D) scaled to ``[-0.5, 0.5]``; tied values share their mean rank."""
    n = values.shape[0]
    if n == 1:
        return torch.zeros_like(values)
    below = (values.unsqueeze(1) > values.unsqueeze(0)).sum(1)
    ties = (values.unsqueeze(1) == values.unsqueeze(0)).sum(1)
    rank = below.to(values.dtype) + (ties.to(values.dtype) - 1) / 2
    return rank / (n - 1) - 0.5


def shape_fitness(fitness: torch.Tensor, shaping: str) -> torch.Tensor:
    """``fitness`` [2P] as the estimator weighs it (see :attr:`ESMAMLConfig.fitness_shaping`)."""
    if shaping == "rank":
        return centered_ranks(fitness)
    if shaping == "zscore":
        return (fitness - fitness.mean()) / (fitness.std(unbiased=False) + 1e-8)
    return fitness


def es_gradient(fitness: torch.Tensor, noise: Params, sigma: float, shaping: str = "none"
                ) -> Params:
    """The antithetic ES estimate of the gradient of the smoothed fitness.

    Args:
        fitness: ``[2P]`` of the members of :func:`perturbed` (``+eps`` first, then ``-eps``).
        noise: the ``eps`` ``[P, ...]`` they were made from.
        sigma: the perturbations' standard deviation.
        shaping: ``none`` (raw fitness: an unbiased estimate of ``grad E[F(theta + sigma eps)]``),
            ``rank`` or ``zscore``.

    Returns:
        ``mean_i (F_i^+ - F_i^-) / (2 sigma) * eps_i``, an ascent direction per parameter.

    """
    shaped = shape_fitness(fitness, shaping)
    num_pairs = shaped.shape[0] // 2
    diff = (shaped[:num_pairs] - shaped[num_pairs:]) / (2 * sigma)
    return {k: torch.tensordot(diff.to(eps.dtype), eps, dims=1) / num_pairs
            for k, eps in noise.items()}


@dataclass(frozen=True)
class Adapted:
    """What an adaptation operator returns for every row of the population's env.

    Attributes:
        params: the adapted parameters, leading dim = rows.
        pre_returns: ``[rows]`` mean episode return before adapting.
        num_steps: env steps the operator took.
        accept_rate: ``hill_climb``: the share of queries kept; None for ``pg``.

    """

    params: Params
    pre_returns: torch.Tensor
    num_steps: int
    accept_rate: float | None = None


AdaptationOperator = Callable[[MLPPolicy, Params, BatchedEnv, ESMAMLConfig, torch.Generator],
                              Adapted]
"""``operator(policy, params, env, config, generator)``: adapts every row of ``env``."""


def pg_adaptation(policy: MLPPolicy, params: Params, env: BatchedEnv, config: ESMAMLConfig,
                  generator: torch.Generator) -> Adapted:
    """One policy-gradient step per row on its own episodes (first order, detached)."""
    batch = rollout(act_fn(policy, params), env, generator)
    adv = advantages(batch, config.discount)
    new = pg_inner_step(policy, params, batch, adv, config.inner_lr, first_order=True)
    return Adapted({k: v.detach() for k, v in new.items()}, batch.episode_returns.mean(-1),
                   batch.num_steps)


def hill_climb_adaptation(policy: MLPPolicy, params: Params, env: BatchedEnv,
                          config: ESMAMLConfig, generator: torch.Generator) -> Adapted:
    """Zero-order hill climbing per row: ``num_queries`` queries around the best so far.

    The pivot (the row's own parameters) and each query ``best + query_sigma * g`` are scored
    by one rollout of the row's envs; a query replaces the best when its mean return is higher.
    """
    batch = rollout(act_fn(policy, params), env, generator)
    pre = batch.episode_returns.mean(-1)
    best, best_return, steps, accepted = params, pre, batch.num_steps, 0.0
    for _ in range(config.num_queries):
        query = {k: v + config.query_sigma * torch.randn(v.shape, generator=generator,
                                                         device=v.device, dtype=v.dtype)
                 for k, v in best.items()}
        batch = rollout(act_fn(policy, query), env, generator)
        score = batch.episode_returns.mean(-1)
        better = score > best_return
        best = {k: torch.where(better.view(-1, *[1] * (v.dim() - 1)), query[k], v)
                for k, v in best.items()}
        best_return = torch.where(better, score, best_return)
        steps += batch.num_steps
        accepted += float(better.float().mean())
    return Adapted(best, pre, steps, accepted / config.num_queries)


OPERATORS: dict[str, AdaptationOperator] = {"pg": pg_adaptation,
                                            "hill_climb": hill_climb_adaptation}
"""Adaptation operators by :attr:`ESMAMLConfig.adaptation`."""


@dataclass(frozen=True)
class PopulationScores:
    """The population on the meta-batch: returns per member and task.

    Attributes:
        pre: ``[M, T]`` mean episode return before adaptation.
        post: ``[M, T]`` mean episode return of the adapted member, on fresh episodes.
        num_steps: env steps taken in all.
        accept_rate: ``hill_climb``'s share of queries kept (None for ``pg``).

    """

    pre: torch.Tensor
    post: torch.Tensor
    num_steps: int
    accept_rate: float | None


def evaluate_population(policy: MLPPolicy, members: Params, family: TaskFamily,
                        tasks: Sequence[dict[str, Any]], config: ESMAMLConfig,
                        generator: torch.Generator, device: torch.device | str = "cpu"
                        ) -> PopulationScores:
    """Adapt every member to every task and score it, all in one batched env.

    ``members`` carry a leading member dim ``M``; the env has ``M * T`` rows (member-major)
    of ``config.episodes_per_task`` envs, and each operator's rollouts cover them all at once.
    """
    num_members, num_tasks = next(iter(members.values())).shape[0], len(tasks)
    env = family.make_env(list(tasks) * num_members, config.episodes_per_task, device=device)
    rows = {k: v.repeat_interleave(num_tasks, dim=0) for k, v in members.items()}
    adapted = OPERATORS[config.adaptation](policy, rows, env, config, generator)
    post = rollout(act_fn(policy, adapted.params), env, generator)
    return PopulationScores(adapted.pre_returns.reshape(num_members, num_tasks),
                            post.episode_returns.mean(-1).reshape(num_members, num_tasks),
                            adapted.num_steps + post.num_steps, adapted.accept_rate)


class ESMAML:
    """Meta-trains an initialisation ``theta`` by evolution strategies (module docstring).

    Args:
        policy: the network whose parameters are meta-learned.
        config: hyperparameters.
        seed: seeds the initial parameters (drawn on the CPU), the rollouts and the noise.
        device: where parameters, environments and random streams live.

    """

    def __init__(self, policy: MLPPolicy, config: ESMAMLConfig, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.policy = policy.to(device)
        self.config = config
        self.device = torch.device(device)
        init = policy.init_params(torch.Generator().manual_seed(seed))
        self.theta = {k: v.to(self.device).requires_grad_() for k, v in init.items()}
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        """Rollouts and hill-climbing queries."""
        # its own stream, so the perturbations do not shift with the rollouts' length
        self.noise_generator = torch.Generator(device=self.device).manual_seed(seed + 1_000_003)
        """The ES perturbations ``eps``."""
        optim = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
        self.optimizer = optim(list(self.theta.values()), lr=config.outer_lr)

    def learner(self) -> GradientAdaptedPolicy:
        """The meta-learned policy, adapted at meta-test by steps of ``inner_lr``."""
        return GradientAdaptedPolicy(self.policy, {k: v.detach().clone()
                                                   for k, v in self.theta.items()},
                                     self.config.inner_lr, self.config.discount)

    def training_state(self) -> State:
        """Parameters, optimiser moments and both random generators."""
        return {"theta": {k: v.detach().cpu().clone() for k, v in self.theta.items()},
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "noise_generator": self.noise_generator.get_state()}

    def load_training_state(self, state: State) -> None:
        """Continue from :meth:`training_state` (an ESMAML built with the same config and seed)."""
        with torch.no_grad():  # in place: the optimiser holds these very tensors
            for k, v in self.theta.items():
                v.copy_(state["theta"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.noise_generator.set_state(state["noise_generator"].cpu())

    def meta_train_step(self, family: TaskFamily, tasks: list[dict[str, float]]
                        ) -> dict[str, float]:
        """One meta-iteration on ``tasks``; returns namespaced metrics."""
        cfg = self.config
        theta = {k: v.detach() for k, v in self.theta.items()}
        noise = antithetic_noise(theta, cfg.population_size, self.noise_generator)
        scores = evaluate_population(self.policy, perturbed(theta, noise, cfg.sigma), family,
                                     tasks, cfg, self.generator, self.device)
        fitness = scores.post.mean(1)
        ascent = es_gradient(fitness, noise, cfg.sigma, cfg.fitness_shaping)
        for k, v in self.theta.items():
            v.grad = -ascent[k]  # the optimisers descend
        self.optimizer.step()
        norm = torch.sqrt(sum((g ** 2).sum() for g in ascent.values()))  # type: ignore[arg-type]
        extra = {} if scores.accept_rate is None else {
            "train/hill_climb_accept_rate": scores.accept_rate}
        return {"train/return_pre_adapt": float(scores.pre.mean()),
                "train/return_post_adapt": float(scores.post.mean()),
                "train/fitness_std": float(fitness.std(unbiased=False)),
                "train/grad_norm": float(norm),
                "train/env_steps": float(scores.num_steps),
                **extra}


def train_es_maml(
    family: TaskFamily,
    train_set: TaskSet,
    config: ESMAMLConfig,
    num_iterations: int,
    seed: int,
    device: torch.device | str = "cpu",
    logger: MetricLogger | None = None,
    hook: Callable[[int, GradientAdaptedPolicy], None] | None = None,
    resume: Resume | None = None,
) -> ESMAML:
    """Meta-train for ``num_iterations``; same seed ⇒ identical parameters on CPU.

    ``hook(iteration, learner)`` after each iteration; ``resume`` as for
    :func:`~metarl.algos.maml.train_maml` (a resumed run ends with the same parameters).
    """
    logger = logger or NullLogger()
    es = ESMAML(make_policy(family, config.hidden_sizes, config.init_std), config, seed, device)
    draw = task_batches(train_set, config.meta_batch_size, np.random.default_rng(seed))

    run_meta_batches("es_maml", es, family, draw, num_iterations, logger, hook, resume)
    return es


def save_checkpoint(es: ESMAML, weights_path: Path) -> dict[str, Any]:
    """Write the meta-learned initialisation; return its config."""
    save_params(es.learner().params, weights_path)
    c = es.config
    return policy_config(es.policy, c.hidden_sizes, c.inner_lr, c.discount, learner="es_maml",
                         algo_config=to_dict(c))


def _train(config: ESMAMLConfig, ctx: TrainContext) -> ESMAML:
    return train_es_maml(ctx.family, ctx.train_set, config, ctx.num_iterations, ctx.seed,
                         ctx.device, logger=ctx.logger, hook=ctx.hook,  # type: ignore[arg-type]
                         resume=ctx.resume)


def episodes(config: ESMAMLConfig, num_iterations: int, episodes_per_trial: int = 0) -> int:
    """Every episode a run rolls out: ``iterations x 2P x T x E x rollouts per member``."""
    return (num_iterations * 2 * config.population_size * config.meta_batch_size
            * config.episodes_per_task * config.rollouts_per_member)


def batch_factors(config: ESMAMLConfig, episodes_per_trial: int = 0
                  ) -> tuple[tuple[str, int], ...]:
    """The factors of one rollout batch: ``P x 2 x T x E`` envs."""
    return (("algo.es_maml.population_size", config.population_size), ("2 (antithetic)", 2),
            ("algo.es_maml.meta_batch_size", config.meta_batch_size),
            ("algo.es_maml.episodes_per_task", config.episodes_per_task))


register(Algorithm(
    name="es_maml", config_cls=ESMAMLConfig, train=_train,  # type: ignore[arg-type]
    save=save_checkpoint, load=load_policy,  # type: ignore[arg-type]
    episodes=episodes,  # type: ignore[arg-type]
    search_space={"inner_lr": "inner_lr"},
    batch_factors=batch_factors,  # type: ignore[arg-type]
    step_note="ES-MAML's step k is a policy-gradient step of inner_lr (its pg operator; "
              "meta-trained with adaptation: hill_climb, the zero-order operator is used in "
              "training only).",
    summary="a meta-learned initialisation by antithetic evolution strategies on the "
            "post-adaptation return, hessian-free (Song et al. 2019)"))
