"""The meta-learner contract and the policy-gradient adaptation rule it is built from.

One evaluator serves every algorithm through three calls (the idea taken from garage's
meta-RL API): ``explore(params)`` acts to collect adaptation data, ``adapt(params, episodes)``
returns adapted per-task parameters, ``act(params)`` acts after adaptation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.func import grad, vmap

from metarl.envs.base import BatchedEnv
from metarl.policies import ActFn, MLPPolicy, Params, act_fn, expand_params
from metarl.returns import advantages
from metarl.sampler import EpisodeBatch, episodes_from_steps
from metarl.tasks import TaskFamily

StepSize = float | Params

TensorInfo = tuple[str, str, tuple[int, ...]]
"""A named tensor of a served model: ``(name, numpy dtype, shape)``, ``-1`` for any size."""


CONTEXT = ("context_obs", "context_action", "context_reward", "context_done")
"""The served model's optional context: recent consecutive steps of the task at hand, each a
flat float list (``context_obs`` ``T × obs_dim`` values row-major, ``context_action`` ``T``
actions or ``T × action_dim`` values, ``context_reward`` and ``context_done`` ``T`` values, done
1.0 on a step that ended its episode). A served learner adapts on it, as on episodes, before
acting; without it the model acts as the meta-learned initialisation."""


@dataclass(frozen=True)
class Context:
    """:data:`CONTEXT` read into tensors.

    ``obs [T, D]``, ``actions [T]`` (long) or ``[T, A]``, ``rewards [T]``, ``dones [T]`` (bool).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor

    @property
    def steps(self) -> int:
        """``T``, the steps of context (0: none)."""
        return int(self.rewards.shape[0])

    def episodes(self) -> EpisodeBatch:
        """The context as episodes of one task (:func:`~metarl.sampler.episodes_from_steps`)."""
        return episodes_from_steps(self.obs, self.actions, self.rewards, self.dones)


def read_context(inputs: dict[str, Any], obs_dim: int, action_dim: int) -> Context:
    """The :data:`CONTEXT` of a served request (missing keys: no context).

    ``action_dim`` 0: discrete actions (integers). Raises ``ValueError`` naming the key whose
    length does not fit the others.
    """
    def flat(key: str) -> np.ndarray:
        value = inputs.get(key)
        return np.zeros(0) if value is None else np.asarray(value, dtype=np.float64).ravel()

    rewards = flat("context_reward")
    steps = len(rewards)
    sizes = {"context_obs": steps * obs_dim, "context_action": steps * max(action_dim, 1),
             "context_done": steps}
    values = {k: flat(k) for k in sizes}
    for key, size in sizes.items():
        if len(values[key]) != size:
            raise ValueError(f"{key}: {len(values[key])} values, but context_reward has {steps} "
                             f"steps, so {key} needs {size}")
    actions = torch.as_tensor(values["context_action"])
    return Context(torch.as_tensor(values["context_obs"], dtype=torch.float32).reshape(steps,
                                                                                       obs_dim),
                   actions.long() if action_dim == 0 else actions.float().reshape(steps,
                                                                                  action_dim),
                   torch.as_tensor(rewards, dtype=torch.float32),
                   torch.as_tensor(values["context_done"]) > 0.5)


class Served(Protocol):
    """A learner that a model server can run: named numpy tensors in, greedy actions out.

    ``serve`` also reads the optional :data:`CONTEXT` and acts as adapted on it.
    """

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """The input tensors :meth:`serve` reads and the output it returns."""
        ...

    def serve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Greedy actions for ``inputs`` (the tensors of :meth:`serving_spec`)."""
        ...
"""An inner step size: one float for every parameter, or (Meta-SGD) a tensor per parameter,
each the parameter's shape (no task dim), multiplying its gradient elementwise."""


def _scaled(lr: StepSize, key: str, grad: torch.Tensor) -> torch.Tensor:
    """``lr * grad`` for parameter ``key``; a per-parameter ``lr[key]`` broadcasts over tasks."""
    return lr[key] * grad if isinstance(lr, dict) else lr * grad


def probe_env(family: TaskFamily) -> BatchedEnv:
    """A one-slot env of ``family`` (one task drawn with seed 0), to read its spaces from."""
    return family.make_env(family.sample(1, np.random.default_rng(0))[:1], num_envs=1)


