"""Bandit and tabular-MDP baselines: exact values, brute force, statistics, the bench."""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import pytest
import torch

from metarl.baselines.bandit import (
    UCB1,
    EpsilonGreedy,
    Gittins,
    RandomPolicy,
    ThompsonSampling,
    bayes_optimal_value,
    gittins_index_table,
    run_bandit,
)
from metarl.baselines.tabular import (
    EpsilonGreedyAgent,
    MyopicBayesAgent,
    OracleAgent,
    PSRLAgent,
    RandomAgent,
    TabularStats,
    argmax_random_ties,
    run_tabular,
)
from metarl.envs.tabular_mdp import (
    BatchedTabularMDP,
    TabularMDPFamily,
    TabularMDPFamilyConfig,
    value_iteration,
)
from pipelines.bench.baselines import (
    BANDIT_CELLS,
    MDP_CELLS,
    bandit_cell,
    load_reference,
    parse_cells,
)
from pipelines.cli import main

torch.set_num_threads(1)

Sequence = tuple[tuple[int, int], ...]  # (arm, outcome) pairs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _probability(history: Sequence, num_arms: int) -> float:
    """P(outcomes of ``history`` | its arms) with every p_i ~ U[0, 1]: ∏ s! f! / (s + f + 1)!."""
    out = 1.0
    for arm in range(num_arms):
        s = sum(1 for a, o in history if a == arm and o == 1)
        f = sum(1 for a, o in history if a == arm and o == 0)
        out *= math.factorial(s) * math.factorial(f) / math.factorial(s + f + 1)
    return out


def _successor_probability(history: Sequence, arm: int, num_arms: int) -> float:
    return _probability((*history, (arm, 1)), num_arms) / _probability(history, num_arms)


def _expectimax(num_arms: int, num_pulls: int) -> float:
    """Bayes-optimal value by exhaustive search over raw histories (no sufficient statistics)."""
    @cache
    def value(history: Sequence) -> float:
        if len(history) == num_pulls:
            return 0.0
        best = -1.0
        for arm in range(num_arms):
            p = _successor_probability(history, arm, num_arms)
            best = max(best, p * (1 + value((*history, (arm, 1))))
                       + (1 - p) * value((*history, (arm, 0))))
        return best
    return value(())


def _policy_value(choose, num_arms: int, num_pulls: int, history: Sequence = ()) -> float:
    """Exact expected total reward of the deterministic policy ``choose(history) -> arm``."""
    if len(history) == num_pulls:
        return 0.0
    arm = choose(history)
    p = _successor_probability(history, arm, num_arms)
    return (p * (1 + _policy_value(choose, num_arms, num_pulls, (*history, (arm, 1))))
            + (1 - p) * _policy_value(choose, num_arms, num_pulls, (*history, (arm, 0))))


# --- Gittins indices and the Bayes-optimal value ---------------------------------------------

def test_gittins_table_matches_published_values() -> None:
    table = gittins_index_table(0.9, max_pulls=20, depth=300)
    assert table[0, 0] == pytest.approx(0.7029, abs=1e-4)  # Beta(1, 1), Gittins' tables
    assert table[1, 1] == pytest.approx(0.6346, abs=1e-4)  # Beta(2, 2)
    assert np.isnan(table[15, 10])  # beyond max_pulls
    valid = table[:10, :10]
    assert (np.diff(valid, axis=0) > 0).all(), "more successes, larger index"
    assert (np.diff(valid, axis=1) < 0).all(), "more failures, smaller index"
    means = (np.arange(10)[:, None] + 1) / (np.arange(10)[:, None] + np.arange(10) + 2)
    assert (valid > means).all(), "the index exceeds the posterior mean (value of information)"


