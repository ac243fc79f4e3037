"""Stage ``evaluate``: adaptation curves on the held-out test tasks, against baselines.

Learners: the meta-learner (``algo.name``, loaded through the registry; what its
adaptation step means is its ``step_note``), ``pretrained`` (multi-task PPO, then the same
fine-tuning steps as the gradient learners), ``scratch`` (a random initialisation, then the
same steps) and ``random`` (uniform actions). Every learner sees the same tasks, seeds and
start states.
Scores are also normalised: (R - R_random) / (R_oracle - R_random), R_oracle being the mean
over the test tasks of the family's oracle return (CartPole: the horizon, the best possible).
A family without a closed-form oracle (MuJoCo, Meta-World: ``oracle_returns`` is NaN) is
normalised with the task-conditioned policy the train stage trained as its oracle
(``oracle_kind: task-conditioned``, see :mod:`metarl.baselines.task_conditioned`); without
that checkpoint, raw returns only (``oracle_return`` and every normalised score null).

Statistics (:mod:`pipelines.stats`, scipy's bootstrap with the task as the resampling unit):
each step's mean return with its 95% interval (``ci95_k<k>``); the post-adaptation score
(normalised where there is an oracle, else the return: ``score_units``) as mean and IQM over
tasks × seeds with intervals (``score_mean``, ``score_iqm`` and their ``*_ci95``); and the
probability that the meta-learner beats each baseline on a task
(``probability_of_improvement``). ``per_task_returns`` holds every learner's return per
seed, step and task, the data behind them all (and behind ``metarl report``).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from metarl.algos import registry
from metarl.algos.base import GradientAdaptedPolicy, MetaLearner, RandomLearner
from metarl.baselines.oracles import oracle_returns
from metarl.baselines.reference import reference_returns
from metarl.baselines.task_conditioned import TaskConditionedFamily
from metarl.evaluation import CurveSummary, meta_test, normalized, normalized_score, score_scale
from pipelines import stats
from pipelines.io import atomic_write_json, atomic_write_text
from pipelines.paths import Paths
from pipelines.plots import Curve, plot_adaptation_curves
from pipelines.settings import PipelineConfig
from pipelines.stages.common import (
    StageError,
    checkpoint_files,
    device,
    family,
    load_checkpoint,
    load_task_set,
)

BASELINES = ("pretrained", "scratch", "random")


def learners(paths: Paths, config: PipelineConfig) -> dict[str, MetaLearner]:
    """The meta-learner first, then the baselines built on the MLP network and step size."""
    meta, _ = load_checkpoint(paths, config.algo.name)
    pretrained, _ = load_checkpoint(paths, "pretrained")
    if not isinstance(pretrained, GradientAdaptedPolicy):
        raise StageError("models/pretrained.pt: not an MLP policy; re-run `metarl stage train`")
    generator = torch.Generator().manual_seed(config.evaluate.seeds[0] + 7919)
    scratch = GradientAdaptedPolicy(pretrained.policy, pretrained.policy.init_params(generator),
                                    pretrained.inner_lr, pretrained.discount)
    return {config.algo.name: meta, "pretrained": pretrained, "scratch": scratch,
            "random": RandomLearner()}


def trained_oracle_return(paths: Paths, fam: Any, test: Any, config: PipelineConfig,
                          dev: str) -> float:
    """Mean return on the test tasks of the task-conditioned policy trained as the oracle."""
    learner, ckpt = load_checkpoint(paths, "oracle")
    conditioned = TaskConditionedFamily(fam, mean=ckpt["feature_mean"],
                                        scale=ckpt["feature_scale"])
    ev = config.evaluate
    res = meta_test({"oracle": learner}, conditioned, test, 0, ev.episodes_per_task, ev.seeds,
                    dev)
    return float(res["oracle"].mean[0])


def post_adapt_scores(results: dict[str, CurveSummary],
                      oracle: float) -> tuple[str, dict[str, np.ndarray]]:
    """Every learner's score after the last step per seed and task, ``[num_seeds, N]``.

    Returns ``(units, scores)``: ``normalized`` (random 0, oracle 1) where the family has a
    score scale, else ``return`` (raw returns), the rule of
    :func:`metarl.evaluation.score_scale`.
    """
    random_mean = float(results["random"].mean[0])
    raw = {name: s.per_task[:, -1, :].astype(float) for name, s in results.items()}
    if score_scale(random_mean, oracle) is None:
        return "return", raw
    return "normalized", {name: normalized(r, random_mean, oracle) for name, r in raw.items()}


def _score_stats(scores: np.ndarray) -> dict[str, Any]:
    """Mean and IQM over tasks × seeds with their intervals (one learner)."""
    mean = stats.mean_interval(scores, stats.generator())
    iqm = stats.iqm_interval(scores, stats.generator())
    return {"score_mean": mean.value, "score_mean_ci95": mean.interval,
            "score_iqm": iqm.value, "score_iqm_ci95": iqm.interval}


def improvement(scores: dict[str, np.ndarray], main: str) -> dict[str, Any]:
    """P(``main`` > baseline) on a task, with its interval, for each baseline."""
    out = {}
    for name in BASELINES:
        est = stats.probability_of_improvement(scores[main], scores[name], stats.generator())
        out[name] = {"probability": est.value, "ci95": est.interval}
    return out


def summarize(results: dict[str, CurveSummary], oracle: float) -> dict[str, Any]:
    """Metrics per learner (the meta-learner first, named in ``learner``)."""
    random_mean = results["random"].mean[0]
    main = next(iter(results))
    units, scores = post_adapt_scores(results, oracle)
    out: dict[str, Any] = {"learner": main,
                           "oracle_return": oracle if np.isfinite(oracle) else None,
                           "random_return": float(random_mean), "score_units": units,
                           "statistics": {"method": f"scipy.stats.bootstrap {stats.METHOD}, "
                                          "tasks resampled (seeds of a task together)",
                                          "level": stats.LEVEL,
                                          "num_resamples": stats.NUM_RESAMPLES,
                                          "seed": stats.SEED}}
    for name, s in results.items():
        k_max = len(s.mean) - 1
        low, high = stats.curve_band(s.per_task)
        out[name] = {
            "return_pre_adapt": float(s.mean[0]),
            **{f"return_post_adapt_k{k}": float(s.mean[k]) for k in range(1, k_max + 1)},
            **{f"ci95_k{k}": [float(low[k]), float(high[k])] for k in range(k_max + 1)},
            "normalized_pre_adapt": normalized_score(s.mean[0], random_mean, oracle),
            "normalized_post_adapt": normalized_score(s.mean[k_max], random_mean, oracle),
            **_score_stats(scores[name]),
        }
        if s.success is not None:  # Meta-World: the share of episodes that succeeded
            out[name].update({f"success_rate_k{k}": float(s.success[k])
                              for k in range(k_max + 1)})
    if all(name in results for name in BASELINES):
        out["probability_of_improvement"] = improvement(scores, main)
    out["per_task_returns"] = {name: s.per_task.tolist() for name, s in results.items()}
    return out


def results_of(summary: dict[str, Any]) -> dict[str, CurveSummary]:
    """The :class:`CurveSummary` of each learner back from ``metrics/meta_test.json``."""
    out = {}
    for name, per_task in summary["per_task_returns"].items():
        array = np.asarray(per_task, dtype=float)  # [num_seeds, K+1, N]
        out[name] = CurveSummary(array, array.mean(0).mean(1))
    return out


def num_steps(metrics: dict[str, Any]) -> int:
    """K, the adaptation steps of one learner's metrics (its ``return_post_adapt_k*`` keys)."""
    return sum(1 for key in metrics if key.startswith("return_post_adapt_k"))


