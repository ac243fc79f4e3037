"""params.yaml holds the default run's sections only; the rest are embedded defaults, which
`metarl defaults SECTION` prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metarl.algos.rl2 import RL2Config
from metarl.config import to_dict
from metarl.envs.nav2d import Nav2DFamilyConfig
from metarl.families import FAMILIES
from pipelines.cli import main
from pipelines.settings import PipelineConfig, load_config
from tests.conftest import REPO


def _repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_defaults_prints_the_sections_params_yaml_leaves_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["defaults", "task.nav2d", "algo.rl2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == {"task": {"nav2d": to_dict(Nav2DFamilyConfig())},
                       "algo": {"rl2": to_dict(RL2Config())}}
    assert main(["defaults", "tune.storage"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"tune": {"storage":
                                                                PipelineConfig().tune.storage}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_section_left_out_is_the_same_as_its_printed_defaults_pasted_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str) -> None:
    params = _repo_params()
    params["task"]["family"] = family
    params["algo"]["name"] = "rl2"
    left_out = tmp_path / "left_out.yaml"
    left_out.write_text(yaml.safe_dump(params))
    assert main(["defaults", f"task.{family}", "algo.rl2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    params["task"][family] = printed["task"][family]
    params["algo"]["rl2"] = printed["algo"]["rl2"]
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(yaml.safe_dump(params))
    assert load_config(left_out) == load_config(pasted)


def test_params_yaml_holds_the_chosen_family_and_algorithm_only() -> None:
    params = _repo_params()
    assert set(params["task"]) & set(FAMILIES) == {params["task"]["family"]}
    assert set(params["algo"]) == {"name", "maml", "family_overrides"}


@pytest.mark.parametrize(("section", "message"), [
    ("task.nav3d", "section='task.nav3d': params.yaml has no such section; valid under task: "),
    ("algo.rl2.lr.x", "section='algo.rl2.lr.x': algo.rl2.lr is a value"),
    ("nope", "section='nope': params.yaml has no such section; valid ones: ['algo', "),
])
def test_defaults_of_a_section_that_does_not_exist_names_it(
        capsys: pytest.CaptureFixture[str], section: str, message: str) -> None:
    assert main(["defaults", section]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
