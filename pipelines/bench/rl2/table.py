"""The table of ``metarl bench rl2``: printing it, its JSON, and one table from cells run apart.

Intervals are mean ± 1.96 standard errors over instances; with several seeds a ``RL2 mean``
row averages each instance's return over the seeds. A cell counts as "at or above the paper"
when our RL² mean, rounded to the paper's one decimal, is at least the paper's RL² figure.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pipelines.bench.baselines import HEADER, Row, format_row, parse_cells
from pipelines.bench.rl2.params import DEFAULT_CELLS, VALIDATION_INSTANCES

SHARED_SETTINGS = ("instances", "instance_seed", "device")
"""Settings every cell of one table must share (the header line states them once); the cells
of one family also share their RL² settings and seeds (``bandit`` / ``bandit_seeds``, ...)."""
TABLE_SETTINGS = {"bandit": ("bandit_train_pulls", "bandit_select_every"),
                  "mdp": ("mdp_train_episodes", "mdp_select_every")}
"""Further settings the cells of one family share."""


@dataclasses.dataclass(frozen=True)
class CellRun:
    """One cell's rows (RL² per seed, their mean with several seeds, the baselines) and times."""

    table: str
    """``bandit`` or ``mdp``."""
    cell: str
    """``10x5`` or ``10``: the name ``--cells`` takes."""
    rows: list[Row]
    rl2_seconds: float
    """Wall-clock of RL²'s training and scoring, all seeds."""
    baseline_seconds: float
    workers: int = 1
    """Seeds trained at a time (``--workers``, capped at the seeds this cell trained)."""
    played_by: str | None = None
    """The cell (``--cells`` name) whose model, trained earlier in the run, played this one:
    its wall-clock is evaluation only, the training counted in that cell's line."""


def results_json(runs: Sequence[CellRun], reached: dict[str, list[int]],
                 settings: dict[str, Any]) -> dict[str, object]:
    """The table as nested numbers (DVC metrics), with what ``--combine`` needs to reprint it.

    Per cell (``"bandit n=10 k=5"``): RL² (the mean over seeds, 95% half-width), the paper's RL²,
    our baselines and the wall-clock, then every printed row (a list: DVC's metrics tables skip
    it); the count of cells at or above the paper; the run's settings.
    """
    cells: dict[str, dict[str, object]] = {}
    for run in runs:
        cell = cells.setdefault(f"{run.table} {run.rows[0].cell}",
                                {"paper_rl2": run.rows[0].paper})
        for row in run.rows:
            if row.method.startswith("RL2"):
                cell["rl2"], cell["rl2_half_width"] = row.ours, row.half_width  # last: mean
            else:
                cell[row.method] = row.ours
        cell["wall_clock_s"] = {"rl2": round(run.rl2_seconds, 1),
                                "baselines": round(run.baseline_seconds, 1)}
        cell["train_workers"] = run.workers
        cell["played_by"] = run.played_by
        cell["rows"] = [dataclasses.asdict(row) for row in run.rows]
    return {"cells": cells,
            "at_or_above_paper": {"bandit": reached["bandit"][0],
                                  "bandit_cells": reached["bandit"][1],
                                  "mdp": reached["mdp"][0], "mdp_cells": reached["mdp"][1]},
            "settings": settings}


def combine(cells: Sequence[str] | None, folder: Path, out: TextIO | None = None,
            json_path: Path | None = None) -> list[Row]:
    """Print one table from cells run apart (``--json FOLDER/<table>-<cell>.json`` each).

    What ``benchmarks/rl2/dvc.yaml`` does: one DVC stage per group of cells (so a cell's
    settings or seeds rerun that group alone), then this. The cells come in the order of
    ``cells`` (default :data:`~.params.DEFAULT_CELLS`); with ``json_path``, the combined
    :func:`results_json` goes there (atomically).

    Raises:
        ValueError: a cell's file is missing or not a ``bench rl2 --json`` file of that one
            cell, or the files disagree on a setting the table states once.

    """
    bandit, mdp = parse_cells(cells or DEFAULT_CELLS, "all")
    names = [("bandit", f"{n}x{k}") for n, k in bandit] + [("mdp", str(n)) for n in mdp]
    out = out or sys.stdout
    runs: list[CellRun] = []
    settings: dict[str, Any] = {}
    for table, cell in names:
        path = _cell_file(Path(folder), f"{table}-{cell}.json")
        run, run_settings = _read_cell(path, table, cell)
        for key in (*SHARED_SETTINGS, table, f"{table}_seeds", *TABLE_SETTINGS[table]):
            if key in settings and settings[key] != run_settings.get(key):
                raise ValueError(
                    f"--combine: {path} was run with {key}={run_settings.get(key)!r}, an "
                    f"earlier cell with {key}={settings[key]!r}; rerun the cells with one "
                    "setting")
            settings[key] = run_settings.get(key)
        runs.append(run)
    for table in ("bandit", "mdp"):
        settings.setdefault(table, {})
        settings.setdefault(f"{table}_seeds", [])
    print_header(settings, out)
    reached = {"bandit": [0, 0], "mdp": [0, 0]}
    for run in runs:
        report(run, reached, out)
    return finish(runs, reached, settings, out, json_path)


