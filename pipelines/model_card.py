"""The model card of a registered version: one Markdown document, rendered from facts.

The register stage (:mod:`pipelines.stages.register`) gathers the facts — the checkpoint's
config (family, algorithm, tuned values, training budget), the task-set hashes, evaluate's
meta-test table, the gate's record, the git commit and package versions — and :func:`render`
turns them into the card. The card is the version's MLflow description (:func:`description`
fits it into the registry's column), the artifact ``model_card.md`` of the run that
registered it, and ``reports/model_card.md``. Its first paragraph is the gate's one-sentence
summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from metarl.algos.base import TensorInfo

MAX_DESCRIPTION = 5000
"""Characters of a model-version description in MLflow's SQL store (``VARCHAR(5000)``):
SQLite does not enforce it, MySQL and PostgreSQL reject longer text."""

@dataclass(frozen=True)
class CardFacts:
    """Everything one model card says; gathered by the register stage."""

    record: dict[str, Any]
    """The gate's record (``metrics/register.json``): name, version, scores, decision."""
    gate_sentence: str
    """The one-sentence gate summary, the card's first paragraph."""
    checkpoint: dict[str, Any]
    """The meta-learner's config JSON (``models/<algo>.json``)."""
    algo_summary: str
    """The algorithm's one-line summary from the registry ("" when unknown)."""
    task_sets: dict[str, tuple[str, int | None]]
    """Split → (content hash, number of tasks or None when unknown)."""
    meta_test: str | None
    """Evaluate's table (``reports/meta_test.md``'s text); None when not this model's."""
    aliases: dict[str, str | None]
    """Alias → version after this registration (``champion``, ``challenger``)."""
    registration_key: str
    """The ``registration_key`` tag (checkpoint, test set, protocol)."""
    registered_by: str | None
    """The MLflow run that created the version."""
    card_run: str | None
    """The MLflow run that wrote this card (the same run, or a later re-registration)."""
    written_at: str
    """When the card was written (UTC, ISO 8601)."""
    git_commit: str
    """The project's HEAD commit (``unknown`` outside git)."""
    packages: dict[str, str]
    """Package name → installed version."""
    serving: tuple[list[TensorInfo], list[TensorInfo]]
    """The inputs ``predict`` reads and the output it returns."""
    example_task: dict[str, Any]
    """A task of the family (the first test task), for the usage example."""
    num_adapt_steps: int
    """Adaptation steps of the meta-test protocol (the usage example uses as many)."""


def _json(value: Any) -> str:
    """Compact JSON for an inline code span (floats to 6 significant digits)."""
    def short(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [short(x) for x in v]
        return v
    return json.dumps(short(value), sort_keys=True)


def _tensors(specs: list[TensorInfo]) -> str:
    return ", ".join(f"`{name}` {dtype} {list(shape)}" for name, dtype, shape in specs)


def _training(f: CardFacts) -> list[str]:
    ck = f.checkpoint
    algo = str(ck.get("algo", f.record.get("model_name", "?")))
    summary = f" — {f.algo_summary}" if f.algo_summary else ""
    tuned = ck.get("tuned") or {}
    b = ck.get("train_budget")
    if isinstance(b, dict):
        steps = (f"{b['num_env_steps']:,} env steps" if b.get("num_env_steps") is not None else
                 f"at most {b['num_episodes'] * b['max_steps']:,} env steps (episodes × "
                 f"horizon {b['max_steps']}; the algorithm does not count them)")
        budget = (f"{b['num_iterations']:,} meta-iterations, {b['num_episodes']:,} env "
                  f"episodes, {steps}; seed {ck.get('seed')}. The pretrained baseline got as "
                  "many episodes.")
    else:
        budget = ("not recorded (the checkpoint predates `train_budget`; re-run "
                  "`metarl stage train`).")
    return ["## Training", "",
            f"- Family: `{ck.get('family')}`, config `{_json(ck.get('family_config', {}))}`",
            f"- Algorithm: `{algo}`{summary}",
            f"- Algorithm config (tuned values applied): `{_json(ck.get('algo_config', {}))}`",
            "- Tuned by the tune stage (best on the validation tasks): "
            + (f"`{_json(tuned)}`" if tuned else "nothing (the configured values)"),
            f"- Budget: {budget}", ""]


def _task_sets(f: CardFacts) -> list[str]:
    lines = ["## Task sets", "", "| split | content hash | tasks |", "|---|---|---|"]
    for split, (digest, count) in f.task_sets.items():
        lines.append(f"| {split} | `{digest}` | {'?' if count is None else count} |")
    train_hash = f.checkpoint.get("train_task_hash")
    if train_hash and f.task_sets.get("train", (train_hash,))[0] != train_hash:
        lines += ["", f"The checkpoint was trained on tasks `{train_hash}`, not on today's "
                  "`data/tasks/train.json`."]
    return [*lines, ""]


def _gate(f: CardFacts) -> list[str]:
    r = f.record
    units = f"{r['units']} post-adaptation score"
    if r["reference"] == "champion":
        reference = f"@champion (version {r['champion_version_before']})"
    else:
        reference = f"{r['reference']} (the best baseline: this name had no champion)"
    low, high = r["ci"]
    if r["promoted"]:
        verdict = f"promoted to @champion (lower end {low:+.4f} > margin)"
    elif str(r["reason"]).startswith("not promoted: version"):
        verdict = str(r["reason"])  # the same registration is the champion already
    else:
        verdict = f"not promoted (lower end {low:+.4f} <= margin)"
    lines = ["## Registry gate", "",
             f"Both re-evaluated at registration on the test tasks `{r['test_task_hash']}`, "
             f"seeds {r['seeds']}; scores are the {units}.", "", "| | |", "|---|---|",
             f"| candidate score | {r['score']:.4f} |",
             f"| reference | {reference}: {r['reference_score']:.4f} |",
             f"| paired difference | {r['difference']:+.4f}, {r['level']:.0%} bootstrap "
             f"interval [{low:+.4f}, {high:+.4f}] |",
             f"| margin | {r['margin']} (promoted when the interval's lower end is above it) |",
             f"| decision | {verdict} |"]
    if r.get("baselines"):
        lines.append("| baselines | " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                   r["baselines"].items()) + " |")
    shown = ", ".join(f"@{a} → {v}" for a, v in f.aliases.items() if v is not None)
    lines.append(f"| aliases after it | {shown or 'none'} |")
    if r.get("reused_version"):
        lines += ["", f"The same checkpoint was registered again (registration key "
                  f"`{f.registration_key}`): version {r['version']} was reused, the gate re-ran "
                  "and this card replaced the earlier one."]
    return [*lines, ""]


