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
"""

from __future__ import annotations

import csv
import io
from typing import Any

import mlflow
import numpy as np
import torch

from metarl.algos import registry
from metarl.algos.base import GradientAdaptedPolicy, MetaLearner, RandomLearner
from metarl.baselines.oracles import oracle_returns
from metarl.baselines.reference import reference_returns
from metarl.baselines.task_conditioned import TaskConditionedFamily
from metarl.evaluation import CurveSummary, bootstrap_ci, meta_test, normalized_score
from pipelines.io import atomic_write_json, atomic_write_text
from pipelines.paths import Paths
from pipelines.plots import plot_adaptation_curves
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


def summarize(results: dict[str, CurveSummary], oracle: float) -> dict[str, Any]:
    """Metrics per learner (the meta-learner first, named in ``learner``)."""
    random_mean = results["random"].mean[0]
    out: dict[str, Any] = {"learner": next(iter(results)),
                           "oracle_return": oracle if np.isfinite(oracle) else None,
                           "random_return": float(random_mean)}
    for name, s in results.items():
        k_max = len(s.mean) - 1
        out[name] = {
            "return_pre_adapt": float(s.mean[0]),
            **{f"return_post_adapt_k{k}": float(s.mean[k]) for k in range(1, k_max + 1)},
            **{f"ci95_k{k}": [float(s.ci_low[k]), float(s.ci_high[k])]
               for k in range(k_max + 1)},
            "normalized_pre_adapt": normalized_score(s.mean[0], random_mean, oracle),
            "normalized_post_adapt": normalized_score(s.mean[k_max], random_mean, oracle),
        }
        if s.success is not None:  # Meta-World: the share of episodes that succeeded
            out[name].update({f"success_rate_k{k}": float(s.success[k])
                              for k in range(k_max + 1)})
    return out


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``meta_test/<learner>/<metric>`` floats for MLflow (CI bounds dropped).

    The meta-learner's metrics also go in as ``meta_test/<metric>``.
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
    normalized = summary[main]["normalized_post_adapt"] is not None
    k_max = sum(1 for key in summary[main] if key.startswith("return_post_adapt_k"))

    def score(name: str, when: str) -> float | None:
        key = (f"normalized_{when}_adapt" if normalized else
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
    rng = np.random.default_rng(0)
    return {name: {"return": float(values.mean()),
                   "ci95": list(bootstrap_ci(values, rng)),
                   "normalized": normalized_score(values.mean(), random_return, oracle)}
            for name, values in refs.items()}


def curve_csv(results: dict[str, CurveSummary]) -> str:
    """Wide CSV, one row per adaptation step: ``<learner>`` mean return and its CI bounds.

    The meta-learner (the first learner, ``algo.name``) is the column ``meta_learner``,
    so ``dvc plots`` draws the same columns whichever algorithm ran (``learner`` in
    ``metrics/meta_test.json`` says which).
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["adapt_step"]
    for i, name in enumerate(results):
        column = "meta_learner" if i == 0 else name
        header += [column, f"{column}_ci_low", f"{column}_ci_high"]
    writer.writerow(header)
    for k in range(len(next(iter(results.values())).mean)):
        row = [str(k)]
        for s in results.values():
            row += [f"{s.mean[k]:.3f}", f"{s.ci_low[k]:.3f}", f"{s.ci_high[k]:.3f}"]
        writer.writerow(row)
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
             "Mean episode return over test tasks (95% bootstrap CI over tasks); "
             "normalised: random 0, oracle 1." + steps, "",
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
    return "\n".join(lines) + "\n"


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Write metrics/meta_test.json, plots/adaptation_curve.{csv,png}, reports/meta_test.md."""
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
    summary["test_task_hash"] = test.content_hash
    summary["seeds"] = list(ev.seeds)
    atomic_write_json(paths.metrics / "meta_test.json", summary)
    atomic_write_text(paths.plots / "adaptation_curve.csv", curve_csv(results))
    png = paths.plots / "adaptation_curve.png"
    plot_adaptation_curves(results, png, title=f"Meta-test on {len(test)} held-out "
                           f"{config.task.family} tasks, seeds {list(ev.seeds)}",
                           oracle=oracle if np.isfinite(oracle) else None)
    table = report(summary, ev.num_adapt_steps, test.content_hash, ev.seeds)
    atomic_write_text(paths.reports / "meta_test.md", table)
    if mlflow.active_run() is not None:
        mlflow.log_metrics(flat_metrics(summary))
        mlflow.set_tag("task_hash.test", test.content_hash)
        mlflow.log_artifact(str(png), artifact_path="plots")
        mlflow.log_artifact(str(paths.plots / "adaptation_curve.csv"), artifact_path="plots")
        mlflow.log_text(table, "reports/meta_test.md")
    return summary


