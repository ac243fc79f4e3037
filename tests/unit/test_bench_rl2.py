"""``metarl bench rl2``: its presets, options, table, checkpoints, workers and DVC layout."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from metarl.algos.rl2 import RL2, RL2Config
from metarl.config import ConfigError, to_dict
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from pipelines.bench.rl2.presets import (
    BANDIT_PRESETS_PATH,
    MDP_PRESETS_PATH,
    bandit_config,
    default_iterations,
    load_presets,
    mdp_config,
)

torch.set_num_threads(1)

# The bench's settings as the code held them before they became data files (RL2Config's
# defaults of then resolved): the presets must give exactly these, so its numbers cannot move.
BANDIT_10 = {
    "hidden_size": 64, "meta_batch_size": 128, "trials_per_task": 8, "discount": 0.99,
    "gae_lambda": 0.3, "lr": 0.006, "lr_drop_at": 0, "lr_drop_to": 0.0001, "num_epochs": 4,
    "num_minibatches": 4, "clip_eps": 0.2, "value_coef": 0.5, "entropy_coef": 0.02,
    "max_grad_norm": 0.5, "bptt_length": 0, "normalize_advantages": True, "reward_scale": 1.0,
    "init_std": 0.5, "inputs": "paper", "head": "linear", "trial_clock": False,
    "reward_signal": "sampled"}
BANDIT_100 = {
    "hidden_size": 64, "meta_batch_size": 128, "trials_per_task": 4, "discount": 0.999,
    "gae_lambda": 0.8, "lr": 0.006, "lr_drop_at": 0, "lr_drop_to": 0.0001, "num_epochs": 4,
    "num_minibatches": 4, "clip_eps": 0.2, "value_coef": 0.5, "entropy_coef": 0.02,
    "max_grad_norm": 0.5, "bptt_length": 0, "normalize_advantages": True, "reward_scale": 0.1,
    "init_std": 0.5, "inputs": "reward_code", "head": "bilinear", "trial_clock": False,
    "reward_signal": "expected"}
BANDIT_500 = {
    "hidden_size": 64, "meta_batch_size": 128, "trials_per_task": 2, "discount": 0.999,
    "gae_lambda": 0.8, "lr": 0.006, "lr_drop_at": 0, "lr_drop_to": 0.0001, "num_epochs": 4,
    "num_minibatches": 4, "clip_eps": 0.2, "value_coef": 0.5, "entropy_coef": 0.02,
    "max_grad_norm": 0.5, "bptt_length": 100, "normalize_advantages": True,
    "reward_scale": 0.02, "init_std": 0.5, "inputs": "reward_code", "head": "bilinear",
    "trial_clock": False, "reward_signal": "expected"}
MDP = {
    "hidden_size": 128, "meta_batch_size": 64, "trials_per_task": 4, "discount": 0.9,
    "gae_lambda": 0.3, "lr": 0.003, "lr_drop_at": 1600, "lr_drop_to": 0.001, "num_epochs": 4,
    "num_minibatches": 4, "clip_eps": 0.2, "value_coef": 0.5, "entropy_coef": 0.01,
    "max_grad_norm": 0.5, "bptt_length": 0, "normalize_advantages": True, "reward_scale": 0.1,
    "init_std": 0.5, "inputs": "pair_code", "head": "bilinear", "trial_clock": True,
    "reward_signal": "expected"}


def test_presets_are_the_bench_settings_field_by_field() -> None:
    expected = {1: BANDIT_10, 10: BANDIT_10, 100: BANDIT_100, 500: BANDIT_500,
                30: {**BANDIT_100, "reward_scale": 10.0 / 30},  # 10 / n above 10 pulls
                101: {**BANDIT_500, "reward_scale": 10.0 / 101},
                2000: {**BANDIT_500, "reward_scale": 10.0 / 2000}}
    for pulls, config in expected.items():
        assert to_dict(bandit_config(pulls)) == config, pulls  # == on floats: bit for bit
    for episodes in (1, 10, 25, 100):
        assert to_dict(mdp_config(episodes)) == MDP, episodes
    assert [default_iterations("bandit", n) for n in (1, 10, 11, 100, 101, 500)] == [
        400, 400, 600, 600, 150, 150]
    assert [default_iterations("mdp", n) for n in (1, 10, 11, 25, 100)] == [
        2000, 2000, 200, 200, 200]
    # every RL2Config key is in the files: none is left to RL2Config's defaults
    keys = {f.name for f in dataclasses.fields(RL2Config)}
    for path in (BANDIT_PRESETS_PATH, MDP_PRESETS_PATH):
        for entry in yaml.safe_load(path.read_text())["lengths"]:
            assert set(entry["config"]) == keys, path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["lengths"][1]["config"].update(lr=-1.0), "lengths[1].config.lr=-1.0: must be > 0"),
    (lambda d: d["lengths"][0]["config"].update(hiden_size=8),
     "lengths[0].config.hiden_size=8: unknown key"),
    (lambda d: d["lengths"][2]["config"].pop("discount"),
     "lengths[2].config=['discount']: missing keys; list every RL2Config key"),
    (lambda d: d["lengths"][0].pop("iterations"), "lengths[0]=['iterations']: missing keys"),
    (lambda d: d["lengths"][0].update(iterations=0), "lengths[0].iterations=0: must be >= 1"),
    (lambda d: d["lengths"].pop(), "lengths=[10, 100]: give entries of rising `up_to`, the last"),
    (lambda d: d["lengths"].reverse(), "lengths=[None, 100, 10]: give entries of rising"),
    (lambda d: d.update(lengths=[]), "lengths=[]: give entries of rising"),
])
def test_a_bad_preset_file_is_refused_naming_the_file_and_key(
        tmp_path: Any, edit: Any, message: str) -> None:
    data = yaml.safe_load(BANDIT_PRESETS_PATH.read_text())
    edit(data)
    path = tmp_path / "rl2_bandit.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_presets(path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)
    (tmp_path / "broken.yaml").write_text("lengths: [")
    for name in ("broken.yaml", "absent.yaml"):
        with pytest.raises(ConfigError, match=f"preset file='.*{name}': cannot read it"):
            load_presets(tmp_path / name)


def test_bench_rl2_resumes_a_cell_from_its_checkpoint(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    base = ["bench", "rl2", "--cells", "10x5", "--instances", "30", "--bandit", "hidden_size=8",
            "meta_batch_size=8"]

    def row() -> str:
        out = capsys.readouterr().out
        return next(line for line in out.splitlines() if " RL2 s0 " in line)

    assert main([*base, "--iterations", "4"]) == 0
    straight = row()
    assert main([*base, "--iterations", "2", "--checkpoints", str(tmp_path)]) == 0
    assert (tmp_path / "bandit-10x5-s0.pt").exists() and "2 it, " in row()
    assert main([*base, "--iterations", "4", "--checkpoints", str(tmp_path)]) == 0
    resumed = row()
    assert "4 it (resumed at 2), " in resumed
    assert resumed.split()[5:7] == straight.split()[5:7]   # same score and interval
    assert torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)["iterations"] == 4
    # other settings than the checkpoint's are refused, naming them; the file is kept
    assert main([*base[:-2], "hidden_size=16", "meta_batch_size=8", "--iterations", "6",
                 "--checkpoints", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bandit-10x5-s0.pt was trained with other settings (hidden_size=8 there, 16 here)" in err
    assert torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)["iterations"] == 4
    # a file written before `inputs` / `head` existed was trained with their defaults
    state = torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)
    older = {k: v for k, v in state["config"].items() if k not in ("inputs", "head")}
    torch.save({**state, "config": older}, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "5", "--checkpoints", str(tmp_path)]) == 0
    assert "5 it (resumed at 4), " in row()
    assert main([*base, "--bandit", "hidden_size=8", "meta_batch_size=8", "head=bilinear",
                 "--iterations", "6", "--checkpoints", str(tmp_path)]) == 2
    assert "(head='linear' there, 'bilinear' here)" in capsys.readouterr().err
    # a state trained on another device type (its generator state would not fit) is refused
    state = torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)
    torch.save({**state, "device": "cuda"}, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "6", "--checkpoints", str(tmp_path)]) == 2
    assert "(device cuda there, cpu here)" in capsys.readouterr().err
    # files written before the device was recorded: told apart by the generator's state (a
    # CPU one is thousands of bytes, a CUDA one 16); the CPU file resumes, the CUDA one is refused
    undated = {k: v for k, v in state.items() if k != "device"}
    torch.save(undated, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "6", "--checkpoints", str(tmp_path)]) == 0
    assert "6 it (resumed at 5), " in row()
    cuda_like = {**undated, "state": {**undated["state"],
                                      "generator": torch.zeros(16, dtype=torch.uint8)}}
    torch.save(cuda_like, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "7", "--checkpoints", str(tmp_path)]) == 2
    assert "(device cuda there, cpu here)" in capsys.readouterr().err
    # files naming the critic RL2Config no longer has: its `shared` trained as RL² does now
    for critic, code in (("shared", 0), ("separate", 2)):
        torch.save({**undated, "config": {**undated["config"], "critic": critic}},
                   tmp_path / "bandit-10x5-s0.pt")
        assert main([*base, "--iterations", "6", "--checkpoints", str(tmp_path)]) == code
    assert "(critic='separate' there, None here)" in capsys.readouterr().err


def test_cli_bench_rl2_prints_table_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    assert main(["bench", "rl2", "--cells", "10", "--iterations", "1", "--instances",
                 "20"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    methods = [line.split()[2] for line in out if line.startswith("mdp ")]
    assert methods == ["RL2", "Random", "PSRL", "Myopic-Bayes", "Oracle"]
    assert out[-1].endswith("0/0 bandit, 0/1 MDP")
    assert any("wall-clock: RL²" in line for line in out)
    assert main(["bench", "rl2", "--cells", "10x1"]) == 2
    assert "--cells '10x1'" in capsys.readouterr().err


def test_cli_bench_rl2_reads_params_file_and_writes_json(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from pipelines.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": ["10"], "iterations": 1, "instances": 20}))
    out = tmp_path / "results.json"
    assert main(["bench", "rl2", "--params", str(params), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    cell = results["cells"]["mdp n=10"]
    assert cell["paper_rl2"] == pytest.approx(156.2)
    assert set(cell) >= {"rl2", "rl2_half_width", "Random", "PSRL", "Myopic-Bayes", "Oracle"}
    assert cell["Random"] < cell["PSRL"] < cell["Oracle"]
    assert cell["Random"] < cell["Myopic-Bayes"] < cell["Oracle"]
    assert results["at_or_above_paper"] == {"bandit": 0, "bandit_cells": 0, "mdp": 0,
                                            "mdp_cells": 1}
    table = capsys.readouterr().out
    assert f"{cell['rl2']:.1f}" in table  # the JSON holds the printed numbers
    params.write_text(yaml.safe_dump({"cells": ["10"], "iteratons": 1}))
    assert main(["bench", "rl2", "--params", str(params)]) == 2
    assert "iteratons" in capsys.readouterr().err


@pytest.mark.slow
def test_cells_run_apart_combine_into_the_table_of_one_run(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from pipelines.bench.rl2 import read_params
    from pipelines.bench.rl2.table import print_header
    from pipelines.cli import main

    # the DVC layout: cells as a mapping per family, --cells picks one, --combine prints all
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": {"bandit": [], "mdp": ["25", "10"]},
                                      "iterations": 1, "instances": 20, "mdp_seeds": [1]}))
    assert read_params(params).cells == ("25", "10")
    cells = tmp_path / "cells"
    for cell in ("10", "25"):
        assert main(["bench", "rl2", "--params", str(params), "--cells", cell, "--json",
                     str(cells / f"mdp-{cell}.json")]) == 0
        apart = capsys.readouterr().out.splitlines()
        assert sum(line.startswith("mdp ") for line in apart) == 5  # that cell alone
    assert main(["bench", "rl2", "--params", str(params), "--combine", str(cells), "--json",
                 str(tmp_path / "results.json")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in table if " RL2 s1 " in line] == ["n=25", "n=10"]
    assert "training seeds [1]," in table[0] and " RL2 s0 " not in "".join(table)
    assert table[-1].endswith("0/0 bandit, 0/2 MDP")
    combined = json.loads((tmp_path / "results.json").read_text())
    for cell in ("10", "25"):
        alone = json.loads((cells / f"mdp-{cell}.json").read_text())
        assert combined["cells"][f"mdp n={cell}"] == alone["cells"][f"mdp n={cell}"]
        rl2 = alone["cells"][f"mdp n={cell}"]["rl2"]
        assert any(" RL2 s1 " in line and f" {rl2:.1f} " in line for line in table)
    assert combined["settings"]["instances"] == 20
    header = io.StringIO()
    print_header({"instances": 9, "instance_seed": 0, "device": "cpu", "bandit_seeds": [0, 1],
                   "mdp_seeds": [0]}, header)
    assert "training seeds [0, 1] (bandit), [0] (MDP), torch" in header.getvalue()
    assert combined["at_or_above_paper"]["mdp_cells"] == 2

    # a cell run with other settings, a missing one, a file of another cell: clear errors
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"cells": ["10"], "iterations": 1, "instances": 20}))
    assert main(["bench", "rl2", "--params", str(other), "--json",
                 str(cells / "mdp-10.json")]) == 0
    capsys.readouterr()
    assert main(["bench", "rl2", "--params", str(params), "--combine", str(cells)]) == 2
    assert "mdp-10.json was run with mdp_seeds=[0], an earlier cell with mdp_seeds=[1]" in (
        capsys.readouterr().err)
    assert main(["bench", "rl2", "--cells", "50", "--combine", str(cells)]) == 2
    assert f"no {cells / 'mdp-50.json'}; run the cell first: metarl bench rl2 --cells 50" in (
        capsys.readouterr().err)
    (cells / "mdp-50.json").write_text((cells / "mdp-25.json").read_text())
    assert main(["bench", "rl2", "--cells", "50", "--combine", str(cells)]) == 2
    assert "holds cell mdp n=25, not mdp 50" in capsys.readouterr().err
    params.write_text(yaml.safe_dump({"cells": {"bandits": ["10x5"]}}))
    assert main(["bench", "rl2", "--params", str(params), "--combine", str(cells)]) == 2
    assert "cells.bandits=['10x5']: expected the lists cells.bandit" in capsys.readouterr().err


def test_the_benchmarks_dvc_params_file_reads() -> None:
    from pipelines.bench.rl2 import mdp_training_lengths, read_params, training_pulls

    params = read_params(Path(__file__).parents[2] / "benchmarks/rl2/params.yaml")
    assert len([c for c in params.cells if "x" in c]) == 9
    assert params.cells[-5:] == ("10", "25", "50", "75", "100")  # all of Table 2
    # the DVC stages run every cell once, a cell that shares a model in one stage with it
    grouped = [c for runs in params.runs.values() for group in runs.values()
               for c in str(group).split()]
    assert sorted(grouped) == sorted(params.cells)
    for runs in params.runs.values():
        for group in runs.values():
            cells = str(group).split()
            assert len({training_pulls(int(c.split("x")[0]), params.bandit_train_pulls)
                        if "x" in c else mdp_training_lengths(int(c), params.mdp_train_episodes)
                        for c in cells}) == 1  # one model per stage


def test_bandit_config_scales_rewards_and_trials_with_the_trial_length() -> None:
    from pipelines.bench.rl2 import bandit_config, default_iterations

    short = bandit_config(10)
    assert bandit_config(1) == bandit_config(5) == short  # one preset up to 10 pulls
    assert [default_iterations("bandit", n) for n in (10, 100, 500)] == [400, 600, 150]
    assert default_iterations("mdp", 25) == 200
    assert default_iterations("mdp", 10) == 2000
    long, longer = bandit_config(100), bandit_config(500)
    assert (long.reward_scale, long.trials_per_task, long.bptt_length) == (0.1, 4, 0)
    assert (longer.reward_scale, longer.trials_per_task, longer.bptt_length) == (0.02, 2, 100)
    for config in (long, longer):  # long trials: expected rewards, long-horizon credit
        assert (config.reward_signal, config.gae_lambda, config.discount) == (
            "expected", 0.8, 0.999)
        assert (config.inputs, config.head) == ("reward_code", "bilinear")
    assert short.reward_signal == "sampled"
    assert (short.inputs, short.head) == ("paper", "linear")
    assert bandit_config(50).reward_scale == pytest.approx(0.2)  # 10 / n above 10 pulls


def test_bench_rl2_settings_overrides_and_time_budget(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from pipelines.bench.rl2 import bandit_config, parse_overrides, with_overrides
    from pipelines.cli import main

    wide = with_overrides(bandit_config(500), {"hidden_size": 256, "num_minibatches": 8},
                          "bandit")
    assert (wide.hidden_size, wide.num_minibatches) == (256, 8)
    assert (wide.reward_scale, wide.bptt_length) == (0.02, 100)  # the rest kept
    assert parse_overrides(["lr=3e-3", "hidden_size=256", "normalize_advantages=false"],
                           "--bandit") == {"lr": 0.003, "hidden_size": 256,
                                           "normalize_advantages": False}
    with pytest.raises(ConfigError, match=r"mdp\.hidden_size=0"):
        with_overrides(bandit_config(10), {"hidden_size": 0}, "mdp")

    # a one-second budget stops a 10000-iteration run early, and the table says so
    assert main(["bench", "rl2", "--cells", "10x5", "--iterations", "10000", "--instances",
                 "20", "--time-budget", "1", "--bandit", "hidden_size=8"]) == 0
    out = capsys.readouterr().out
    assert "bandit cells: RL² settings {'hidden_size': 8}" in out
    row = next(line for line in out.splitlines() if " RL2 s0 " in line)
    done = int(row.split("  ")[-1].split(" it ")[0].split()[-1])
    assert 1 <= done < 10000 and "(time budget 1 s)" in row

    for argv, expected in ((["--mdp", "lr=-1"], "mdp.lr=-1.0: must be > 0"),
                           (["--mdp", "lr=inf"], "mdp.lr=inf: expected a finite number, not"),
                           (["--mdp", "lr=[1,"], "--mdp 'lr=[1,': cannot read the value"),
                           (["--mdp", "hidden_size=0", "--mdp", "lr=1e-3"],  # both kept
                            "mdp.hidden_size=0: must be an integer >= 1"),
                           (["--bandit", "hidden=3"], "bandit.hidden=3: unknown key"),
                           (["--mdp", "lr"], "--mdp 'lr': expected KEY=VALUE"),
                           (["--time-budget", "0"], "--time-budget 0.0: must be > 0")):
        assert main(["bench", "rl2", "--cells", "10", "--iterations", "1", *argv]) == 2
        assert expected in capsys.readouterr().err
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": ["10"], "mdp": {"hiden_size": 8}}))
    assert main(["bench", "rl2", "--params", str(params)]) == 2
    assert "mdp.hiden_size=8: unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_commands_need_no_mlflow() -> None:
    # GPU machines and minimal installs run the benches without the MLOps stack.
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('mlflow', 'optuna', 'prefect', 'dvc'): sys.modules[m] = None\n"
            "from pipelines.cli import main\n"
            "sys.exit(main(['bench', 'rl2', '--cells', '10', '--iterations', '1',"
            " '--instances', '5']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mdp    n=10        RL2 s0" in result.stdout


def test_bench_rl2_plot_normalises_each_cell(tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main
    from pipelines.plots import rl2_plot_points

    results = {"cells": {
        "mdp n=10": {"paper_rl2": 156.2, "rl2": 120.0, "rl2_half_width": 2.0, "Random": 100.0,
                     "PSRL": 140.0, "Oracle": 220.0},
        "bandit n=100 k=5": {"paper_rl2": 78.7, "rl2": 76.0, "rl2_half_width": 1.0,
                             "Random": 50.0, "Gittins": 78.0, "Oracle": 90.0},
        "bandit n=10 k=5": {"paper_rl2": 6.7, "rl2": 6.6, "rl2_half_width": 0.1, "Random": 5.0,
                            "Gittins": 6.6, "Oracle": 9.0}}}
    points = rl2_plot_points(results)
    assert [p["cell"] for p in points] == ["bandit n=10 k=5", "bandit n=100 k=5", "mdp n=10"]
    mdp = points[2]
    assert mdp["ours"] == pytest.approx(20 / 120) and mdp["low"] == pytest.approx(18 / 120)
    assert mdp["paper"] == pytest.approx(56.2 / 120)
    assert (mdp["yardstick_name"], mdp["yardstick"]) == ("PSRL", pytest.approx(40 / 120))
    assert points[1]["yardstick_name"] == "Gittins"

    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    png = tmp_path / "plot.png"
    assert main(["bench", "rl2", "--replot", str(source), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "rl2", "--replot", str(source)]) == 2
    assert "--replot: give --plot PNG" in capsys.readouterr().err
    source.write_text("{}")
    assert main(["bench", "rl2", "--replot", str(source), "--plot", str(png)]) == 2
    assert "no 'cells'" in capsys.readouterr().err
    source.write_text(json.dumps({"cells": {"mdp n=10": {"rl2": 1.0, "rl2_half_width": 0.1,
                                                          "Random": 1.0}}}))
    assert main(["bench", "rl2", "--replot", str(source), "--plot", str(png)]) == 2
    assert "cell 'mdp n=10': no number under 'Oracle'" in capsys.readouterr().err
    # a run draws its own plot, its numbers beside it
    run_png = tmp_path / "run.png"
    assert main(["bench", "rl2", "--cells", "10", "--iterations", "1", "--instances", "10",
                 "--plot", str(run_png)]) == 0
    assert run_png.is_file() and "mdp n=10" in json.loads(
        run_png.with_suffix(".json").read_text())["cells"]


def test_long_bandit_cells_are_played_by_the_shorter_cells_model(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from pipelines.bench.baselines import _seed
    from pipelines.bench.rl2 import bandit_config, read_params, training_pulls, with_overrides
    from pipelines.cli import main

    assert [training_pulls(n) for n in (10, 100, 500)] == [10, 100, 100]
    assert training_pulls(500, None) == 500 and training_pulls(30, 10) == 10
    small = ["hidden_size=8", "meta_batch_size=8"]
    base = ["bench", "rl2", "--instances", "20", "--iterations", "2", "--bandit", *small]

    def run(*argv: str) -> tuple[dict[str, Any], str]:
        path = tmp_path / "out.json"
        assert main([*base, "--json", str(path), *argv]) == 0
        return json.loads(path.read_text()), capsys.readouterr().out

    ckpt = tmp_path / "ckpt"
    run("--cells", "10x3", "--bandit-train-pulls", "10", "--checkpoints", str(ckpt))
    _, out = run("--cells", "30x3", "--bandit-train-pulls", "10", "--checkpoints", str(ckpt))
    assert sorted(p.name for p in ckpt.iterdir()) == ["bandit-10x3-s0.pt"]  # one training
    row = next(line for line in out.splitlines() if " n=30 k=3 " in line and " RL2 s0 " in line)
    assert "2 it on 10 pulls (resumed at 2), " in row
    assert "RL² trains on trials of at most 10 pulls" in out
    alone, _ = run("--cells", "30x3", "--bandit-train-pulls", "10")  # trains it afresh
    played = alone["cells"]["bandit n=30 k=3"]["rl2"]
    assert f" {played:.2f} " in row  # the same model as the 10x3 cell's, trained once
    both, out = run("--cells", "10x3", "30x3", "--bandit-train-pulls", "10")  # one run
    assert both["cells"]["bandit n=30 k=3"]["rl2"] == pytest.approx(played)
    assert "2 it on 10 pulls: the 10x3 cell's model (trained above), " in out

    # by hand: the 10x3 cell's seed and settings, scored on the 30x3 cell's instances
    config = with_overrides(bandit_config(10), {"hidden_size": 8, "meta_batch_size": 8}, "b")
    algo = RL2(BanditFamily(BanditFamilyConfig(num_arms=3, num_pulls=10)), 1, 3, 1, config,
               seed=_seed(10, 0, 10, 3, 0))
    for _ in range(2):
        algo.train_step()
    family = BanditFamily(BanditFamilyConfig(num_arms=3, num_pulls=30))
    test = family.sample(20, np.random.default_rng(_seed(0, 1, 30, 3, 0)))
    returns = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, 30, 3, 0)),
                            family=family)
    assert returns.shape == (20,) and returns.max() > 10  # 30-pull trials: more than 10 pulls
    assert float(returns.mean()) == pytest.approx(played)

    own, out = run("--cells", "30x3", "--bandit-train-pulls", "0")  # each on its own length
    assert own["cells"]["bandit n=30 k=3"]["rl2"] != pytest.approx(played)
    assert " on 10 pulls" not in out and "trains on trials of at most" not in out
    assert own["settings"]["bandit_train_pulls"] is None

    assert main([*base, "--cells", "30x3", "--bandit-train-pulls", "-1"]) == 2
    assert "--bandit-train-pulls -1: must be >= 1" in capsys.readouterr().err
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": ["30x3"], "bandit_train_pulls": "ten"}))
    assert main(["bench", "rl2", "--params", str(params)]) == 2
    assert "bandit_train_pulls" in capsys.readouterr().err
    assert read_params(Path(__file__).parents[2]
                       / "benchmarks/rl2/params.yaml").bandit_train_pulls == 100
    # cells run apart with different training lengths do not combine into one table
    cells = tmp_path / "cells"
    for cell, pulls in (("10x3", "10"), ("30x3", "0")):
        assert main([*base, "--cells", cell, "--bandit-train-pulls", pulls, "--json",
                     str(cells / f"bandit-{cell}.json")]) == 0
    capsys.readouterr()
    assert main(["bench", "rl2", "--cells", "10x3", "30x3", "--combine", str(cells)]) == 2
    assert "bandit-30x3.json was run with bandit_train_pulls=None, an earlier cell with " \
        "bandit_train_pulls=10" in capsys.readouterr().err


@pytest.mark.slow
def test_mdp_cells_played_by_one_model_write_a_file_per_cell_that_combines(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "20", "--iterations", "1", "--mdp", "hidden_size=8",
            "meta_batch_size=4"]
    group = tmp_path / "cells" / "mdp-all"
    assert main([*base, "--cells", "10", "25", "--mdp-train-episodes", "10", "--json-dir",
                 str(group)]) == 0
    out = capsys.readouterr().out
    assert "MDP cells: RL² trains on trials of at most 10 episodes" in out
    row = next(line for line in out.splitlines() if " n=25 " in line and " RL2 s0 " in line)
    assert "1 it on 10 episodes: the 10 cell's model (trained above), " in row
    assert sorted(p.name for p in group.iterdir()) == ["mdp-10.json", "mdp-25.json"]
    for cell in ("10", "25"):
        alone = json.loads((group / f"mdp-{cell}.json").read_text())
        assert list(alone["cells"]) == [f"mdp n={cell}"]
        assert alone["at_or_above_paper"]["mdp_cells"] == 1
        assert alone["settings"]["mdp_train_episodes"] == 10
        assert alone["cells"][f"mdp n={cell}"]["played_by"] == (None if cell == "10" else "10")
    # the scores are those of the 10-episode model on 25-episode trials: a run of cell 25
    # alone with the same training length -- the default's -- trains the same model
    assert main([*base, "--cells", "25", "--json", str(tmp_path / "25.json")]) == 0
    assert " 1 it on 10 episodes, " in capsys.readouterr().out
    alone = json.loads((tmp_path / "25.json").read_text())
    assert alone["settings"]["mdp_train_episodes"] == 10
    assert json.loads((group / "mdp-25.json").read_text())["cells"]["mdp n=25"]["rl2"] == (
        pytest.approx(alone["cells"]["mdp n=25"]["rl2"]))
    # 0: the cell trains on its own 25-episode trials, another model
    assert main([*base, "--cells", "25", "--mdp-train-episodes", "0", "--json",
                 str(tmp_path / "own.json")]) == 0
    out = capsys.readouterr().out
    assert " on 10 episodes" not in out and "trains on trials of at most" not in out
    own = json.loads((tmp_path / "own.json").read_text())
    assert own["settings"]["mdp_train_episodes"] is None
    assert own["cells"]["mdp n=25"]["rl2"] != pytest.approx(alone["cells"]["mdp n=25"]["rl2"])
    # --combine finds the files in the run's subfolder; --out keeps the printed table
    saved = tmp_path / "table.txt"
    assert main(["bench", "rl2", "--cells", "10", "25", "--combine", str(tmp_path / "cells"),
                 "--out", str(saved)]) == 0
    table = capsys.readouterr().out
    assert saved.read_text() == table
    assert "RL² trains on trials of at most 10 episodes" in table
    assert table.splitlines()[-1].endswith("0/0 bandit, 0/2 MDP")
    walls = [line for line in table.splitlines() if "wall-clock: RL²" in line]
    assert len(walls) == 2 and "evaluation only" not in walls[0]
    assert "(all seeds, evaluation only: training is counted in the n=10 cell's line)" in walls[1]
    bad = json.loads((group / "mdp-25.json").read_text())
    bad["cells"]["mdp n=25"]["played_by"] = 10
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mdp-25.json").write_text(json.dumps(bad))
    assert main(["bench", "rl2", "--cells", "25", "--combine", str(tmp_path / "bad")]) == 2
    assert "played_by 10 is not a cell name" in capsys.readouterr().err
    copy = tmp_path / "cells" / "other"
    copy.mkdir()
    (copy / "mdp-25.json").write_text((group / "mdp-25.json").read_text())
    assert main(["bench", "rl2", "--cells", "25", "--combine", str(tmp_path / "cells"),
                 "--out", str(saved)]) == 2
    assert "all hold mdp-25.json; keep one" in capsys.readouterr().err
    assert saved.read_text() == table  # a failed run leaves the last table as it was
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".table.txt")] == []
    assert main([*base, "--cells", "25", "--mdp-train-episodes", "-2"]) == 2
    assert "--mdp-train-episodes -2: must be >= 1 (episodes per training trial)" in (
        capsys.readouterr().err)


def test_mdp_training_lengths_of_a_number_or_a_list() -> None:
    from pipelines.bench.rl2 import mdp_training_lengths

    assert mdp_training_lengths(25, None) == (25,)
    assert mdp_training_lengths(25, 10) == (10,)
    assert mdp_training_lengths(5, 10) == (5,)  # shorter than the training trials: its own
    assert mdp_training_lengths(10, (10, 25)) == (10, 25)
    assert mdp_training_lengths(100, [10, 25]) == (10, 25)
    assert mdp_training_lengths(5, (10, 25)) == (5,)
    assert mdp_training_lengths(25, [10]) == mdp_training_lengths(25, 10) == (10,)


@pytest.mark.slow
def test_mdp_cells_train_on_alternating_trial_lengths_and_resume_in_step(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import re

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "20", "--mdp", "hidden_size=8",
            "meta_batch_size=4", "--mdp-train-episodes", "10,25"]
    assert main([*base, "--cells", "10", "25", "--iterations", "4", "--json",
                 str(tmp_path / "straight.json")]) == 0
    captured = capsys.readouterr()
    assert ("MDP cells: RL² trains on trials of 10 and 25 episodes in turn, one iteration each "
            "(every cell of 10 episodes or more is played by that one model)") in captured.out
    row = next(line for line in captured.out.splitlines()
               if " n=25 " in line and " RL2 s0 " in line)
    assert "4 it on 10/25 episodes alternating: the 10 cell's model (trained above), " in row
    # iterations 1 and 3 play 10-episode trials, 2 and 4 25-episode ones (about 2.5x the return)
    returns = [float(x) for x in re.findall(r"train trial return ([0-9.]+)", captured.err)]
    assert len(returns) == 4
    assert min(returns[1], returns[3]) > 2 * max(returns[0], returns[2])
    straight = json.loads((tmp_path / "straight.json").read_text())
    assert straight["settings"]["mdp_train_episodes"] == [10, 25]
    # trained in two runs (1 iteration, then on to 4 from the checkpoint): the same model,
    # the turns picked by the iteration count
    ckpt = tmp_path / "ckpt"
    for iterations in ("1", "4"):
        assert main([*base, "--cells", "10", "25", "--iterations", iterations, "--checkpoints",
                     str(ckpt), "--json", str(tmp_path / "pieces.json")]) == 0
    assert "resumed at iteration 1" in capsys.readouterr().err
    assert [p.name for p in ckpt.iterdir()] == ["mdp-10+25-s0.pt"]
    pieces = json.loads((tmp_path / "pieces.json").read_text())
    for cell in ("mdp n=10", "mdp n=25"):
        assert pieces["cells"][cell]["rl2"] == pytest.approx(straight["cells"][cell]["rl2"])
    # one length: not the same model as the alternating one
    assert main([*base[:-1], "10", "--cells", "25", "--iterations", "4", "--json",
                 str(tmp_path / "ten.json")]) == 0
    capsys.readouterr()
    ten = json.loads((tmp_path / "ten.json").read_text())["cells"]["mdp n=25"]["rl2"]
    assert ten != pytest.approx(straight["cells"]["mdp n=25"]["rl2"])


@pytest.mark.parametrize(("value", "message"), [
    ("10,10", "--mdp-train-episodes (10, 10): list each length once, shortest first"),
    ("25,10", "--mdp-train-episodes (25, 10): list each length once, shortest first"),
    ("10,-3", "--mdp-train-episodes (10, -3): must be >= 1 (episodes per training trial)"),
    ("10,x", "argument --mdp-train-episodes: '10,x': expected a number of episodes or a "
             "comma-separated list, e.g. 10,25"),
])
def test_bad_mdp_training_lengths_are_refused_by_name(
        value: str, message: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    try:
        code = main(["bench", "rl2", "--cells", "25", "--iterations", "1", "--instances", "20",
                     "--mdp-train-episodes", value, "--json", str(tmp_path / "out.json")])
    except SystemExit as exit_:  # argparse's own error exit
        code = int(str(exit_.code))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_a_params_file_takes_a_list_of_mdp_training_lengths(tmp_path: Any) -> None:
    from metarl.config import ConfigError
    from pipelines.bench.rl2 import mdp_training_lengths, read_params

    path = tmp_path / "params.yaml"
    path.write_text("mdp_train_episodes: [10, 25]\n")
    assert read_params(path).mdp_train_episodes == (10, 25)
    path.write_text("cells: ['25']\n")  # absent: the 10-episode model, as on the command line
    assert read_params(path).mdp_train_episodes == 10
    path.write_text("mdp_train_episodes: null\n")
    assert read_params(path).mdp_train_episodes is None
    path.write_text("mdp_train_episodes: [10]\n")
    assert mdp_training_lengths(50, read_params(path).mdp_train_episodes) == (10,)
    path.write_text("mdp_train_episodes: [10, ten]\n")
    with pytest.raises(ConfigError, match="mdp_train_episodes"):
        read_params(path)


@pytest.mark.slow
def test_select_every_keeps_the_checkpoint_best_on_tuning_instances(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import re

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "30", "--cells", "10", "--mdp", "hidden_size=8",
            "meta_batch_size=4", "lr=0.05"]
    assert main([*base, "--iterations", "6", "--mdp-select-every", "2", "--json",
                 str(tmp_path / "sel.json")]) == 0
    captured = capsys.readouterr()
    assert "MDP cells: RL² keeps, of checks every 2 training iterations, the weights that " \
        "scored best on the tuning instances (200 per cell it plays" in captured.out
    checks = re.findall(r"iteration (\d+), tuning-instance score ([0-9.]+) per step \(best "
                        r"([0-9.]+), iteration (\d+)\)", captured.err)
    assert [int(c[0]) for c in checks] == [2, 4, 6]
    kept = int(checks[-1][3])
    assert float(checks[-1][2]) == max(float(c[1]) for c in checks)
    row = next(line for line in captured.out.splitlines() if " RL2 s0 " in line)
    assert f"6 it, kept it {kept} (best of 3 checks on tuning instances)" in row
    # the weights kept are those of iteration `kept`: a run stopped there scores the same
    assert main([*base, "--iterations", str(kept), "--json", str(tmp_path / "plain.json")]) == 0
    capsys.readouterr()
    sel = json.loads((tmp_path / "sel.json").read_text())
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert sel["cells"]["mdp n=10"]["rl2"] == pytest.approx(plain["cells"]["mdp n=10"]["rl2"])
    assert sel["settings"]["mdp_select_every"] == 2
    # in two runs from a checkpoint: the same checks, the same pick
    ckpt = tmp_path / "ckpt"
    for iterations in ("3", "6"):
        assert main([*base, "--iterations", iterations, "--mdp-select-every", "2",
                     "--checkpoints", str(ckpt), "--json", str(tmp_path / "pieces.json")]) == 0
    err = capsys.readouterr().err
    assert [int(x) for x in re.findall(r"iteration (\d+), tuning-instance", err)] == [2, 3, 4, 6]
    pieces = json.loads((tmp_path / "pieces.json").read_text())
    row = pieces["cells"]["mdp n=10"]["rows"][0]["setting"]
    # the first run's last check (3) is one more candidate than the straight run had
    best = max(((float(s), int(i)) for i, s in re.findall(
        r"iteration (\d+), tuning-instance score ([0-9.]+)", err)), key=lambda t: t[0])
    assert f"kept it {best[1]} (best of 4 checks" in row
    assert main([*base, "--iterations", "1", "--mdp-select-every", "-1"]) == 2
    assert "--mdp-select-every -1: must be >= 1 (training iterations between checks)" in (
        capsys.readouterr().err)


def test_select_every_scores_the_papers_cells_a_model_plays() -> None:
    from pipelines.bench.baselines import load_reference
    from pipelines.bench.rl2 import VALIDATION_INSTANCES, mdp_training_lengths, training_pulls
    from pipelines.bench.rl2.train import validation_cells

    reference = load_reference()

    def cells(table: str, cell: tuple[int, int], trains_like: Any) -> list[tuple[int, int]]:
        found = validation_cells(table, cell, trains_like, 0, reference)
        assert all(len(v.tasks) == VALIDATION_INSTANCES for v in found)
        return [(v.steps, len(v.tasks[0].get("probs", ()))) for v in found]

    def pulls(c: tuple[int, int]) -> tuple[int, int]:
        return training_pulls(c[0], 100), c[1]

    assert cells("bandit", (500, 5), pulls) == [(100, 5), (500, 5)]
    assert cells("bandit", (10, 5), pulls) == [(10, 5)]
    assert cells("bandit", (30, 3), pulls) == [(30, 3)]  # not a paper cell: itself
    assert [n for n, _ in cells("mdp", (10, 0), lambda c: mdp_training_lengths(
        c[0], (10, 25)))] == [10, 25, 50, 75, 100]
    assert [n for n, _ in cells("mdp", (25, 0), lambda c: (c[0],))] == [25]
    # tuning instances, not the test ones: the split `bench baselines` tunes on
    bandit = validation_cells("bandit", (10, 5), pulls, 0, reference)[0]
    from pipelines.bench.baselines import _seed

    test = bandit.family.sample(VALIDATION_INSTANCES, np.random.default_rng(_seed(0, 1, 10, 5, 0)))
    assert [t["probs"] for t in bandit.tasks] != [t["probs"] for t in test]


@pytest.mark.slow
def test_workers_train_a_cells_seeds_at_once_into_the_same_models(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "40", "--cells", "10x5", "--seeds", "0", "1", "2",
            "--bandit", "hidden_size=8", "meta_batch_size=8", "lr=0.05"]
    assert main([*base, "--iterations", "3", "--json", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    # three seeds, two processes: the pool is reused for the third
    assert main([*base, "--iterations", "3", "--workers", "2", "--json-dir",
                 str(tmp_path / "cells"), "--json", str(tmp_path / "two.json")]) == 0
    captured = capsys.readouterr()
    assert "wall-clock: RL² " in captured.out and "(all seeds, trained 2 at a time)" in captured.out
    one = json.loads((tmp_path / "one.json").read_text())["cells"]["bandit n=10 k=5"]
    two = json.loads((tmp_path / "two.json").read_text())["cells"]["bandit n=10 k=5"]
    assert two["train_workers"] == 2 and one["train_workers"] == 1
    scores = [(r["method"], r["ours"], r["half_width"]) for r in one["rows"]]
    assert [(r["method"], r["ours"], r["half_width"]) for r in two["rows"]] == scores
    assert len({s for m, s, _ in scores if m.startswith("RL2 s")}) == 3  # three models
    assert all("3 it, " in r["setting"] for r in two["rows"] if r["method"].startswith("RL2 s"))
    # --combine reprints the cell as run
    assert main(["bench", "rl2", "--cells", "10x5", "--combine", str(tmp_path / "cells")]) == 0
    assert "(all seeds, trained 2 at a time)" in capsys.readouterr().out
    # workers write and resume checkpoints as one process does: 2 + 1 iterations = 3
    ckpt = tmp_path / "ckpt"
    for iterations in ("2", "3"):
        assert main([*base, "--iterations", iterations, "--workers", "2", "--checkpoints",
                     str(ckpt), "--json", str(tmp_path / "pieces.json")]) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == [f"bandit-10x5-s{s}.pt" for s in range(3)]
    pieces = json.loads((tmp_path / "pieces.json").read_text())["cells"]["bandit n=10 k=5"]
    assert [(r["method"], r["ours"]) for r in pieces["rows"]] == [(m, s) for m, s, _ in scores]
    assert "3 it (resumed at 2), " in pieces["rows"][0]["setting"]
    capsys.readouterr()
    assert main([*base, "--iterations", "1", "--workers", "0"]) == 2
    assert "--workers 0: must be >= 1 (seeds trained at a time" in capsys.readouterr().err
