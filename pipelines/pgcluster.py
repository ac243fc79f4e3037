"""A throwaway PostgreSQL cluster on loopback, from the Debian binaries (``initdb``, ``pg_ctl``).

What the tests and ``metarl bench tune`` run the scaled-out pipeline against: a real server,
started in a temporary directory on a free port of 127.0.0.1 with a password (scram-sha-256),
stopped and deleted when the ``with`` block ends, however it ends. Run as root (CI), the server
runs as the ``postgres`` user Debian's package creates, since PostgreSQL refuses to run as root.

A real deployment runs its own server; only the URL changes (README, "Run it on a cluster").
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "metarl"
"""The cluster's superuser (its password is random per cluster)."""


class ClusterError(RuntimeError):
    """PostgreSQL is not installed, or its server did not start."""


def bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them off ``PATH``).

    Raises:
        ClusterError: PostgreSQL is not installed, saying how to install it.

    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise ClusterError("PostgreSQL's initdb was not found: install it (Debian: apt-get "
                       "install -y postgresql) or point tune.storage at your own server")


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    """A running cluster: where it listens and how to reach it."""

    port: int
    password: str
    directory: Path
    bindir: Path
    run_as: tuple[str, ...]

    def url(self, database: str = USER, driver: str = "postgresql") -> str:
        """A SQLAlchemy URL of ``database`` (``postgresql+psycopg2``-compatible)."""
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (an identifier); return its URL."""
        import psycopg2

        if not name.isidentifier():
            raise ValueError(f"database name {name!r}: use letters, digits and underscores")
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER,
                                password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _owner() -> tuple[tuple[str, ...], int | None, int | None]:
    """How to run the server's tools: as ``postgres`` when this process is root."""
    if os.geteuid() != 0:
        return (), None, None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as err:
        raise ClusterError("running as root, and there is no postgres user to run the server "
                           "as (Debian's postgresql package creates it)") from err
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ClusterError("running as root without runuser(1) to start the server as "
                           "postgres")
    return (runuser, "-u", "postgres", "--"), entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def throwaway_cluster(timeout_s: int = 60) -> Iterator[Cluster]:
    """Start a cluster on a free loopback port; stop and delete it afterwards.

    Raises:
        ClusterError: PostgreSQL is missing or did not start within ``timeout_s``.

    """
    tools = bindir()
    run_as, uid, gid = _owner()
    directory = Path(tempfile.mkdtemp(prefix="metarl-pg-"))
    password = secrets.token_hex(12)
    pwfile = directory / "pw"
    pwfile.write_text(password + "\n")
    if uid is not None and gid is not None:
        os.chown(directory, uid, gid)
        os.chown(pwfile, uid, gid)
    cluster = Cluster(free_port(), password, directory, tools, run_as)
    data, log = directory / "data", directory / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*run_as, *args], capture_output=True, text=True,
                              timeout=timeout_s + 30, check=False)

    started = False
    try:
        init = run(str(tools / "initdb"), "-D", str(data), "-U", USER, "-A", "scram-sha-256",
                   f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
        if init.returncode != 0:
            raise ClusterError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        options = (f"-p {cluster.port} -k {directory} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        start = run(str(tools / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                    "-w", "-t", str(timeout_s), "start")
        if start.returncode != 0:
            text = log.read_text() if log.exists() else start.stderr
            raise ClusterError(f"the PostgreSQL server did not start: {text.strip()[-2000:]}")
        started = True
        yield cluster
    finally:
        if started:
            run(str(tools / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)
