"""PNG plots (DVC's HTML plots load JavaScript from a CDN; a PNG needs nothing)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from metarl.evaluation import CurveSummary


def plot_adaptation_curves(results: dict[str, CurveSummary], path: Path, title: str,
                           oracle: float | None = None) -> None:
    """Return vs adaptation step per learner, with 95% bands and the oracle; atomic write."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if oracle is not None:
        ax.axhline(oracle, color="black", linestyle="--", linewidth=1, label="oracle")
    for name, s in results.items():
        steps = range(len(s.mean))
        ax.plot(steps, s.mean, marker="o", label=name)
        ax.fill_between(steps, s.ci_low, s.ci_high, alpha=0.2)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("mean episode return")
    ax.set_xticks(list(range(len(next(iter(results.values())).mean))))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