def half_action_range(env: BatchedEnv) -> float:
    """Half the widest action range of a continuous env (1.0 for a discrete one).

    The unit of the Gaussian policies' ``init_std``.
    """
    if env.discrete:
        return 1.0
    return max(h - lo for lo, h in zip(env.action_low, env.action_high, strict=True)) / 2


class MetaLearner(Protocol):
    """What the meta-test evaluator needs from an algorithm or a baseline."""

    def initial_params(self, num_tasks: int) -> Params:
        """Per-task parameters before any adaptation (leading dim ``num_tasks``)."""
        ...

    def explore(self, params: Params) -> ActFn | None:
        """The policy that collects adaptation data (``None``: uniform random)."""
        ...

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """Per-task parameters after one adaptation step on ``episodes``."""
        ...

    def act(self, params: Params) -> ActFn | None:
        """The policy evaluated after adaptation."""
        ...


@runtime_checkable
class WrapsEnv(Protocol):
    """A learner that reads its env through a wrapper (RL²'s trial clock).

    The evaluator builds the env of the tasks and plays the learner on ``wrap_env(env)``.
    """

    def wrap_env(self, env: BatchedEnv) -> BatchedEnv:
        """The env as the learner reads it."""
        ...


def policy_gradient_loss(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
                         ) -> torch.Tensor:
    """REINFORCE with a baseline: ``-mean_t log pi(a_t|s_t) A_t`` over valid steps.

    Args:
        logp: ``log pi(a_t|s_t)`` of the taken actions, any shape.
        adv: advantages, same shape.
        mask: 1.0 on valid steps, 0.0 on padding, same shape.

    """
    return -(logp * adv * mask).sum() / mask.sum().clamp(min=1)


