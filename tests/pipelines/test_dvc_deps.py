"""dvc.yaml's dependencies cannot drift from the code a stage runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO, imported_modules


def _module_file(module: str) -> Path | None:
    base = REPO / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def reachable(start: str, packages: tuple[str, ...] = ("pipelines", "metarl")) -> set[Path]:
    """The files of ``packages`` that ``start`` imports, directly or not (lazy imports too)."""
    seen: set[str] = set()
    todo = [start]
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        files.add(path.relative_to(REPO))
        todo += [n for n in imported_modules(path, module_level_only=False)
                 if n.split(".")[0] in packages]
    return files


def _covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def _stage_code() -> set[Path]:
    """What `metarl stage NAME` runs: the CLI's stage path (runner → stages → the rest)."""
    return reachable("pipelines.runner") | {Path("pipelines/cli.py")}


def test_every_stage_depends_on_all_the_code_it_can_reach() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    code = _stage_code()
    assert Path("pipelines/stages/register.py") in code and Path("metarl/envs/cartpole.py") \
        in code and Path("pipelines/stats.py") in code, \
        "the import walk found the stages, the report and the physics"
    for name, stage in stages.items():
        deps = [d for d in stage["deps"] if not d.startswith(("data/", "tuning/", "models",
                                                              "metrics/"))]
        missing = sorted(str(p) for p in code if not _covered(p, deps))
        assert not missing, f"stage {name} does not depend on {missing}"
        assert "metarl" in deps, f"stage {name}: the whole metarl package"


def test_the_code_dvc_ignores_is_code_no_stage_runs() -> None:
    """.dvcignore drops pipelines/bench/ and flows.py from the `pipelines` dependency (a bench
    edit reruns nothing); it must never drop a file a stage imports."""
    code = sorted(str(p) for p in _stage_code())
    ignored = subprocess.run(["dvc", "check-ignore", *code], cwd=REPO, capture_output=True,
                             text=True)
    assert ignored.returncode == 1, f"dvc ignores code the stages run: {ignored.stdout}"
    outside = ["pipelines/bench/baselines.py", "pipelines/bench/__init__.py",
               "pipelines/flows.py"]
    assert not {Path(p) for p in outside} & set(_stage_code())
    ignored = subprocess.run(["dvc", "check-ignore", *outside], cwd=REPO, capture_output=True,
                             text=True)
    assert ignored.stdout.split() == outside, ignored.stdout + ignored.stderr
