"""Policies as modules whose parameters travel as dicts (for ``torch.func``).

Both policy classes share one tanh MLP body (:class:`MLPPolicy`) and differ only in the action
distribution on top of it: :class:`CategoricalMLPPolicy` reads the output as logits over
discrete actions, :class:`GaussianMLPPolicy` as the mean of a diagonal Gaussian whose
state-independent log standard deviation is one more parameter (``"log_std"``). Each gives

* ``log_prob(params, obs, actions)`` for ONE task's parameters (what ``vmap(grad(...))`` maps
  over tasks in the inner step),
* ``task_log_prob(params, obs, actions)`` for per-task parameters with a leading task dim ``N``
  (batched matrix products, the fast path for rollouts and outer losses),
* ``task_sample(params, obs, generator, greedy)``: sampled (or most likely) actions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

Params = dict[str, torch.Tensor]
"""Policy parameters by name; a leading task dimension ``N`` makes them per-task."""

ActFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Maps observations ``[N, E, obs_dim]`` and a generator to actions: ``[N, E]`` long for a
discrete env, ``[N, E, action_dim]`` float for a continuous one."""


@runtime_checkable
class RecurrentActor(Protocol):
    """An acting function with memory: the sampler tells it what each step gave.

    RL²'s acting function is one; the sampler calls :meth:`observe` after every step.
    """

    def __call__(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Actions for ``obs``, as an :data:`ActFn`."""
        ...

    def observe(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """The step's rewards ``[N, E]`` and episode ends (termination or the horizon)."""
        ...

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Categorical samples by the Gumbel-max trick, drawn from ``generator``."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
    return torch.argmax(logits + gumbel, dim=-1)


def categorical_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[action]``: logits ``[..., K]``, actions ``[...]`` long."""
    return torch.log_softmax(logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor
                      ) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over the last (action) dim."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - LOG_SQRT_2PI).sum(-1)


class MLPPolicy(nn.Module):
    """A tanh MLP; subclasses read its output as an action distribution.

    Args:
        obs_dim: observation size.
        out_dim: output size (number of logits or action dimensions).
        hidden_sizes: widths of the hidden layers.

    """

    kind: ClassVar[str]
    """``categorical`` or ``gaussian``: recorded in checkpoints."""
    discrete: ClassVar[bool]
    """Whether actions are integers (categorical) or float vectors (Gaussian)."""
    action_dim: int
    """Size of an action vector (0 for a categorical policy)."""

    def __init__(self, obs_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)
        self.obs_dim = obs_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self._linear = [(f"net.{i}.weight", f"net.{i}.bias")
                        for i, layer in enumerate(self.net) if isinstance(layer, nn.Linear)]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Network output (logits or mean) for ``obs [..., obs_dim]``."""
        return self.net(obs)  # type: ignore[no-any-return]

    def init_params(self, generator: torch.Generator) -> Params:
        """Fresh network parameters drawn with ``generator`` (PyTorch's default Linear init)."""
        params = {}
        for weight_key, bias_key in self._linear:
            layer = self.net[int(weight_key.split(".")[1])]
            assert isinstance(layer, nn.Linear)
            bound = layer.in_features ** -0.5
            for key, p in ((weight_key, layer.weight), (bias_key, layer.bias)):
                u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
                params[key] = (u * 2 - 1) * bound
        return params

    def mlp(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """Network output for ONE task's ``params`` (no task dim); ``vmap``-able."""
        x = obs
        for j, (weight_key, bias_key) in enumerate(self._linear):
            x = F.linear(x, params[weight_key], params[bias_key])
            if j < len(self._linear) - 1:
                x = torch.tanh(x)
        return x

    def task_mlp(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """Network output for per-task ``params`` (leading dim ``N``), ``obs [N, ..., obs_dim]``.

        The same function as ``vmap(mlp)`` over tasks, written as batched matrix products
        (``baddbmm``): several times faster for small networks, and differentiable.
        """
        n = obs.shape[0]
        x = obs.reshape(n, -1, obs.shape[-1])
        for j, (weight_key, bias_key) in enumerate(self._linear):
            weight, bias = params[weight_key], params[bias_key]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
            if j < len(self._linear) - 1:
                x = torch.tanh(x)
        return x.reshape(*obs.shape[:-1], x.shape[-1])

    def log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log pi(a|s)`` for ONE task's ``params``, shape ``obs.shape[:-1]``."""
        raise NotImplementedError

    def task_log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor
                      ) -> torch.Tensor:
        """``log pi(a|s)`` for per-task ``params``, shape ``obs.shape[:-1]``."""
        raise NotImplementedError

    def task_sample(self, params: Params, obs: torch.Tensor, generator: torch.Generator,
                    greedy: bool = False) -> torch.Tensor:
        """Actions for per-task ``params``: sampled, or the most likely one if ``greedy``."""
        raise NotImplementedError


class CategoricalMLPPolicy(MLPPolicy):
    """Logits of a categorical distribution over ``num_actions`` discrete actions."""

    kind = "categorical"
    discrete = True

    def __init__(self, obs_dim: int, num_actions: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__(obs_dim, num_actions, hidden_sizes)
        self.num_actions = num_actions
        self.action_dim = 0

    def log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability of integer ``actions`` (one task)."""
        return categorical_log_prob(self.mlp(params, obs), actions)

    def task_log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor
                      ) -> torch.Tensor:
        """Log-probability of integer ``actions`` (per-task params)."""
        return categorical_log_prob(self.task_mlp(params, obs), actions)

    def task_sample(self, params: Params, obs: torch.Tensor, generator: torch.Generator,
                    greedy: bool = False) -> torch.Tensor:
        """Gumbel-max samples, or the arg-max when ``greedy``; long ``obs.shape[:-1]``."""
        logits = self.task_mlp(params, obs)
        return logits.argmax(-1) if greedy else sample_actions(logits, generator)


class GaussianMLPPolicy(MLPPolicy):
    """A diagonal Gaussian: MLP mean, state-independent learned ``log_std`` (a parameter).

    Samples are unbounded; a continuous env clips them to its action bounds, and the
    log-probabilities are those of the unclipped samples (as in the MAML paper's code).

    Args:
        obs_dim: observation size.
        action_dim: action size.
        hidden_sizes: widths of the hidden layers.
        init_std: standard deviation of fresh parameters.

    """

    kind = "gaussian"
    discrete = False

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...],
                 init_std: float = 1.0) -> None:
        super().__init__(obs_dim, action_dim, hidden_sizes)
        if init_std <= 0:
            raise ValueError(f"init_std={init_std}: must be > 0")
        self.action_dim = action_dim
        self.num_actions = 0
        self.init_std = init_std
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def init_params(self, generator: torch.Generator) -> Params:
        """Network parameters as the base class draws them, plus ``log_std = log(init_std)``."""
        params = super().init_params(generator)
        params["log_std"] = torch.full((self.action_dim,), math.log(self.init_std),
                                       dtype=self.log_std.dtype)
        return params

    def log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log density of float ``actions [..., action_dim]`` (one task)."""
        return gaussian_log_prob(self.mlp(params, obs), params["log_std"], actions)

    def _task_log_std(self, params: Params, mean: torch.Tensor) -> torch.Tensor:
        log_std = params["log_std"]  # [N, action_dim]
        return log_std.reshape(log_std.shape[0], *([1] * (mean.dim() - 2)), log_std.shape[-1])

    def task_log_prob(self, params: Params, obs: torch.Tensor, actions: torch.Tensor
                      ) -> torch.Tensor:
        """Log density of float ``actions [N, ..., action_dim]`` (per-task params)."""
        mean = self.task_mlp(params, obs)
        return gaussian_log_prob(mean, self._task_log_std(params, mean), actions)

    def task_sample(self, params: Params, obs: torch.Tensor, generator: torch.Generator,
                    greedy: bool = False) -> torch.Tensor:
        """``mean + std * noise`` (the mean when ``greedy``); ``[..., action_dim]``."""
        mean = self.task_mlp(params, obs)
        if greedy:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                            dtype=mean.dtype)
        return mean + torch.exp(self._task_log_std(params, mean)) * noise


POLICY_KINDS = {"categorical": CategoricalMLPPolicy, "gaussian": GaussianMLPPolicy}
"""Policy kind (as recorded in checkpoints) → class."""


def make_policy_for(
    discrete: bool, obs_dim: int, num_actions: int, action_dim: int,
    hidden_sizes: tuple[int, ...], init_std: float = 1.0,
) -> MLPPolicy:
    """The policy class an env needs: categorical for discrete actions, else Gaussian."""
    if discrete:
        return CategoricalMLPPolicy(obs_dim, num_actions, hidden_sizes)
    return GaussianMLPPolicy(obs_dim, action_dim, hidden_sizes, init_std)


def expand_params(params: Params, num_tasks: int) -> Params:
    """Give shared parameters a leading task dimension (a view; gradients flow back)."""
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


def task_outputs_vmap(policy: MLPPolicy, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Reference implementation of :meth:`MLPPolicy.task_mlp`: ``vmap`` + ``functional_call``."""
    net_params = {k: v for k, v in params.items() if k.startswith("net.")}

    def one_task(p: Params, o: torch.Tensor) -> torch.Tensor:
        return functional_call(policy.net, {k[4:]: v for k, v in p.items()}, (o,))  # type: ignore[no-any-return]

    return vmap(one_task)(net_params, obs)  # type: ignore[no-any-return]


def act_fn(policy: MLPPolicy, params: Params, greedy: bool = False) -> ActFn:
    """The acting function of ``policy`` with per-task ``params`` (sampling unless ``greedy``)."""
    return lambda obs, generator: policy.task_sample(params, obs, generator, greedy)
