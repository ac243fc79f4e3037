"""Shared return and advantage math (one copy for every algorithm)."""

from __future__ import annotations

import torch

from metarl.sampler import EpisodeBatch


def discounted_returns(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{t' >= t} discount^(t'-t) r_t'`` along the last dim."""
    steps = rewards.shape[-1]
    idx = torch.arange(steps, device=rewards.device)
    power = (idx.unsqueeze(1) - idx.unsqueeze(0)).to(torch.float64)  # [t', t] = t' - t
    weights = torch.where(power >= 0, discount ** power.clamp(min=0), torch.zeros_like(power))
    return (rewards.double() @ weights).to(rewards.dtype)


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Features of the linear baseline of Duan et al. (2016): obs, obs², t, t², t³, 1."""
    steps = obs.shape[-2]
    t = (torch.arange(steps, device=obs.device, dtype=obs.dtype) / 100.0)
    t = t.expand(*obs.shape[:-1]).unsqueeze(-1)
    o = obs.clamp(-10, 10)
    feats = torch.cat([o, o.square(), t, t.square(), t.pow(3), torch.ones_like(t)], dim=-1)
    return feats * mask.unsqueeze(-1)


def linear_baseline(
    obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """Per-task least-squares fit of returns on :func:`baseline_features`; ``[N, E, T]``."""
    n = obs.shape[0]
    feats = baseline_features(obs, mask).double()
    x = feats.reshape(n, -1, feats.shape[-1])
    y = (returns * mask).double().reshape(n, -1, 1)
    xtx = x.transpose(1, 2) @ x
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    xty = x.transpose(1, 2) @ y
    for _ in range(5):
        coef, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        if not bool(info.any()) and bool(torch.isfinite(coef).all()):
            break
        reg *= 10
    return (feats @ coef.unsqueeze(1)).squeeze(-1).to(obs.dtype) * mask


def normalize_per_task(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the valid steps of each task (dim 0 kept)."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dims, keepdim=True).clamp(min=1)
    mean = (values * mask).sum(dims, keepdim=True) / count
    var = ((values - mean).square() * mask).sum(dims, keepdim=True) / count
    return (values - mean) / (var.sqrt() + eps) * mask


def advantages(batch: EpisodeBatch, discount: float) -> torch.Tensor:
    """Normalised advantages ``G_t - b(s_t)`` with the linear baseline, ``[N, E, T]``.

    The return of an episode stops at its horizon, truncated or not: the evaluator scores the
    return of fixed-horizon episodes, so that is the objective (time is among the baseline's
    features), as in MAML and pytorch-maml-rl. Learners with a learned value of an unbounded
    discounted future bootstrap on truncation instead (:func:`gae_transitions`).
    """
    returns = discounted_returns(batch.rewards, discount)
    values = linear_baseline(batch.obs, returns, batch.mask)
    return normalize_per_task((returns - values) * batch.mask, batch.mask)


def gae(rewards: torch.Tensor, values: torch.Tensor, discount: float, lam: float,
        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) along the last dim.

    ``delta_t = r_t + discount * V_{t+1} - V_t`` and ``A_t = delta_t + discount * lam * A_{t+1}``;
    the sequence ends terminally (``V_T = 0``), and so does the last valid step of ``mask``
    (1.0 on valid steps, then 0.0 padding; padded steps get zero advantage).

    Returns:
        ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets).

    """
    if mask is None:
        mask = torch.ones_like(rewards)
    next_values = torch.cat([values[..., 1:] * mask[..., 1:],
                             torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + discount * next_values - values) * mask
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = deltas[..., t] + discount * lam * running * mask[..., t]
        adv[..., t] = running
    return adv, (adv + values) * mask


def gae_transitions(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                    terminated: torch.Tensor, truncated: torch.Tensor, discount: float,
                    lam: float, mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE on the transitions contract (:mod:`metarl.sampler`), along the last dim.

    ``delta_t = r_t + discount * (1 - terminated_t) * V(next_obs_t) - V(obs_t)`` and
    ``A_t = delta_t + discount * lam * (1 - ended_t) * A_{t+1}``, ``ended = terminated or
    truncated``: a terminated step is worth nothing after it, a truncated one (a time limit)
    bootstraps with the value of the observation it led to, and neither carries advantages
    across an episode boundary. ``lam = 1`` gives the bootstrapped discounted returns.

    Args:
        rewards: ``[..., T]``.
        values: ``[..., T]``, the value of ``obs``.
        next_values: ``[..., T]``, the value of ``next_obs`` (the same network).
        terminated: ``[..., T]`` bool.
        truncated: ``[..., T]`` bool.
        discount: the discount.
        lam: GAE's lambda.
        mask: ``[..., T]`` 1.0 on valid steps (padding gets zero advantage).

    Returns:
        ``(advantages, returns)`` with ``returns = advantages + values`` (the value targets).

    """
    if mask is None:
        mask = torch.ones_like(rewards)
    alive_next = 1.0 - terminated.to(rewards.dtype)
    carry = 1.0 - (terminated | truncated).to(rewards.dtype)
    deltas = (rewards + discount * alive_next * next_values - values) * mask
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = deltas[..., t] + discount * lam * carry[..., t] * running
        adv[..., t] = running * mask[..., t]
    return adv, (adv + values) * mask
