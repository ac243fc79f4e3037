"""Who runs a piece of work, and whether that process is gone: one rule for every record.

MLflow runs (``metarl.host`` / ``metarl.pid`` / ``metarl.started`` tags) and Optuna trials
(``worker_host`` / ``worker_pid`` / ``worker_started`` user attributes) record the process that
owns them. A ``kill -9`` leaves them RUNNING; the next process that looks ends those whose
owner is gone. Only an owner on this host can be judged; a pid reused since (another process
started later under the same number) counts as gone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


def _process_state(pid: int) -> tuple[str, int] | None:
    """Linux: state letter and start time (clock ticks since boot) of ``pid``; else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Worker:
    """A process: its host, pid and start time (None where the OS does not say)."""

    host: str
    pid: int
    started: int | None

    @classmethod
    def current(cls) -> Worker:
        """The running process."""
        state = _process_state(os.getpid())
        return cls(socket.gethostname(), os.getpid(), state[1] if state else None)

    def is_gone(self) -> bool:
        """Whether this worker, on this host, has exited (False for another host's)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # another user's process: it exists
        state = _process_state(self.pid)
        if state is None:
            return False
        return state[0] == "Z" or (self.started is not None and state[1] != self.started)

    def as_strings(self) -> dict[str, str]:
        """``host``, ``pid`` and ``started`` as strings (MLflow tags)."""
        return {"host": self.host, "pid": str(self.pid),
                "started": "" if self.started is None else str(self.started)}

    @classmethod
    def from_strings(cls, host: str | None, pid: str | None, started: str | None
                     ) -> Worker | None:
        """The worker recorded as strings, or None when no pid was recorded."""
        if host is None or pid is None or not pid.isdigit():
            return None
        return cls(host, int(pid), int(started) if started and started.isdigit() else None)