def curves(summary: dict[str, Any]) -> dict[str, Curve]:
    """Each learner's adaptation curve and band from ``metrics/meta_test.json``'s numbers."""
    out = {}
    for name in (summary["learner"], *BASELINES):
        m = summary[name]
        k_max = num_steps(m)
        mean = [m["return_pre_adapt"]] + [m[f"return_post_adapt_k{k}"]
                                          for k in range(1, k_max + 1)]
        out[name] = Curve(mean, [m[f"ci95_k{k}"][0] for k in range(k_max + 1)],
                          [m[f"ci95_k{k}"][1] for k in range(k_max + 1)])
    return out


def curve_metrics(summary: dict[str, Any]) -> list[dict[str, float]]:
    """MLflow metrics per adaptation step ``k`` (the list's index, logged as ``step=k``).

    Per learner ``meta_test/<learner>/return`` and its interval, ``.../ci_low`` and
    ``.../ci_high``: one metric each, so MLflow draws the curve against the step.
    """
    steps: list[dict[str, float]] = []
    for name, c in curves(summary).items():
        for k, (mean, low, high) in enumerate(zip(c.mean, c.low, c.high, strict=True)):
            if k == len(steps):
                steps.append({})
            steps[k].update({f"meta_test/{name}/return": mean, f"meta_test/{name}/ci_low": low,
                             f"meta_test/{name}/ci_high": high})
    return steps


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``meta_test/<learner>/<metric>`` floats for MLflow (CI bounds dropped).

    The meta-learner's metrics also go in as ``meta_test/<metric>``; the probability of
    improvement over a baseline as ``meta_test/improvement/<baseline>`` with its
    ``.../ci_low`` and ``.../ci_high``. The curves per step: :func:`curve_metrics`.
    """
    flat = {}
    main = summary["learner"]
    for name in (main, *BASELINES):
        for key, value in summary.get(name, {}).items():
            if isinstance(value, float):
                flat[f"meta_test/{name}/{key}"] = value
                if name == main:
                    flat[f"meta_test/{key}"] = value
    for name, ref in summary.get("reference_baselines", {}).items():
        flat[f"meta_test/reference/{name}/return"] = ref["return"]
        if ref["normalized"] is not None:
            flat[f"meta_test/reference/{name}/normalized"] = ref["normalized"]
    for name, poi in summary.get("probability_of_improvement", {}).items():
        flat[f"meta_test/improvement/{name}"] = poi["probability"]
        flat[f"meta_test/improvement/{name}/ci_low"] = poi["ci95"][0]
        flat[f"meta_test/improvement/{name}/ci_high"] = poi["ci95"][1]
    return flat


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """Evaluate's part of ``metrics/summary.json`` (the DVC metrics; register writes the file).

    Per learner the score before (``pre``) and after (``post``) the last adaptation step,
    normalised where ``metrics/meta_test.json`` has normalised scores, else the raw return;
    ``random`` does not adapt, so ``pre`` only (0 when normalised). The meta-learner is
    ``meta_learner`` whichever algorithm it is (``algo.name``; so experiments of different
    algorithms share columns) and also gets its raw returns, ``return_pre`` / ``return_post``.
    """
    main = summary["learner"]
    normed = summary[main]["normalized_post_adapt"] is not None
    k_max = num_steps(summary[main])

    def score(name: str, when: str) -> float | None:
        key = (f"normalized_{when}_adapt" if normed else
               "return_pre_adapt" if when == "pre" else f"return_post_adapt_k{k_max}")
        return summary[name][key]

    out: dict[str, Any] = {"meta_learner": {
        "pre": score(main, "pre"), "post": score(main, "post"),
        "return_pre": summary[main]["return_pre_adapt"],
        "return_post": summary[main][f"return_post_adapt_k{k_max}"]}}
    for name in BASELINES:
        out[name] = {"pre": score(name, "pre")}
        if name != "random":
            out[name]["post"] = score(name, "post")
    return out


def reference_summary(fam: Any, test: Any, seeds: tuple[int, ...], dev: str,
                      random_return: float, oracle: float) -> dict[str, Any]:
    """The family's classic baselines (bandit: UCB1, Gittins, ...; MDP: PSRL, ...), if any."""
    refs = reference_returns(fam, test.tasks, seeds, dev)
    return {name: {"return": float(values.mean()),
                   "ci95": stats.mean_interval(values, stats.generator()).interval,
                   "normalized": normalized_score(values.mean(), random_return, oracle)}
            for name, values in refs.items()}


