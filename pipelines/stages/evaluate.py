"""Stage ``evaluate``: adaptation curves on the held-out test tasks, against baselines.

Learners: ``maml`` (the meta-learned initialisation), ``pretrained`` (multi-task PPO, then the
same fine-tuning steps), ``scratch`` (a random initialisation, then the same steps) and
``random`` (uniform actions). Every learner sees the same tasks, seeds and start states.
Scores are also normalised: (R - R_random) / (R_oracle - R_random), R_oracle being the mean
over the test tasks of the family's oracle return (CartPole: the horizon, the best possible).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import mlflow
import torch

from metarl.algos.base import GradientAdaptedPolicy, MetaLearner, RandomLearner
from metarl.evaluation import CurveSummary, meta_test, normalized
from pipelines.io import atomic_write_json, atomic_write_text
from pipelines.paths import Paths
from pipelines.plots import plot_adaptation_curves
from pipelines.settings import PipelineConfig
from pipelines.stages.common import device, family, load_checkpoint, load_task_set

LEARNERS = ("maml", "pretrained", "scratch", "random")


def learners(paths: Paths, config: PipelineConfig) -> dict[str, MetaLearner]:
    """The trained learners and the baselines built on the same network and step size."""
    maml, _ = load_checkpoint(paths, "maml")
    pretrained, _ = load_checkpoint(paths, "pretrained")
    generator = torch.Generator().manual_seed(config.evaluate.seeds[0] + 7919)
    scratch = GradientAdaptedPolicy(maml.policy, maml.policy.init_params(generator),
                                    maml.inner_lr, maml.discount)
    return {"maml": maml, "pretrained": pretrained, "scratch": scratch,
            "random": RandomLearner()}


def summarize(results: dict[str, CurveSummary], oracle: float) -> dict[str, Any]:
    """Nested metrics per learner, plus flat ``meta_test/...`` keys for MAML."""
    random_mean = results["random"].mean[0]
    out: dict[str, Any] = {"oracle_return": oracle, "random_return": float(random_mean)}
    for name, s in results.items():
        k_max = len(s.mean) - 1
        out[name] = {
            "return_pre_adapt": float(s.mean[0]),
            **{f"return_post_adapt_k{k}": float(s.mean[k]) for k in range(1, k_max + 1)},
            **{f"ci95_k{k}": [float(s.ci_low[k]), float(s.ci_high[k])]
               for k in range(k_max + 1)},
            "normalized_pre_adapt": float(normalized(s.mean[0], random_mean, oracle)),
            "normalized_post_adapt": float(normalized(s.mean[k_max], random_mean, oracle)),
        }
    return out


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``meta_test/<learner>/<metric>`` floats for MLflow (CI bounds dropped)."""
    flat = {}
    for name in LEARNERS:
        for key, value in summary.get(name, {}).items():
            if isinstance(value, float):
                flat[f"meta_test/{name}/{key}"] = value
                if name == "maml":
                    flat[f"meta_test/{key}"] = value
    return flat


def curve_csv(results: dict[str, CurveSummary]) -> str:
    """Wide CSV, one row per adaptation step: ``<learner>`` mean return and its CI bounds."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["adapt_step"]
    for name in results:
        header += [name, f"{name}_ci_low", f"{name}_ci_high"]
    writer.writerow(header)
    for k in range(len(next(iter(results.values())).mean)):
        row = [str(k)]
        for s in results.values():
            row += [f"{s.mean[k]:.3f}", f"{s.ci_low[k]:.3f}", f"{s.ci_high[k]:.3f}"]
        writer.writerow(row)
    return buf.getvalue()


def report(summary: dict[str, Any], k_max: int, test_hash: str, seeds: tuple[int, ...]) -> str:
    """Markdown table of the meta-test results."""
    lines = [f"# Meta-test on held-out tasks (task set {test_hash}, seeds {list(seeds)})", "",
             "Mean episode return over test tasks (95% bootstrap CI over tasks); "
             "normalised: random 0, oracle 1.", "",
             "| learner | " + " | ".join(f"after {k} steps" for k in range(k_max + 1))
             + " | normalised (pre → post) |",
             "|---|" + "---|" * (k_max + 2)]
    for name in LEARNERS:
        m = summary[name]
        cells = [f"{m['return_pre_adapt']:.1f} [{m['ci95_k0'][0]:.1f}, {m['ci95_k0'][1]:.1f}]"]
        cells += [f"{m[f'return_post_adapt_k{k}']:.1f} [{m[f'ci95_k{k}'][0]:.1f}, "
                  f"{m[f'ci95_k{k}'][1]:.1f}]" for k in range(1, k_max + 1)]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {m['normalized_pre_adapt']:.2f} → {m['normalized_post_adapt']:.2f} |")
    return "\n".join(lines) + "\n"


def run(config: PipelineConfig, paths: Paths) -> dict[str, Any]:
    """Write metrics/meta_test.json, plots/adaptation_curve.{csv,png}, reports/meta_test.md."""
    fam, dev = family(config), device(config)
    test = load_task_set(paths, "test", config)
    ev = config.evaluate
    results = meta_test(learners(paths, config), fam, test, ev.num_adapt_steps,
                        ev.episodes_per_task, ev.seeds, dev)
    oracle = float(fam.oracle_returns(list(test.tasks)).mean())
    summary = summarize(results, oracle)
    summary["test_task_hash"] = test.content_hash
    summary["seeds"] = list(ev.seeds)
    atomic_write_json(paths.metrics / "meta_test.json", summary)
    atomic_write_text(paths.plots / "adaptation_curve.csv", curve_csv(results))
    png = paths.plots / "adaptation_curve.png"
    plot_adaptation_curves(results, png, title=f"Meta-test on {len(test)} held-out "
                           f"{config.task.family} tasks, seeds {list(ev.seeds)}",
                           oracle=oracle)
    table = report(summary, ev.num_adapt_steps, test.content_hash, ev.seeds)
    atomic_write_text(paths.reports / "meta_test.md", table)
    if mlflow.active_run() is not None:
        mlflow.log_metrics(flat_metrics(summary))
        mlflow.set_tag("task_hash.test", test.content_hash)
        mlflow.log_artifact(str(png), artifact_path="plots")
        mlflow.log_artifact(str(paths.plots / "adaptation_curve.csv"), artifact_path="plots")
        mlflow.log_text(table, "reports/meta_test.md")
    return summary


