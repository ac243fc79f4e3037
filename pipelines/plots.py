"""PNG plots (DVC's HTML plots load JavaScript from a CDN; a PNG needs nothing)."""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


class Curve(NamedTuple):
    """One learner's adaptation curve: the mean return after 0..K steps and its interval."""

    mean: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]


class Interval(NamedTuple):
    """A labelled point estimate with its interval (one row of a forest plot)."""

    label: str
    value: float
    low: float
    high: float


def plot_adaptation_curves(curves: Mapping[str, Curve], path: Path, title: str,
                           oracle: float | None = None) -> None:
    """Return vs adaptation step per learner, with 95% bands and the oracle; atomic write."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if oracle is not None:
        ax.axhline(oracle, color="black", linestyle="--", linewidth=1, label="oracle")
    for name, c in curves.items():
        steps = range(len(c.mean))
        ax.plot(steps, c.mean, marker="o", label=name)
        ax.fill_between(steps, c.low, c.high, alpha=0.2)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("mean episode return")
    ax.set_xticks(list(range(len(next(iter(curves.values())).mean))))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    _save(fig, path)


def plot_learning_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: Path,
                         title: str, ylabel: str) -> None:
    """Meta-test return vs meta-training env steps (log axis) per algorithm; atomic write."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("meta-training env steps per seed")
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    _save(fig, path)


def plot_scores(rows: Mapping[str, Sequence[Interval]], points: Mapping[str, Sequence[float]],
                path: Path, title: str, xlabel: str) -> None:
    """Scores per learner: each (task, seed) score a tick, ``rows``' estimates with intervals.

    One band per learner: its ``points`` as ticks and each estimate of ``rows[learner]`` (e.g.
    mean and IQM) as a marker with its interval. Atomic write.
    """
    learners = list(rows)
    fig, ax = plt.subplots(figsize=(6.4, 0.9 * len(learners) + 1.4), dpi=120)
    markers, colors = ("o", "D", "s", "^"), ("tab:blue", "tab:orange", "tab:green", "tab:red")
    labelled: set[str] = set()
    for i, name in enumerate(learners):
        y = len(learners) - 1 - i
        dots = list(points.get(name, ()))
        ax.plot(dots, [y + 0.25] * len(dots), "|", color="grey", alpha=0.6, markersize=8,
                label=None if "scores" in labelled else "a task × seed score")
        labelled.add("scores")
        for j, est in enumerate(rows[name]):
            offset = -0.12 * j
            label = None if est.label in labelled else f"{est.label} (95% interval)"
            labelled.add(est.label)
            ax.errorbar([est.value], [y + offset],
                        xerr=[[est.value - est.low], [est.high - est.value]],
                        fmt=markers[j % 4], color=colors[j % 4], capsize=3, label=label)
    ax.set_yticks(list(range(len(learners)))[::-1], learners, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_forest(rows: Sequence[Interval], path: Path, title: str, xlabel: str,
                reference: float | None = None,
                xlim: tuple[float, float] | None = None) -> None:
    """Forest plot: one row per estimate with its interval, and a reference line; atomic."""
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.6), dpi=120)
    for y, est in zip(range(len(rows))[::-1], rows, strict=True):
        ax.errorbar([est.value], [y], xerr=[[est.value - est.low], [est.high - est.value]],
                    fmt="o", color="tab:blue", capsize=4)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(list(range(len(rows)))[::-1], [r.label for r in rows], fontsize=8)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def rl2_plot_points(results: dict[str, object]) -> list[dict[str, float | str | None]]:
    """Per cell of ``metarl bench rl2``'s JSON, the scores normalised to Random 0, Oracle 1.

    Each point: ``cell``, ``ours`` and its interval ``low``/``high``, the paper's RL²
    ``paper`` (None where the paper has no figure) and our ``yardstick`` (Gittins for bandits,
    PSRL for MDPs), all on the cell's own scale (our Random and Oracle on the same instances).
    """
    cells = results["cells"]
    assert isinstance(cells, dict)

    def order(cell: str) -> tuple[int, ...]:  # "bandit n=10 k=5" → (0, 10, 5); MDPs after
        numbers = [int(part.split("=")[1]) for part in cell.split()[1:]]
        return (int(not cell.startswith("bandit")), *numbers)

    points: list[dict[str, float | str | None]] = []
    for cell in sorted(cells, key=order):
        values = cells[cell]
        for key in ("Random", "Oracle", "rl2", "rl2_half_width"):
            if not isinstance(values, dict) or not isinstance(values.get(key), int | float):
                raise ValueError(f"cell {cell!r}: no number under {key!r}")
        lo, hi = float(values["Random"]), float(values["Oracle"])
        if not hi > lo:
            raise ValueError(f"cell {cell!r}: Oracle={hi} is not above Random={lo}; "
                             "nothing to scale by")

        def norm(x: object, lo: float = lo, hi: float = hi) -> float | None:
            return None if x is None else (float(x) - lo) / (hi - lo)  # type: ignore[arg-type]

        ours, half = float(values["rl2"]), float(values["rl2_half_width"])
        yardstick = values.get("Gittins", values.get("PSRL"))
        points.append({"cell": cell, "ours": norm(ours), "low": norm(ours - half),
                       "high": norm(ours + half), "paper": norm(values.get("paper_rl2")),
                       "yardstick": norm(yardstick),
                       "yardstick_name": "Gittins" if "Gittins" in values else "PSRL"})
    return points


def plot_rl2_cells(results: dict[str, object], path: Path, title: str) -> None:
    """Forest plot of ``metarl bench rl2``'s results: one row per cell, normalised; atomic."""
    points = rl2_plot_points(results)
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(points) + 2.0), dpi=120)
    labelled: set[str] = set()

    def label(text: str) -> str | None:
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for y, p in zip(range(len(points))[::-1], points, strict=True):
        ours, low, high = (float(p[k]) for k in ("ours", "low", "high"))  # type: ignore[arg-type]
        ax.errorbar([ours], [y], xerr=[[ours - low], [high - ours]], fmt="o", color="tab:blue",
                    capsize=3, label=label("RL², ours (95% interval)"))
        if p["paper"] is not None:
            ax.plot([p["paper"]], [y], "x", color="tab:red", markersize=8,
                    label=label("RL², paper"))
        gittins = p["yardstick_name"] == "Gittins"
        yardstick = p["yardstick"]
        assert isinstance(yardstick, float | int), p
        ax.plot([yardstick], [y], "D" if gittins else "s", color="tab:green",
                markersize=5, label=label(f"{p['yardstick_name']}, ours"))
    ax.set_yticks(list(range(len(points)))[::-1], [str(p["cell"]) for p in points], fontsize=8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("return, normalised per cell: random 0, oracle (knows the task) 1")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7)
    fig.tight_layout()
    _save(fig, path)
