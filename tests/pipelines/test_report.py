"""`metarl report` on a real (tiny) pipeline run: the page holds the stages' numbers, refers to
nothing outside itself, and renders in a real headless browser with the network cut off.

The browser is Debian's chromium (`apt-get install -y --no-install-recommends chromium`, as
.ci/run does); without it the rendering test is skipped, saying so.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from mlflow import MlflowClient

from pipelines.cli import main
from pipelines.runner import run_stage
from pipelines.stages.report import FIGURES
from tests.conftest import tiny_params, write_params

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
           "--proxy-bypass-list=<-loopback>")
"""Headless, and no way out: every host name fails to resolve and any request that still goes
out is sent to a closed local port."""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tasks → train → evaluate → register (3 tasks, 2 seeds, 2 steps), then `metarl report`."""
    root = tmp_path_factory.mktemp("report") / "project"
    root.mkdir()
    params = tiny_params()
    params["tune"]["n_trials"] = 0
    write_params(root, params)
    for stage in ("tasks", "train", "evaluate", "register"):
        run_stage(stage, root)
    assert main(["report", "--root", str(root)]) == 0
    return root


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def test_evaluate_logs_the_curve_per_step_in_mlflow(project: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`metarl.stage` = 'evaluate'")
    run_id = runs[0].info.run_id
    summary = json.loads((project / "metrics/meta_test.json").read_text())
    for name in ("maml", "pretrained", "scratch", "random"):
        history = client.get_metric_history(run_id, f"meta_test/{name}/return")
        assert sorted(m.step for m in history) == [0, 1, 2]
        by_step = {m.step: m.value for m in history}
        assert by_step[0] == pytest.approx(summary[name]["return_pre_adapt"])
        assert by_step[2] == pytest.approx(summary[name]["return_post_adapt_k2"])
        lows = {m.step: m.value for m in client.get_metric_history(
            run_id, f"meta_test/{name}/ci_low")}
        highs = {m.step: m.value for m in client.get_metric_history(
            run_id, f"meta_test/{name}/ci_high")}
        for k in (0, 1, 2):
            assert [lows[k], highs[k]] == pytest.approx(summary[name][f"ci95_k{k}"])
    flat = client.get_run(run_id).data.metrics
    assert flat["meta_test/return_post_adapt_k2"] == pytest.approx(
        summary["maml"]["return_post_adapt_k2"])  # the flat metrics stay
    assert flat["meta_test/improvement/random"] == pytest.approx(
        summary["probability_of_improvement"]["random"]["probability"])


def test_the_page_holds_the_numbers_and_needs_nothing_outside(project: Path) -> None:
    page = (project / "reports/report.html").read_text()
    summary = json.loads((project / "metrics/meta_test.json").read_text())
    register = json.loads((project / "metrics/register.json").read_text())
    test_hash = json.loads((project / "data/tasks/test.json").read_text())["content_hash"]
    train_hash = json.loads((project / "data/tasks/train.json").read_text())["content_hash"]
    budget = json.loads((project / "models/maml.json").read_text())["train_budget"]
    main_ = summary["maml"]
    poi = summary["probability_of_improvement"]["pretrained"]
    for text in (
            html.escape(register["reason"]), test_hash, train_hash,
            f"{main_['score_iqm']:.3f} [{main_['score_iqm_ci95'][0]:.3f}, "
            f"{main_['score_iqm_ci95'][1]:.3f}]",
            f"{poi['probability']:.3f} [{poi['ci95'][0]:.3f}, {poi['ci95'][1]:.3f}]",
            f"{budget['num_iterations']} iterations, {budget['num_episodes']:,} episodes",
            "<td>evaluate</td>", "<td>train</td>"):  # wall-clock rows (from MLflow's runs)
        assert text in page, text
    # self-contained: no URL, script, stylesheet link, frame or font to fetch
    text_only = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    found = re.search(r"https?:|ftp:|//[a-z0-9]|<script|<link|<iframe|<object|@import|url\(",
                      text_only, re.IGNORECASE)
    assert found is None, text_only[max(0, found.start() - 200):found.end() + 200]
    sources = re.findall(r'<img src="([^"]{0,30})', page)
    assert len(sources) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    for name in FIGURES:  # the PNGs beside the page
        width, height = _png_size(project / "reports/figures" / f"{name}.png")
        assert width > 300 and height > 200, name


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                    "--no-install-recommends chromium, as .ci/run does): the report's "
                    "rendering is not checked in a browser")
def test_the_page_renders_offline_in_headless_chromium(project: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    page = (project / "reports/report.html").read_text()
    # A copy with a probe that writes what the browser decoded of each image into the DOM.
    probe = ("<script>window.addEventListener('load', function () {"
             "var pre = document.createElement('pre'); pre.id = 'probe';"
             "pre.textContent = JSON.stringify(Array.prototype.map.call(document.images,"
             "function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; }));"
             "document.body.appendChild(pre); });</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run([CHROMIUM, *OFFLINE, "--virtual-time-budget=10000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom.stdout)
    assert found, f"no probe in chromium's DOM:\n{dom.stdout[-2000:]}\n{dom.stderr[-2000:]}"
    decoded = json.loads(found.group(1))
    expected = [[True, *_png_size(project / "reports/figures" / f"{name}.png")]
                for name in FIGURES]
    assert decoded == expected  # every figure decoded, at its PNG's own size

    # The page itself (no probe), as a reader sees it: not blank.
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *OFFLINE, "--window-size=1200,2400", f"--screenshot={shot}",
                    (project / "reports/report.html").as_uri()], capture_output=True,
                   timeout=120, check=True)
    pixels = np.asarray(matplotlib.image.imread(shot))[..., :3]
    colored = (pixels.max(-1) - pixels.min(-1)) > 0.2  # the plots' blue, orange, green
    assert pixels.std() > 0.05 and colored.mean() > 0.002, (pixels.std(), colored.mean())


def test_without_evaluate_outputs_it_says_what_to_run(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy2(project / "params.yaml", empty / "params.yaml")
    capsys.readouterr()
    assert main(["report", "--root", str(empty)]) == 2
    assert "meta_test.json: missing" in capsys.readouterr().err
    # a gate record of other test tasks is not shown as this run's decision
    for rel in ("metrics", "data", "models"):
        shutil.copytree(project / rel, empty / rel)
    record = json.loads((empty / "metrics/register.json").read_text())
    record["test_task_hash"] = "ffffffffffffffff"
    (empty / "metrics/register.json").write_text(json.dumps(record))
    assert main(["report", "--root", str(empty), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out/report.html").read_text()
    assert "No gate decision: register.json is for test tasks ffffffffffffffff" in page
    assert html.escape(record["reason"]) not in page
    assert sorted(p.name for p in (tmp_path / "out/figures").iterdir()) == sorted(
        f"{name}.png" for name in FIGURES)
