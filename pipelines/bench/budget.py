"""Equal env-step budgets for the benches: how many iterations a budget buys, steps counted."""

from __future__ import annotations

import os
import sys
from typing import Any

from metarl.algos.registry import Algorithm


class StepCounter:
    """A :class:`~metarl.logging.MetricLogger` adding up each iteration's ``train/env_steps``.

    With a ``total`` (the budget), it also shows a progress bar of env steps on stderr, named
    ``label`` (off with ``METARL_NO_PROGRESS=1``), closed by :meth:`close`.
    """

    def __init__(self, total: float | None = None, label: str = "") -> None:
        self.env_steps = 0.0
        self.bar: Any = None
        if total is not None and not os.environ.get("METARL_NO_PROGRESS"):
            from tqdm import tqdm

            self.bar = tqdm(total=int(total), desc=label, unit=" steps", unit_scale=True,
                            leave=False, file=sys.stderr, dynamic_ncols=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Count this iteration's env steps."""
        steps = metrics.get("train/env_steps", 0.0)
        self.env_steps += steps
        if self.bar is not None:
            self.bar.update(int(steps))

    def close(self) -> None:
        """Close the progress bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def iterations_within(algo: Algorithm, config: Any, budget: int, horizon: int,
                      trial: int) -> int:
    """The most meta-iterations (at least 1) whose episodes × ``horizon`` fit in ``budget``.

    The registry's ``episodes`` counts what a run of ``n`` iterations collects (an off-policy
    learner's initial collection included), so the bound holds for every algorithm alike.
    """
    def steps(n: int) -> int:
        return algo.episodes(config, n, trial) * horizon

    low, high = 1, 1
    while steps(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:  # steps(low) fits (or low is 1), steps(high) does not
        mid = (low + high) // 2
        low, high = (mid, high) if steps(mid) <= budget else (low, mid)
    return low
