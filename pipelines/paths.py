"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """Every artifact path of one project checkout."""

    root: Path
    params_file: Path | None = None
    """The params file the stage was started with, when not ``<root>/params.yaml``."""

    @property
    def params(self) -> Path:
        """params.yaml (or the file the stage was started with)."""
        return self.params_file or self.root / "params.yaml"

    def task_set(self, split: str) -> Path:
        """``data/tasks/<split>.json``."""
        return self.root / "data" / "tasks" / f"{split}.json"

    @property
    def tuning(self) -> Path:
        """Tuning outputs."""
        return self.root / "tuning"

    @property
    def study_journal(self) -> Path:
        """The tune stage's default study journal (a persisted DVC output; empty for a database)."""
        return self.tuning / "study.journal"

    @property
    def best_params(self) -> Path:
        """Best hyperparameters found by the tune stage (read by train)."""
        return self.tuning / "best_params.yaml"

    @property
    def models(self) -> Path:
        """Checkpoints written by train."""
        return self.root / "models"

    @property
    def train_state(self) -> Path:
        """Resumable training state of the train stage (a DVC ``persist`` output)."""
        return self.root / "train_state"

    @property
    def metrics(self) -> Path:
        """Metric JSON files."""
        return self.root / "metrics"

    @property
    def plots(self) -> Path:
        """Plot CSV/PNG files."""
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        """Human-readable reports."""
        return self.root / "reports"

    def resolve(self, path: str) -> Path:
        """A configured path, relative to the root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p