def _usage(f: CardFacts) -> list[str]:
    name, version = f.record["model_name"], f.record["version"]
    inputs, outputs = f.serving
    return ["## How to use", "",
            "Adapt this version to a task of yours (a JSON object with the family's task "
            "fields; here the first test task), and write the adapted policy:", "",
            "```bash",
            f"metarl adapt models:/{name}/{version} --steps {f.num_adapt_steps} "
            f"--task '{_json(f.example_task)}' --out adapted",
            "```", "",
            "Act with the meta-learned policy (no code is stored with the model; `predict` "
            f"reads {_tensors(inputs)} and returns {_tensors(outputs)}):", "",
            "```python", "import mlflow", "",
            f'policy = mlflow.pyfunc.load_model("models:/{name}@champion")  # the champion',
            f'# this version: mlflow.pyfunc.load_model("models:/{name}/{version}")',
            "actions = policy.predict(observations)", "```", ""]


def render(f: CardFacts) -> str:
    """The model card of ``f.record``'s version, as Markdown."""
    r = f.record
    name, version = r["model_name"], r["version"]
    meta_test = (f"#{f.meta_test}".rstrip("\n").splitlines() if f.meta_test else
                 ["## Meta-test on held-out tasks", "", "Not available: `metrics/meta_test.json` "
                  "is missing or not this model's on these test tasks (re-run `metarl stage "
                  "evaluate`)."])
    software = ", ".join(f"{k} {v}" for k, v in f.packages.items())
    provenance = (f"Registered, and this card written ({f.written_at}), by MLflow run "
                  f"`{f.card_run}`" if f.card_run == f.registered_by else
                  f"Registered by MLflow run `{f.registered_by}`; this card written "
                  f"({f.written_at}) by run `{f.card_run}`")
    lines = [f"# Model card: {name} version {version}", "", f.gate_sentence, "",
             f"{provenance}. Git commit `{f.git_commit}`.", "",
             *_training(f), *_task_sets(f), *meta_test, "", *_gate(f),
             "## Software", "", software, "", *_usage(f)]
    return "\n".join(lines).rstrip("\n") + "\n"


def description(card: str, limit: int = MAX_DESCRIPTION) -> str:
    """``card`` as a model-version description: the whole card when it fits in ``limit``.

    A longer card keeps the leading sections that fit (the title and the gate sentence come
    first), then a line saying where the whole card is.
    """
    if len(card) <= limit:
        return card
    note = ("\n_The card is longer than the registry's description allows; the whole card is "
            "the artifact `model_card.md` of the run named above, and `reports/model_card.md`._\n")
    cut = card.rfind("\n## ", 0, limit - len(note))
    head = card[:cut] if cut > 0 else card[:max(0, limit - len(note))]
    return head.rstrip("\n") + "\n" + note
