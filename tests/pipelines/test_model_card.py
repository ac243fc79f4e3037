"""The model card of a registered version: what it says, and that the registry, the run's
artifact and ``reports/model_card.md`` hold the same text, also for a reused version and after
a failed registration."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from metarl.algos import registry
from pipelines.cli import main
from pipelines.model_card import MAX_DESCRIPTION, CardFacts, description, render

NAME = "metarl-cartpole-maml"


def run_cli(root: Path, *args: str) -> int:
    return main([*args, "--root", str(root)])


def _record(**changes: Any) -> dict[str, Any]:
    """A ``metrics/register.json`` of a first version (hand-picked numbers)."""
    return {"model_name": NAME, "version": 3, "promoted": True,
            "reason": "promoted to @champion: ...", "score": 0.5123, "reference": "pretrained",
            "reference_score": 0.3456, "difference": 0.1667, "ci": [0.0512, 0.2789],
            "level": 0.95, "margin": 0.02, "units": "normalized",
            "baselines": {"pretrained": 0.3456, "scratch": 0.1, "random": 0.0},
            "champion_score_before": None, "champion_version_before": None,
            "test_task_hash": "0123456789abcdef", "seeds": [0, 1, 2], "reused_version": False,
            **changes}


def _facts(**changes: Any) -> CardFacts:
    fields: dict[str, Any] = {
        "record": _record(), "gate_sentence": "Registry gate: promoted to @champion: ....",
        "checkpoint": {"family": "cartpole", "family_config": {"max_steps": 200},
                       "algo": "maml", "algo_config": {"inner_lr": 0.1},
                       "train_task_hash": "aaaa", "tuned": {"inner_lr": 0.1}, "seed": 7,
                       "train_budget": {"num_iterations": 5, "num_episodes": 60,
                                        "num_env_steps": None, "max_steps": 200}},
        "algo_summary": "", "task_sets": {"train": ("aaaa", 6), "val": ("bbbb", 3),
                                          "test": ("0123456789abcdef", 3)},
        "meta_test": None, "aliases": {"champion": "3", "challenger": "3"},
        "registration_key": "k" * 32, "registered_by": "run1", "card_run": "run1",
        "written_at": "2024-01-01T00:00:00Z", "git_commit": "c" * 40,
        "packages": {"mlflow": "3.0.0"},
        "serving": ([("obs", "float32", (-1, 4))], [("action", "int64", (-1,))]),
        "example_task": {"gravity": 9.8}, "num_adapt_steps": 3}
    fields.update(changes)
    return CardFacts(**fields)


def test_card_reports_budget_gate_and_usage_from_its_facts() -> None:
    card = render(_facts())
    paragraphs = card.split("\n\n")
    assert paragraphs[0] == f"# Model card: {NAME} version 3"
    assert paragraphs[1] == "Registry gate: promoted to @champion: ...."  # the gate sentence
    # No env steps counted: the bound is episodes × horizon.
    assert ("5 meta-iterations, 60 env episodes, at most 12,000 env steps (episodes × horizon "
            "200") in card
    assert '- Tuned by the tune stage (best on the validation tasks): `{"inner_lr": 0.1}`' in card
    assert "| val | `bbbb` | 3 |" in card and "| test | `0123456789abcdef` | 3 |" in card
    assert "| candidate score | 0.5123 |" in card
    assert "| reference | pretrained (the best baseline: this name had no champion): 0.3456 |" \
        in card
    assert "| paired difference | +0.1667, 95% bootstrap interval [+0.0512, +0.2789] |" in card
    assert "| decision | promoted to @champion (lower end +0.0512 > margin) |" in card
    assert "| aliases after it | @champion → 3, @challenger → 3 |" in card
    assert "Not available: `metrics/meta_test.json` is missing" in card
    assert (f"metarl adapt models:/{NAME}/3 --steps 3 --task '{{\"gravity\": 9.8}}' "
            "--out adapted") in card
    assert f'mlflow.pyfunc.load_model("models:/{NAME}@champion")' in card
    assert "reads `obs` float32 [-1, 4] and returns `action` int64 [-1]" in card
    assert f"Git commit `{'c' * 40}`" in card and "mlflow 3.0.0" in card

    old = _facts(checkpoint={"family": "cartpole", "algo": "maml", "tuned": None},
                 task_sets={"train": ("eeee", 6)},
                 record=_record(reference="champion", champion_version_before=2,
                                promoted=False, ci=[-0.1, 0.3]))
    card = render(old)
    assert "Budget: not recorded (the checkpoint predates `train_budget`" in card
    assert "nothing (the configured values)" in card
    assert "| reference | @champion (version 2): 0.3456 |" in card
    assert "| decision | not promoted (lower end -0.1000 <= margin) |" in card


def test_description_is_the_card_or_its_leading_sections_within_the_limit() -> None:
    card = render(_facts())
    assert description(card) == card and len(card) < MAX_DESCRIPTION
    short = description(card, limit=1500)
    assert len(short) <= 1500
    assert short.startswith(card.split("\n## ")[0])  # title, gate sentence, provenance
    assert "## How to use" not in short  # cut at a section boundary, the tail dropped
    assert short.rstrip().endswith("and `reports/model_card.md`._")


def _registry(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _artifact(root: Path, run_id: str) -> str:
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.artifacts.load_text(f"runs:/{run_id}/model_card.md")


def test_every_registered_version_carries_its_card(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.stages.register as register

    for stage in ("tasks", "train", "evaluate", "register"):
        assert run_cli(project, "stage", stage) == 0, capsys.readouterr().err
    record = json.loads((project / "metrics" / "register.json").read_text())
    ckpt = json.loads((project / "models" / "maml.json").read_text())
    meta_test = json.loads((project / "metrics" / "meta_test.json").read_text())
    val = json.loads((project / "data" / "tasks" / "val.json").read_text())
    card = (project / "reports" / "model_card.md").read_text()

    # The registry's description, the registering run's artifact and the project file agree.
    client = _registry(project)
    version = client.get_model_version(NAME, str(record["version"]))
    assert version.description == card
    # the version's source run is the train run; the card is on the run that registered it
    assert client.get_run(version.run_id).data.tags["metarl.stage"] == "train"
    assert _artifact(project, version.tags["registered_by_run"]) == card
    assert card.split("\n\n")[1] == f"Registry gate: {record['reason']}."

    # What was trained, on what, with which budget.
    assert "- Family: `cartpole`, config `{\"cart_mass\": [0.5, 2.0]" in card
    assert '"max_steps": 30' in card  # tiny_params' horizon
    assert "- Algorithm: `maml` — " + registry.get("maml").summary in card
    assert '"meta_batch_size": 3' in card and '"hidden_sizes": [8]' in card
    budget = ckpt["train_budget"]
    section = ckpt["algo_config"]
    episodes = 2 * (section["num_inner_steps"] + 1) * 3 * 4  # iterations × steps × batch × eps
    assert budget["num_iterations"] == 2 and budget["num_episodes"] == episodes
    assert budget["num_env_steps"] > 0
    assert (f"Budget: 2 meta-iterations, {episodes} env episodes, "
            f"{budget['num_env_steps']:,} env steps; seed {ckpt['seed']}.") in card
    # Task-set hashes: the test hash is the one register.json records.
    assert f"| train | `{ckpt['train_task_hash']}` | 6 |" in card
    assert f"| val | `{val['content_hash']}` | 3 |" in card
    assert f"| test | `{record['test_task_hash']}` | 3 |" in card
    # Evaluate's table: the meta-learner's returns with their 95% intervals.
    maml = meta_test["maml"]
    row = (f"| maml | {maml['return_pre_adapt']:.1f} [{maml['ci95_k0'][0]:.1f}, "
           f"{maml['ci95_k0'][1]:.1f}] | {maml['return_post_adapt_k1']:.1f} ")
    assert row in card and "| random | " in card and "| pretrained | " in card
    # The gate's numbers.
    low, high = record["ci"]
    assert f"| candidate score | {record['score']:.4f} |" in card
    assert (f"| reference | {record['reference']} (the best baseline: this name had no "
            f"champion): {record['reference_score']:.4f} |") in card
    assert (f"| paired difference | {record['difference']:+.4f}, 95% bootstrap interval "
            f"[{low:+.4f}, {high:+.4f}] |") in card
    assert f"| margin | {record['margin']} " in card
    assert ("| decision | promoted" if record["promoted"] else "| decision | not promoted") \
        in card
    assert f"mlflow {importlib.metadata.version('mlflow')}" in card
    assert f"metarl adapt models:/{NAME}/{record['version']} --steps 2 --task '{{" in card

    # The same checkpoint again, now the champion: the version is reused, and its card, its
    # description and its gate tags are the re-run gate's, all alike.
    assert run_cli(project, "promote", NAME, "1") == 0
    assert run_cli(project, "stage", "register") == 0
    again = json.loads((project / "metrics" / "register.json").read_text())
    assert again["reused_version"] is True and again["version"] == 1
    reused_card = (project / "reports" / "model_card.md").read_text()
    version = client.get_model_version(NAME, "1")
    assert reused_card != card and version.description == reused_card
    assert "Registry gate: not promoted: version 1 is the champion." in reused_card
    assert "| reference | @champion (version 1): " in reused_card
    assert "| aliases after it | @champion → 1, @challenger → 1 |" in reused_card
    assert "version 1 was reused, the gate re-ran" in reused_card
    assert version.tags["gate.decision"] == "not promoted"
    assert version.tags["gate.reference"] == "champion"
    experiment = client.get_run(version.run_id).info.experiment_id
    latest = client.search_runs([experiment], "tags.`metarl.stage` = 'register'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.run_id != version.run_id
    assert _artifact(project, latest.info.run_id) == reused_card  # on the run that re-ran

    # A re-registration that fails at the last file puts everything back as it was: the
    # description, the tags and the project's files.
    files = {rel: (project / rel).read_bytes() for rel in
             ("reports/model_card.md", "metrics/register.json", "metrics/summary.json")}
    tags = dict(version.tags)
    real_write = register.atomic_write_json

    def fail_register_json(path: Path, data: Any) -> None:
        if path.name == "register.json":
            raise OSError("disk full")
        real_write(path, data)

    (project / "reports" / "model_card.md").write_text("stale")  # to see it restored as it was
    files["reports/model_card.md"] = b"stale"
    monkeypatch.setattr(register, "atomic_write_json", fail_register_json)
    monkeypatch.setattr(register, "git_commit", lambda root: "f" * 40)  # a different card
    assert run_cli(project, "stage", "register") == 2
    assert "disk full" in capsys.readouterr().err
    monkeypatch.undo()
    version = client.get_model_version(NAME, "1")
    assert version.description == reused_card and dict(version.tags) == tags
    assert {rel: (project / rel).read_bytes() for rel in files} == files
