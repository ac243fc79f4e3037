"""The ``report`` stage (and ``metarl report``): the comparison report, one offline HTML page.

What a results section needs, from what the stages wrote: the adaptation curve of every
learner with its 95% band, the post-adaptation scores (normalised where the family has an
oracle) as mean and IQM with intervals, the probability that the meta-learner beats each
baseline on a task, the register gate's decision, the task-set hashes, the budgets and the
wall-clock of each stage. The numbers are read, never recomputed: every interval is the
evaluate stage's (:mod:`pipelines.stats`), the gate's is register's.

Sources: ``metrics/meta_test.json`` (evaluate; its ``per_task_returns`` for the scores),
``metrics/register.json`` (register; the report says when it is missing or for other test
tasks), ``models/<algo>.json`` (train's budget), ``data/tasks/*.json`` (hashes), params.yaml
(the tuning budget) and, for the wall-clock, the MLflow runs of this pipeline run's stages
(the parent run of :func:`pipelines.tracking.pipeline_key`: this params file at this git
commit; each stage's latest finished run, end minus start).

The page has no external reference at all (inline CSS, the figures as ``data:`` URIs), so it
opens offline, in a browser or attached to a paper's review; the figures are also written as
PNGs beside it (``figures/``). As a stage (:func:`run`, ``metarl stage report``: what DVC and
the Prefect flow run after register) it writes ``reports/``; :func:`write_report` (``metarl
report --out DIR``) writes it anywhere, outside any stage run.
"""

from __future__ import annotations

import base64
import html
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.paths import Paths
from pipelines.plots import Interval, plot_forest, plot_scores
from pipelines.settings import PipelineConfig, load_project_config
from pipelines.stages import STAGE_NAMES
from pipelines.stages.common import StageError, load_task_set
from pipelines.stages.evaluate import BASELINES, plot_curves, post_adapt_scores, results_of

FIGURES = ("adaptation_curve", "scores", "improvement")
"""The report's figures, ``<out>/figures/<name>.png``, in the page's order."""
STAGES = STAGE_NAMES[:STAGE_NAMES.index("report")]
"""The stages whose wall-clock the report shows: those before it, in pipeline order."""


@dataclass(frozen=True)
class Facts:
    """Everything the report shows, read from the project's files (and MLflow's runs)."""

    meta_test: dict[str, Any]
    """``metrics/meta_test.json``."""
    scores: dict[str, list[float]]
    """Learner → its post-adaptation scores over tasks × seeds (``score_units``)."""
    register: dict[str, Any] | None
    """``metrics/register.json`` when it is for the same test tasks, else None."""
    register_note: str
    """Why ``register`` is None ("" when it is not)."""
    checkpoint: dict[str, Any] | None
    """``models/<algo>.json`` (``train_budget``), None when missing."""
    task_sets: dict[str, tuple[str, int] | None]
    """Split → (content hash, number of tasks), None when unreadable."""
    config: PipelineConfig
    """The project's params (the tuning budget)."""
    wall_clock: dict[str, float]
    """Stage → seconds (MLflow's stage runs; evaluate's own record as a fallback)."""
    wall_clock_source: str
    """Where ``wall_clock`` comes from."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_scores(meta_test: dict[str, Any]) -> dict[str, list[float]]:
    """Each learner's scores after the last step over seeds × tasks, in ``score_units``."""
    oracle = meta_test["oracle_return"]
    units, scores = post_adapt_scores(results_of(meta_test),
                                      float("nan") if oracle is None else oracle)
    if units != meta_test["score_units"]:
        raise StageError(f"metrics/meta_test.json: score_units={meta_test['score_units']!r} "
                         f"but its returns give {units!r}; re-run `metarl stage evaluate`")
    return {name: s.ravel().tolist() for name, s in scores.items()}


def _register_record(paths: Paths, test_hash: str) -> tuple[dict[str, Any] | None, str]:
    path = paths.metrics / "register.json"
    record = _read_json(path)
    if record is None:
        return None, f"{path.name} is missing: the register stage has not run"
    if record.get("test_task_hash") != test_hash:
        return None, (f"{path.name} is for test tasks {record.get('test_task_hash')}, not "
                      f"{test_hash}: re-run the register stage")
    return record, ""


def _active_parent() -> str | None:
    """The pipeline run of the stage run in progress (the report stage's), if any."""
    import mlflow

    run = mlflow.active_run()
    return None if run is None else run.data.tags.get("mlflow.parentRunId")