def curve_csv(summary: dict[str, Any]) -> str:
    """Long CSV, one row per learner and step: ``adapt_step, learner, return, ci_low, ci_high``.

    The meta-learner (``algo.name``) is the learner ``meta_learner``, so ``dvc plots`` draws
    the same series whichever algorithm ran (``learner`` in ``metrics/meta_test.json`` says
    which). dvc.yaml draws it with ``.dvc/plots/confidence_band.json``: the return per learner
    over the steps, inside its 95% band.
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["adapt_step", "learner", "return", "ci_low", "ci_high"])
    for i, (name, c) in enumerate(curves(summary).items()):
        label = "meta_learner" if i == 0 else name
        for k, (mean, low, high) in enumerate(zip(c.mean, c.low, c.high, strict=True)):
            writer.writerow([k, label, f"{mean:.3f}", f"{low:.3f}", f"{high:.3f}"])
    return buf.getvalue()


def _fmt(score: float | None) -> str:
    """A normalised score for the report (``n/a`` without an oracle)."""
    return "n/a" if score is None else f"{score:.2f}"


def report(summary: dict[str, Any], k_max: int, test_hash: str, seeds: tuple[int, ...]) -> str:
    """Markdown table of the meta-test results."""
    main = summary["learner"]
    note = registry.get(main).step_note if main in registry.algorithms() else ""
    steps = f" {note}" if note else ""
    lines = [f"# Meta-test on held-out tasks (task set {test_hash}, seeds {list(seeds)})", "",
             "Mean episode return over test tasks and seeds (95% bootstrap interval, tasks "
             "resampled); normalised: random 0, oracle 1." + steps, "",
             "| learner | " + " | ".join(f"after {k} steps" for k in range(k_max + 1))
             + " | normalised (pre → post) |",
             "|---|" + "---|" * (k_max + 2)]
    for name in (main, *BASELINES):
        m = summary[name]
        cells = [f"{m['return_pre_adapt']:.1f} [{m['ci95_k0'][0]:.1f}, {m['ci95_k0'][1]:.1f}]"]
        cells += [f"{m[f'return_post_adapt_k{k}']:.1f} [{m[f'ci95_k{k}'][0]:.1f}, "
                  f"{m[f'ci95_k{k}'][1]:.1f}]" for k in range(1, k_max + 1)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(m['normalized_pre_adapt'])}"
                     f" → {_fmt(m['normalized_post_adapt'])} |")
    if f"success_rate_k{k_max}" in summary[main]:
        lines += ["", "Success rate (share of episodes reaching the env's success criterion):",
                  "", "| learner | " + " | ".join(f"after {k} steps" for k in range(k_max + 1))
                  + " |", "|---|" + "---|" * (k_max + 1)]
        lines += [f"| {name} | " + " | ".join(f"{summary[name][f'success_rate_k{k}']:.2f}"
                                              for k in range(k_max + 1)) + " |"
                  for name in (main, *BASELINES)]
    refs = summary.get("reference_baselines") or {}
    if refs:
        lines += ["", "Classic baselines on the same tasks and seeds (they adapt within the trial, "
                  "not by gradient steps):", "", "| baseline | return | normalised |",
                  "|---|---|---|"]
        lines += [f"| {name} | {r['return']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | "
                  f"{_fmt(r['normalized'])} |" for name, r in refs.items()]
    return "\n".join(lines + score_table(summary)) + "\n"


def score_table(summary: dict[str, Any]) -> list[str]:
    """The post-adaptation scores' lines: mean, IQM, P(meta-learner > baseline).

    None for a ``meta_test.json`` written before they were recorded.
    """
    main, poi = summary["learner"], summary.get("probability_of_improvement")
    if "score_units" not in summary or poi is None:
        return []

    def cell(value: float, interval: list[float]) -> str:
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    lines = ["", f"Score after the last step ({summary['score_units']}) over tasks × seeds, "
             "mean and interquartile mean (IQM), and the probability that "
             f"{main} scores above the learner on a task, each with its 95% interval:", "",
             f"| learner | mean | IQM | P({main} > learner) |", "|---|---|---|---|"]
    for name in (main, *BASELINES):
        m = summary[name]
        p = cell(poi[name]["probability"], poi[name]["ci95"]) if name in poi else "—"
        lines.append(f"| {name} | {cell(m['score_mean'], m['score_mean_ci95'])} | "
                     f"{cell(m['score_iqm'], m['score_iqm_ci95'])} | {p} |")
    return lines


def curve_title(summary: dict[str, Any], family_name: str) -> str:
    """The adaptation-curve plot's title."""
    return (f"Meta-test on {summary['num_test_tasks']} held-out {family_name} tasks, "
            f"seeds {summary['seeds']}")


