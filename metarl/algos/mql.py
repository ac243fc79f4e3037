"""Meta-Q-Learning: TD3 with a recurrent context, multi-task meta-training, propensity adaptation.

Fakoor, Chaudhari, Soatto & Smola (2020), "Meta-Q-Learning", ICLR,
https://arxiv.org/abs/1910.00125.

**The networks.** A deterministic actor ``mu(s, z_a)`` (tanh, rescaled to the action box) and
twin critics ``Q1, Q2(s, a, z_c)`` (TD3, Fujimoto et al. 2018). Each reads a *context* ``z``:
the last hidden state of a GRU run over the ``history_length`` transitions
``(obs, action, reward)`` that preceded the current step *in the same task* (the actor and the
critic have a GRU each). The history crosses episode boundaries: at an episode's start it is
the tail of the task's previous episodes, which is how the goal of a task identified by its
rewards survives into the next episode. A shorter history (the task's first steps) is
left-padded and the GRU skips the padding (an empty history gives ``z = 0``).

Every network is written functionally, parameters a dict of tensors with a leading task dim
``N`` and batched matrix products (as :meth:`metarl.policies.MLPPolicy.task_mlp`), so a batch of
tasks — meta-training's meta-batch or the ``N`` test tasks adapted at once — is one
computation, never a Python loop over tasks.

**Meta-training** (the paper's multi-task objective). Each iteration plays
``episodes_per_task`` episodes in each of ``meta_batch_size`` training tasks (exploration:
Gaussian noise of ``explore_noise`` half-ranges on the actor, uniform random actions during the
first ``random_iterations``), stores them in per-task replay buffers
(:class:`~metarl.buffers.TaskReplayBuffer`, one row per training task), then takes
``updates_per_iteration`` TD3 steps. A step samples ``meta_batch_size`` of the tasks that hold
data, ``batch_size // meta_batch_size`` transitions each, all as one ``[K, b]`` batch with the
shared weights broadcast over ``K``: critic loss ``(Q1 - y)^2 + (Q2 - y)^2`` with the TD target
(:func:`~metarl.offpolicy.td_target`: bootstrap unless terminated) at the target actor's
smoothed action ``clip(mu'(s', z') + clip(eps, -c, c))``, ``eps ~ N(0, policy_noise^2)`` (in
half-ranges), ``y = r + gamma (1 - terminated) min(Q1', Q2')``; every ``policy_delay``-th step
the actor ascends ``Q1(s, mu(s))`` and the targets move by Polyak averaging
(:func:`~metarl.offpolicy.soft_update`, ``tau``).

*History of a sampled transition:* the buffer is a ring per task whose slots hold the task's
steps in the order they were played (slot-major within a rollout), so the history of the
transition in slot ``j`` is read off slots ``j-H .. j-1`` (those written before it, newest
last; none older than the ring's oldest entry): nothing but the transitions is stored. Its next
step's history is that window shifted by the transition itself. (The exploring actor starts
each rollout from the task's newest ``H`` buffered steps, the same kind of history.)

**Adaptation** (the paper's section 3.3), per test task, all ``N`` at once. ``adapt(params,
episodes)`` takes ``adapt_steps`` TD3 steps from the current per-task weights (the meta-trained
ones at first) on

* (a) the task's new transitions (the episodes, with the history the params carried), and
* (b) ``adapt_buffer_size`` transitions kept from the meta-training buffers (a uniform
  subsample, saved with the weights), each weighted by the propensity score
  ``beta(x) = p(new | x) / p(train | x)`` of a logistic classifier fitted (class-balanced,
  L2 ``1 / propensity_c``, ``propensity_steps`` Newton steps) to tell the task's transitions
  from the kept ones, clipped to ``[0, beta_clip]``. Its features ``x`` are the meta-trained
  actor's history embedding ``z_a`` next to the raw transition ``(obs, action, reward)``;

plus the proximal term ``lambda (1 - ESS) ||theta - theta_meta||^2`` (actor and critic alike),
``ESS = (sum beta)^2 / (M sum beta^2)`` the normalised effective sample size of the weights: a
new task unlike the training tasks (few kept transitions carry weight, ESS small) stays close
to the meta-trained weights, one like them leans on the re-weighted data. This is the paper's
form (eq. 18, ``(1 - ESS) lambda``). The returned params hold the adapted weights and the
task's newest ``H`` steps, the history the next rollout starts from.

Adaptation's optimisers and target networks start afresh at each call (targets = the weights
given), and its noise comes from a generator seeded 0 at each call: ``adapt`` is deterministic.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metarl.algos.base import TensorInfo, probe_env, read_context
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.buffers import TaskReplayBuffer
from metarl.checkpoint import FORMAT_VERSION, load_params, save_params
from metarl.config import check, from_mapping, to_dict
from metarl.logging import MetricLogger, NullLogger
from metarl.offpolicy import soft_update, td_target
from metarl.policies import Params
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, run_loop

HISTORY_KEYS = ("hist_obs", "hist_act", "hist_rew", "hist_valid")
"""The history a learner's params carry per task: ``[N, H, obs_dim]``, ``[N, H, action_dim]``,
``[N, H]``, ``[N, H]`` (1.0 on real steps; left-padded, newest last)."""

ADAPT_KEYS = ("obs", "act", "rew", "next_obs", "term", "hist_obs", "hist_act", "hist_rew",
              "hist_valid")
"""The kept meta-training transitions (``adapt.<key>`` in the weights file), ``[M, ...]``."""


@dataclass(frozen=True)
class MQLConfig:
    """Meta-Q-learning hyperparameters (``algo.mql`` in params.yaml).

    The TD3 constants are the paper's code's (lr, batch, tau, noise, delay, discount); the
    networks are smaller than its ``(300, 300)`` so that a CPU run is practical.
    """

    hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden widths of the actor and of each critic (the paper: 300, 300; smaller for CPU)."""
    context_hidden: int = 30
    """Width of each GRU context ``z`` (the paper: 30)."""
    history_length: int = 10
    """Transitions of the task the context reads, ``H`` (the paper: 10 to 25)."""
    lr: float = 3e-4
    """Adam's learning rate, actor and critic, meta-training."""
    batch_size: int = 256
    """Transitions per meta-training step, split evenly over the ``meta_batch_size`` tasks."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    discount: float = 0.99
    """Discount gamma."""
    policy_noise: float = 0.2
    """Target policy smoothing noise, standard deviation in half action ranges."""
    noise_clip: float = 0.5
    """Target smoothing noise clipped to ``±noise_clip`` half-ranges."""
    policy_delay: int = 2
    """Critic steps per actor (and target) step."""
    explore_noise: float = 0.1
    """Exploration noise of :meth:`MQLLearner.explore`, standard deviation in half-ranges."""
    meta_batch_size: int = 10
    """Tasks played per iteration, and tasks per gradient step."""
    episodes_per_task: int = 1
    """Episodes played per task per iteration."""
    updates_per_iteration: int = 100
    """TD3 (critic) steps per iteration."""
    random_iterations: int = 2
    """First iterations that act uniformly at random (TD3's warm-up)."""
    buffer_size: int = 20_000
    """Transitions kept per training task."""
    adapt_buffer_size: int = 5000
    """Meta-training transitions kept (and saved) for re-weighting at adaptation."""
    adapt_steps: int = 50
    """TD3 steps per :meth:`MQLLearner.adapt` call."""
    adapt_batch_size: int = 64
    """Per task and step: new-task transitions, and as many re-weighted kept ones."""
    adapt_lr: float = 3e-4
    """Adam's learning rate in adaptation."""
    propensity_steps: int = 20
    """Newton steps of the logistic propensity classifier."""
    propensity_c: float = 0.5
    """Inverse L2 strength ``C`` of the classifier (scikit-learn's convention)."""
    beta_clip: float = 1.2
    """Propensity weights are clipped to ``[0, beta_clip]``."""
    prox_lambda: float = 0.1
    """Weight ``lambda`` of the proximal term ``lambda (1 - ESS) ||theta - theta_meta||^2``."""
    serve_adapt_min_steps: int = 20
    """A served context of at least this many steps is also adapted on (shorter ones only
    give the history)."""

    def __post_init__(self) -> None:
        check(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
              "hidden_sizes", self.hidden_sizes, "need at least one layer of width >= 1")
        for name in ("context_hidden", "history_length", "batch_size", "policy_delay",
                     "meta_batch_size", "episodes_per_task", "buffer_size", "adapt_batch_size",
                     "propensity_steps"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("updates_per_iteration", "random_iterations", "adapt_buffer_size",
                     "adapt_steps", "serve_adapt_min_steps"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        for name in ("lr", "adapt_lr", "propensity_c", "beta_clip"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        for name in ("policy_noise", "noise_clip", "explore_noise", "prox_lambda"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check(0 < self.tau <= 1, "tau", self.tau, "must be in (0, 1]")
        check(0 < self.discount <= 1, "discount", self.discount, "must be in (0, 1]")


# --------------------------------------------------------------------------------------------
# The functional networks: parameters [N, ...], inputs [N, B, ...]
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """Sizes and action bounds of the networks."""

    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    hidden_sizes: tuple[int, ...]
    context_hidden: int
    history_length: int

    @property
    def step_dim(self) -> int:
        """Width of one history step: obs, normalised action, reward."""
        return self.obs_dim + self.action_dim + 1

    def bounds(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(mid, half)`` of the action box, ``[action_dim]`` each."""
        low = torch.tensor(self.action_low, device=device)
        high = torch.tensor(self.action_high, device=device)
        return (high + low) / 2, (high - low) / 2


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def _mlp_params(prefix: str, sizes: list[int], generator: torch.Generator) -> Params:
    out = {}
    for j, (a, b) in enumerate(itertools.pairwise(sizes)):
        out[f"{prefix}_l{j}_w"] = _uniform((a, b), a ** -0.5, generator)  # [in, out]
        out[f"{prefix}_l{j}_b"] = _uniform((b,), a ** -0.5, generator)
    return out


def _gru_params(prefix: str, in_dim: int, hidden: int, generator: torch.Generator) -> Params:
    bound = hidden ** -0.5
    return {f"{prefix}_gru_wi": _uniform((in_dim, 3 * hidden), bound, generator),
            f"{prefix}_gru_wh": _uniform((hidden, 3 * hidden), bound, generator),
            f"{prefix}_gru_bi": _uniform((3 * hidden,), bound, generator),
            f"{prefix}_gru_bh": _uniform((3 * hidden,), bound, generator)}


def init_params(spec: Spec, generator: torch.Generator) -> Params:
    """Fresh weights, no task dim: keys ``actor_*`` and ``critic_*`` (PyTorch's init ranges)."""
    hidden, c = list(spec.hidden_sizes), spec.context_hidden
    params = _gru_params("actor", spec.step_dim, c, generator)
    params.update(_mlp_params("actor", [spec.obs_dim + c, *hidden, spec.action_dim], generator))
    params.update(_gru_params("critic", spec.step_dim, c, generator))
    for q in ("q1", "q2"):
        params.update(_mlp_params(f"critic_{q}", [spec.obs_dim + spec.action_dim + c, *hidden,
                                                  1], generator))
    return params


def split(params: Params, prefix: str) -> Params:
    """The ``actor`` or ``critic`` part of ``params``."""
    return {k: v for k, v in params.items() if k.startswith(prefix + "_")}


def _mlp(params: Params, prefix: str, x: torch.Tensor, layers: int) -> torch.Tensor:
    """``x [N, B, in]`` through the ReLU MLP ``prefix`` (weights ``[N, in, out]``)."""
    for j in range(layers):
        x = torch.baddbmm(params[f"{prefix}_l{j}_b"].unsqueeze(1), x, params[f"{prefix}_l{j}_w"])
        if j < layers - 1:
            x = torch.relu(x)
    return x


def encode(params: Params, prefix: str, window: dict[str, torch.Tensor], spec: Spec
           ) -> torch.Tensor:
    """The GRU context ``z [N, B, context_hidden]`` of a history window.

    ``window``: ``obs [N, B, H, D]``, ``act [N, B, H, A]`` (env units), ``rew [N, B, H]``,
    ``valid [N, B, H]``; padding steps leave the state as it is.
    """
    mid, half = spec.bounds(window["obs"].device)
    x = torch.cat([window["obs"], (window["act"] - mid) / half, window["rew"].unsqueeze(-1)], -1)
    n, b, steps, _ = x.shape
    wi, wh = params[f"{prefix}_gru_wi"], params[f"{prefix}_gru_wh"]
    bi, bh = params[f"{prefix}_gru_bi"].unsqueeze(1), params[f"{prefix}_gru_bh"].unsqueeze(1)
    c = spec.context_hidden
    h = x.new_zeros(n, b, c)
    gi_all = torch.baddbmm(bi, x.reshape(n, b * steps, -1), wi).reshape(n, b, steps, 3 * c)
    for t in range(steps):
        gi, gh = gi_all[:, :, t], torch.baddbmm(bh, h, wh)
        r = torch.sigmoid(gi[..., :c] + gh[..., :c])
        u = torch.sigmoid(gi[..., c:2 * c] + gh[..., c:2 * c])
        cand = torch.tanh(gi[..., 2 * c:] + r * gh[..., 2 * c:])
        new = (1 - u) * cand + u * h
        h = torch.where(window["valid"][:, :, t].unsqueeze(-1), new, h)
    return h


def actor_forward(params: Params, obs: torch.Tensor, z: torch.Tensor, spec: Spec
                  ) -> torch.Tensor:
    """``mu(s, z)``: actions ``[N, B, A]`` in the action box."""
    mid, half = spec.bounds(obs.device)
    out = _mlp(params, "actor", torch.cat([obs, z], -1), len(spec.hidden_sizes) + 1)
    return mid + half * torch.tanh(out)


def critic_forward(params: Params, obs: torch.Tensor, action: torch.Tensor, z: torch.Tensor,
                   spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q1, Q2)(s, a, z)``, ``[N, B]`` each."""
    mid, half = spec.bounds(obs.device)
    x = torch.cat([obs, (action - mid) / half, z], -1)
    layers = len(spec.hidden_sizes) + 1
    return (_mlp(params, "critic_q1", x, layers).squeeze(-1),
            _mlp(params, "critic_q2", x, layers).squeeze(-1))


def shift_in(window: dict[str, torch.Tensor], obs: torch.Tensor, act: torch.Tensor,
             rew: torch.Tensor, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The window after one more step ``(obs, act, rew)`` (oldest dropped, newest last).

    ``keep`` (bool, the window's leading shape): where True the window stays as it is.
    """
    new = {"obs": torch.cat([window["obs"][..., 1:, :], obs.unsqueeze(-2)], -2),
           "act": torch.cat([window["act"][..., 1:, :], act.unsqueeze(-2)], -2),
           "rew": torch.cat([window["rew"][..., 1:], rew.unsqueeze(-1)], -1),
           "valid": torch.cat([window["valid"][..., 1:],
                               torch.ones_like(window["valid"][..., :1])], -1)}
    if keep is None:
        return new
    out = {}
    for k, v in new.items():
        mask = keep.reshape(*keep.shape, *([1] * (v.dim() - keep.dim())))
        out[k] = torch.where(mask, window[k], v)
    return out


def empty_window(lead: tuple[int, ...], spec: Spec, device: torch.device | str = "cpu"
                 ) -> dict[str, torch.Tensor]:
    """A window with no step yet."""
    h = spec.history_length
    return {"obs": torch.zeros(*lead, h, spec.obs_dim, device=device),
            "act": torch.zeros(*lead, h, spec.action_dim, device=device),
            "rew": torch.zeros(*lead, h, device=device),
            "valid": torch.zeros(*lead, h, dtype=torch.bool, device=device)}


# --------------------------------------------------------------------------------------------
# TD3
# --------------------------------------------------------------------------------------------

def smoothed_target(target: Params, batch: dict[str, Any], spec: Spec, policy_noise: float,
                    noise_clip: float, discount: float, generator: torch.Generator
                    ) -> torch.Tensor:
    """TD3's target ``r + gamma (1 - terminated) min(Q1', Q2')(s', clip(mu'(s') + eps))``.

    ``eps = clip(N(0, policy_noise^2), -noise_clip, noise_clip)`` half-ranges, drawn from
    ``generator``; ``[N, B]``, no gradient.
    """
    with torch.no_grad():
        nxt = batch["next_win"]
        mid, half = spec.bounds(batch["obs"].device)
        a_next = actor_forward(target, batch["next_obs"], encode(target, "actor", nxt, spec),
                               spec)
        eps = torch.randn(a_next.shape, generator=generator, device=a_next.device)
        noise = (eps * policy_noise).clamp(-noise_clip, noise_clip) * half
        a_next = torch.maximum(torch.minimum(a_next + noise, mid + half), mid - half)
        q1, q2 = critic_forward(target, batch["next_obs"], a_next,
                                encode(target, "critic", nxt, spec), spec)
        return td_target(batch["rew"], torch.minimum(q1, q2), batch["term"], discount)


def critic_loss(params: Params, batch: dict[str, Any], y: torch.Tensor, spec: Spec,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task ``mean_b w (Q1 - y)^2 + w (Q2 - y)^2``, ``[N]``."""
    q1, q2 = critic_forward(params, batch["obs"], batch["act"],
                            encode(params, "critic", batch["win"], spec), spec)
    err = (q1 - y).square() + (q2 - y).square()
    return (err if weights is None else weights * err).mean(-1)


def actor_loss(actor: Params, critic: Params, batch: dict[str, Any], spec: Spec,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task ``-mean_b w Q1(s, mu(s))`` (the critic held fixed), ``[N]``."""
    critic = {k: v.detach() for k, v in critic.items()}
    a = actor_forward(actor, batch["obs"], encode(actor, "actor", batch["win"], spec), spec)
    q1, _ = critic_forward(critic, batch["obs"], a, encode(critic, "critic", batch["win"], spec),
                           spec)
    return -(q1 if weights is None else weights * q1).mean(-1)


class ParamSet(nn.Module):
    """A params dict as an ``nn.Module`` (for Adam and :func:`~metarl.offpolicy.soft_update`)."""

    def __init__(self, params: Params) -> None:
        super().__init__()
        self.p = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in
                                   params.items()})

    def params(self) -> Params:
        """The parameters by name (the module's own tensors)."""
        return dict(self.p.items())


class TD3Nets:
    """Actor, critic, their targets and optimisers: one TD3 learner (shared or per task).

    Args:
        params: initial weights (``actor_*`` and ``critic_*``), with or without a task dim.
        lr: Adam's learning rate.

    """

    def __init__(self, params: Params, lr: float) -> None:
        self.actor, self.critic = ParamSet(split(params, "actor")), ParamSet(split(params,
                                                                                  "critic"))
        self.actor_target = ParamSet(split(params, "actor"))
        self.critic_target = ParamSet(split(params, "critic"))
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.updates = 0
        """Critic steps taken (the actor steps on every ``policy_delay``-th)."""

    def weights(self) -> Params:
        """Actor and critic weights, detached copies."""
        return {k: v.detach().clone() for k, v in {**self.actor.params(),
                                                   **self.critic.params()}.items()}

    def targets(self) -> Params:
        """The target networks' weights (the same tensors)."""
        return {**self.actor_target.params(), **self.critic_target.params()}

    def state(self) -> State:
        """Weights, targets, optimiser moments and the step count."""
        return {"weights": self.weights(),
                "targets": {k: v.detach().clone() for k, v in self.targets().items()},
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "updates": self.updates}

    def load_state(self, state: State) -> None:
        """Continue from :meth:`state` (nets of the same shapes)."""
        with torch.no_grad():
            for k, v in {**self.actor.params(), **self.critic.params()}.items():
                v.copy_(state["weights"][k])
            for k, v in self.targets().items():
                v.copy_(state["targets"][k])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.updates = int(state["updates"])

    def step(self, parts: list[tuple[dict[str, Any], torch.Tensor | None]], spec: Spec,
             config: MQLConfig, generator: torch.Generator, view: Any = None,
             prox: tuple[Params, torch.Tensor] | None = None) -> tuple[float, float | None]:
        """One TD3 critic step (and, every ``policy_delay``-th, an actor and target step).

        Args:
            parts: batches ``[N, B, ...]`` with optional per-transition weights ``[N, B]``;
                each part's per-task loss is added.
            spec: network sizes.
            config: TD3 constants.
            generator: the target smoothing noise.
            view: maps the weights to per-task ones (meta-training broadcasts the shared
                weights over the batch's tasks); None: they are per task already.
            prox: ``(theta_meta, coef [N])``: adds ``coef_i ||theta_i - theta_meta||^2``.

        Returns:
            ``(critic loss, actor loss or None)``, means over tasks.

        """
        view = view or (lambda p: p)
        targets = view(self.targets())
        ys = [smoothed_target(targets, batch, spec, config.policy_noise, config.noise_clip,
                              config.discount, generator) for batch, _ in parts]
        critic = self.critic.params()
        loss = sum(critic_loss(view(critic), batch, y, spec, w)
                   for (batch, w), y in zip(parts, ys, strict=True))
        assert isinstance(loss, torch.Tensor)
        if prox is not None:
            loss = loss + _prox(critic, prox)
        self.critic_opt.zero_grad()
        loss.sum().backward()
        self.critic_opt.step()
        self.updates += 1
        c_loss = float(loss.detach().mean())
        if self.updates % config.policy_delay:
            return c_loss, None
        actor = self.actor.params()
        a_loss = sum(actor_loss(view(actor), view(critic), batch, spec, w) for batch, w in parts)
        assert isinstance(a_loss, torch.Tensor)
        if prox is not None:
            a_loss = a_loss + _prox(actor, prox)
        self.actor_opt.zero_grad()
        a_loss.sum().backward()
        self.actor_opt.step()
        soft_update(self.actor_target, self.actor, config.tau)
        soft_update(self.critic_target, self.critic, config.tau)
        return c_loss, float(a_loss.detach().mean())


def _prox(params: Params, prox: tuple[Params, torch.Tensor]) -> torch.Tensor:
    """``coef_i * sum ||theta_i - theta_meta||^2`` per task ``[N]``."""
    meta, coef = prox
    sq = sum((v - meta[k]).square().reshape(v.shape[0], -1).sum(-1) for k, v in params.items())
    assert isinstance(sq, torch.Tensor)
    return coef * sq


def broadcast(params: Params, num_tasks: int) -> Params:
    """Shared weights as per-task ones (views: gradients flow back to the shared tensors)."""
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


# --------------------------------------------------------------------------------------------
# Propensity scores
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Propensity:
    """A fitted per-task logistic classifier new (1) vs meta-training (0).

    ``weight [N, F + 1]`` (bias last) on features standardised by ``mean``, ``std`` ``[F]``.
    """

    weight: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(new|x) / p(train|x)`` of features ``x [N, M, F]`` (or shared ``[M, F]``)."""
        z = (x - self.mean) / self.std
        w = self.weight
        if z.dim() == 2:
            return w[:, :-1] @ z.T + w[:, -1:]
        return (z * w[:, None, :-1]).sum(-1) + w[:, -1:]

    def beta(self, x: torch.Tensor, clip: float) -> torch.Tensor:
        """``p(new|x) / p(train|x)`` clipped to ``[0, clip]``, ``[N, M]``."""
        return self.logits(x).clamp(max=math.log(clip)).exp()


def fit_propensity(new: torch.Tensor, new_mask: torch.Tensor, train: torch.Tensor, c: float,
                   steps: int) -> Propensity:
    """Fit, per task, L2-regularised logistic regression of new ``[N, P, F]`` vs train ``[M, F]``.

    Class-balanced (each class half the total weight, so the odds estimate the density ratio
    ``p_new(x) / p_train(x)``), scikit-learn's objective ``C sum_i s_i loss_i + |w|^2 / 2`` (no
    penalty on the bias), minimised by ``steps`` Newton steps with a step-halving line search,
    every task at once. ``new_mask [N, P]`` marks real rows.
    """
    n, p, f = new.shape
    m = train.shape[0]
    mask = new_mask.float()
    pooled = torch.cat([train, new.reshape(-1, f)[mask.reshape(-1) > 0]])
    mean, std = pooled.mean(0), pooled.std(0, unbiased=False).clamp(min=1e-6)
    ones = new.new_ones(1)
    x = torch.cat([((new - mean) / std), ((train - mean) / std).expand(n, m, f)], 1)
    x = torch.cat([x, ones.expand(n, p + m, 1)], -1)  # [N, P+M, F+1]
    y = torch.cat([torch.ones(n, p), torch.zeros(n, m)], 1).to(x)
    n_new = mask.sum(1, keepdim=True).clamp(min=1)
    total = n_new + m
    s = torch.cat([mask * total / (2 * n_new), torch.full((n, m), 1.0).to(x) * total / (2 * m)],
                  1)
    reg = torch.ones(f + 1).to(x)
    reg[-1] = 0.0

    def objective(w: torch.Tensor) -> torch.Tensor:
        logit = (x * w.unsqueeze(1)).sum(-1)
        loss = torch.nn.functional.softplus(logit) - y * logit
        return c * (s * loss).sum(1) + 0.5 * (reg * w.square()).sum(1)

    w = x.new_zeros(n, f + 1)
    scales = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0625, 0.0]).to(x)
    for _ in range(steps):
        prob = torch.sigmoid((x * w.unsqueeze(1)).sum(-1))
        grad = c * torch.einsum("npf,np->nf", x, s * (prob - y)) + reg * w
        hess = c * torch.einsum("npf,np,npg->nfg", x, s * prob * (1 - prob), x)
        hess = hess + torch.diag_embed(reg + 1e-6)
        delta = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        cands = w.unsqueeze(0) - scales[:, None, None] * delta.unsqueeze(0)  # [S, N, F+1]
        values = torch.stack([objective(cand) for cand in cands])  # [S, N]
        best = values.argmin(0)
        w = cands[best, torch.arange(n)]
    return Propensity(w, mean, std)


def effective_sample_size(beta: torch.Tensor) -> torch.Tensor:
    """Normalised ESS ``(sum beta)^2 / (M sum beta^2)`` over the last dim, in ``(0, 1]``.

    1 for uniform weights; near ``1/M`` when one weight dominates; 0 where all are 0.
    """
    m = beta.shape[-1]
    return beta.sum(-1).square() / (m * beta.square().sum(-1)).clamp(min=1e-30)


# --------------------------------------------------------------------------------------------
# The learner
# --------------------------------------------------------------------------------------------

def _to_window(params: Params) -> dict[str, torch.Tensor]:
    """The history of params (``[N, H, ...]``) as a window."""
    return {"obs": params["hist_obs"], "act": params["hist_act"], "rew": params["hist_rew"],
            "valid": params["hist_valid"] > 0.5}


class MQLAct:
    """The acting function of per-task weights, with a running history per (task, slot).

    Each slot starts from its task's history in ``params`` and, told each step's reward by the
    sampler (:meth:`observe`), pushes ``(obs, action, reward)`` into it; a slot whose episode
    ended keeps its history. Actions are the actor's plus (``noise > 0``) Gaussian noise of
    ``noise`` half-ranges, clipped to the action box.
    """

    def __init__(self, params: Params, spec: Spec, noise: float = 0.0) -> None:
        self.params, self.spec, self.noise = params, spec, noise
        self.window: dict[str, torch.Tensor] | None = None
        self.finished: torch.Tensor | None = None
        self.obs: torch.Tensor | None = None
        self.actions: torch.Tensor | None = None

    def __call__(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Actions ``[N, E, A]`` for ``obs [N, E, obs_dim]``."""
        n, e = obs.shape[:2]
        if self.window is None:
            self.window = {k: v.to(obs.device).unsqueeze(1).expand(n, e, *v.shape[1:]).clone()
                           for k, v in _to_window(self.params).items()}
            self.finished = torch.zeros(n, e, dtype=torch.bool, device=obs.device)
        weights = {k: v.to(obs.device) for k, v in self.params.items()
                   if k not in HISTORY_KEYS}
        with torch.no_grad():
            z = encode(weights, "actor", self.window, self.spec)
            actions = actor_forward(weights, obs.float(), z, self.spec)
            if self.noise > 0:
                mid, half = self.spec.bounds(obs.device)
                eps = torch.randn(actions.shape, generator=generator, device=obs.device)
                actions = torch.maximum(torch.minimum(actions + eps * self.noise * half,
                                                      mid + half), mid - half)
        self.obs, self.actions = obs.float(), actions
        return actions

    def observe(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """The step's rewards ``[N, E]`` and episode ends."""
        assert self.window is not None and self.finished is not None
        assert self.obs is not None and self.actions is not None
        self.window = shift_in(self.window, self.obs, self.actions, reward.float(),
                               keep=self.finished)
        self.finished = self.finished | done.bool()


def _gather_time(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [N, S, ...]`` at positions ``idx [N, ...]`` of dim 1 (any index shape)."""
    n = x.shape[0]
    flat = idx.reshape(n, -1)
    out = x[torch.arange(n, device=x.device).unsqueeze(1), flat]
    return out.reshape(*idx.shape, *x.shape[2:])


def stream_windows(stream: dict[str, torch.Tensor], positions: torch.Tensor, history: int
                   ) -> dict[str, torch.Tensor]:
    """Windows of the ``history`` steps before ``positions [N, B]`` of compact streams.

    ``stream``: ``obs [N, S, D]``, ``act [N, S, A]``, ``rew [N, S]`` whose real steps come
    first (positions below 0 are padding).
    """
    ks = torch.arange(history, 0, -1, device=positions.device)
    idx = positions.unsqueeze(-1) - ks  # [N, B, H]
    valid = idx >= 0
    safe = idx.clamp(min=0)
    out = {k: _gather_time(stream[k], safe) for k in ("obs", "act", "rew")}
    out = {k: torch.where(valid.reshape(*valid.shape, *([1] * (v.dim() - 3))), v,
                          torch.zeros_like(v)) for k, v in out.items()}
    out["valid"] = valid
    return out


class MQLLearner:
    """Meta-trained MQL weights on the :class:`~metarl.algos.base.MetaLearner` contract.

    Args:
        theta: the meta-trained weights (no task dim).
        spec: network sizes and action bounds.
        config: adaptation hyperparameters.
        kept: the kept meta-training transitions (:data:`ADAPT_KEYS`, ``[M, ...]``).

    """

    def __init__(self, theta: Params, spec: Spec, config: MQLConfig,
                 kept: dict[str, torch.Tensor]) -> None:
        self.theta, self.spec, self.config, self.kept = theta, spec, config, kept

    def initial_params(self, num_tasks: int) -> Params:
        """The meta-trained weights broadcast over tasks, and an empty history."""
        h, s = self.spec.history_length, self.spec
        return {**broadcast(self.theta, num_tasks),
                "hist_obs": torch.zeros(num_tasks, h, s.obs_dim),
                "hist_act": torch.zeros(num_tasks, h, s.action_dim),
                "hist_rew": torch.zeros(num_tasks, h), "hist_valid": torch.zeros(num_tasks, h)}

    def explore(self, params: Params) -> MQLAct:
        """The actor with exploration noise (``explore_noise`` half-ranges)."""
        return MQLAct(params, self.spec, self.config.explore_noise)

    def act(self, params: Params) -> MQLAct:
        """The deterministic actor."""
        return MQLAct(params, self.spec, 0.0)

    def _kept_features(self, device: torch.device) -> torch.Tensor:
        kept = {k: v.to(device) for k, v in self.kept.items()}
        window = {"obs": kept["hist_obs"][None], "act": kept["hist_act"][None],
                  "rew": kept["hist_rew"][None], "valid": kept["hist_valid"][None] > 0.5}
        theta = broadcast({k: v.to(device) for k, v in self.theta.items()}, 1)
        return self._features(theta, window, kept["obs"][None], kept["act"][None],
                              kept["rew"][None])[0]

    def _features(self, theta: Params, window: dict[str, torch.Tensor], obs: torch.Tensor,
                  act: torch.Tensor, rew: torch.Tensor) -> torch.Tensor:
        """Propensity features: the meta actor's ``z`` and the raw transition, ``[N, B, F]``."""
        mid, half = self.spec.bounds(obs.device)
        with torch.no_grad():
            z = encode(theta, "actor", window, self.spec)
        return torch.cat([z, obs, (act - mid) / half, rew.unsqueeze(-1)], -1)

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """``adapt_steps`` propensity-weighted TD3 steps per task on ``episodes``.

        See the module docstring; returns the adapted weights and the task's newest history.
        """
        return self._adapt(params, episodes, self.config.adapt_steps)

    def _adapt(self, params: Params, episodes: EpisodeBatch, steps: int) -> Params:
        spec = self.spec
        device = episodes.obs.device
        params = {k: v.to(device) for k, v in params.items()}
        n, e, t = episodes.mask.shape
        hist = _to_window(params)
        h = spec.history_length
        # The task's stream: the carried history, then every real step of the episodes.
        valid = torch.cat([hist["valid"], episodes.mask.reshape(n, e * t) > 0.5], 1)
        order = torch.sort((~valid).int(), dim=1, stable=True).indices
        raw = {"obs": torch.cat([hist["obs"], episodes.obs.reshape(n, e * t, -1)], 1),
               "act": torch.cat([hist["act"], episodes.actions.reshape(n, e * t, -1).float()], 1),
               "rew": torch.cat([hist["rew"], episodes.rewards.reshape(n, e * t)], 1),
               "next_obs": torch.cat([hist["obs"], episodes.next_obs.reshape(n, e * t, -1)], 1),
               "term": torch.cat([torch.zeros(n, h, dtype=torch.bool, device=device),
                                  episodes.terminated.reshape(n, e * t)], 1)}
        stream = {k: _gather_time(v, order) for k, v in raw.items()}
        first = hist["valid"].sum(1)  # the first new step's position
        length = valid.sum(1)
        count = (length - first).clamp(min=1)
        new_history = stream_windows(stream, length.unsqueeze(1), h)
        theta = {k: v.to(device) for k, v in self.theta.items()}
        weights = {k: v for k, v in params.items() if k not in HISTORY_KEYS}
        if steps > 0:
            weights = self._adapt_weights(weights, theta, stream, first, count, steps)
        out = dict(weights)
        out.update({"hist_obs": new_history["obs"][:, 0], "hist_act": new_history["act"][:, 0],
                    "hist_rew": new_history["rew"][:, 0],
                    "hist_valid": new_history["valid"][:, 0].float()})
        return out

    def _adapt_weights(self, weights: Params, theta: Params, stream: dict[str, torch.Tensor],
                       first: torch.Tensor, count: torch.Tensor, steps: int) -> Params:
        cfg, spec = self.config, self.spec
        device = first.device
        n, h = first.shape[0], spec.history_length
        gen = torch.Generator(device=device).manual_seed(0)

        def new_batch(positions: torch.Tensor) -> dict[str, Any]:
            win = stream_windows(stream, positions, h)
            b: dict[str, Any] = {k: _gather_time(stream[k], positions) for k in
                                 ("obs", "act", "rew", "next_obs", "term")}
            b["win"] = win
            b["next_win"] = shift_in(win, b["obs"], b["act"], b["rew"])
            return b

        m = int(self.kept["rew"].shape[0]) if self.kept else 0
        kept = {k: v.to(device) for k, v in self.kept.items()}
        coef = torch.full((n,), cfg.prox_lambda, device=device)
        beta: torch.Tensor | None = None
        theta_n = broadcast(theta, n)
        if m > 0:
            span = int(count.max())
            positions = first.unsqueeze(1) + torch.arange(span, device=device)
            mask = torch.arange(span, device=device) < count.unsqueeze(1)
            positions = torch.minimum(positions, (first + count - 1).unsqueeze(1))
            b = new_batch(positions)
            feats_new = self._features(theta_n, b["win"], b["obs"], b["act"], b["rew"])
            feats_kept = self._kept_features(device)
            prop = fit_propensity(feats_new, mask, feats_kept, cfg.propensity_c,
                                  cfg.propensity_steps)
            beta = prop.beta(feats_kept, cfg.beta_clip)  # [N, M]
            coef = cfg.prox_lambda * (1 - effective_sample_size(beta))
        nets = TD3Nets(weights, cfg.adapt_lr)
        meta = {k: v.detach() for k, v in theta_n.items()}
        for _ in range(steps):
            u = torch.rand(n, cfg.adapt_batch_size, generator=gen, device=device)
            positions = first.unsqueeze(1) + (u * count.unsqueeze(1)).long().clamp(
                max=(count - 1).unsqueeze(1))
            parts: list[tuple[dict[str, Any], torch.Tensor | None]] = [(new_batch(positions),
                                                                        None)]
            if beta is not None:
                j = (torch.rand(n, cfg.adapt_batch_size, generator=gen, device=device)
                     * m).long().clamp(max=m - 1)
                kb = {k: v[j] for k, v in kept.items()}
                win = {"obs": kb["hist_obs"], "act": kb["hist_act"], "rew": kb["hist_rew"],
                       "valid": kb["hist_valid"] > 0.5}
                part = {"obs": kb["obs"], "act": kb["act"], "rew": kb["rew"],
                        "next_obs": kb["next_obs"], "term": kb["term"] > 0.5, "win": win,
                        "next_win": shift_in(win, kb["obs"], kb["act"], kb["rew"])}
                parts.append((part, beta.gather(1, j)))
            nets.step(parts, spec, cfg, gen, prox=(meta, coef))
        return nets.weights()

    # ---- serving ------------------------------------------------------------------------

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """``obs float32 [-1, obs_dim]`` → ``action float32 [-1, action_dim]``."""
        s = self.spec
        return ([("obs", "float32", (-1, s.obs_dim))],
                [("action", "float32", (-1, s.action_dim))])

    def serve(self, inputs: dict[str, Any]) -> np.ndarray:
        """Deterministic actions per observation row, with the context's history.

        The :data:`~metarl.algos.base.CONTEXT` gives the history (its newest
        ``history_length`` steps); one of at least ``serve_adapt_min_steps`` steps is also
        adapted on as :meth:`adapt` does. No context: the meta-trained actor, empty history.
        """
        s = self.spec
        obs = torch.as_tensor(np.asarray(inputs["obs"], dtype=np.float32)).reshape(-1, s.obs_dim)
        ctx = read_context(inputs, s.obs_dim, s.action_dim)
        params = self.initial_params(1)
        if ctx.steps:
            adapting = ctx.steps >= self.config.serve_adapt_min_steps
            params = self._adapt(params, ctx.episodes(),
                                 self.config.adapt_steps if adapting else 0)
        act = self.act(params)
        actions = act(obs.unsqueeze(0), torch.Generator())
        return actions[0].numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Meta-training
# --------------------------------------------------------------------------------------------

def ring_windows(buffer: TaskReplayBuffer, rows: torch.Tensor, idx: torch.Tensor,
                 before: torch.Tensor, spec: Spec) -> dict[str, torch.Tensor]:
    """Histories from a task ring buffer: the ``H`` slots before ``idx [K, B]`` of ``rows``.

    ``before [K, B]``: how many of the task's stored steps precede each slot (older slots are
    not history).
    """
    h, cap = spec.history_length, buffer.capacity
    if not buffer.data:
        return empty_window(tuple(idx.shape), spec)
    ks = torch.arange(h, 0, -1)
    slots = (idx.unsqueeze(-1) - ks) % cap  # [K, B, H]
    valid = ks <= before.unsqueeze(-1)
    r = rows.reshape(-1, *([1] * (slots.dim() - 1)))
    out = {"obs": buffer.data["obs"][r, slots], "act": buffer.data["actions"][r, slots],
           "rew": buffer.data["rewards"][r, slots]}
    out = {k: torch.where(valid.reshape(*valid.shape, *([1] * (v.dim() - 3))), v,
                          torch.zeros_like(v)) for k, v in out.items()}
    out["valid"] = valid
    return out


def _age(buffer: TaskReplayBuffer, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Stored steps of the task before slot ``idx`` (stream order of the ring)."""
    size = buffer.size[rows].unsqueeze(-1)
    cursor = buffer.cursor[rows].unsqueeze(-1)
    return torch.where(size < buffer.capacity, idx, (idx - cursor) % buffer.capacity)


def buffer_batch(buffer: TaskReplayBuffer, rows: torch.Tensor, idx: torch.Tensor, spec: Spec
                 ) -> dict[str, Any]:
    """The transitions at slots ``idx [K, B]`` of ``rows [K]`` with their histories."""
    r = rows.unsqueeze(-1)
    d = buffer.data
    batch: dict[str, Any] = {"obs": d["obs"][r, idx], "act": d["actions"][r, idx],
                             "rew": d["rewards"][r, idx], "next_obs": d["next_obs"][r, idx],
                             "term": d["terminated"][r, idx]}
    batch["win"] = ring_windows(buffer, rows, idx, _age(buffer, rows, idx), spec)
    batch["next_win"] = shift_in(batch["win"], batch["obs"], batch["act"], batch["rew"])
    return batch


class MQL:
    """Meta-trains MQL's TD3 on a set of training tasks (see the module docstring).

    Args:
        family: the task family (continuous actions).
        train_set: the training tasks (one buffer row each).
        config: hyperparameters.
        seed: seeds the weights, rollouts, sampling and noise.

    """

    def __init__(self, family: TaskFamily, train_set: TaskSet, config: MQLConfig,
                 seed: int) -> None:
        env = probe_env(family)
        if env.discrete:
            raise ValueError("MQL needs continuous actions; this family's are discrete")
        self.family, self.tasks = family, list(train_set.tasks)
        self.config, self.seed = config, seed
        self.spec = Spec(env.obs_dim, env.action_dim, tuple(map(float, env.action_low)),
                         tuple(map(float, env.action_high)), tuple(config.hidden_sizes),
                         config.context_hidden, config.history_length)
        self.nets = TD3Nets(init_params(self.spec, torch.Generator().manual_seed(seed)),
                            config.lr)
        self.buffer = TaskReplayBuffer(len(self.tasks), config.buffer_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.iteration = 0
        self.env_steps = 0

    def training_state(self) -> State:
        """Networks, targets, optimisers, buffers, generators, counters."""
        return {"nets": self.nets.state(), "buffer": self.buffer.state(),
                "generator": self.generator.get_state(),
                "rng": dict(self.rng.bit_generator.state),
                "iteration": self.iteration, "env_steps": self.env_steps}

    def load_training_state(self, state: State) -> None:
        """Continue from :meth:`training_state` (an MQL of the same config, tasks and seed)."""
        self.nets.load_state(state["nets"])
        self.buffer.load_state(state["buffer"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])

    def _history_now(self, rows: torch.Tensor) -> Params:
        """Each row's newest ``H`` buffered steps, as a learner's history params."""
        cursor = self.buffer.cursor[rows].unsqueeze(1)
        win = ring_windows(self.buffer, rows, cursor, self.buffer.size[rows].unsqueeze(1),
                           self.spec)
        return {"hist_obs": win["obs"][:, 0], "hist_act": win["act"][:, 0],
                "hist_rew": win["rew"][:, 0], "hist_valid": win["valid"][:, 0].float()}

    def train_step(self) -> dict[str, float]:
        """One iteration: play the meta-batch, store it, take the TD3 steps; returns metrics."""
        cfg = self.config
        replace = cfg.meta_batch_size > len(self.tasks)
        rows = torch.as_tensor(self.rng.choice(len(self.tasks), size=cfg.meta_batch_size,
                                               replace=replace))
        env = self.family.make_env([self.tasks[i] for i in rows.tolist()],
                                   cfg.episodes_per_task)
        act = None
        if self.iteration >= cfg.random_iterations:
            params = {**broadcast(self.nets.weights(), len(rows)), **self._history_now(rows)}
            act = MQLAct(params, self.spec, cfg.explore_noise)
        batch = rollout(act, env, self.generator)
        self.buffer.add(batch.transitions(), tasks=rows)  # continuous: float actions
        self.env_steps += batch.num_steps
        c_losses, a_losses = [], []
        filled = (self.buffer.size > 0).nonzero().flatten()
        k = min(cfg.meta_batch_size, len(filled))
        per_task = max(1, cfg.batch_size // k)
        for _ in range(cfg.updates_per_iteration):
            pick = filled[torch.randperm(len(filled), generator=self.generator)[:k]]
            u = torch.rand(k, per_task, generator=self.generator)
            idx = (u * self.buffer.size[pick].unsqueeze(1)).long().clamp(
                max=self.buffer.capacity - 1)
            b = buffer_batch(self.buffer, pick, idx, self.spec)
            c_loss, a_loss = self.nets.step([(b, None)], self.spec, cfg, self.generator,
                                            view=lambda p, k=k: broadcast(p, k))
            c_losses.append(c_loss)
            if a_loss is not None:
                a_losses.append(a_loss)
        self.iteration += 1
        return {"train/critic_loss": float(np.mean(c_losses)) if c_losses else float("nan"),
                "train/actor_loss": float(np.mean(a_losses)) if a_losses else float("nan"),
                "train/return": float(batch.episode_returns.mean()),
                "train/env_steps": float(batch.num_steps)}  # this iteration's, as every learner

    def kept_transitions(self) -> dict[str, torch.Tensor]:
        """A uniform subsample of ``adapt_buffer_size`` stored transitions, with histories.

        Drawn with its own generator (seeded by the run's seed): the training's randomness is
        not touched, and the same buffers give the same subsample.
        """
        sizes = self.buffer.size
        total = int(sizes.sum())
        m = min(self.config.adapt_buffer_size, total)
        if m == 0:
            return {}
        gen = torch.Generator().manual_seed(self.seed + 1)
        flat = torch.randperm(total, generator=gen)[:m].sort().values
        ends = sizes.cumsum(0)
        rows = torch.searchsorted(ends, flat, right=True)
        idx = flat - (ends - sizes)[rows]
        b = buffer_batch(self.buffer, rows, idx.unsqueeze(1), self.spec)
        out = {"obs": b["obs"][:, 0], "act": b["act"][:, 0], "rew": b["rew"][:, 0],
               "next_obs": b["next_obs"][:, 0], "term": b["term"][:, 0].float()}
        win = b["win"]
        out.update({"hist_obs": win["obs"][:, 0], "hist_act": win["act"][:, 0],
                    "hist_rew": win["rew"][:, 0], "hist_valid": win["valid"][:, 0].float()})
        return out

    def learner(self) -> MQLLearner:
        """The meta-trained weights and the kept transitions as a learner."""
        return MQLLearner(self.nets.weights(), self.spec, self.config, self.kept_transitions())


def train_mql(family: TaskFamily, train_set: TaskSet, config: MQLConfig, num_iterations: int,
              seed: int, logger: MetricLogger | None = None, hook: Any = None,
              resume: Resume | None = None) -> MQL:
    """Meta-train for ``num_iterations``; same seed ⇒ identical weights (CPU), resumable.

    ``hook(iteration, learner)`` after each iteration; ``resume`` as for
    :func:`~metarl.training.run_loop` (a resumed run ends bit-identical).
    """
    logger = logger or NullLogger()
    mql = MQL(family, train_set, config, seed)

    def step(it: int) -> None:
        logger.log_metrics(mql.train_step(), step=it)
        if hook is not None:
            hook(it, mql.learner())

    run_loop(step, num_iterations, mql.training_state, mql.load_training_state, resume)
    return mql


# --------------------------------------------------------------------------------------------
# Checkpoints and the registry entry
# --------------------------------------------------------------------------------------------

def save_checkpoint(mql: MQL, weights_path: Path) -> dict[str, Any]:
    """Write the weights (``theta.*``) and kept transitions (``adapt.*``); return the config."""
    learner = mql.learner()
    tensors = {f"theta.{k}": v for k, v in learner.theta.items()}
    tensors.update({f"adapt.{k}": v for k, v in learner.kept.items()})
    save_params(tensors, weights_path)
    s = mql.spec
    return {"format_version": FORMAT_VERSION, "learner": "mql", "obs_dim": s.obs_dim,
            "action_dim": s.action_dim, "action_low": list(s.action_low),
            "action_high": list(s.action_high), "algo_config": to_dict(mql.config)}


def load_checkpoint(weights_path: Path, config: dict[str, Any]) -> MQLLearner:
    """The :class:`MQLLearner` of a checkpoint (weights only)."""
    missing = [k for k in ("obs_dim", "action_dim", "action_low", "action_high", "algo_config")
               if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; re-train to produce a full one")
    cfg = from_mapping(MQLConfig, config["algo_config"], "algo_config")
    spec = Spec(int(config["obs_dim"]), int(config["action_dim"]),
                tuple(float(v) for v in config["action_low"]),
                tuple(float(v) for v in config["action_high"]), tuple(cfg.hidden_sizes),
                cfg.context_hidden, cfg.history_length)
    tensors = load_params(weights_path)
    theta = {k[6:]: v for k, v in tensors.items() if k.startswith("theta.")}
    kept = {k[6:]: v for k, v in tensors.items() if k.startswith("adapt.")}
    expected = init_params(spec, torch.Generator().manual_seed(0))
    if set(theta) != set(expected) or any(theta[k].shape != v.shape for k, v in
                                          expected.items()):
        raise ValueError(f"{weights_path}: weights do not match the MQL architecture in its "
                         "config (obs_dim, action_dim, hidden_sizes, context_hidden)")
    if kept and set(kept) != set(ADAPT_KEYS):
        raise ValueError(f"{weights_path}: its adapt.* tensors are not {list(ADAPT_KEYS)}")
    return MQLLearner(theta, spec, cfg, kept)


def _train(config: MQLConfig, ctx: TrainContext) -> MQL:
    # Runs on the CPU whatever ctx.device says (small networks, batched over tasks).
    return train_mql(ctx.family, ctx.train_set, config, ctx.num_iterations, ctx.seed,
                     logger=ctx.logger, hook=ctx.hook, resume=ctx.resume)


register(Algorithm(
    name="mql", config_cls=MQLConfig, train=_train,  # type: ignore[arg-type]
    save=save_checkpoint, load=load_checkpoint,  # type: ignore[arg-type]
    episodes=lambda c, iters, trial: iters * c.meta_batch_size * c.episodes_per_task,
    search_space={"lr": "outer_lr"},
    batch_factors=lambda c, trial: (("algo.mql.meta_batch_size", c.meta_batch_size),
                                    ("algo.mql.episodes_per_task", c.episodes_per_task)),
    action_spaces=frozenset({"continuous"}),
    step_note="MQL's step k: adapt_steps propensity-weighted TD3 updates on rollout k's "
              "episodes, their last steps carried into the next rollout as the history.",
    summary="TD3 with a GRU context, multi-task meta-training, and adaptation on re-weighted "
            "meta-training data (Fakoor et al. 2020)"))