def stage_wall_clock(config: PipelineConfig, params_path: Path,
                     root: Path) -> tuple[dict[str, float], str]:
    """Seconds per stage of this pipeline run, from its MLflow stage runs, and the source.

    This pipeline run is the parent of the report stage's own run, or outside a stage the
    parent run of :func:`pipelines.tracking.pipeline_key` (this params file at this commit);
    per stage its latest finished child run, end minus start. An unreachable tracking store
    gives ``{}`` and says why.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines import tracking

    try:
        tracking.setup(config.tracking, root)
        client = MlflowClient()
        experiment = client.get_experiment_by_name(config.tracking.experiment)
        parent = _active_parent()
        if parent is None:
            key = tracking.pipeline_key(params_path, root)
            parents = [] if experiment is None else client.search_runs(
                [experiment.experiment_id], f"tags.`metarl.pipeline_key` = '{key}'",
                max_results=1)
            if experiment is None or not parents:
                return {}, f"no MLflow run of pipeline {key} (this params.yaml at this commit)"
            parent = parents[0].info.run_id
        assert experiment is not None
        children = client.search_runs(
            [experiment.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1000)
    except (MlflowException, OSError, ValueError, RuntimeError) as err:
        return {}, f"MLflow could not be read ({err})"
    seconds: dict[str, float] = {}
    for run in children:  # newest first: the first of a stage is its latest
        stage = run.data.tags.get("metarl.stage")
        if stage in STAGES and stage not in seconds and run.info.end_time:
            seconds[stage] = (run.info.end_time - run.info.start_time) / 1000
    return seconds, f"the MLflow stage runs of pipeline run {parent} (tracking.uri)"


def gather(paths: Paths, config: PipelineConfig, params_path: Path) -> Facts:
    """Read everything the report shows; fails only without evaluate's outputs."""
    meta_test = _read_json(paths.metrics / "meta_test.json")
    if meta_test is None or "per_task_returns" not in meta_test:
        raise StageError(f"{paths.metrics / 'meta_test.json'}: missing or written before the "
                         "report's statistics; run `metarl stage evaluate` (or `dvc repro`)")
    register, note = _register_record(paths, meta_test["test_task_hash"])
    task_sets: dict[str, tuple[str, int] | None] = {}
    for split in ("train", "val", "test"):
        try:
            task_set = load_task_set(paths, split, config)
            task_sets[split] = (task_set.content_hash, len(task_set))
        except StageError:
            task_sets[split] = None
    wall_clock, source = stage_wall_clock(config, params_path, paths.root)
    if "evaluate" not in wall_clock and "wall_clock_s" in meta_test:
        wall_clock["evaluate"] = float(meta_test["wall_clock_s"])
        source += "; evaluate: its own record in meta_test.json"
    return Facts(meta_test, read_scores(meta_test),
                 register, note, _read_json(paths.models / f"{meta_test['learner']}.json"),
                 task_sets, config, wall_clock, source)


def _units_label(meta_test: dict[str, Any]) -> str:
    if meta_test["score_units"] == "normalized":
        return "normalised score (random 0, oracle 1)"
    return "mean episode return (no oracle: raw returns)"


def draw_figures(facts: Facts, folder: Path) -> dict[str, Path]:
    """The report's PNGs in ``folder``: curves, scores, probability of improvement."""
    m = facts.meta_test
    main, learners = m["learner"], (m["learner"], *BASELINES)
    paths = {name: folder / f"{name}.png" for name in FIGURES}
    plot_curves(m, m["family"], paths["adaptation_curve"])
    rows = {name: [Interval("mean", m[name]["score_mean"], *m[name]["score_mean_ci95"]),
                   Interval("IQM", m[name]["score_iqm"], *m[name]["score_iqm_ci95"])]
            for name in learners}
    plot_scores(rows, facts.scores, paths["scores"],
                title=f"Score after {m['num_adapt_steps']} adaptation steps, "
                f"{m['num_test_tasks']} test tasks × {len(m['seeds'])} seeds",
                xlabel=_units_label(m))
    poi = m["probability_of_improvement"]
    plot_forest([Interval(f"P({main} > {name})", poi[name]["probability"], *poi[name]["ci95"])
                 for name in BASELINES], paths["improvement"],
                title=f"Probability that {main} scores above a baseline on a test task",
                xlabel="probability of improvement (0.5: no better)", reference=0.5,
                xlim=(-0.02, 1.02))
    return paths


CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child, table.text td, table.text th { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption, .note { color: #555; font-size: 0.85rem; }
.decision { padding: 0.6rem 1rem; border-left: 4px solid; background: #f8f8f8; }
.promoted { border-color: #2e7d32; } .held { border-color: #c62828; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], text: bool = False) -> str:
    """An HTML table; ``text``: left-aligned cells (prose, not numbers)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    kind = ' class="text"' if text else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(value: float, interval: Sequence[float], digits: int = 3) -> str:
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _figure(png: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _gate_html(facts: Facts) -> str:
    r = facts.register
    if r is None:
        return f'<p class="decision held">No gate decision: {_e(facts.register_note)}.</p>'
    kind = "promoted" if r["promoted"] else "held"
    rows = [("registered model", f"{r['model_name']} version {r['version']}"),
            ("decision", "promoted to @champion" if r["promoted"] else "not promoted"),
            ("reference", r["reference"]),
            (f"score ({r['units']})", f"{r['score']:.4f} vs {r['reference_score']:.4f}"),
            ("paired difference", f"{r['difference']:+.4f}, {r['level']:.0%} interval "
             f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"),
            ("margin", f"lower end must exceed {r['margin']}")]
    return (f'<p class="decision {kind}">{_e(r["reason"])}</p>'
            + _table(("gate", "value"), rows, text=True))


def _curve_table(m: dict[str, Any]) -> str:
    k_max = m["num_adapt_steps"]
    rows = []
    for name in (m["learner"], *BASELINES):
        s = m[name]
        values = [s["return_pre_adapt"]] + [s[f"return_post_adapt_k{k}"]
                                            for k in range(1, k_max + 1)]
        rows.append([name] + [_ci(v, s[f"ci95_k{k}"], 1) for k, v in enumerate(values)])
    return _table(["learner"] + [f"after {k} steps" for k in range(k_max + 1)], rows)


def _score_table(m: dict[str, Any]) -> str:
    main, poi = m["learner"], m["probability_of_improvement"]
    rows = []
    for name in (main, *BASELINES):
        s = m[name]
        normed = "—" if s["normalized_post_adapt"] is None else f"{s['normalized_post_adapt']:.3f}"
        p = _ci(poi[name]["probability"], poi[name]["ci95"]) if name in poi else "—"
        rows.append([name, _ci(s["score_mean"], s["score_mean_ci95"]),
                     _ci(s["score_iqm"], s["score_iqm_ci95"]), normed, p])
    return _table(["learner", "mean [95%]", "IQM [95%]", "normalised mean",
                   f"P({main} > learner) [95%]"], rows)


def _budget_rows(facts: Facts) -> list[tuple[str, str]]:
    m, tune = facts.meta_test, facts.config.tune
    tuned = {k: float(f"{v:.4g}") if isinstance(v, float) else v
             for k, v in ((facts.checkpoint or {}).get("tuned") or {}).items()}
    rows = [("tuning", f"{tune.n_trials} Optuna trials × {tune.num_iterations} iterations on "
             f"the train tasks, scored on the val tasks; chosen: {json.dumps(tuned)}"
             if tune.n_trials else "skipped (tune.n_trials = 0)")]
    budget = (facts.checkpoint or {}).get("train_budget")
    if budget:
        steps = budget.get("num_env_steps")
        rows.append((f"meta-training ({m['learner']})",
                     f"{budget['num_iterations']} iterations, {budget['num_episodes']:,} "
                     f"episodes, " + (f"{steps:,} env steps" if steps is not None else
                                     f"at most {budget['num_episodes'] * budget['max_steps']:,}"
                                     " env steps")))
        rows.append(("baselines", "pretrained: multi-task PPO on as many episodes; scratch: "
                     "a random initialisation; both then the same adaptation steps"))
    else:
        rows.append(("meta-training", f"models/{m['learner']}.json has no train_budget"))
    rows.append(("meta-test", f"{m['num_test_tasks']} tasks × {len(m['seeds'])} seeds "
                 f"{m['seeds']} × {m['num_adapt_steps'] + 1} rollouts of "
                 f"{m['episodes_per_task']} episodes per learner"))
    return rows


def render(facts: Facts, figures: dict[str, Path], written_at: str) -> str:
    """The HTML page (``figures``: :func:`draw_figures`' PNGs, embedded as data URIs)."""
    m = facts.meta_test
    main, st = m["learner"], m["statistics"]
    hashes = [(split, "unreadable" if v is None else v[0], "—" if v is None else v[1])
              for split, v in facts.task_sets.items()]
    clock = [(stage, f"{facts.wall_clock[stage]:.1f}") for stage in STAGES
             if stage in facts.wall_clock]
    if len(clock) > 1:
        clock.append(("all listed", f"{sum(facts.wall_clock.values()):.1f}"))
    parts = [
        f"<h1>{_e(main)} on {_e(m['family'])}: meta-test comparison</h1>",
        f'<p class="note">Written {_e(written_at)} by the report stage '
        "(<code>metarl stage report</code>, or <code>metarl report</code>) from "
        "metrics/meta_test.json and metrics/register.json.</p>",
        "<h2>Registry gate</h2>", _gate_html(facts),
        "<h2>Adaptation curves</h2>",
        _figure(figures["adaptation_curve"], "adaptation curves",
                "Mean episode return over test tasks and seeds after each adaptation step, "
                "with its 95% interval (band)."),
        _curve_table(m),
        "<h2>Scores after adaptation</h2>",
        _figure(figures["scores"], "post-adaptation scores",
                f"{_units_label(m)} after {m['num_adapt_steps']} steps: each tick a task × "
                "seed, mean and interquartile mean (IQM) with 95% intervals."),
        _score_table(m),
        "<h2>Probability of improvement</h2>",
        _figure(figures["improvement"], "probability of improvement",
                f"P({main} > baseline): the chance that {main} scores above the baseline on "
                "a test task (every seed pair of a task compared, ties half), with 95% "
                "intervals; 0.5 is no better."),
    ]
    refs = m.get("reference_baselines") or {}
    if refs:
        parts += ["<h2>Classic baselines</h2>",
                  _table(("baseline", "return [95%]", "normalised"),
                         [(n, _ci(r["return"], r["ci95"], 2), "—" if r["normalized"] is None
                           else f"{r['normalized']:.3f}") for n, r in refs.items()])]
    parts += [
        "<h2>Task sets</h2>", _table(("split", "content hash", "tasks"), hashes),
        "<h2>Budgets</h2>", _table(("what", "budget"), _budget_rows(facts), text=True),
        "<h2>Wall-clock</h2>",
        _table(("stage", "seconds"), clock) if clock else "<p>Not recorded.</p>",
        f'<p class="note">Source: {_e(facts.wall_clock_source)}.</p>',
        "<h2>Statistics</h2>",
        f"<p>{_e(st['method'])}; {st['num_resamples']} resamples, level {st['level']}, "
        f"seed {st['seed']} (the same numbers on every rerun). Scores are "
        f"{_e(_units_label(m))}. IQM: the mean of the middle 50% of the task × seed scores; "
        "probability of improvement: the Mann-Whitney statistic per task, averaged over tasks "
        "(Agarwal et al. 2021, Deep Reinforcement Learning at the Edge of the Statistical "
        "Precipice). The gate's interval is its own paired bootstrap of the per-task "
        "difference, measured by the register stage.</p>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(main)} meta-test report</title><style>{CSS}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _write(paths: Paths, config: PipelineConfig, params_path: Path, folder: Path) -> Path:
    started = time.perf_counter()
    from pipelines.io import atomic_write_text

    facts = gather(paths, config, params_path)
    figures = draw_figures(facts, folder / "figures")
    written_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    page = render(facts, figures, written_at)
    target = folder / "report.html"
    atomic_write_text(target, page)
    print(f"report: wrote {target} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return target


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """The ``report`` stage: ``reports/report.html`` and ``reports/figures/*.png``.

    Raises:
        StageError: evaluate's outputs are missing or stale (the message says what to run).

    """
    target = _write(paths, config, paths.params, paths.reports)
    return {"report": str(target),
            "figures": [str(paths.reports / "figures" / f"{n}.png") for n in FIGURES]}


def write_report(root: Path | str = ".", params: Path | str | None = None,
                 out: Path | str | None = None) -> Path:
    """``metarl report``: write ``<out>/report.html`` and ``<out>/figures/*.png``, in no stage run.

    ``out``: ``reports/`` by default. The stage is :func:`run`.

    Raises:
        StageError: evaluate's outputs are missing or stale (the message says what to run).

    """
    paths = Paths(Path(root).resolve())
    params_path = Path(params) if params else paths.params
    config = load_project_config(params_path, paths.root)
    return _write(paths, config, params_path, paths.reports if out is None else Path(out))
