"""The DVC project as a user sees it: `dvc exp show` / `dvc metrics show` list the main pipeline's
params and headline metrics only, `benchmarks/rl2` is a DVC project of its own, and the stages go
stale exactly when the code or params they run change.

One copy of the repo's tracked files (as a fresh clone has them), with stand-in outputs and a
`dvc commit` in place of a run: no stage runs, so this takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.paths import Paths
from pipelines.stages.register import write_summary
from tests.conftest import copy_repo

MAX_COLUMNS = 82  # 81 with tune.sampler and tune.pruner
MAIN_STAGES = {"tasks", "tune", "train", "evaluate", "register", "report"}
TASK_STAGES = MAIN_STAGES - {"report"}  # the stages with the `task` params
LEARNERS = ("maml", "pretrained", "scratch", "random")


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(CI="true", DVC_NO_ANALYTICS="1")
    result = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, f"dvc {args}:\n{result.stdout}\n{result.stderr}"
    return result


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                   cwd=root, check=True, capture_output=True)


def _meta_test() -> dict[str, Any]:
    """A ``metrics/meta_test.json`` of the evaluate stage's shape (3 adaptation steps)."""
    out: dict[str, Any] = {"learner": "maml", "oracle_kind": "closed-form",
                           "oracle_return": 200.0, "random_return": 30.0,
                           "reference_baselines": {}, "seeds": [0, 1, 2],
                           "test_task_hash": "0123456789abcdef"}
    for i, name in enumerate(LEARNERS):
        returns = [30.0 + 10 * i * k for k in range(4)]
        out[name] = {"return_pre_adapt": returns[0],
                     **{f"return_post_adapt_k{k}": returns[k] for k in (1, 2, 3)},
                     **{f"ci95_k{k}": [r - 1, r + 1] for k, r in enumerate(returns)},
                     "normalized_pre_adapt": (returns[0] - 30) / 170,
                     "normalized_post_adapt": (returns[3] - 30) / 170}
    return out


def _register() -> dict[str, Any]:
    """A ``metrics/register.json`` of the register stage's shape (a first version)."""
    return {"model_name": "metarl-cartpole-maml", "version": 1, "promoted": True,
            "reason": "promoted to @champion: ...", "score": 0.5, "reference": "pretrained",
            "reference_score": 0.35, "difference": 0.15, "ci": [0.05, 0.25], "level": 0.95,
            "margin": 0.02, "units": "normalized",
            "baselines": {"pretrained": 0.35, "scratch": 0.18, "random": 0.0},
            "champion_score_before": None, "champion_version_before": None,
            "test_task_hash": "0123456789abcdef", "seeds": [0, 1, 2], "reused_version": False}