def _index_by_bisection(s: int, f: int, discount: float, depth: int) -> float:
    """Scalar calibration from scratch: bisection on the retirement reward λ."""
    def play_minus_retire(lam: float) -> float:
        @cache
        def v(a: int, b: int) -> float:
            retire = lam / (1 - discount)
            mu = (a + 1) / (a + b + 2)
            if a + b - s - f >= depth:
                return max(retire, mu / (1 - discount))
            play = mu * (1 + discount * v(a + 1, b)) + (1 - mu) * discount * v(a, b + 1)
            return max(retire, play)
        mu = (s + 1) / (s + f + 2)
        return mu * (1 + discount * v(s + 1, f)) + (1 - mu) * discount * v(s, f + 1) - lam / (
            1 - discount)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if play_minus_retire(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize(("s", "f"), [(0, 0), (2, 0), (0, 3), (4, 5)])
def test_gittins_table_matches_scalar_bisection(s: int, f: int) -> None:
    table = gittins_index_table(0.7, max_pulls=12, depth=200)
    assert table[s, f] == pytest.approx(_index_by_bisection(s, f, 0.7, 60), abs=1e-5)


def test_bayes_optimal_value_by_hand() -> None:
    assert bayes_optimal_value(5, 0) == 0.0
    assert bayes_optimal_value(3, 1) == pytest.approx(0.5)
    # Pull an arm (1/2); keep it after a success (2/3), else switch to a fresh one (1/2).
    assert bayes_optimal_value(2, 2) == pytest.approx(0.5 + 0.5 * 2 / 3 + 0.5 * 0.5)
    assert bayes_optimal_value(50, 10) == pytest.approx(bayes_optimal_value(10, 10))


@pytest.mark.parametrize(("num_arms", "num_pulls"), [(2, 2), (3, 2)])
def test_bayes_optimal_value_equals_the_best_of_all_policies(num_arms: int,
                                                             num_pulls: int) -> None:
    """Enumerate every deterministic history-dependent policy and take the best."""
    histories = [h for t in range(num_pulls)
                 for h in itertools.product(itertools.product(range(num_arms), (0, 1)),
                                            repeat=t)]
    best = max(
        _policy_value(dict(zip(histories, arms, strict=True)).__getitem__, num_arms, num_pulls)
        for arms in itertools.product(range(num_arms), repeat=len(histories))
    )
    assert bayes_optimal_value(num_arms, num_pulls) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize(("num_arms", "num_pulls"), [(2, 5), (3, 4), (4, 3)])
def test_bayes_optimal_value_equals_exhaustive_search(num_arms: int, num_pulls: int) -> None:
    assert bayes_optimal_value(num_arms, num_pulls) == pytest.approx(
        _expectimax(num_arms, num_pulls), abs=1e-12)


def test_gittins_policy_simulation_matches_its_exact_value() -> None:
    """The batched Gittins policy, simulated on 100k instances, scores its exact expected value
    (enumeration of all outcome sequences), which the Bayes-optimal value bounds."""
    policy = Gittins(0.9, max_pulls=6, depth=300)
    table = gittins_index_table(0.9, 6, 300)

    def choose(history: Sequence) -> int:
        counts = [(sum(o for a, o in history if a == arm),
                   sum(1 - o for a, o in history if a == arm)) for arm in range(2)]
        return int(np.argmax([table[s, f] for s, f in counts]))

    exact = _policy_value(choose, 2, 6)
    probs = torch.rand(100_000, 2, generator=_gen(0), dtype=torch.float64)
    totals = run_bandit(policy, probs, 6, _gen(1)).sum(1)
    assert totals.mean().item() == pytest.approx(exact, abs=4 * totals.std().item() / 300)
    assert exact <= bayes_optimal_value(2, 6) + 1e-12
    assert exact > bayes_optimal_value(2, 6) - 0.01  # nearly optimal on this tiny problem


# --- bandit policies: statistics and determinism ---------------------------------------------

class _Recorder:
    def __init__(self, policy) -> None:
        self.policy, self.arms = policy, []

    def select(self, *args):
        arms = self.policy.select(*args)
        self.arms.append(arms)
        return arms


@pytest.mark.parametrize(("policy", "low", "high"), [
    (RandomPolicy(), 0.49, 0.51),
    (EpsilonGreedy(0.0), 0.95, 1.0),
    (EpsilonGreedy(0.2), 0.88, 0.91),  # the best arm minus ε/2 of uniform pulls
    (UCB1(1.0), 0.95, 1.0),
    (ThompsonSampling(), 0.98, 1.0),
    (Gittins(0.9, max_pulls=500), 0.98, 1.0),
])
def test_share_of_pulls_on_the_better_arm(policy, low: float, high: float) -> None:
    """On p = (0.1, 0.9), 500 pulls × 200 instances (UCB1 > 80% is the textbook sanity)."""
    recorder = _Recorder(policy)
    probs = torch.tensor([[0.1, 0.9]] * 200, dtype=torch.float64)
    rewards = run_bandit(recorder, probs, 500, _gen(0))
    share = torch.stack(recorder.arms, 1).double().mean().item()
    assert low <= share <= high
    expected_reward = 0.1 + 0.8 * share
    assert rewards.mean().item() == pytest.approx(expected_reward, abs=0.01)


@pytest.mark.parametrize("policy", [RandomPolicy(), EpsilonGreedy(0.3), UCB1(0.5),
                                    ThompsonSampling()])
def test_same_seed_same_bandit_rewards(policy) -> None:
    probs = torch.rand(50, 5, generator=_gen(3), dtype=torch.float64)
    a = run_bandit(policy, probs, 40, _gen(7))
    b = run_bandit(policy, probs, 40, _gen(7))
    c = run_bandit(policy, probs, 40, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- tabular MDP baselines -------------------------------------------------------------------

def _mdps(num: int, seed: int = 0, **overrides: int) -> tuple[TabularMDPFamily, list[dict]]:
    family = TabularMDPFamily(TabularMDPFamilyConfig(**overrides))
    return family, family.sample(num, np.random.default_rng(seed))


def _env(tasks: list[dict], horizon: int) -> BatchedTabularMDP:
    return BatchedTabularMDP.from_tasks(tasks, 1, horizon, dtype=torch.float64)


def test_argmax_random_ties_is_uniform_over_the_ties() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]]).expand(30_000, 5)
    picks = argmax_random_ties(scores, _gen(0))
    counts = torch.bincount(picks, minlength=5).double() / 30_000
    assert counts[0] == 0 and counts[3] == 0
    np.testing.assert_allclose(counts[[1, 2, 4]].numpy(), 1 / 3, atol=0.01)


