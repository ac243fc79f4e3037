"""Bernoulli-bandit baselines, batched over instances: the columns of RL²'s Table 1.

Every policy here acts on the Beta-Bernoulli sufficient statistics, success and failure counts
``[N, k]`` of each arm of each instance, plus the pull index ``t``. :func:`run_bandit` plays
``N`` instances at once on :class:`~metarl.envs.bandit.BatchedBandit` with a loop over pulls only.

The variants follow the code that produced the paper's Table 1 (Duan et al. 2016,
https://arxiv.org/abs/1611.02779; the authors' rllab ``sandbox/rocky/neural_learner`` scripts):

* Greedy, ε-greedy and UCB1 start every arm at one success in two pulls, i.e. they rank arms by
  the Beta(1, 1) posterior mean ``(s + 1) / (s + f + 2)``; so no round of forced first pulls,
  which matters when ``k ≥ n``. UCB1 adds ``c · sqrt(2 ln t / (s + f + 2))``.
* Ties go to the lowest-index arm (``argmax``, as the paper's ``np.argmax``). Arms are first
  tried in index order, so on a tie an arm already tried beats a fresh one; random tie-breaking
  explores more and changes the numbers (Greedy at ``n = 500, k = 50``: about 412 instead of 403).
* ε, UCB1's ``c`` and Gittins' discount were tuned per ``(n, k)`` cell (grids in
  :data:`EPSILON_GRID`, :data:`UCB_C_GRID`, :data:`GITTINS_DISCOUNT_GRID`).
* Gittins is the infinite-horizon discounted index of a Beta(1, 1) arm, computed by calibration
  (:func:`gittins_index_table`), with the discount as a tuned hyperparameter, since the index is
  defined for discounted rewards and the trials are finite.

:func:`bayes_optimal_value` is the exact Bayes-optimal expected total reward of a trial (dynamic
programming over the arms' posterior states), tractable for small ``n``: the true optimum the
index policies approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Protocol

import numpy as np
import torch

from metarl.envs.bandit import BatchedBandit

EPSILON_GRID = tuple(i / 10 for i in range(11))
"""ε values the paper's ε-greedy was tuned over (0 is greedy)."""
UCB_C_GRID = tuple(i / 10 for i in range(11))
"""Exploration weights ``c`` the paper's UCB1 was tuned over."""
GITTINS_DISCOUNT_GRID = (0.9, 0.99, 0.999, 0.9999)
"""Discount factors the paper's Gittins index was tuned over."""


