"""``metarl bench tune``: tuning throughput against PostgreSQL with 1, 2, ... worker processes.

For each worker count, a fresh database of one PostgreSQL server (a throwaway one on loopback
from the Debian binaries, or ``--storage``'s server) holds a study of ``--trials`` trials of
the repo's pipeline (``tune.sampler: random``, each trial ``--iterations`` meta-iterations of
``--algorithm`` on ``--family``), run by the tune stage with ``tune.n_workers`` processes of one
torch thread each. The table gives the wall-clock, trials/hour and its ratio to one worker, the
mean trial's own duration, and the workers' utilisation (the trials' time over workers × wall):
what is not utilisation is start-up (importing torch and MLflow in each worker), the wait for
the last trials, and the count-and-create under the study's lock.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Throughput:
    """One worker count's run."""

    workers: int
    trials: int
    seconds: float
    trial_seconds: float
    """Mean duration of a trial (its start to its end in the study)."""
    lock_ms: float
    """Mean time to count the trials and create one under the lock, alone (ms)."""

    @property
    def per_hour(self) -> float:
        """Finished trials per hour of wall-clock."""
        return 3600.0 * self.trials / self.seconds

    @property
    def utilisation(self) -> float:
        """The trials' own time over workers × wall-clock."""
        return self.trials * self.trial_seconds / (self.workers * self.seconds)


@contextlib.contextmanager
def _server(storage: str | None) -> Iterator[Any]:
    """``create(name) -> URL`` of a fresh database: on ``storage``'s server, or a throwaway."""
    if storage is not None:
        import sqlalchemy

        def create(name: str) -> str:
            engine = sqlalchemy.create_engine(storage, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
            engine.dispose()
            return sqlalchemy.engine.make_url(storage).set(database=name).render_as_string(
                hide_password=False)

        yield create
        return
    from pipelines.pgcluster import throwaway_cluster

    with throwaway_cluster() as cluster:
        yield cluster.create_database


def _project(root: Path, family: str, algorithm: str, trials: int, iterations: int,
             workers: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["task"]["family"] = family
    params["algo"]["name"] = algorithm
    params["tune"].update(n_trials=trials, num_iterations=iterations, eval_every=iterations,
                          sampler="random", pruner="none", n_workers=workers)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def lock_latency(url: str, name: str, repeats: int = 50) -> float:
    """Mean ms of the count-and-create critical section: lock, read the trials, create one."""
    import optuna

    from pipelines.stages.tune import creation_lock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name=name, storage=storage)
    started = time.perf_counter()
    for _ in range(repeats):
        with creation_lock(url, None, name):
            study.get_trials(deepcopy=False)
            trial = study.ask()
        study.tell(trial, 0.0)
    return 1000.0 * (time.perf_counter() - started) / repeats


def bench_tune(workers: Sequence[int] = (1, 2), trials: int = 8, iterations: int = 6,
               family: str = "cartpole", algorithm: str = "maml",
               storage: str | None = None) -> dict[str, Any]:
    """Run the study once per worker count; print and return the table."""
    import optuna

    from pipelines.runner import run_stage
    from pipelines.stages import tune

    if not workers or min(workers) < 1 or trials < 1 or iterations < 1:
        raise ValueError(f"--workers={list(workers)}, --trials={trials}, --iterations="
                         f"{iterations}: each must be >= 1")
    rows: list[Throughput] = []
    saved = os.environ.get(tune.STORAGE_ENV)
    with _server(storage) as create, tempfile.TemporaryDirectory(prefix="metarl-bench-") as tmp:
        print(f"tuning {algorithm} on {family}: {trials} random-search trials of {iterations} "
              f"iterations per worker count, PostgreSQL storage", flush=True)
        try:
            for n in workers:
                url = create(f"bench_tune_{n}_{os.getpid()}")
                root = Path(tmp) / f"w{n}"
                _project(root, family, algorithm, trials, iterations, n)
                os.environ[tune.STORAGE_ENV] = url
                run_stage("tasks", root)
                started = time.perf_counter()
                run_stage("tune", root)
                seconds = time.perf_counter() - started
                storage_ = optuna.storages.RDBStorage(url)
                (name,) = optuna.get_all_study_names(storage_)
                durations = [(t.datetime_complete - t.datetime_start).total_seconds()
                             for t in optuna.load_study(study_name=name, storage=storage_)
                             .get_trials() if t.datetime_complete is not None
                             and t.datetime_start is not None and t.state.is_finished()]
                mean = sum(durations) / max(len(durations), 1)
                latency = lock_latency(url, name + "-lock")
                rows.append(Throughput(n, len(durations), seconds, mean, latency))
                print(f"  {n} worker(s): {len(durations)} trials in {seconds:.1f} s", flush=True)
        finally:
            if saved is None:
                os.environ.pop(tune.STORAGE_ENV, None)
            else:
                os.environ[tune.STORAGE_ENV] = saved
    base = rows[0].per_hour / rows[0].workers if rows else 1.0
    lines = ["| workers | trials | wall s | trials/hour | ratio to 1 worker | mean trial s | "
             "utilisation | count-and-create ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.workers} | {r.trials} | {r.seconds:.1f} | {r.per_hour:.0f} | "
                     f"{r.per_hour / base:.2f}× | {r.trial_seconds:.2f} | "
                     f"{r.utilisation:.0%} | {r.lock_ms:.1f} |")
    text = "\n".join(lines)
    print(text)
    return {"table": text, "rows": [r.__dict__ for r in rows]}