def test_oracle_and_random_agents_score_their_exact_values() -> None:
    family, tasks = _mdps(300, horizon=10)
    env = _env(tasks, 10)
    q = value_iteration(env.reward_means, env.transitions, 10)
    oracle = run_tabular(OracleAgent(q), env, 5, _gen(0))
    assert oracle.shape == (300, 5)
    exact = float(family.oracle_returns(tasks).mean())
    assert oracle.mean().item() == pytest.approx(exact, abs=4 * oracle.std().item() / 39)
    # The uniform policy's value by backward induction, averaged over actions instead of maxed.
    value = torch.zeros(300, 10, dtype=torch.float64)
    for _ in range(10):
        value = (env.reward_means + torch.einsum("nsat,nt->nsa", env.transitions, value)).mean(-1)
    uniform = run_tabular(RandomAgent(), env, 5, _gen(1))
    assert uniform.mean().item() == pytest.approx(value[:, 0].mean().item(),
                                                  abs=4 * uniform.std().item() / 39)


def test_posterior_statistics_and_planning_on_known_counts() -> None:
    """With many observations, the ε-greedy model and a PSRL sample are the true MDP."""
    _, tasks = _mdps(4, num_states=3, num_actions=2, horizon=4)
    env = _env(tasks, 4)
    stats = TabularStats.zeros(4, 3, 2)
    stats.counts += env.transitions * 1e7
    stats.visits += 1e7
    stats.reward_sum += env.reward_means * 1e7
    mean, precision = stats.reward_posterior(mu0=0.0, tau0=1.0, tau=1.0)
    torch.testing.assert_close(mean, env.reward_means * 1e7 / (1e7 + 1))
    assert (precision == 1e7 + 1).all()
    true_q = value_iteration(env.reward_means, env.transitions, 4)
    torch.testing.assert_close(EpsilonGreedyAgent(0.1).plan(stats, 4, _gen(0)), true_q,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(PSRLAgent().plan(stats, 4, _gen(0)), true_q, atol=0.01, rtol=0)


def test_run_tabular_counts_what_the_agent_observes() -> None:
    _, tasks = _mdps(6, horizon=10)
    env = _env(tasks, 10)
    seen: list[TabularStats] = []

    class Spy:
        epsilon = 1.0
        plans_every_step = False

        def plan(self, stats: TabularStats, horizon: int, generator: torch.Generator):
            seen.append(stats)
            return RandomAgent().plan(stats, horizon, generator)

    returns = run_tabular(Spy(), env, 7, _gen(0))
    stats = seen[-1]  # the same object, updated in place after the last plan
    assert (stats.visits.sum((1, 2)) == 70).all()
    assert (stats.counts.sum((1, 2, 3)) == 63).all(), "the final next state is not observed"
    torch.testing.assert_close(stats.reward_sum.sum((1, 2)), returns.sum(1))


def test_myopic_bayes_replans_after_every_step() -> None:
    """One state, noiseless arms of mean 2 and 0.5 under the prior N(1, 1): the first pull is a
    coin flip; after a 0.5 the posterior mean (1 + 0.5) / 2 = 0.75 falls under the untried arm's
    1, so the rule switches *within* the episode and keeps the arm of mean 2 from then on."""
    tasks = [{"reward_means": [[2.0, 0.5]], "transitions": [[[1.0], [1.0]]]}] * 400
    env = BatchedTabularMDP.from_tasks(tasks, 1, horizon=5, reward_noise_std=0.0,
                                       dtype=torch.float64)
    returns = run_tabular(MyopicBayesAgent(), env, 2, _gen(0))
    first = returns[:, 0]
    assert set(first.tolist()) == {10.0, 0.5 + 4 * 2.0}
    assert 0.4 < (first == 10.0).double().mean().item() < 0.6
    assert (returns[:, 1] == 10.0).all()
    stats = TabularStats.zeros(1, 1, 2)
    stats.visits[0, 0, 1], stats.reward_sum[0, 0, 1] = 1.0, 0.5
    q = MyopicBayesAgent().plan(stats, 3, _gen(0))
    assert q.shape == (1, 3, 1, 2)
    torch.testing.assert_close(q[0, :, 0], torch.tensor([[1.0, 0.75]] * 3, dtype=torch.float64))


def test_psrl_converges_to_near_oracle() -> None:
    family, tasks = _mdps(200, num_states=3, num_actions=2, horizon=5)
    returns = run_tabular(PSRLAgent(), _env(tasks, 5), 300, _gen(0))
    optimum = torch.from_numpy(family.oracle_returns(tasks)).unsqueeze(1)
    regret = optimum - returns
    assert regret[:, :10].mean().item() > 1.0
    assert regret[:, -50:].mean().item() < 0.1
    assert returns[:, -50:].mean().item() > 0.98 * optimum.mean().item()


@pytest.mark.parametrize("agent", [RandomAgent(), EpsilonGreedyAgent(0.2), PSRLAgent()])
def test_same_seed_same_tabular_returns(agent) -> None:
    _, tasks = _mdps(20)
    a = run_tabular(agent, _env(tasks, 10), 4, _gen(0))
    b = run_tabular(agent, _env(tasks, 10), 4, _gen(0))
    c = run_tabular(agent, _env(tasks, 10), 4, _gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- the bench -------------------------------------------------------------------------------

def test_reference_table_ships_with_the_package() -> None:
    ref = load_reference()
    assert len(ref) == 8 * len(BANDIT_CELLS) + 8 * len(MDP_CELLS)
    assert ref[("bandit", 10, 5, "Gittins")] == 6.6
    assert ref[("bandit", 500, 50, "UCB1")] == 457.6
    assert ref[("mdp", 100, 0, "PSRL")] == 1939.5


def test_parse_cells() -> None:
    assert parse_cells(None, "all") == (list(BANDIT_CELLS), list(MDP_CELLS))
    assert parse_cells(None, "mdp") == ([], list(MDP_CELLS))
    assert parse_cells(["10x5", "25", "100X50"], "all") == ([(10, 5), (100, 50)], [25])
    for bad, table in (("10x1", "all"), ("ten", "all"), ("10x5x2", "all"), ("25", "bandit"),
                       ("10x5", "mdp")):
        with pytest.raises(ValueError, match=f"--cells '{bad}'"):
            parse_cells([bad], table)


def test_cli_bench_baselines_prints_table_and_deviation(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert main(["bench", "baselines", "--table", "mdp", "--cells", "10", "--instances",
                 "40"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    methods = [line.split()[2] for line in lines if line.startswith("mdp ")]
    assert methods == ["Random", "PSRL", "eps-Greedy", "Greedy", "Myopic-Bayes", "Oracle"]
    assert lines[-1].startswith("largest relative deviation from the paper:")
    assert "mdp n=10" in captured.err
    assert main(["bench", "baselines", "--cells", "10x1"]) == 2
    assert "--cells '10x1'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_cell_matches_the_paper() -> None:
    """n = 10 pulls, k = 5 arms, 1000 instances: Random, Gittins and UCB1 within 2%."""
    rows = {r.method: r for r in bandit_cell(10, 5, 1000, 0, "cpu", load_reference())}
    for method in ("Random", "Gittins", "UCB1"):
        assert rows[method].deviation is not None
        assert abs(rows[method].deviation) <= 0.02, rows[method]
    assert rows["Bayes-optimal"].ours == pytest.approx(6.66, abs=0.005)
    assert rows["Oracle"].ours == pytest.approx(10 * 5 / 6, abs=0.15)  # E[max of 5 U(0,1)]
