"""Tabular-MDP baselines, batched over instances: the columns of RL²'s Table 2.

The paper's baselines (Duan et al. 2016, https://arxiv.org/abs/1611.02779) are the agents of
Osband's TabulaRL (``finite_tabular_agents.py``), run by the authors through a bridge to their
random-MDP env. Each agent keeps the same conjugate posterior over the unknown MDP:

* transitions: ``P(· | s, a) ~ Dirichlet(alpha0 + counts)``;
* mean rewards: ``N(mu, 1 / tau)``, updated from the prior ``N(mu0, 1 / tau0)`` with known noise
  precision ``tau`` (``tau_post = tau0 + tau · visits``).

and at the start of every episode plans by finite-horizon value iteration on an MDP built from it:

* **PSRL** (Osband, Russo & Van Roy 2013): one MDP *sampled* from the posterior; TabulaRL's
  defaults ``alpha0 = 1, mu0 = 0, tau0 = 1, tau = 1`` (so the reward prior is centred on 0, not
  on the true prior mean 1, as in the paper's runs).
* **ε-greedy** / **Greedy**: the posterior-*mean* MDP with a vanishing prior (``alpha0 = tau0 =
  1e-4``, ``mu0 = 0``: unvisited pairs look like reward 0 and uniform transitions), acting
  uniformly at random with probability ε (tuned per cell over 0.1, ..., 1.0; Greedy is ε = 0).
* **Random**: uniform actions (TabulaRL's ε-greedy with ε = 1).
* **Myopic Bayes** (ours, not in the paper): in the current state, the action whose mean reward
  has the highest posterior mean under the tasks' *true* prior (``N(1, 1)``, unit noise),
  updated after every step, transitions ignored. Because the next-state rows are flat-Dirichlet
  draws, an action's immediate reward is most of its value, and this one-line rule scores about
  159 at ``n = 10`` — above the paper's RL² (156.2) and every baseline of its Table 2 — so it is
  the yardstick to beat at short trials.
* **Oracle**: value iteration on the true MDP.

Greedy actions break ties uniformly at random, as TabulaRL does. Like the paper's environment,
which reports the reset state after an episode's last step, the agents do not learn from the
next state of an episode's final transition (its reward they do use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from metarl.envs.tabular_mdp import BatchedTabularMDP, value_iteration

MDP_EPSILON_GRID = tuple(i / 10 for i in range(1, 11))
"""ε values the paper's tabular ε-greedy was tuned over."""


def argmax_random_ties(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Argmax over the last dim; exact ties are broken uniformly at random (as TabulaRL does)."""
    best = scores.amax(-1, keepdim=True)
    noise = torch.rand(scores.shape, generator=generator, dtype=torch.float64,
                       device=scores.device)
    return torch.where(scores == best, noise, -1.0).argmax(-1)


@dataclass
class TabularStats:
    """Sufficient statistics of the observed transitions of ``N`` instances (mutable).

    Attributes:
        counts: ``[N, S, A, S]`` observed transitions ``s, a → s'``.
        visits: ``[N, S, A]`` rewards observed for ``(s, a)``.
        reward_sum: ``[N, S, A]`` their sum.

    """

    counts: torch.Tensor
    visits: torch.Tensor
    reward_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_instances: int, num_states: int, num_actions: int,
              device: torch.device | str = "cpu") -> TabularStats:
        """No observations yet."""
        shape = (num_instances, num_states, num_actions)
        return cls(torch.zeros((*shape, num_states), dtype=torch.float64, device=device),
                   torch.zeros(shape, dtype=torch.float64, device=device),
                   torch.zeros(shape, dtype=torch.float64, device=device))

    def reward_posterior(self, mu0: float, tau0: float, tau: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and precision of every mean reward, ``[N, S, A]`` each."""
        precision = tau0 + tau * self.visits
        return (mu0 * tau0 + tau * self.reward_sum) / precision, precision


class TabularAgent(Protocol):
    """Plans once per episode (or every step) from the statistics so far."""

    @property
    def epsilon(self) -> float:
        """Probability of a uniformly random action at each step."""
        ...

    @property
    def plans_every_step(self) -> bool:
        """Plan again before every step, from statistics that include the episode so far."""
        ...

    def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator
             ) -> torch.Tensor:
        """Action values ``[N, H, S, A]`` to act greedily on during the next episode."""
        ...


@dataclass(frozen=True)
class RandomAgent:
    """Uniformly random actions."""

    epsilon: float = 1.0
    plans_every_step = False

    def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator
             ) -> torch.Tensor:
        """All-zero values (every action is tied)."""
        n, s, a = stats.visits.shape
        return torch.zeros(n, horizon, s, a, dtype=torch.float64, device=stats.visits.device)


