"""Policies as modules whose parameters travel as dicts (for ``torch.func``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

Params = dict[str, torch.Tensor]
"""Policy parameters by name; a leading task dimension ``N`` makes them per-task."""

ActFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps observations ``[N, E, obs_dim]`` to action logits ``[N, E, num_actions]``."""


class CategoricalMLPPolicy(nn.Module):
    """A tanh MLP giving logits of a categorical distribution over discrete actions.

    Args:
        obs_dim: observation size.
        num_actions: number of discrete actions.
        hidden_sizes: widths of the hidden layers.

    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, num_actions))
        self.net = nn.Sequential(*layers)
        self.obs_dim = obs_dim
        self.num_actions = num_actions

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits for ``obs [..., obs_dim]``."""
        return self.net(obs)  # type: ignore[no-any-return]

    def init_params(self, generator: torch.Generator) -> Params:
        """Fresh parameters drawn with ``generator`` (PyTorch's default Linear init)."""
        params = {}
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                bound = layer.in_features ** -0.5
                for kind, p in (("weight", layer.weight), ("bias", layer.bias)):
                    u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
                    params[f"net.{i}.{kind}"] = (u * 2 - 1) * bound
        return params

def expand_params(params: Params, num_tasks: int) -> Params:
    """Give shared parameters a leading task dimension (a view; gradients flow back)."""
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


def task_logits(policy: CategoricalMLPPolicy, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Logits for per-task ``params`` (leading dim ``N``) and ``obs [N, ..., obs_dim]``.

    The same function as ``vmap(functional_call(policy, ...))`` over tasks, written as batched
    matrix products (``baddbmm``): about 6× faster for small networks, and differentiable.
    """
    n = obs.shape[0]
    x = obs.reshape(n, -1, obs.shape[-1])
    linear = [i for i, layer in enumerate(policy.net) if isinstance(layer, nn.Linear)]
    for j, i in enumerate(linear):
        weight, bias = params[f"net.{i}.weight"], params[f"net.{i}.bias"]
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if j < len(linear) - 1:
            x = torch.tanh(x)
    return x.reshape(*obs.shape[:-1], x.shape[-1])


def task_logits_vmap(policy: nn.Module, params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Reference implementation of :func:`task_logits` with ``vmap`` + ``functional_call``."""
    def one_task(p: Params, o: torch.Tensor) -> torch.Tensor:
        return functional_call(policy, p, (o,))  # type: ignore[no-any-return]

    return vmap(one_task)(params, obs)  # type: ignore[no-any-return]


def act_fn(policy: CategoricalMLPPolicy, params: Params) -> ActFn:
    """The acting function of ``policy`` with per-task ``params``."""
    return lambda obs: task_logits(policy, params, obs)
