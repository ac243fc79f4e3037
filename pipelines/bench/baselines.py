"""``metarl bench baselines``: RL²'s baseline columns (Tables 1 and 2) beside the paper's figures.

Duan et al. 2016, https://arxiv.org/abs/1611.02779. Table 1: Bernoulli bandits, total reward of
a trial of ``n`` pulls with ``k`` arms (``p_i ~ U[0, 1]``), averaged over 1000 instances per
cell. Table 2: random tabular MDPs (10 states, 5 actions, horizon 10), total reward of a trial of
``n`` episodes. The paper's figures ship in ``pipelines/bench/reference/rl2_paper_tables.csv``.

Protocol, per cell: ``--instances`` tasks drawn from a seed of their own (every method plays the
same ones); hyperparameters the paper tuned (Gittins' discount, UCB1's ``c``, ε) are chosen by
the best mean on a *separate* set of as many tuning instances, then scored on the evaluation
instances (the paper picked the best on its evaluation instances, which flatters the tuned
methods by a little). Intervals are mean ± 1.96 standard errors over instances. Rows without a
paper figure (Bayes-optimal, Myopic-Bayes, Oracle) are references: the exact Bayes-optimal value
of the bandit trial where the dynamic program is small (``n <= 20``), the MDP's one-step Bayes
rule (:class:`~metarl.baselines.tabular.MyopicBayesAgent`), and the true optimum of every
instance.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from metarl.baselines.bandit import (
    EPSILON_GRID,
    GITTINS_DISCOUNT_GRID,
    UCB1,
    UCB_C_GRID,
    BanditPolicy,
    EpsilonGreedy,
    Gittins,
    RandomPolicy,
    ThompsonSampling,
    bayes_optimal_value,
    run_bandit,
)
from metarl.baselines.tabular import (
    MDP_EPSILON_GRID,
    EpsilonGreedyAgent,
    MyopicBayesAgent,
    PSRLAgent,
    RandomAgent,
    TabularAgent,
    run_tabular,
)
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.tabular_mdp import BatchedTabularMDP, TabularMDPFamily, TabularMDPFamilyConfig

REFERENCE_PATH = Path(__file__).parent / "reference" / "rl2_paper_tables.csv"
BANDIT_CELLS = tuple((n, k) for n in (10, 100, 500) for k in (5, 10, 50))
"""Table 1's cells, ``(pulls n, arms k)``."""
MDP_CELLS = (10, 25, 50, 75, 100)
"""Table 2's cells, episodes per trial ``n``."""
BAYES_OPTIMAL_MAX_PULLS = 20
"""Largest ``n`` for which the exact Bayes-optimal bandit value is computed."""


@dataclass(frozen=True)
class Row:
    """One method in one cell.

    Attributes:
        table: ``bandit`` or ``mdp``.
        cell: e.g. ``n=10 k=5`` or ``n=25``.
        method: the paper's column name (``Random``, ``Gittins``, ...) or a reference row.
        ours: our mean total reward per trial.
        half_width: half-width of its 95% interval (0 for exact values).
        paper: the paper's figure, if it has one.
        setting: the hyperparameter used (``tuned`` when chosen on the tuning instances).

    """

    table: str
    cell: str
    method: str
    ours: float
    half_width: float
    paper: float | None
    setting: str = ""

    @property
    def deviation(self) -> float | None:
        """``(ours - paper) / paper``, or None without a paper figure."""
        return None if self.paper is None else (self.ours - self.paper) / self.paper

    @property
    def z(self) -> float | None:
        """``(ours - paper)`` in standard errors of the difference of two 1000-instance means.

        The paper gives no errors; its standard error is taken equal to ours (same method, same
        number of instances), so the difference has ``sqrt(2)`` times ours.
        """
        if self.paper is None or self.half_width <= 0:
            return None
        return (self.ours - self.paper) / (math.sqrt(2.0) * self.half_width / 1.96)


def load_reference(path: Path = REFERENCE_PATH) -> dict[tuple[str, int, int, str], float]:
    """The paper's figures by ``(table, n, k, method)`` (``k = 0`` for the MDP table)."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    out = {}
    for rec in csv.DictReader(lines):
        key = (rec["table"], int(rec["n"]), int(rec["k"] or 0), rec["method"])
        out[key] = float(rec["value"])
    return out


def parse_cells(specs: Sequence[str] | None, tables: str
                ) -> tuple[list[tuple[int, int]], list[int]]:
    """Cells to run: ``NxK`` names a bandit cell, ``N`` a tabular-MDP one.

    Raises:
        ValueError: a malformed spec, or one outside the tables selected.

    """
    bandit = list(BANDIT_CELLS) if tables in ("bandit", "all") else []
    mdp = list(MDP_CELLS) if tables in ("mdp", "all") else []
    if not specs:
        return bandit, mdp
    bandit, mdp = [], []
    for spec in specs:
        parts = spec.lower().split("x")
        if not all(p.isdigit() for p in parts) or len(parts) > 2:
            raise ValueError(f"--cells {spec!r}: expected NxK (bandit: pulls x arms, e.g. 10x5) "
                             "or N (tabular MDP: episodes, e.g. 25)")
        if len(parts) == 2:
            n, k = int(parts[0]), int(parts[1])
            if tables == "mdp" or n < 1 or k < 2:
                raise ValueError(f"--cells {spec!r}: a bandit cell needs n >= 1, k >= 2 and "
                                 "--table bandit or all")
            bandit.append((n, k))
        else:
            if tables == "bandit" or int(parts[0]) < 1:
                raise ValueError(f"--cells {spec!r}: an MDP cell needs n >= 1 and --table mdp "
                                 "or all")
            mdp.append(int(parts[0]))
    return bandit, mdp


def _seed(*keys: int) -> int:
    """A 63-bit seed derived from ``keys`` (independent streams per cell and purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> 1)


