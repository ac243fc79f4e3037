"""dvc.yaml's plots: each declared once, on files a stage writes, with the columns it writes; the
adaptation curve drawn by the project's band template through DVC itself."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from metarl.evaluation import CurveSummary
from pipelines.plots import Curve, plot_adaptation_curves
from pipelines.stages import evaluate
from tests.conftest import REPO

TEMPLATE = REPO / ".dvc" / "plots" / "confidence_band.json"


def _dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _plots() -> dict[str, dict[str, Any]]:
    """Top-level plot id → its properties ({} for a bare file)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in _dvc_yaml()["plots"]:
        (plot_id, props), = (entry.items() if isinstance(entry, dict) else [(entry, {})])
        assert plot_id not in out, f"plot {plot_id} declared twice"
        out[plot_id] = props or {}
    return out


def _outs(stage: dict[str, Any]) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


def _summary() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    results = {name: CurveSummary(p := rng.normal(20, 3, size=(2, 3, 4)), p.mean(0).mean(1))
               for name in ("maml", *evaluate.BASELINES)}
    return evaluate.summarize(results, 40.0)


def test_each_plot_is_declared_once_on_a_file_one_stage_writes() -> None:
    stages = _dvc_yaml()["stages"]
    assert not [name for name, s in stages.items() if "plots" in s], \
        "plots are declared at the top level only"
    plots = _plots()
    assert set(plots) == {"plots/adaptation_curve.csv", "plots/train_curve.csv",
                          *(f"reports/figures/{n}.png" for n in
                            ("adaptation_curve", "scores", "improvement"))}
    for plot_id in plots:
        writers = [name for name, s in stages.items() if plot_id in _outs(s)]
        assert len(writers) == 1, f"{plot_id}: written by {writers}"


def test_the_curve_plot_reads_columns_the_evaluate_stage_writes() -> None:
    props = _plots()["plots/adaptation_curve.csv"]
    header = next(csv.reader(io.StringIO(evaluate.curve_csv(_summary()))))
    template = json.loads(TEMPLATE.read_text())
    fields = {props["x"], props["y"]} | {"learner", "ci_low", "ci_high"}
    assert props["template"] == TEMPLATE.stem and fields <= set(header), header
    text = json.dumps(template)
    assert all(f'"{f}"' in text for f in ("learner", "ci_low", "ci_high"))


def test_dvc_draws_the_band_and_lists_every_plot(tmp_path: Path) -> None:
    """`dvc plots show --json` on dvc.yaml and the template, with files the stages' own code
    writes: every plot once, the curve as the template's band under each learner's line."""
    root = tmp_path / "project"
    (root / "plots").mkdir(parents=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "CI": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=120)
    (root / ".dvc" / "plots").mkdir(exist_ok=True)
    shutil.copy2(TEMPLATE, root / ".dvc" / "plots" / TEMPLATE.name)
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    summary = _summary()
    (root / "plots/adaptation_curve.csv").write_text(evaluate.curve_csv(summary))
    (root / "plots/train_curve.csv").write_text(
        "iteration,train/return_pre_adapt,train/return_post_adapt\n0,1.0,2.0\n1,1.5,2.5\n")
    for name in ("adaptation_curve", "scores", "improvement"):
        plot_adaptation_curves({"x": Curve([1.0, 2.0], [0.5, 1.5], [1.5, 2.5])},
                               root / "reports" / "figures" / f"{name}.png", name)
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert not data.get("errors"), data["errors"]
    plots = data["data"]
    assert set(plots) == set(_plots())
    assert all(len(v) == 1 for v in plots.values())
    band = plots["plots/adaptation_curve.csv"][0]["content"]
    area, line = band["layer"]
    assert area["mark"]["type"] == "area" and line["mark"]["type"] == "line"
    assert (area["encoding"]["y"]["field"], area["encoding"]["y2"]["field"],
            line["encoding"]["y"]["field"]) == ("ci_low", "ci_high", "return")
    rows = band["data"]["values"]
    assert {r["learner"] for r in rows} == {"meta_learner", *evaluate.BASELINES}
    last = next(r for r in rows if r["learner"] == "meta_learner" and r["adapt_step"] == "2")
    assert [float(last["ci_low"]), float(last["ci_high"])] == \
        [round(v, 3) for v in summary["maml"]["ci95_k2"]]
    assert {p[0]["type"] for k, p in plots.items() if k.endswith(".png")} == {"image"}