@dataclass(frozen=True)
class EpsilonGreedyAgent:
    """Value iteration on the posterior-mean MDP; a uniform action with probability ε."""

    epsilon: float = 0.1
    """Probability of a uniformly random action (0: Greedy)."""
    alpha0: float = 1e-4
    """Dirichlet prior count of every next state."""
    mu0: float = 0.0
    """Prior mean of every mean reward."""
    tau0: float = 1e-4
    """Prior precision of the mean rewards."""
    tau: float = 1.0
    """Precision of the reward noise."""
    plans_every_step = False

    def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator
             ) -> torch.Tensor:
        """Optimal values of the posterior-mean MDP."""
        reward_mean, _ = stats.reward_posterior(self.mu0, self.tau0, self.tau)
        alpha = stats.counts + self.alpha0
        return value_iteration(reward_mean, alpha / alpha.sum(-1, keepdim=True), horizon)


@dataclass(frozen=True)
class PSRLAgent:
    """Posterior sampling (PSRL): value iteration on one MDP drawn from the posterior."""

    alpha0: float = 1.0
    """Dirichlet prior count of every next state (1: the flat prior the MDPs are drawn from)."""
    mu0: float = 0.0
    """Prior mean of every mean reward (TabulaRL's default; the tasks' true prior mean is 1)."""
    tau0: float = 1.0
    """Prior precision of the mean rewards."""
    tau: float = 1.0
    """Precision of the reward noise (the tasks' true value is 1)."""
    epsilon: float = 0.0
    plans_every_step = False

    def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator
             ) -> torch.Tensor:
        """Optimal values of an MDP sampled from the posterior."""
        mean, precision = stats.reward_posterior(self.mu0, self.tau0, self.tau)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=mean.device)
        rewards = mean + noise / precision.sqrt()
        gammas = torch._standard_gamma(stats.counts + self.alpha0, generator=generator)
        return value_iteration(rewards, gammas / gammas.sum(-1, keepdim=True), horizon)


@dataclass(frozen=True)
class MyopicBayesAgent:
    """The action with the best posterior-mean reward in the current state, updated every step.

    The posterior is the conjugate one of the module doc with the tasks' true prior (defaults:
    mean rewards ``N(1, 1)``, unit noise); transitions are ignored, so an unvisited pair looks
    as good as the prior mean and a visited one is kept while its mean stays above it.
    """

    mu0: float = 1.0
    """Prior mean of every mean reward (the tasks' true value)."""
    tau0: float = 1.0
    """Prior precision of the mean rewards (the tasks' true value)."""
    tau: float = 1.0
    """Precision of the reward noise (the tasks' true value)."""
    epsilon: float = 0.0
    plans_every_step = True

    def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator
             ) -> torch.Tensor:
        """The posterior-mean rewards, the same at every step to go."""
        mean, _ = stats.reward_posterior(self.mu0, self.tau0, self.tau)
        return mean.unsqueeze(1).expand(-1, horizon, -1, -1)


@dataclass(frozen=True)
class OracleAgent:
    """Knows the MDP: acts optimally (value iteration on the true means and transitions)."""

    q: torch.Tensor
    """``[N, H, S, A]`` true optimal action values (:func:`value_iteration`)."""
    epsilon: float = 0.0
    plans_every_step = False

    def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator
             ) -> torch.Tensor:
        """The true optimal values."""
        return self.q


@torch.no_grad()
def run_tabular(agent: TabularAgent, env: BatchedTabularMDP, num_episodes: int,
                generator: torch.Generator) -> torch.Tensor:
    """Play a trial of ``num_episodes`` episodes on every instance of ``env``.

    Args:
        agent: plans at each episode start (before each step if ``agent.plans_every_step``)
            from the statistics gathered so far in the trial.
        env: ``N`` MDPs with ``num_envs = 1``; each episode restarts in the initial state.
        num_episodes: episodes per trial ``n``.
        generator: source of the env's noise and the agent's randomness.

    Returns:
        ``[N, n]`` undiscounted return of every episode.

    """
    if env.num_envs != 1:
        raise ValueError(f"num_envs={env.num_envs}: run_tabular plays one trial per task")
    n, s, a = env.num_tasks, env.num_states, env.num_actions
    stats = TabularStats.zeros(n, s, a, env.device)
    rows = torch.arange(n, device=env.device)
    returns = []
    for _ in range(num_episodes):
        q = agent.plan(stats, env.max_steps, generator)
        env.reset(generator)
        ep_return = torch.zeros(n, dtype=torch.float64, device=env.device)
        for h in range(env.max_steps):
            if h > 0 and agent.plans_every_step:
                q = agent.plan(stats, env.max_steps, generator)
            state = env.state[:, 0]
            actions = argmax_random_ties(q[rows, h, state], generator)
            if agent.epsilon > 0:
                explore = torch.rand(n, generator=generator, dtype=torch.float64,
                                     device=env.device) < agent.epsilon
                uniform = torch.randint(a, (n,), generator=generator, device=env.device)
                actions = torch.where(explore, uniform, actions)
            _, reward, _ = env.step(actions.unsqueeze(1))
            r = reward[:, 0].double()
            ep_return += r
            stats.visits[rows, state, actions] += 1.0
            stats.reward_sum[rows, state, actions] += r
            if h < env.max_steps - 1:  # the final next state is not observed (see module doc)
                stats.counts[rows, state, actions, env.state[:, 0]] += 1.0
        returns.append(ep_return)
    return torch.stack(returns, dim=1)
