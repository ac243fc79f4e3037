"""Pieces every off-policy learner shares (PEARL, meta-Q-learning, MAML on a Q-network).

One rule each: the TD target (:func:`td_target`: bootstrap unless the step *terminated*; a
truncated step's ``next_obs`` still has a value), the Polyak update of target networks
(:func:`soft_update`), and an MLP whose weights are shared over any leading batch dims (tasks,
samples), so a meta-batch of tasks is one matmul, not a Python loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def td_target(rewards: torch.Tensor, next_value: torch.Tensor, terminated: torch.Tensor,
              discount: float) -> torch.Tensor:
    """``r + discount * (1 - terminated) * V(s')``, with no gradient.

    A *terminated* step has no value after it; a *truncated* one (the horizon stopped it)
    bootstraps from ``next_value`` like any other step: the time limit is not part of the
    task's dynamics.
    """
    with torch.no_grad():
        return rewards + discount * (~terminated.bool()).to(next_value.dtype) * next_value


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source``, parameter by parameter, in place."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


class MLP(nn.Module):
    """``in_dim → hidden… → out_dim`` with ReLU between layers; any leading dims broadcast.

    Args:
        in_dim: input width.
        out_dim: output width.
        hidden_sizes: widths of the hidden layers (empty: one linear layer).
        generator: draws the initial weights (PyTorch's default scheme), for determinism.

    """

    def __init__(self, in_dim: int, out_dim: int, hidden_sizes: Sequence[int],
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_sizes, out_dim]
        linear = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
        if generator is not None:
            with torch.no_grad():
                for layer in linear:
                    bound = 1.0 / max(layer.in_features, 1) ** 0.5
                    for p in (layer.weight, layer.bias):
                        p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
        self.layers = nn.ModuleList(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ``x [..., in_dim]`` → ``[..., out_dim]``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def parameters_of(*modules: nn.Module) -> Iterable[nn.Parameter]:
    """Every parameter of ``modules``, in order (one optimiser over several networks)."""
    for module in modules:
        yield from module.parameters()
