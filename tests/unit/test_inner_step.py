"""The loss-agnostic inner step adapts any differentiable per-task objective, MAML-style."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from metarl.algos.base import inner_step

N, D = 3, 4


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 8, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, 8, generator=g, dtype=torch.float64)
    return x, y


def _td_like_loss(x: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    """A Q-regression per task: mean over a task's samples of (x·w + b - y)²."""
    def per_task(p: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = torch.einsum("nsd,nd->ns", x, p["w"]) + p["b"].unsqueeze(-1)
        return (pred - y).square().mean(-1)

    return per_task


def _params(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"w": torch.randn(N, D, generator=g, dtype=torch.float64).requires_grad_(
                requires_grad),
            "b": torch.zeros(N, dtype=torch.float64).requires_grad_(requires_grad)}


def test_one_step_is_each_tasks_own_gradient_step() -> None:
    x, y = _data()
    params = _params()
    new = inner_step(_td_like_loss(x, y), params, lr=0.1)
    for i in range(N):  # task by task, by hand
        w = params["w"][i].clone().requires_grad_()
        b = params["b"][i].clone().requires_grad_()
        loss = ((x[i] @ w + b - y[i]) ** 2).mean()
        gw, gb = torch.autograd.grad(loss, (w, b))
        torch.testing.assert_close(new["w"][i], params["w"][i] - 0.1 * gw)
        torch.testing.assert_close(new["b"][i], params["b"][i] - 0.1 * gb)
    before = _td_like_loss(x, y)(params)
    after = _td_like_loss(x, y)(new)
    assert (after < before).all(), "a small step lowers every task's loss"


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_through_the_step_matches_vmap_grad(first_order: bool) -> None:
    x, y = _data()
    theta = _params(requires_grad=True)
    lr = {"w": torch.full((D,), 0.05, dtype=torch.float64), "b": torch.tensor(0.2,
                                                                             dtype=torch.float64)}
    adapted = inner_step(_td_like_loss(x, y), theta, lr, first_order=first_order)
    meta_loss = _td_like_loss(x, y)(adapted).sum()
    got = torch.autograd.grad(meta_loss, list(theta.values()))

    def one_task(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        def loss(q: dict[str, torch.Tensor]) -> torch.Tensor:
            return ((xi @ q["w"] + q["b"] - yi) ** 2).mean()

        g = grad(loss)(p)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        return loss({k: p[k] - lr[k] * g[k] for k in p})

    ref = vmap(grad(one_task))({k: v.detach() for k, v in theta.items()}, x, y)
    for value, key in zip(got, theta, strict=True):
        torch.testing.assert_close(value, ref[key])