def _summary(totals: torch.Tensor) -> tuple[float, float]:
    values = totals.double().cpu().numpy()
    return float(values.mean()), 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))


def _tune(score: Callable[[float], torch.Tensor], grid: Iterable[float]) -> float:
    """The grid value with the best mean score on the tuning instances (first on ties)."""
    means = {value: float(score(value).double().mean()) for value in grid}
    return max(means, key=lambda v: means[v])


def bandit_cell(n: int, k: int, instances: int, seed: int, device: str,
                reference: dict[tuple[str, int, int, str], float]) -> list[Row]:
    """Table 1's methods on one ``(n, k)`` cell."""
    family = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))

    def probs(split: int) -> torch.Tensor:
        rng = np.random.default_rng(_seed(seed, 1, n, k, split))
        return torch.tensor([t["probs"] for t in family.sample(instances, rng)],
                            dtype=torch.float64, device=device)

    eval_probs, tune_probs = probs(0), probs(1)

    def totals(policy: BanditPolicy, probs: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(_seed(seed, 2, n, k))
        return run_bandit(policy, probs, n, generator).sum(1)

    gamma = _tune(lambda g: totals(Gittins(g, max(n, 500)), tune_probs), GITTINS_DISCOUNT_GRID)
    c = _tune(lambda c: totals(UCB1(c), tune_probs), UCB_C_GRID)
    eps = _tune(lambda e: totals(EpsilonGreedy(e), tune_probs), EPSILON_GRID)
    methods: list[tuple[str, BanditPolicy, str]] = [
        ("Random", RandomPolicy(), ""),
        ("Gittins", Gittins(gamma, max(n, 500)), f"γ={gamma} (tuned)"),
        ("TS", ThompsonSampling(), "Beta(1,1) prior"),
        ("UCB1", UCB1(c), f"c={c} (tuned)"),
        ("eps-Greedy", EpsilonGreedy(eps), f"ε={eps} (tuned)"),
        ("Greedy", EpsilonGreedy(0.0), ""),
    ]
    cell = f"n={n} k={k}"
    rows = [Row("bandit", cell, name, *_summary(totals(policy, eval_probs)),
                reference.get(("bandit", n, k, name)), setting)
            for name, policy, setting in methods]
    if n <= BAYES_OPTIMAL_MAX_PULLS:
        rows.append(Row("bandit", cell, "Bayes-optimal", bayes_optimal_value(k, n), 0.0, None,
                        "exact DP, no sampling"))
    oracle = n * eval_probs.amax(1)
    rows.append(Row("bandit", cell, "Oracle", *_summary(oracle), None, "n · max p"))
    return rows


def mdp_cell(n: int, instances: int, seed: int, device: str,
             reference: dict[tuple[str, int, int, str], float]) -> list[Row]:
    """Table 2's methods on one cell of ``n`` episodes per trial."""
    config = TabularMDPFamilyConfig(num_episodes=n)
    family = TabularMDPFamily(config)

    def tasks(split: int) -> list[dict]:
        return family.sample(instances, np.random.default_rng(_seed(seed, 3, n, split)))

    eval_tasks, tune_tasks = tasks(0), tasks(1)

    def env(task_list: list[dict]) -> BatchedTabularMDP:
        return BatchedTabularMDP.from_tasks(task_list, 1, config.horizon, config.reward_noise_std,
                                            device=device, dtype=torch.float64)

    eval_env, tune_env = env(eval_tasks), env(tune_tasks)

    def totals(agent: TabularAgent, mdp: BatchedTabularMDP) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(_seed(seed, 4, n))
        return run_tabular(agent, mdp, n, generator).sum(1)

    eps = _tune(lambda e: totals(EpsilonGreedyAgent(e), tune_env), MDP_EPSILON_GRID)
    methods: list[tuple[str, TabularAgent, str]] = [
        ("Random", RandomAgent(), ""),
        ("PSRL", PSRLAgent(), "TabulaRL prior: mu0=0, tau0=1, alpha0=1"),
        ("eps-Greedy", EpsilonGreedyAgent(eps), f"ε={eps} (tuned)"),
        ("Greedy", EpsilonGreedyAgent(0.0), ""),
        ("Myopic-Bayes", MyopicBayesAgent(), "true prior N(1,1), updated every step"),
    ]
    cell = f"n={n}"
    rows = [Row("mdp", cell, name, *_summary(totals(agent, eval_env)),
                reference.get(("mdp", n, 0, name)), setting)
            for name, agent, setting in methods]
    oracle = torch.from_numpy(family.trial_oracle_returns(eval_tasks))
    rows.append(Row("mdp", cell, "Oracle", *_summary(oracle), None, "value iteration"))
    return rows


HEADER = (f"{'table':<6} {'cell':<11} {'method':<13} {'paper':>7} {'ours':>8} "
          f"{'95% interval':>19} {'dev':>7} {'z':>5}  setting")


def format_row(row: Row) -> str:
    """One line of the table."""
    paper = "—" if row.paper is None else f"{row.paper:.1f}"
    digits = 2 if abs(row.ours) < 20 else 1
    if row.half_width > 0:
        lo, hi = row.ours - row.half_width, row.ours + row.half_width
        interval = f"[{lo:.{digits}f}, {hi:.{digits}f}]"
    else:
        interval = "exact"
    dev = "" if row.deviation is None else f"{100 * row.deviation:+.1f}%"
    z = "" if row.z is None else f"{row.z:+.1f}"
    return (f"{row.table:<6} {row.cell:<11} {row.method:<13} {paper:>7} {row.ours:>8.{digits}f} "
            f"{interval:>19} {dev:>7} {z:>5}  {row.setting}").rstrip()


def bench_baselines(tables: str = "all", cells: Sequence[str] | None = None,
                    instances: int = 1000, seed: int = 0, device: str = "cpu",
                    out: TextIO | None = None, progress: TextIO | None = None) -> list[Row]:
    """Run the selected cells, print the table, and return its rows.

    Args:
        tables: ``bandit``, ``mdp`` or ``all``.
        cells: subset of cells (``NxK`` bandit, ``N`` MDP); all of the selected tables if empty.
        instances: evaluation instances per cell (as many again are used for tuning).
        seed: base seed of instances and rollouts.
        device: torch device.
        out: where the table goes (default: stdout).
        progress: where the one-line-per-cell progress goes (default: stderr).

    Raises:
        ValueError: bad ``tables``, ``cells`` or ``instances``.

    """
    if tables not in ("bandit", "mdp", "all"):
        raise ValueError(f"--table {tables!r}: choose bandit, mdp or all")
    if instances < 2:
        raise ValueError(f"--instances {instances}: need at least 2 for an interval")
    bandit, mdp = parse_cells(cells, tables)
    out = out or sys.stdout
    progress = progress or sys.stderr
    torch.set_num_threads(1)
    reference = load_reference()
    start = time.perf_counter()
    jobs: list[tuple[str, Callable[[], list[Row]]]] = []
    jobs.extend((f"bandit n={n} k={k}",
                 partial(bandit_cell, n, k, instances, seed, device, reference))
                for n, k in bandit)
    jobs.extend((f"mdp n={n}", partial(mdp_cell, n, instances, seed, device, reference))
                for n in mdp)
    print(f"RL² baselines (Duan et al. 2016, Tables 1-2): {instances} instances per cell "
          f"(+{instances} for tuning), seed {seed}, torch threads 1, device {device}", file=out)
    print(HEADER, file=out)
    print("-" * len(HEADER), file=out, flush=True)
    rows: list[Row] = []
    for i, (name, job) in enumerate(jobs, 1):
        cell_start = time.perf_counter()
        cell_rows = job()
        rows += cell_rows
        for row in cell_rows:
            print(format_row(row), file=out)
        out.flush()
        print(f"[{i}/{len(jobs)}] {name} done in {time.perf_counter() - cell_start:.1f} s",
              file=progress, flush=True)
    elapsed = time.perf_counter() - start
    compared = [r for r in rows if r.deviation is not None]
    print(f"wall-clock {elapsed:.1f} s", file=out)
    if compared:
        worst = max(compared, key=lambda r: abs(r.deviation or 0.0))
        within = sum(abs(r.deviation or 0.0) <= 0.02 for r in compared)
        noise = sum(abs(r.z or 0.0) <= 1.96 for r in compared)
        print(f"largest relative deviation from the paper: {100 * (worst.deviation or 0):+.1f}% "
              f"({worst.table} {worst.cell} {worst.method}: ours {worst.ours:.2f}, paper "
              f"{worst.paper}); {within}/{len(compared)} figures within 2%, {noise}/"
              f"{len(compared)} within |z| <= 1.96", file=out)
    else:
        print("largest relative deviation from the paper: n/a (no cell with a paper figure)",
              file=out)
    return rows