def _write_outputs(root: Path) -> None:
    """Stand-ins for every output of dvc.yaml, the metrics through the stages' own code."""
    for rel in ("data/tasks/train.json", "data/tasks/val.json", "data/tasks/test.json",
                "tuning/best_params.yaml", "tuning/study.journal", "models/maml.pt",
                "train_state/state.pt", "plots/train_curve.csv", "plots/adaptation_curve.csv",
                "plots/adaptation_curve.png", "reports/meta_test.md", "reports/model_card.md",
                "reports/report.html",
                "reports/figures/adaptation_curve.png", "reports/figures/scores.png",
                "reports/figures/improvement.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("stand-in\n")
    metrics = root / "metrics"
    (metrics / "meta_test.json").write_text(json.dumps(_meta_test()))
    register = _register()
    (metrics / "register.json").write_text(json.dumps(register))
    write_summary(Paths(root), register, "maml")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A git copy of the repo whose dvc.lock matches its code, params and stand-in outputs."""
    root = copy_repo(tmp_path_factory.mktemp("dvc") / "repo")
    _write_outputs(root)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "copy")
    _dvc(root, "commit", "-f", "-q")  # dvc.lock: what the stages saw (no stage runs)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "locked")
    yield root


def _status(root: Path) -> dict[str, Any]:
    """``dvc status --json`` of every pipeline the project collects."""
    return json.loads(_dvc(root, "status", "--json").stdout or "{}")


def test_exp_show_lists_only_the_main_pipeline(project: Path) -> None:
    header = _dvc(project, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert len(header) <= MAX_COLUMNS, f"{len(header)} columns: {header}"
    assert not [c for c in header if "benchmarks" in c], header
    params = yaml.safe_load((project / "params.yaml").read_text())
    deps = {d for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
            for d in stage["deps"]}
    summary = json.loads((project / "metrics/summary.json").read_text())
    columns = {"Experiment", "rev", "typ", "Created", "parent"} | deps
    prefixes = tuple(f"{key}." for key in (*params, *summary))
    strays = [c for c in header if c not in columns and not c.startswith(prefixes)]
    assert not strays, f"columns from outside the main pipeline: {strays}"
    assert {"meta_learner.post", "pretrained.post", "gate.promoted", "gate.ci_low",
            "task.cartpole.max_steps", "algo.maml.inner_lr", "pipelines"} <= set(header)
    # meta_test.json and register.json are outputs, not metrics; other families' sections
    # and RL²'s are not in params.yaml
    assert not {"learner", "reason", "oracle_return", "maml.return_pre_adapt"} & set(header)
    assert not [c for c in header if c.startswith(("task.nav2d.", "algo.rl2."))]


def test_metrics_show_is_the_headline_file(project: Path) -> None:
    shown = json.loads(_dvc(project, "metrics", "show", "--json").stdout)
    files = {f for rev in shown.values() for f in rev.get("data", {})}
    assert files == {"metrics/summary.json"}
    summary = json.loads((project / "metrics/summary.json").read_text())
    assert summary["meta_learner"] == {"pre": 0.0, "post": 0.0, "return_pre": 30.0,
                                       "return_post": 30.0}
    assert summary["pretrained"] == {"pre": 0.0, "post": pytest.approx(30 / 170)}
    assert set(summary["random"]) == {"pre"}
    assert summary["gate"] == {"version": 1, "promoted": True, "score": 0.5,
                               "reference": "pretrained", "reference_score": 0.35,
                               "difference": 0.15, "ci_low": 0.05, "ci_high": 0.25}


def test_only_the_code_a_stage_runs_makes_it_stale(project: Path) -> None:
    assert _status(project) == {}
    edits = {"pipelines/bench/baselines.py": set(), "pipelines/flows.py": set(),
             "benchmarks/rl2/params.yaml": set(), "metarl/envs/cartpole.py": MAIN_STAGES,
             "pipelines/settings.py": MAIN_STAGES}
    for rel, stale in edits.items():
        path = project / rel
        text = path.read_text()
        path.write_text(text + "\n# an edit\n")
        try:
            assert set(_status(project)) == stale, rel
        finally:
            path.write_text(text)
    assert _status(project) == {}


@pytest.mark.parametrize(("key", "value", "stale"), [
    ("task.family", "nav2d", TASK_STAGES),
    ("algo.name", "rl2", {"tune", "train"}),
    ("algo.name", "reptile", {"tune", "train"}),
])
def test_a_family_or_algorithm_without_its_section_in_params_yaml(
        project: Path, key: str, value: str, stale: set[str]) -> None:
    """`dvc exp run -S task.family=nav2d` / `-S algo.name=rl2`: the stages' params resolve
    (a `task.${task.family}` params entry failed here: "Parameters 'task.nav2d' are missing
    from 'params.yaml'") and the section's embedded defaults are what the stages read."""
    path = project / "params.yaml"
    text = path.read_text()
    params = yaml.safe_load(text)
    section, name = key.split(".")
    assert value not in params[section], "the section is not in the file"
    params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert set(_status(project)) == stale
        _dvc(project, "commit", "-f", "-q")  # what a run saves: fails on a missing param
        assert _status(project) == {}
    finally:
        path.write_text(text)
        _dvc(project, "commit", "-f", "-q")
    assert _status(project) == {}


def test_the_rl2_bench_is_a_dvc_project_of_its_own(project: Path) -> None:
    bench = project / "benchmarks" / "rl2"
    stages = yaml.safe_load((bench / "dvc.yaml").read_text())["stages"]
    listed = _dvc(bench, "stage", "list", "--name-only").stdout.split()
    assert {s.split("@")[0] for s in listed} == set(stages)
    assert set(_status(bench)) <= set(listed)  # its own stages only (not the main pipeline's)
    # the root does not collect it: its stages are not in the root's status (above: {}), and
    # a target inside it is the subproject's
    assert _dvc(project, "status", "benchmarks/rl2/dvc.yaml", check=False).returncode != 0