def _read_cell(path: Path, table: str, cell: str) -> tuple[CellRun, dict[str, Any]]:
    """The run and settings in ``path``, a ``bench rl2 --json`` file of ``cell`` alone."""
    import json

    try:
        data = json.loads(path.read_text())
        (entry,) = data["cells"].values()
        rows = [Row(**row) for row in entry["rows"]]
        played_by = entry.get("played_by")  # absent in files written before 2026-12-06
        if not isinstance(played_by, str | None):
            raise TypeError(f"played_by {played_by!r} is not a cell name")
        run = CellRun(table, cell, rows, float(entry["wall_clock_s"]["rl2"]),
                      float(entry["wall_clock_s"]["baselines"]),
                      int(entry.get("train_workers", 1)), played_by)
        settings = data["settings"]
    except FileNotFoundError:
        raise ValueError(f"--combine: no {path}; run the cell first: metarl bench rl2 "
                         f"--cells {cell} --json {path}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"--combine: {path} is not the `metarl bench rl2 --json` file of "
                         f"cell {cell} alone ({type(err).__name__}: {err})") from None
    if rows[0].table != table or rows[0].cell != row_cell(table, cell):
        raise ValueError(f"--combine: {path} holds cell {rows[0].table} {rows[0].cell}, "
                         f"not {table} {cell}")
    return run, settings


def _cell_file(folder: Path, name: str) -> Path:
    """``folder/name``, or the one file of that name in a subfolder of ``folder``.

    A subfolder holds a run of several cells (``--json-dir folder/<group>``); with none,
    ``folder/name`` (the caller says it is missing).

    Raises:
        ValueError: several subfolders hold one.

    """
    if (folder / name).exists():
        return folder / name
    found = sorted(folder.glob(f"*/{name}"))
    if len(found) > 1:
        raise ValueError(f"--combine: {', '.join(map(str, found))} all hold {name}; keep one")
    return found[0] if found else folder / name


def finish(runs: list[CellRun], reached: dict[str, list[int]], settings: dict[str, Any],
           out: TextIO, json_path: Path | None) -> list[Row]:
    """Print the count line, write the JSON (atomically) if asked; all the rows."""
    print(f"cells at or above the paper's RL² (ours rounded to 0.1): "
          f"{reached['bandit'][0]}/{reached['bandit'][1]} bandit, "
          f"{reached['mdp'][0]}/{reached['mdp'][1]} MDP", file=out, flush=True)
    if json_path is not None:
        from pipelines.io import atomic_write_json

        atomic_write_json(Path(json_path), results_json(runs, reached, settings))
    return [row for run in runs for row in run.rows]


def row_cell(table: str, cell: str) -> str:
    """``10x5`` → ``n=10 k=5``, ``10`` → ``n=10``: the cell as the table's rows name it."""
    return "n=" + cell.replace("x", " k=") if table == "bandit" else f"n={cell}"


def print_header(settings: dict[str, Any], out: TextIO) -> None:
    """Print what the table was run with (instances, seeds, training lengths), the columns."""
    bandit, mdp = settings["bandit_seeds"], settings["mdp_seeds"]
    seeds = (f"{bandit or mdp}" if not (bandit and mdp) or bandit == mdp
             else f"{bandit} (bandit), {mdp} (MDP)")
    print(f"RL² (Duan et al. 2016) on Tables 1-2 cells: {settings['instances']} test instances "
          f"per cell (those of `metarl bench baselines --seed {settings['instance_seed']}`), "
          f"training seeds {seeds}, torch threads 1, device {settings['device']}", file=out)
    if bandit and settings.get("bandit_train_pulls"):
        m = settings["bandit_train_pulls"]
        print(f"bandit cells: RL² trains on trials of at most {m} pulls (a longer cell is "
              f"played by the {m}-pull cell's model)", file=out)
    m = settings.get("mdp_train_episodes") if mdp else None
    if isinstance(m, int):
        print(f"MDP cells: RL² trains on trials of at most {m} episodes (a longer cell is "
              f"played by the {m}-episode cell's model)", file=out)
    elif m:
        listed = ", ".join(map(str, m[:-1])) + f" and {m[-1]}"
        print(f"MDP cells: RL² trains on trials of {listed} episodes in turn, one iteration "
              f"each (every cell of {m[0]} episodes or more is played by that one model)",
              file=out)
    for name, key in (("bandit", "bandit"), ("MDP", "mdp")):
        if settings.get(f"{key}_select_every"):
            print(f"{name} cells: RL² keeps, of checks every {settings[f'{key}_select_every']} "
                  f"training iterations, the weights that scored best on the tuning instances "
                  f"({VALIDATION_INSTANCES} per cell it plays, apart from the test instances)",
                  file=out)
        if settings.get(key):
            print(f"{name} cells: RL² settings {settings[key]} (in place of the presets')",
                  file=out)
    print(HEADER, file=out)
    print("-" * len(HEADER), file=out, flush=True)


def report(run: CellRun, reached: dict[str, list[int]], out: TextIO) -> None:
    """Print a cell's rows and wall-clock; count it against the paper's RL² figure."""
    for row in run.rows:
        print(format_row(row), file=out)
    seeds = "all seeds"
    if run.played_by is not None:
        seeds = ("all seeds, evaluation only: training is counted in the "
                 f"{row_cell(run.table, run.played_by)} cell's line")
    elif run.workers > 1:
        seeds = f"all seeds, trained {run.workers} at a time"
    print(f"  wall-clock: RL² {run.rl2_seconds:.0f} s ({seeds}), baselines "
          f"{run.baseline_seconds:.0f} s", file=out, flush=True)
    ours = [r for r in run.rows if r.method.startswith("RL2")][-1]
    if ours.paper is not None:
        reached[run.table][1] += 1
        reached[run.table][0] += int(round(ours.ours, 1) >= ours.paper)