def clipped_surrogate_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017), as ProMP's outer objective.

    ``logp`` and ``old_logp`` are the log-probabilities of the taken actions under the policy
    being optimised and the one that sampled them; the ratio is ``exp(logp - old_logp)``.
    """
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)


def log_probs(policy: MLPPolicy, params: Params, batch: EpisodeBatch) -> torch.Tensor:
    """``log pi(a_t|s_t)`` of per-task ``params`` on ``batch``, ``[N, E, T]``."""
    return policy.task_log_prob(params, batch.obs, batch.actions)


PerTaskLoss = Callable[[Params], torch.Tensor]
"""Maps per-task parameters (leading dim ``N``) to the per-task losses ``[N]``; task ``i``'s
loss may depend on its own slice ``theta_i`` only."""


def inner_step(loss_fn: PerTaskLoss, params: Params, lr: StepSize,
               first_order: bool = True) -> Params:
    """One gradient step per task on any differentiable objective: ``theta_i - lr * grad L_i``.

    The loss-agnostic core of MAML-style adaptation: a policy-gradient surrogate
    (:func:`pg_inner_step`), a Q-learning or a regression loss alike. ``lr`` is a float, or a
    dict of per-parameter step-size tensors (Meta-SGD: elementwise ``lr[k] * grad``, shared by
    the tasks); tensors that require grad get the meta-gradient through the step, first or
    second order.

    ``params`` carry a leading task dim. Task ``i``'s loss depends on its slice ``theta_i``
    only, so the gradient of the SUM of the per-task losses with respect to the per-task
    parameters is exactly the stack of per-task gradients: one batched backward pass gives all
    of them, the same numbers as ``vmap(grad(loss))`` (:func:`inner_step_vmap`, the reference a
    test compares against) at about half the cost of second-order MAML's double backward.
    With ``first_order=False`` the gradients stay differentiable, so a loss on the result
    back-propagates through the step (second-order MAML).
    """
    with torch.enable_grad():
        # Differentiate w.r.t. fresh leaves unless the step itself must stay differentiable
        # (second order, and params that carry a graph, i.e. not under no_grad).
        keep_graph = not first_order and all(v.requires_grad for v in params.values())
        wrt = params if keep_graph else {k: v.detach().requires_grad_()
                                         for k, v in params.items()}
        per_task = loss_fn(wrt)
        grads = torch.autograd.grad(per_task.sum(), list(wrt.values()), create_graph=keep_graph)
    return {k: params[k] - _scaled(lr, k, g) for k, g in zip(params, grads, strict=True)}


def pg_inner_step(
    policy: MLPPolicy,
    params: Params,
    batch: EpisodeBatch,
    adv: torch.Tensor,
    lr: StepSize,
    first_order: bool = True,
) -> Params:
    """One policy-gradient step per task: :func:`inner_step` on the REINFORCE surrogate."""
    def per_task_loss(p: Params) -> torch.Tensor:
        logp = policy.task_log_prob(p, batch.obs, batch.actions)
        dims = tuple(range(1, logp.dim()))
        return -(logp * adv * batch.mask).sum(dims) / batch.mask.sum(dims).clamp(min=1)

    return inner_step(per_task_loss, params, lr, first_order)


def inner_step_vmap(
    policy: MLPPolicy,
    params: Params,
    batch: EpisodeBatch,
    adv: torch.Tensor,
    lr: StepSize,
    first_order: bool = True,
) -> Params:
    """Reference :func:`pg_inner_step`: per-task ``vmap(grad(loss))`` of ``policy.log_prob``."""
    def task_loss(p: Params, obs: torch.Tensor, act: torch.Tensor, a: torch.Tensor,
                  m: torch.Tensor) -> torch.Tensor:
        return policy_gradient_loss(policy.log_prob(p, obs, act), a, m)

    grads = vmap(grad(task_loss))(params, batch.obs, batch.actions, adv, batch.mask)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    return {k: params[k] - _scaled(lr, k, grads[k]) for k in params}


class GradientAdaptedPolicy:
    """A policy with parameters ``theta`` that adapts by policy-gradient steps.

    MAML's meta-learned initialisation, the from-scratch baseline (random ``theta``) and the
    pretrained-then-fine-tuned baseline are all this class with a different ``theta``.

    Args:
        policy: the network (its own parameters are not used; ``params`` are).
        params: shared initial parameters (no task dim).
        inner_lr: step size of each adaptation step: a float, or (Meta-SGD) a dict of
            per-parameter step-size tensors, each the shape of its parameter.
        discount: discount of the returns in the adaptation loss.

    """

    def __init__(self, policy: MLPPolicy, params: Params, inner_lr: StepSize,
                 discount: float) -> None:
        if isinstance(inner_lr, dict) and (
                set(inner_lr) != set(params)
                or any(inner_lr[k].shape != v.shape for k, v in params.items())):
            raise ValueError("inner_lr: per-parameter step sizes must have the keys and shapes "
                             "of params")
        self.policy = policy
        self.params = params
        self.inner_lr = inner_lr
        self.discount = discount

    def initial_params(self, num_tasks: int) -> Params:
        """``theta`` broadcast over tasks."""
        return expand_params({k: v.detach() for k, v in self.params.items()}, num_tasks)

    def explore(self, params: Params) -> ActFn:
        """Sample from the current policy."""
        return act_fn(self.policy, params)

    act = explore

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """One vanilla policy-gradient step per task."""
        adv = advantages(episodes, self.discount)
        new = pg_inner_step(self.policy, params, episodes, adv, self.inner_lr, first_order=True)
        return {k: v.detach() for k, v in new.items()}

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """``obs float32 [-1, obs_dim]`` → ``action``.

        The action is int64 ``[-1]``, or (continuous) float32 ``[-1, action_dim]``, the
        Gaussian's mean, unclipped.
        """
        p = self.policy
        out: TensorInfo = (("action", "int64", (-1,)) if p.discrete else
                           ("action", "float32", (-1, p.action_dim)))
        return [("obs", "float32", (-1, p.obs_dim))], [out]

    def serve(self, inputs: dict[str, Any]) -> np.ndarray:
        """The most likely action (or the Gaussian's mean) per observation row.

        With a :data:`CONTEXT`, of the policy one adaptation step on it further (the
        evaluator's step: its episodes, one policy-gradient step).
        """
        p = self.policy
        obs = torch.as_tensor(np.asarray(inputs["obs"], dtype=np.float32))
        context = read_context(inputs, p.obs_dim, 0 if p.discrete else p.action_dim)
        params = self.params
        if context.steps:
            adapted = self.adapt(self.initial_params(1), context.episodes())
            params = {k: v[0] for k, v in adapted.items()}
        with torch.no_grad():
            out = p.mlp(params, obs)  # logits, or the Gaussian's mean
        if p.discrete:
            return out.argmax(-1).numpy().astype(np.int64)
        return out.numpy().astype(np.float32)


class RandomLearner:
    """Uniform random actions; adaptation changes nothing (the normalisation's zero)."""

    def initial_params(self, num_tasks: int) -> Params:
        """No parameters."""
        return {}

    def explore(self, params: Params) -> None:
        """Uniform random."""
        return None

    act = explore

    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """Nothing to adapt."""
        return params