def uniform_arms(successes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random arm per instance, ``[N]``."""
    n, k = successes.shape
    return torch.randint(k, (n,), generator=generator, device=successes.device)


def beta_sample(alpha: torch.Tensor, beta: torch.Tensor, generator: torch.Generator
                ) -> torch.Tensor:
    """Beta(alpha, beta) draws as ``X / (X + Y)`` with ``X ~ Gamma(alpha)``, ``Y ~ Gamma(beta)``."""
    # torch.distributions' samplers take no generator; this kernel (which they call) does.
    x = torch._standard_gamma(alpha, generator=generator)
    y = torch._standard_gamma(beta, generator=generator)
    return x / (x + y)


class BanditPolicy(Protocol):
    """Chooses one arm per instance from the counts so far."""

    def select(self, successes: torch.Tensor, failures: torch.Tensor, t: int,
               generator: torch.Generator) -> torch.Tensor:
        """Arms ``[N]`` (long) given counts ``[N, k]`` after ``t`` pulls."""
        ...


def _posterior_mean(successes: torch.Tensor, failures: torch.Tensor) -> torch.Tensor:
    return (successes + 1.0) / (successes + failures + 2.0)


@dataclass(frozen=True)
class RandomPolicy:
    """Uniformly random arms."""

    def select(self, successes: torch.Tensor, failures: torch.Tensor, t: int,
               generator: torch.Generator) -> torch.Tensor:
        """A uniform arm per instance."""
        return uniform_arms(successes, generator)


@dataclass(frozen=True)
class EpsilonGreedy:
    """With probability ε a uniform arm, else the best Beta(1, 1) posterior mean (ε = 0: Greedy)."""

    epsilon: float = 0.1
    """Probability of a uniformly random arm."""

    def select(self, successes: torch.Tensor, failures: torch.Tensor, t: int,
               generator: torch.Generator) -> torch.Tensor:
        """Greedy arm, replaced by a uniform one with probability ε."""
        greedy = _posterior_mean(successes, failures).argmax(-1)
        if self.epsilon <= 0:
            return greedy
        explore = torch.rand(greedy.shape, generator=generator, dtype=torch.float64,
                             device=greedy.device) < self.epsilon
        return torch.where(explore, uniform_arms(successes, generator), greedy)


@dataclass(frozen=True)
class UCB1:
    """UCB1 (Auer, Cesa-Bianchi & Fischer 2002) on Beta(1, 1) pseudo-counts, as in the paper.

    Index: ``(s + 1) / (s + f + 2) + c · sqrt(2 ln t / (s + f + 2))`` after ``t`` pulls.
    """

    c: float = 1.0
    """Weight of the confidence bonus (1 is Auer et al.'s; the paper tuned it in [0, 1])."""

    def select(self, successes: torch.Tensor, failures: torch.Tensor, t: int,
               generator: torch.Generator) -> torch.Tensor:
        """The arm with the largest upper confidence index."""
        pulls = successes + failures + 2.0
        bonus = self.c * torch.sqrt(2.0 * math.log(max(t, 1)) / pulls)
        return (_posterior_mean(successes, failures) + bonus).argmax(-1)


@dataclass(frozen=True)
class ThompsonSampling:
    """Thompson sampling (Thompson 1933) with Beta(1, 1) priors: the best of one posterior draw."""

    def select(self, successes: torch.Tensor, failures: torch.Tensor, t: int,
               generator: torch.Generator) -> torch.Tensor:
        """The arm whose posterior draw is largest."""
        return beta_sample(successes + 1.0, failures + 1.0, generator).argmax(-1)


@dataclass(frozen=True)
class Gittins:
    """The Gittins index policy (Gittins 1979) for Beta(1, 1) arms at a given discount."""

    discount: float = 0.99
    """Discount factor the indices are computed for, in (0, 1)."""
    max_pulls: int = 500
    """Largest number of pulls of one arm the table covers (at least the trial length)."""
    depth: int = 1000
    """Look-ahead truncation of the index computation, pulls (the paper's code used 1000)."""

    def select(self, successes: torch.Tensor, failures: torch.Tensor, t: int,
               generator: torch.Generator) -> torch.Tensor:
        """The arm with the largest Gittins index."""
        table = _gittins_tensor(self.discount, self.max_pulls, max(self.depth, self.max_pulls),
                                str(successes.device))
        return table[successes.long(), failures.long()].argmax(-1)


@torch.no_grad()
def run_bandit(policy: BanditPolicy, probs: torch.Tensor, num_pulls: int,
               generator: torch.Generator) -> torch.Tensor:
    """Play one trial of ``num_pulls`` pulls on every instance.

    Args:
        policy: the arm-selection rule.
        probs: ``[N, k]`` arm success probabilities of the ``N`` instances.
        num_pulls: pulls per trial ``n``.
        generator: source of the rewards and of the policy's randomness.

    Returns:
        ``[N, n]`` rewards (0 or 1) of every pull.

    """
    env = BatchedBandit(probs, num_envs=1, num_pulls=num_pulls, device=probs.device,
                        dtype=torch.float64)
    env.reset(generator)
    successes = torch.zeros(env.probs.shape, dtype=torch.float64, device=env.device)
    failures = torch.zeros_like(successes)
    rewards = []
    for t in range(num_pulls):
        arms = policy.select(successes, failures, t, generator).unsqueeze(1)
        _, reward, _ = env.step(arms)
        successes.scatter_add_(1, arms, reward)
        failures.scatter_add_(1, arms, 1.0 - reward)
        rewards.append(reward[:, 0])
    return torch.stack(rewards, dim=1)


@lru_cache(maxsize=16)
def gittins_index_table(discount: float, max_pulls: int = 500, depth: int = 1000,
                        grid: int = 500) -> np.ndarray:
    """Gittins indices of a Bernoulli arm with a Beta(1, 1) prior, by calibration.

    The index of posterior state ``(s, f)`` (``s`` successes, ``f`` failures) is the per-pull
    reward ``λ`` of a safe arm that makes retiring to it, worth ``λ / (1 - γ)``, exactly as good
    as playing on optimally (Gittins, Glazebrook & Weber 2011, ch. 8). For every ``λ`` on a grid
    over [0, 1] the value of that optimal-stopping problem is computed by backward induction
    over ``s + f`` from a truncation at ``depth`` pulls (where the arm's mean is taken as known),
    and the crossing of "play" and "retire" is interpolated linearly between grid points.
    ``γ = 0.9`` gives 0.7029 for ``(0, 0)`` and 0.6346 for ``(1, 1)``, as in Gittins' tables.
    Tables are cached per argument set.

    Args:
        discount: γ in (0, 1).
        max_pulls: the table covers ``s + f <= max_pulls``.
        depth: truncation of the look-ahead, pulls of this one arm (>= max_pulls).
        grid: number of calibration rewards λ.

    Returns:
        ``[max_pulls + 1, max_pulls + 1]`` float64; entry ``[s, f]`` (NaN where
        ``s + f > max_pulls``).

    """
    if not 0 < discount < 1:
        raise ValueError(f"discount={discount}: expected a value in (0, 1)")
    if not 0 <= max_pulls <= depth:
        raise ValueError(f"max_pulls={max_pulls}, depth={depth}: need 0 <= max_pulls <= depth")
    lam = np.linspace(0.0, 1.0, grid)
    retire = lam[:, None] / (1.0 - discount)  # [G, 1]
    mean = (1.0 + np.arange(depth + 1)) / (2.0 + depth)
    value = np.maximum(retire, mean / (1.0 - discount))  # [G, s] at s + f = depth
    table = np.full((max_pulls + 1, max_pulls + 1), np.nan)
    for m in range(depth - 1, -1, -1):
        s = np.arange(m + 1)
        mean = (1.0 + s) / (2.0 + m)
        win, loss = value[:, 1:m + 2], value[:, :m + 1]  # s + 1 or f + 1 after this pull
        play = mean * (1.0 + discount * win) + (1.0 - mean) * discount * loss
        if m <= max_pulls:
            gap = play - retire  # decreasing in λ; the index is its zero
            hi = np.argmax(gap <= 0, axis=0)  # first grid point where retiring is as good
            g0, g1 = gap[hi - 1, s], gap[hi, s]
            table[s, m - s] = lam[hi - 1] + (lam[hi] - lam[hi - 1]) * g0 / (g0 - g1)
        value = np.maximum(retire, play)
    table.setflags(write=False)  # shared by every caller through the cache
    return table


@lru_cache(maxsize=16)
def _gittins_tensor(discount: float, max_pulls: int, depth: int, device: str) -> torch.Tensor:
    return torch.tensor(gittins_index_table(discount, max_pulls, depth), device=device)


def bayes_optimal_value(num_arms: int, num_pulls: int) -> float:
    """Exact Bayes-optimal expected total reward of a trial (arms i.i.d. U[0, 1] = Beta(1, 1)).

    Dynamic programming over the multiset of the arms' posterior states ``(s, f)`` (arms are
    exchangeable, so their order does not matter): ``V(state) = max_arm [μ (1 + V(win)) +
    (1 - μ) V(loss)]`` with ``μ = (s + 1) / (s + f + 2)``. Tractable for ``n`` up to a few tens
    (``n = 10``: milliseconds for any ``k``).
    """
    if num_arms < 1 or num_pulls < 0:
        raise ValueError(f"num_arms={num_arms}, num_pulls={num_pulls}: need k >= 1, n >= 0")
    # Arms beyond n are never all needed: n pulls touch at most n arms.
    start = ((0, 0),) * min(num_arms, max(num_pulls, 1))

    @cache
    def value(state: tuple[tuple[int, int], ...], left: int) -> float:
        if left == 0:
            return 0.0
        best = 0.0
        for i, (s, f) in enumerate(state):
            if i and state[i - 1] == (s, f):
                continue  # same posterior as the previous arm
            mu = (s + 1) / (s + f + 2)
            rest = state[:i] + state[i + 1:]
            win = tuple(sorted((*rest, (s + 1, f))))
            loss = tuple(sorted((*rest, (s, f + 1))))
            best = max(best, mu * (1 + value(win, left - 1)) + (1 - mu) * value(loss, left - 1))
        return best

    return value(start, num_pulls)