def plot_curves(summary: dict[str, Any], family_name: str, png: Path) -> None:
    """Draw ``metrics/meta_test.json``'s adaptation curves with their bands to ``png``."""
    plot_adaptation_curves(curves(summary), png, title=curve_title(summary, family_name),
                           oracle=summary["oracle_return"])


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Write metrics/meta_test.json, plots/adaptation_curve.{csv,png}, reports/meta_test.md."""
    started = time.perf_counter()
    fam, dev = family(config), device(config)
    test = load_task_set(paths, "test", config, fam)
    ev = config.evaluate
    results = meta_test(learners(paths, config), fam, test, ev.num_adapt_steps,
                        ev.episodes_per_task, ev.seeds, dev)
    oracle = float(oracle_returns(fam, test.tasks).mean())
    oracle_kind: str | None = "closed-form" if np.isfinite(oracle) else None
    if oracle_kind is None and checkpoint_files(paths, "oracle")[0].exists():
        oracle, oracle_kind = trained_oracle_return(paths, fam, test, config, dev), \
            "task-conditioned"
    summary = summarize(results, oracle)
    summary["oracle_kind"] = oracle_kind
    summary["reference_baselines"] = reference_summary(
        fam, test, ev.seeds, dev, summary["random_return"], oracle)
    summary.update(test_task_hash=test.content_hash, seeds=list(ev.seeds),
                   family=config.task.family, num_test_tasks=len(test),
                   num_adapt_steps=ev.num_adapt_steps, episodes_per_task=ev.episodes_per_task)
    atomic_write_text(paths.plots / "adaptation_curve.csv", curve_csv(summary))
    png = paths.plots / "adaptation_curve.png"
    plot_curves(summary, config.task.family, png)
    table = report(summary, ev.num_adapt_steps, test.content_hash, ev.seeds)
    atomic_write_text(paths.reports / "meta_test.md", table)
    summary["wall_clock_s"] = round(time.perf_counter() - started, 3)
    atomic_write_json(paths.metrics / "meta_test.json", summary)  # last: the stage's record
    if mlflow.active_run() is not None:
        mlflow.log_metrics(flat_metrics(summary))
        for k, step in enumerate(curve_metrics(summary)):
            mlflow.log_metrics(step, step=k)
        mlflow.set_tag("task_hash.test", test.content_hash)
        mlflow.log_artifact(str(png), artifact_path="plots")
        mlflow.log_artifact(str(paths.plots / "adaptation_curve.csv"), artifact_path="plots")
        mlflow.log_text(table, "reports/meta_test.md")
    return summary


