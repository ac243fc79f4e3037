"""The one logging hook the science package knows about."""

from __future__ import annotations

from typing import Protocol


class MetricLogger(Protocol):
    """Receives namespaced metrics (``train/return_pre_adapt``, ...) at an integer step."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` at ``step``."""
        ...


class NullLogger:
    """Discards everything."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Do nothing."""
