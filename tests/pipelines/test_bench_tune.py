"""``metarl bench tune`` on a real PostgreSQL server: one study per worker count, its table."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.slow  # real servers: tens of seconds


def test_bench_tune_prints_one_row_per_worker_count(postgres: Any, tmp_path: Any,
                                                    capsys: Any) -> None:
    out = tmp_path / "tune.md"
    assert main(["bench", "tune", "--workers", "1", "2", "--trials", "3", "--iterations", "2",
                 "--storage", postgres.url("postgres"), "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[2:]]
    assert [int(r[0]) for r in rows] == [1, 2]
    assert [int(r[1]) for r in rows] == [3, 3]  # every study complete, no trial twice
    assert rows[0][4].strip() == "1.00×"
    for r in rows:
        wall, per_hour = float(r[2]), float(r[3])
        # the printed wall-clock has 0.1 s: trials/hour agrees with it to that rounding
        assert 3600 * 3 / (wall + 0.05) - 1 <= per_hour <= 3600 * 3 / (wall - 0.05) + 1
        assert 0 < float(r[7]) < 5000  # the count-and-create latency, ms
    assert "| workers |" in capsys.readouterr().out
