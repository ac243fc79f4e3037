"""PEARL: off-policy meta-RL with a probabilistic context variable.

Rakelly, Zhou, Quillen, Finn & Levine (2019), "Efficient Off-Policy Meta-Reinforcement Learning
via Probabilistic Context Variables", https://arxiv.org/abs/1903.08254.

A latent task variable ``z`` is inferred from a task's transitions (its *context*) and fed to
a soft actor-critic (SAC, Haarnoja et al. 2018, the twin-Q form):

* **Encoder.** An MLP maps every transition ``c_i = (s, a, r, s')`` to a Gaussian factor
  ``N(mu_i, sigma_i^2)`` (softplus for the variance). The posterior is the product of the
  factors with the unit Gaussian prior, in closed form (:func:`posterior`)::

      precision = 1 + sum_i 1 / sigma_i^2,   mean = (sum_i mu_i / sigma_i^2) / precision.

  ``eta = sum_i mu_i / sigma_i^2`` and ``precision`` are sufficient statistics: adding a new
  batch of context only adds to them (the product is associative), which is how the learner
  accumulates context over the evaluator's rounds. ``KL(q(z|c) || N(0, I))``, weighted by
  ``kl_weight``, is the information bottleneck; the critic's loss trains the encoder (the
  actor sees ``z`` detached), as in the paper.
* **SAC.** Twin ``Q(s, a, z)`` with Polyak-averaged targets, a tanh-squashed Gaussian
  ``pi(a | s, z)``, a fixed (``alpha``) or learned (``learn_alpha``, target entropy
  ``-action_dim``) temperature, rewards scaled by ``reward_scale``, and the TD target of
  :func:`metarl.offpolicy.td_target` (bootstrap unless the step terminated). Actions live in
  ``[-1, 1]^A`` inside the networks (the log-probabilities and the entropy are of that
  squashed action) and are rescaled to the env's ``[action_low, action_high]`` to act;
  stored env actions are mapped back before they enter a network.
* **Data.** A replay buffer per training task (:class:`metarl.buffers.TaskReplayBuffer`) for
  the RL batches and a second per-task buffer of recent data for the encoder's context (the
  paper's encoder buffer). The collection scheme is the paper's ``num_initial_steps`` /
  ``num_steps_prior`` / ``num_steps_posterior`` / ``num_extra_rl_steps_posterior``, counted in
  whole episodes (every slot of a batched env plays one; the budget is then exact in episodes,
  what :attr:`~metarl.algos.registry.Algorithm.episodes` reports) and simplified:

  1. before the first iteration, ``num_initial_episodes`` episodes with ``z`` from the prior
     for each of ``meta_batch_size`` drawn training tasks (the paper does every training task;
     here the gradient steps draw their tasks among those with data, so the budget does not
     depend on the size of the training set);
  2. each iteration, for ``num_tasks_sample`` drawn training tasks: their context buffer is
     emptied, then ``num_episodes_prior`` episodes with ``z`` from the prior (one ``z`` per
     episode) go to both buffers, ``num_episodes_posterior`` episodes with ``z`` sampled from
     the posterior of ``context_batch`` transitions of the context buffer go to both buffers,
     and ``num_extra_rl_episodes_posterior`` more such episodes go to the replay buffer only
     (the paper refreshes the posterior during a path; here ``z`` is drawn once per episode
     from the context collected before it);
  3. ``num_train_steps_per_itr`` gradient steps, each on a meta-batch of ``meta_batch_size``
     tasks as one batched computation (tasks are the leading dim ``[M, B, ...]``).

The learner (:class:`PEARLLearner`) keeps, per task, the posterior's sufficient statistics as
its parameters: ``initial_params`` is the prior, ``adapt`` adds the factors of the new
episodes, ``explore`` samples ``z`` from the posterior once per episode (posterior sampling),
``act`` uses the posterior mean (``act_with: mean``) or a sample. The evaluator's curve is the
return after ``k`` rounds of context.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metarl.algos.base import TensorInfo, probe_env, read_context
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.buffers import TaskReplayBuffer
from metarl.checkpoint import FORMAT_VERSION, load_params, save_params
from metarl.config import check, to_dict
from metarl.logging import MetricLogger, NullLogger
from metarl.offpolicy import MLP, parameters_of, soft_update, td_target
from metarl.policies import ActFn, Params
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, run_loop

ACT_WITH = ("mean", "sample")
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
MIN_VARIANCE = 1e-7
LOG_2 = math.log(2.0)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class PEARLConfig:
    """PEARL hyperparameters (``algo.pearl`` in params.yaml).

    The defaults are oyster's cheetah-vel config (the paper's code) where they fit a CPU;
    collection counts are that config's steps over its 200-step horizon, in episodes.
    """

    latent_dim: int = 5
    """Size of the task variable ``z``."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the policy and the Q networks. The paper's are ``(300, 300, 300)``;
    the default is smaller so that CPU runs of the bundled families (2-D to 4-D observations)
    take seconds per iteration rather than minutes."""
    encoder_hidden: tuple[int, ...] = (200, 200, 200)
    """Hidden widths of the context encoder (the paper's)."""
    meta_batch_size: int = 16
    """Tasks per gradient step (and tasks of the initial collection)."""
    batch_size: int = 256
    """RL transitions per task per gradient step."""
    context_batch: int = 100
    """Context transitions per task per gradient step (and to infer ``z`` when collecting)."""
    reward_scale: float = 5.0
    """Multiplies the rewards in the TD target (SAC's reward scale)."""
    kl_weight: float = 0.1
    """Weight of ``KL(q(z|c) || N(0, I))``, summed over the meta-batch's tasks as in oyster."""
    lr: float = 3e-4
    """Adam's learning rate for every network (and the temperature)."""
    discount: float = 0.99
    """Discount of the TD target."""
    tau: float = 0.005
    """Polyak rate of the target Q networks."""
    alpha: float = 1.0
    """Entropy temperature (the initial one when ``learn_alpha``); oyster's SAC has 1 with
    ``reward_scale`` 5."""
    learn_alpha: bool = False
    """Learn the temperature towards the target entropy ``-action_dim``."""
    num_initial_episodes: int = 10
    """Prior-``z`` episodes per task before the first iteration (oyster: 2000 steps)."""
    num_tasks_sample: int = 5
    """Training tasks that collect data each iteration."""
    num_episodes_prior: int = 2
    """Prior-``z`` episodes per collecting task per iteration, to both buffers (400 steps)."""
    num_episodes_posterior: int = 0
    """Posterior-``z`` episodes per collecting task per iteration, to both buffers (0)."""
    num_extra_rl_episodes_posterior: int = 3
    """Posterior-``z`` episodes per collecting task per iteration, to the replay buffer only
    (600 steps)."""
    num_train_steps_per_itr: int = 500
    """Gradient steps per iteration (oyster: 2000 for 5000 env steps; 500 keeps about the same
    ratio of updates to env steps on the 100-step bundled tasks)."""
    replay_capacity: int = 10_000
    """Transitions kept per training task in the replay buffer (oyster: 10^6; one tensor of
    ``tasks × capacity`` rows is allocated, so the default is sized for CPU memory)."""
    act_with: str = "mean"
    """The ``z`` of :meth:`PEARLLearner.act`: the posterior ``mean`` or a ``sample`` per
    episode (exploration always samples)."""
    deterministic: bool = True
    """The learner acts with ``tanh(mean)`` of the policy (True, the paper's evaluation) or
    samples it (training collection always samples)."""

    def __post_init__(self) -> None:
        for key in ("latent_dim", "meta_batch_size", "batch_size", "context_batch",
                    "num_tasks_sample", "num_episodes_prior", "replay_capacity"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        for key in ("num_initial_episodes", "num_episodes_posterior",
                    "num_extra_rl_episodes_posterior", "num_train_steps_per_itr"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "must be >= 0")
        for key in ("hidden_sizes", "encoder_hidden"):
            sizes = getattr(self, key)
            check(len(sizes) >= 1 and all(h >= 1 for h in sizes), key, sizes,
                  "need at least one layer of width >= 1")
        for key in ("reward_scale", "lr", "alpha"):
            value = getattr(self, key)
            check(math.isfinite(value) and value > 0, key, value, "must be a finite number > 0")
        check(math.isfinite(self.kl_weight) and self.kl_weight >= 0, "kl_weight",
              self.kl_weight, "must be a finite number >= 0")
        check(0 < self.discount <= 1, "discount", self.discount, "must be in (0, 1]")
        check(0 < self.tau <= 1, "tau", self.tau, "must be in (0, 1]")
        check(self.act_with in ACT_WITH, "act_with", self.act_with,
              f"choose one of {list(ACT_WITH)}")


# -- closed forms -------------------------------------------------------------------------


def factor_stats(mu: torch.Tensor, var: torch.Tensor, mask: torch.Tensor | None = None,
                 dims: Sequence[int] = (1,)) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum mu_i / var_i, sum 1 / var_i)`` of Gaussian factors over ``dims``.

    ``mask`` (the factors' shape without the latent dim) zeroes padding steps.
    """
    eta, prec = mu / var, 1.0 / var
    if mask is not None:
        eta, prec = eta * mask.unsqueeze(-1), prec * mask.unsqueeze(-1)
    return eta.sum(tuple(dims)), prec.sum(tuple(dims))


def posterior(eta: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, variance)`` of the posterior with sufficient statistics ``eta, precision``.

    ``precision`` includes the unit prior's 1 (``1 + sum 1 / var_i``).
    """
    return eta / precision, 1.0 / precision


def gaussian_kl(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag var) || N(0, I))``, summed over the last dim."""
    return 0.5 * (var + mean.square() - 1.0 - var.log()).sum(-1)


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
                           ) -> torch.Tensor:
    """Log density of ``tanh(u)``, ``u ~ N(mean, exp(log_std)^2)``, summed over the last dim.

    The change of variables subtracts ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``
    (the stable form).
    """
    z = (u - mean) * torch.exp(-log_std)
    gauss = (-0.5 * z.square() - log_std - LOG_SQRT_2PI).sum(-1)
    return gauss - (2.0 * (LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)


def soft_td_target(rewards: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor,
                   next_logp: torch.Tensor, terminated: torch.Tensor, alpha: float | torch.Tensor,
                   discount: float, reward_scale: float) -> torch.Tensor:
    """SAC's target ``scale r + discount (1 - terminated) (min Q'(s', a') - alpha log pi(a'|s'))``.

    Through :func:`metarl.offpolicy.td_target`: a truncated step bootstraps.
    """
    value = torch.minimum(next_q1, next_q2) - alpha * next_logp
    return td_target(reward_scale * rewards, value, terminated, discount)


# -- networks -----------------------------------------------------------------------------


class ContextEncoder(nn.Module):
    """Maps each transition ``(s, a, r, s')`` to a Gaussian factor ``(mu, var)`` over ``z``.

    Actions enter in the networks' ``[-1, 1]`` units.
    """

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int,
                 hidden_sizes: Sequence[int], generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.latent_dim: int = latent_dim
        self.mlp = MLP(2 * obs_dim + action_dim + 1, 2 * latent_dim, hidden_sizes, generator)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, var)``, each ``[..., latent_dim]``, for transitions ``[..., *]``."""
        out = self.mlp(torch.cat([obs, actions, rewards.unsqueeze(-1), next_obs], -1))
        mu, raw = out.split(self.latent_dim, -1)
        return mu, F.softplus(raw).clamp(min=MIN_VARIANCE)


class TanhGaussianPolicy(nn.Module):
    """``pi(a | s, z)``: a Gaussian over ``u`` squashed by tanh to ``[-1, 1]^A``."""

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int,
                 hidden_sizes: Sequence[int], generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.obs_dim: int = obs_dim
        self.action_dim: int = action_dim
        self.mlp = MLP(obs_dim + latent_dim, 2 * action_dim, hidden_sizes, generator)

    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)`` of ``u``, ``log_std`` clamped to ``[-20, 2]``."""
        mean, log_std = self.mlp(torch.cat([obs, z], -1)).split(self.action_dim, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, z: torch.Tensor, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample ``tanh(u)`` and its log density."""
        mean, log_std = self(obs, z)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        u = mean + log_std.exp() * eps
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std)

    def deterministic(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``tanh(mean)``."""
        return torch.tanh(self(obs, z)[0])


class ActionScale:
    """Maps the networks' ``[-1, 1]^A`` to the env's ``[low, high]`` and back."""

    def __init__(self, low: Sequence[float], high: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        lo = torch.tensor(list(low), dtype=torch.float32, device=device)
        hi = torch.tensor(list(high), dtype=torch.float32, device=device)
        self.low, self.high = tuple(float(x) for x in low), tuple(float(x) for x in high)
        self.mid, self.half = (hi + lo) / 2, (hi - lo) / 2

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        """``mid + half * a``."""
        return self.mid + self.half * a

    def to_unit(self, a: torch.Tensor) -> torch.Tensor:
        """``(a - mid) / half``, clamped to ``[-1, 1]``."""
        return ((a.float() - self.mid) / self.half).clamp(-1.0, 1.0)


# -- the learner --------------------------------------------------------------------------


class PEARLLearner:
    """The meta-trained encoder and policy as a :class:`~metarl.algos.base.MetaLearner`.

    Per-task params are the posterior's sufficient statistics ``{"eta": [N, z], "precision":
    [N, z]}`` (:func:`posterior`).

    Args:
        encoder: the context encoder.
        policy: ``pi(a | s, z)``.
        scale: the env's action box.
        act_with: ``z`` of :meth:`act`: the posterior ``mean`` or a ``sample``.
        deterministic: act with ``tanh(mean)`` (True) or a sample of the policy.

    """

    def __init__(self, encoder: ContextEncoder, policy: TanhGaussianPolicy, scale: ActionScale,
                 act_with: str = "mean", deterministic: bool = True) -> None:
        self.encoder, self.policy, self.scale = encoder.eval(), policy.eval(), scale
        self.act_with, self.deterministic = act_with, deterministic
        self.latent_dim = encoder.latent_dim
        first = next(policy.parameters())
        self.device = first.device
        self.obs_dim: int = policy.obs_dim
        self.action_dim: int = policy.action_dim

    def initial_params(self, num_tasks: int) -> Params:
        """The prior: ``eta = 0``, ``precision = 1``."""
        shape = (num_tasks, self.latent_dim)
        return {"eta": torch.zeros(shape, device=self.device),
                "precision": torch.ones(shape, device=self.device)}

    @torch.no_grad()
    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """Add the factors of ``episodes``' valid steps (``mask``) to each task's statistics."""
        mu, var = self.encoder(episodes.obs.to(self.device),
                               self.scale.to_unit(episodes.actions.to(self.device)),
                               episodes.rewards.to(self.device),
                               episodes.next_obs.to(self.device))
        eta, prec = factor_stats(mu, var, episodes.mask.to(self.device), dims=(1, 2))
        return {"eta": params["eta"] + eta, "precision": params["precision"] + prec}

    def _act_fn(self, params: Params, sample_z: bool) -> ActFn:
        mean, var = posterior(params["eta"], params["precision"])
        held: dict[str, torch.Tensor] = {}

        @torch.no_grad()
        def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            if "z" not in held:  # one z per (task, slot), kept for the rollout
                n, e = obs.shape[:2]
                z = mean.unsqueeze(1).expand(n, e, -1)
                if sample_z:
                    eps = torch.randn(z.shape, generator=generator, device=obs.device)
                    z = z + var.sqrt().unsqueeze(1) * eps
                held["z"] = z
            z = held["z"]
            if self.deterministic:
                a = self.policy.deterministic(obs, z)
            else:
                a = self.policy.sample(obs, z, generator)[0]
            return self.scale.to_env(a)

        return act

    def explore(self, params: Params) -> ActFn:
        """Posterior sampling: ``z ~ q(z | context)`` once per episode."""
        return self._act_fn(params, sample_z=True)

    def act(self, params: Params) -> ActFn:
        """The posterior mean (``act_with: mean``) or a sample per episode."""
        return self._act_fn(params, sample_z=self.act_with == "sample")

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """``obs float32 [-1, obs_dim]`` → ``action float32 [-1, action_dim]``."""
        return ([("obs", "float32", (-1, self.obs_dim))],
                [("action", "float32", (-1, self.action_dim))])

    @torch.no_grad()
    def serve(self, inputs: dict[str, Any]) -> np.ndarray:
        """``tanh(mean)`` of the policy at the posterior mean of the :data:`CONTEXT`.

        Without a context, at the prior mean ``z = 0``. The context's episodes are those of
        :func:`~metarl.sampler.episodes_from_steps` (an episode's last ``s'`` is the next
        step's observation, as that function gives it).
        """
        obs = torch.as_tensor(np.asarray(inputs["obs"], dtype=np.float32),
                              device=self.device).reshape(-1, self.obs_dim)
        context = read_context(inputs, self.obs_dim, self.action_dim)
        params = self.initial_params(1)
        if context.steps:
            params = self.adapt(params, context.episodes())
        mean = posterior(params["eta"], params["precision"])[0]
        z = mean.expand(obs.shape[0], -1)
        return self.scale.to_env(self.policy.deterministic(obs, z)).cpu().numpy().astype(
            np.float32)


# -- training -----------------------------------------------------------------------------


class PEARL:
    """Meta-trains PEARL (see the module docstring) on ``num_tasks`` training tasks.

    Args:
        family: the task family (continuous actions).
        tasks: the training tasks; buffer row ``i`` is ``tasks[i]``.
        config: hyperparameters.
        seed: seeds the networks (drawn on the CPU), the rollouts, the buffers' draws and
            the task draws.
        device: where networks, buffers and environments live.

    """

    def __init__(self, family: TaskFamily, tasks: Sequence[dict[str, Any]], config: PEARLConfig,
                 seed: int, device: torch.device | str = "cpu") -> None:
        probe = probe_env(family)
        if probe.discrete:
            raise ValueError(f"{family.name}: PEARL needs continuous actions")
        self.family, self.tasks, self.config = family, list(tasks), config
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = probe.obs_dim, probe.action_dim
        self.horizon = probe.max_steps
        self.scale = ActionScale(probe.action_low, probe.action_high, self.device)
        init = torch.Generator().manual_seed(seed)
        c, d, a = config.latent_dim, probe.obs_dim, probe.action_dim
        self.encoder = ContextEncoder(d, a, c, config.encoder_hidden, init).to(self.device)
        self.policy = TanhGaussianPolicy(d, a, c, config.hidden_sizes, init).to(self.device)
        self.qf1 = MLP(d + a + c, 1, config.hidden_sizes, init).to(self.device)
        self.qf2 = MLP(d + a + c, 1, config.hidden_sizes, init).to(self.device)
        self.qf1_target = copy.deepcopy(self.qf1).requires_grad_(False)
        self.qf2_target = copy.deepcopy(self.qf2).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.alpha), device=self.device,
                                      requires_grad=config.learn_alpha)
        self.target_entropy = -float(a)
        self.q_optimizer = torch.optim.Adam(list(parameters_of(self.qf1, self.qf2)), lr=config.lr)
        self.encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=config.lr)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.alpha_optimizer = (torch.optim.Adam([self.log_alpha], lr=config.lr)
                                if config.learn_alpha else None)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        """Rollouts and the networks' noise."""
        self.buffer_generator = torch.Generator().manual_seed(seed + 1)
        """The buffers' draws (on the CPU, as :meth:`TaskReplayBuffer.sample` needs)."""
        self.rng = np.random.default_rng(seed)
        """The training tasks' draws."""
        n = len(self.tasks)
        self.replay = TaskReplayBuffer(n, config.replay_capacity)
        context_episodes = max(config.num_initial_episodes,
                               config.num_episodes_prior + config.num_episodes_posterior)
        self.context = TaskReplayBuffer(n, context_episodes * self.horizon)
        self.seen = np.zeros(n, dtype=bool)
        """Which training tasks have data (gradient steps draw among them)."""
        self.env_steps = 0

    # - acting while training -

    def _prior_z(self, num_tasks: int, num_envs: int) -> torch.Tensor:
        return torch.randn(num_tasks, num_envs, self.config.latent_dim, generator=self.generator,
                           device=self.device)

    @torch.no_grad()
    def _posterior_z(self, rows: torch.Tensor, num_envs: int) -> torch.Tensor:
        ctx = self.context.sample(self.config.context_batch, self.buffer_generator, rows)
        mu, var = self.encoder(ctx["obs"], self.scale.to_unit(ctx["actions"]), ctx["rewards"],
                               ctx["next_obs"])
        eta, prec = factor_stats(mu, var)
        mean, pvar = posterior(eta, 1.0 + prec)
        eps = self._prior_z(len(rows), num_envs)
        return mean.unsqueeze(1) + pvar.sqrt().unsqueeze(1) * eps

    def _collect(self, rows: torch.Tensor, num_envs: int, posterior_z: bool,
                 to_context: bool) -> torch.Tensor:
        """Play ``num_envs`` episodes per task of ``rows`` with a sampled policy; store them.

        Returns the episodes' mean return (a tensor, no sync).
        """
        env = self.family.make_env([self.tasks[int(i)] for i in rows], num_envs,
                                   device=self.device)
        z = (self._posterior_z(rows, num_envs) if posterior_z
             else self._prior_z(len(rows), num_envs))

        def act(obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            return self.scale.to_env(self.policy.sample(obs, z, generator)[0])

        batch = rollout(act, env, self.generator)
        steps = batch.transitions()
        self.replay.add(steps, rows)
        if to_context:
            self.context.add(steps, rows)
        self.seen[rows.numpy()] = True
        self.env_steps += batch.num_steps
        return batch.episode_returns.mean()

    def _draw(self, count: int, among: np.ndarray) -> torch.Tensor:
        idx = self.rng.choice(len(among), size=count, replace=count > len(among))
        return torch.as_tensor(among[idx], dtype=torch.long)

    def collect_initial(self) -> None:
        """``num_initial_episodes`` prior-``z`` episodes for ``meta_batch_size`` drawn tasks."""
        cfg = self.config
        if cfg.num_initial_episodes > 0:
            rows = self._draw(cfg.meta_batch_size, np.arange(len(self.tasks)))
            self._collect(rows, cfg.num_initial_episodes, posterior_z=False, to_context=True)

    def collect(self) -> dict[str, torch.Tensor]:
        """One iteration's collection (step 2 of the module docstring); mean returns."""
        cfg = self.config
        rows = self._draw(cfg.num_tasks_sample, np.arange(len(self.tasks)))
        for r in rows.tolist():  # the encoder buffer holds each task's newest collection
            self.context.size[r] = 0
            self.context.cursor[r] = 0
        out = {"prior": self._collect(rows, cfg.num_episodes_prior, False, True)}
        post = []
        if cfg.num_episodes_posterior:
            post.append(self._collect(rows, cfg.num_episodes_posterior, True, True))
        if cfg.num_extra_rl_episodes_posterior:
            post.append(self._collect(rows, cfg.num_extra_rl_episodes_posterior, True, False))
        if post:
            out["posterior"] = torch.stack(post).mean()
        return out

    # - learning -

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature (no gradient)."""
        return self.log_alpha.detach().exp()

    def infer(self, ctx: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
        """``(z sample [M, z], posterior mean, posterior variance)`` of context ``[M, C]``."""
        mu, var = self.encoder(ctx["obs"], self.scale.to_unit(ctx["actions"]), ctx["rewards"],
                               ctx["next_obs"])
        eta, prec = factor_stats(mu, var)
        mean, pvar = posterior(eta, 1.0 + prec)
        eps = torch.randn(mean.shape, generator=self.generator, device=mean.device)
        return mean + pvar.sqrt() * eps, mean, pvar

    @torch.no_grad()
    def td_targets(self, rl: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """SAC's targets ``[M, B]`` of RL batch ``rl`` at ``z`` ``[M, B, latent]``.

        The next action is sampled from the policy with :attr:`generator`.
        """
        cfg = self.config
        next_obs = rl["next_obs"]
        next_a, next_logp = self.policy.sample(next_obs, z, self.generator)
        x = torch.cat([next_obs, next_a, z], -1)
        return soft_td_target(rl["rewards"], self.qf1_target(x).squeeze(-1),
                              self.qf2_target(x).squeeze(-1), next_logp, rl["terminated"],
                              self.alpha, cfg.discount, cfg.reward_scale)

    def gradient_step(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """One SAC + encoder update on the tasks ``rows`` ``[M]``, batched over tasks."""
        cfg = self.config
        rl = self.replay.sample(cfg.batch_size, self.buffer_generator, rows)
        ctx = self.context.sample(cfg.context_batch, self.buffer_generator, rows)
        z, mean, pvar = self.infer(ctx)
        kl = gaussian_kl(mean, pvar)  # [M]
        zb = z.unsqueeze(1).expand(-1, cfg.batch_size, -1)
        obs, actions = rl["obs"], self.scale.to_unit(rl["actions"])
        target = self.td_targets(rl, zb.detach())
        x = torch.cat([obs, actions, zb], -1)
        q1, q2 = self.qf1(x).squeeze(-1), self.qf2(x).squeeze(-1)
        qf_loss = (q1 - target).square().mean() + (q2 - target).square().mean()
        self.q_optimizer.zero_grad(set_to_none=True)
        self.encoder_optimizer.zero_grad(set_to_none=True)
        (qf_loss + cfg.kl_weight * kl.sum()).backward()
        self.q_optimizer.step()
        self.encoder_optimizer.step()

        zd = zb.detach()
        new_a, logp = self.policy.sample(obs, zd, self.generator)
        qs = list(parameters_of(self.qf1, self.qf2))
        for p in qs:
            p.requires_grad_(False)
        x = torch.cat([obs, new_a, zd], -1)
        q_new = torch.minimum(self.qf1(x), self.qf2(x)).squeeze(-1)
        for p in qs:
            p.requires_grad_(True)
        policy_loss = (self.alpha * logp - q_new).mean()
        self.policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.policy_optimizer.step()
        if self.alpha_optimizer is not None:
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        soft_update(self.qf1_target, self.qf1, cfg.tau)
        soft_update(self.qf2_target, self.qf2, cfg.tau)
        return {"qf_loss": qf_loss.detach(), "policy_loss": policy_loss.detach(),
                "kl": kl.detach().mean(), "entropy": -logp.detach().mean()}

    def train_iteration(self, it: int) -> dict[str, float]:
        """Collect (with the initial collection first at ``it == 0``), then update."""
        cfg = self.config
        before = self.env_steps
        if it == 0:
            self.collect_initial()
        returns = self.collect()
        seen = np.flatnonzero(self.seen)
        sums: dict[str, torch.Tensor] = {}
        for _ in range(cfg.num_train_steps_per_itr):
            for k, v in self.gradient_step(self._draw(cfg.meta_batch_size, seen)).items():
                sums[k] = sums[k] + v if k in sums else v
        steps = max(cfg.num_train_steps_per_itr, 1)
        metrics = {f"train/{k}": float(v) / steps for k, v in sums.items()}
        metrics["train/return_prior"] = float(returns["prior"])
        metrics["train/return"] = float(returns.get("posterior", returns["prior"]))
        metrics["train/alpha"] = float(self.alpha)
        metrics["train/env_steps"] = float(self.env_steps - before)  # this iteration's
        return metrics

    def learner(self) -> PEARLLearner:
        """Copies of the encoder and policy as a :class:`PEARLLearner`."""
        return PEARLLearner(copy.deepcopy(self.encoder), copy.deepcopy(self.policy), self.scale,
                            self.config.act_with, self.config.deterministic)

    # - resume -

    def _modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "policy": self.policy, "qf1": self.qf1,
                "qf2": self.qf2, "qf1_target": self.qf1_target, "qf2_target": self.qf2_target}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts: dict[str, torch.optim.Optimizer] = {
            "q": self.q_optimizer, "encoder": self.encoder_optimizer,
            "policy": self.policy_optimizer}
        if self.alpha_optimizer is not None:
            opts["alpha"] = self.alpha_optimizer
        return opts

    def training_state(self) -> State:
        """Networks, targets, optimisers, temperature, both buffers and every generator."""
        return {"modules": {k: {n: v.detach().cpu().clone() for n, v in m.state_dict().items()}
                            for k, m in self._modules().items()},
                "optimizers": {k: o.state_dict() for k, o in self._optimizers().items()},
                "log_alpha": self.log_alpha.detach().cpu().clone(),
                "replay": self.replay.state(), "context": self.context.state(),
                "generator": self.generator.get_state(),
                "buffer_generator": self.buffer_generator.get_state(),
                "rng": dict(self.rng.bit_generator.state),
                "seen": torch.as_tensor(self.seen), "env_steps": self.env_steps}

    def load_training_state(self, state: State) -> None:
        """Continue from :meth:`training_state` (a PEARL built with the same arguments)."""
        for k, m in self._modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self._optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.replay.load_state(state["replay"], self.device)
        self.context.load_state(state["context"], self.device)
        self.generator.set_state(state["generator"].cpu())
        self.buffer_generator.set_state(state["buffer_generator"].cpu())
        self.rng.bit_generator.state = state["rng"]
        self.seen = state["seen"].numpy().astype(bool).copy()
        self.env_steps = int(state["env_steps"])


def train_pearl(
    family: TaskFamily,
    train_set: TaskSet,
    config: PEARLConfig,
    num_iterations: int,
    seed: int,
    device: torch.device | str = "cpu",
    logger: MetricLogger | None = None,
    hook: Any = None,
    resume: Resume | None = None,
) -> PEARL:
    """Meta-train for ``num_iterations``; same seed ⇒ identical parameters on CPU.

    ``hook(iteration, learner)`` after each iteration; ``resume`` continues a saved state (a
    resumed run ends with the parameters of an uninterrupted one).
    """
    logger = logger or NullLogger()
    pearl = PEARL(family, train_set.tasks, config, seed, device)

    def step(it: int) -> None:
        logger.log_metrics(pearl.train_iteration(it), step=it)
        if hook is not None:
            hook(it, pearl.learner())

    run_loop(step, num_iterations, pearl.training_state, pearl.load_training_state, resume)
    return pearl


def save_checkpoint(pearl: PEARL, weights_path: Path) -> dict[str, Any]:
    """Write the encoder's and the policy's weights; return the config that rebuilds them."""
    weights = {f"encoder.{k}": v for k, v in pearl.encoder.state_dict().items()}
    weights.update({f"policy.{k}": v for k, v in pearl.policy.state_dict().items()})
    save_params(weights, weights_path)
    return {"format_version": FORMAT_VERSION, "learner": "pearl", "policy": "tanh_gaussian",
            "obs_dim": pearl.obs_dim, "num_actions": 0, "action_dim": pearl.action_dim,
            "action_low": list(pearl.scale.low), "action_high": list(pearl.scale.high),
            "algo_config": to_dict(pearl.config)}


def load_checkpoint(weights_path: Path, config: dict[str, Any]) -> PEARLLearner:
    """The :class:`PEARLLearner` of a checkpoint (weights only)."""
    missing = [k for k in ("obs_dim", "action_dim", "action_low", "action_high", "algo_config")
               if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; re-train to produce a full one")
    algo = config["algo_config"]
    latent = int(algo.get("latent_dim", PEARLConfig.latent_dim))
    hidden = tuple(int(h) for h in algo.get("hidden_sizes", PEARLConfig.hidden_sizes))
    enc_hidden = tuple(int(h) for h in algo.get("encoder_hidden", PEARLConfig.encoder_hidden))
    d, a = int(config["obs_dim"]), int(config["action_dim"])
    encoder = ContextEncoder(d, a, latent, enc_hidden)
    policy = TanhGaussianPolicy(d, a, latent, hidden)
    weights = load_params(weights_path)
    for prefix, module in (("encoder.", encoder), ("policy.", policy)):
        part = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        expected = module.state_dict()
        if set(part) != set(expected) or any(part[k].shape != v.shape
                                             for k, v in expected.items()):
            raise ValueError(f"{weights_path}: the {prefix[:-1]} weights do not match the "
                             "architecture in its config (obs_dim, action_dim, latent_dim, "
                             "hidden_sizes, encoder_hidden)")
        module.load_state_dict(part)
    scale = ActionScale(config["action_low"], config["action_high"])
    return PEARLLearner(encoder, policy, scale, str(algo.get("act_with", "mean")),
                        bool(algo.get("deterministic", True)))


def _train(config: PEARLConfig, ctx: TrainContext) -> PEARL:
    return train_pearl(ctx.family, ctx.train_set, config, ctx.num_iterations, ctx.seed,
                       ctx.device, logger=ctx.logger, hook=ctx.hook, resume=ctx.resume)


def episodes(config: PEARLConfig, num_iterations: int, episodes_per_trial: int = 0) -> int:
    """Episodes a training run collects: the initial collection plus every iteration's."""
    per_itr = (config.num_episodes_prior + config.num_episodes_posterior
               + config.num_extra_rl_episodes_posterior)
    initial = config.meta_batch_size * config.num_initial_episodes if num_iterations else 0
    return initial + num_iterations * config.num_tasks_sample * per_itr


def batch_factors(config: PEARLConfig, episodes_per_trial: int) -> tuple[tuple[str, int], ...]:
    """The largest rollout batch: the initial collection's or an iteration phase's."""
    phase = max(config.num_episodes_prior, config.num_episodes_posterior,
                config.num_extra_rl_episodes_posterior)
    if config.meta_batch_size * config.num_initial_episodes > config.num_tasks_sample * phase:
        return (("algo.pearl.meta_batch_size", config.meta_batch_size),
                ("algo.pearl.num_initial_episodes", config.num_initial_episodes))
    key = ("num_episodes_prior" if phase == config.num_episodes_prior else
           "num_episodes_posterior" if phase == config.num_episodes_posterior else
           "num_extra_rl_episodes_posterior")
    return (("algo.pearl.num_tasks_sample", config.num_tasks_sample),
            (f"algo.pearl.{key}", phase))


register(Algorithm(
    name="pearl", config_cls=PEARLConfig, train=_train,  # type: ignore[arg-type]
    save=save_checkpoint, load=load_checkpoint,  # type: ignore[arg-type]
    episodes=episodes,  # type: ignore[arg-type]
    search_space={"lr": "outer_lr"},
    batch_factors=batch_factors,  # type: ignore[arg-type]
    action_spaces=frozenset({"continuous"}),
    step_note="a round of context: the evaluator's episodes of the task, added to the posterior",
    summary="off-policy meta-RL: SAC conditioned on a latent task variable inferred from "
            "context by a probabilistic encoder (Rakelly et al. 2019)"))
