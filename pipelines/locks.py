"""Exclusive locks that a killed holder cannot leave behind, on one machine or on many.

* :func:`file_lock`: an ``flock`` on a file (or a directory): the kernel drops it when its
  holder's process exits, however it exits. One machine (or a file system with working
  ``flock``).
* :func:`advisory_lock`: a PostgreSQL session-level advisory lock on a server every machine
  reaches: the server drops it when the holder's connection goes, so a ``kill -9``'d holder
  on any machine releases it within the TCP keep-alive of the server.

What takes them: the tune stage's count-and-create of a trial (many workers, one study) and the
register stage's gate (many pipelines, one registry); :func:`exclusive` picks the kind from a
URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.1
"""Seconds between attempts while another holder has the lock."""


class LockTimeout(RuntimeError):
    """Another holder kept the lock for the whole timeout."""


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of ``name`` (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def file_lock(path: Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; a directory is opened as is).

    Raises:
        LockTimeout: another process held it for ``timeout`` seconds (None: wait forever).

    """
    import fcntl

    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} was held by another process for {timeout:.0f} s"
                                      ) from None
                time.sleep(POLL_S)
        yield path
    finally:
        os.close(fd)  # drops the lock


def _engine(url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy

    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


@contextlib.contextmanager
def advisory_lock(url: str, name: str, timeout: float | None = None) -> Iterator[int]:
    """Hold PostgreSQL's session advisory lock ``name`` on the server of ``url`` (yields its key).

    A connection of its own holds it for the ``with`` block; closing it (or the holder dying)
    releases it.

    Raises:
        LockTimeout: another session held it for ``timeout`` seconds (None: wait forever).

    """
    import sqlalchemy

    key = lock_key(name)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                   {"k": key}).scalar()
                conn.commit()
                if got:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"the advisory lock {name!r} on the PostgreSQL server was "
                                      f"held by another session for {timeout:.0f} s")
                time.sleep(POLL_S)
            try:
                yield key
            finally:
                with contextlib.suppress(Exception):  # a lost connection released it already
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
    finally:
        engine.dispose()


def is_postgresql(url: str) -> bool:
    """Whether ``url`` is a PostgreSQL URL (``postgresql://``, ``postgresql+psycopg2://``...)."""
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextlib.contextmanager
def exclusive(where: str, name: str, timeout: float | None = None) -> Iterator[str]:
    """The lock ``name`` at ``where``: a PostgreSQL URL's advisory lock, else a file's flock.

    Yields a description of the lock for messages.
    """
    if is_postgresql(where):
        with advisory_lock(where, name, timeout):
            yield f"PostgreSQL advisory lock {name!r}"
    else:
        with file_lock(Path(where), timeout) as path:
            yield str(path)
