"""Checkpoints round-trip without pickling; the science package stays free of pipeline tools."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarl.algos.base import GradientAdaptedPolicy
from metarl.checkpoint import (
    FORMAT_VERSION,
    INNER_LR_PREFIX,
    learner_weights,
    load_learner,
    load_params,
    policy_config,
    save_params,
)
from metarl.envs.nav2d import BatchedNav2D, Nav2DFamilyConfig
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, act_fn, expand_params
from metarl.sampler import rollout

torch.set_num_threads(1)

PACKAGE = Path(__file__).resolve().parents[2] / "metarl"
FORBIDDEN = ("mlflow", "prefect", "dvc", "optuna", "scipy")  # scipy: pipelines.stats only
IMPORT_RE = re.compile(rf"^\s*(?:import|from)\s+({'|'.join(FORBIDDEN)})\b", re.MULTILINE)


def _saved(tmp_path: Path, hidden_sizes: tuple[int, ...] = (8, 6)):
    policy = CategoricalMLPPolicy(4, 2, hidden_sizes)
    params = policy.init_params(torch.Generator().manual_seed(0))
    path = tmp_path / "policy.pt"
    save_params(params, path)
    config = policy_config(policy, hidden_sizes, inner_lr=0.3, discount=0.97, algo="maml")
    return policy, params, path, config


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    policy, params, path, config = _saved(tmp_path)
    assert config["format_version"] == FORMAT_VERSION
    assert config["algo"] == "maml"
    learner = load_learner(path, config)
    assert learner.inner_lr == 0.3
    assert learner.discount == 0.97
    assert set(learner.params) == set(params)
    for k in params:
        assert torch.equal(learner.params[k], params[k])
    obs = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    expanded = {k: v.expand(2, *v.shape) for k, v in params.items()}
    before = policy.task_mlp(expanded, obs)
    after = learner.policy.task_mlp(learner.initial_params(2), obs)
    assert torch.equal(before, after)
    assert before.abs().max() > 0
    greedy = act_fn(policy, expanded, greedy=True)(obs, torch.Generator())
    torch.testing.assert_close(greedy, before.argmax(-1), rtol=0, atol=0)
    assert config["policy"] == "categorical"


def test_not_a_dict_of_tensors_raises(tmp_path: Path) -> None:
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match="not a metarl parameter file"):
        load_params(listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"net.0.weight": torch.zeros(2), "step": 3}, mixed)
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        load_params(mixed)


def test_mismatched_hidden_sizes_raise(tmp_path: Path) -> None:
    _, _, path, config = _saved(tmp_path)
    with pytest.raises(ValueError, match="hidden_sizes"):
        load_learner(path, {**config, "hidden_sizes": [8, 7]})
    with pytest.raises(ValueError, match="do not match the architecture"):
        load_learner(path, {**config, "hidden_sizes": [8]})


def test_format_version_mismatch_raises(tmp_path: Path) -> None:
    _, _, path, config = _saved(tmp_path)
    with pytest.raises(ValueError, match=f"format_version={FORMAT_VERSION + 1}"):
        load_learner(path, {**config, "format_version": FORMAT_VERSION + 1})
    without = {k: v for k, v in config.items() if k != "format_version"}
    with pytest.raises(ValueError, match="format_version=None"):
        load_learner(path, without)


def test_importing_metarl_loads_no_pipeline_tools() -> None:
    code = ("import sys, metarl, metarl.algos.maml, metarl.algos.pretrain, metarl.evaluation, "
            "metarl.checkpoint; bad=[m for m in " + repr(FORBIDDEN)
            + " if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=120)
    assert result.returncode == 0, result.stderr


def test_no_pipeline_tool_imports_in_sources() -> None:
    # The pattern itself must catch what it is looking for.
    assert IMPORT_RE.search("x = 1\n    import mlflow.pytorch\n")
    assert IMPORT_RE.search("from optuna.trial import Trial\n")
    assert not IMPORT_RE.search("import dvclive_like_name\n# mlflow is not imported\n")
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) >= 10
    offenders = [f"{p.relative_to(PACKAGE.parent)}: {m.group(0).strip()}"
                 for p in sources for m in IMPORT_RE.finditer(p.read_text())]
    assert offenders == []


def test_gaussian_round_trip_keeps_kind_log_std_and_init_std(tmp_path: Path) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,), init_std=0.3)
    params = policy.init_params(torch.Generator().manual_seed(0))
    params["log_std"] = torch.tensor([-1.0, -2.0])
    path = tmp_path / "policy.pt"
    save_params(params, path)
    config = policy_config(policy, (8,), inner_lr=0.1, discount=0.99)
    assert (config["policy"], config["action_dim"], config["init_std"]) == ("gaussian", 2, 0.3)
    learner = load_learner(path, config)
    assert isinstance(learner.policy, GaussianMLPPolicy)
    assert learner.policy.init_std == 0.3
    torch.testing.assert_close(learner.params["log_std"], torch.tensor([-1.0, -2.0]))
    obs = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(1))
    act = learner.act(learner.initial_params(2))  # samples: std exp(-1), exp(-2)
    sampled = act(obs, torch.Generator().manual_seed(0))
    mean = policy.task_mlp(expand_params(params, 2), obs)
    assert sampled.shape == (2, 5, 2)
    assert 0 < (sampled - mean).abs().max() < 1.0
    with pytest.raises(ValueError, match="do not match the architecture"):
        load_learner(path, {**config, "action_dim": 3})


def test_config_without_policy_kind_loads_as_categorical(tmp_path: Path) -> None:
    _, params, path, config = _saved(tmp_path)
    legacy = {k: v for k, v in config.items() if k not in ("policy", "action_dim")}
    learner = load_learner(path, legacy)
    assert isinstance(learner.policy, CategoricalMLPPolicy)
    assert all(torch.equal(learner.params[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="policy='beta'"):
        load_learner(path, {**config, "policy": "beta"})
    with pytest.raises(ValueError, match="do not match the architecture"):
        load_learner(path, {**config, "policy": "gaussian", "action_dim": 2})


def test_learned_step_sizes_round_trip_and_drive_adaptation(tmp_path: Path) -> None:
    # Meta-SGD: per-parameter step sizes saved as inner_lr.<name> in the same weights file.
    policy = GaussianMLPPolicy(2, 2, (8,), init_std=0.3)
    params = policy.init_params(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    step_sizes = {k: 0.05 + 0.2 * torch.rand(v.shape, generator=gen) for k, v in params.items()}
    original = GradientAdaptedPolicy(policy, params, step_sizes, 0.99)
    weights = learner_weights(original)
    assert set(weights) == set(params) | {INNER_LR_PREFIX + k for k in params}
    path = tmp_path / "maml.pt"
    save_params(weights, path)
    config = policy_config(policy, (8,), inner_lr=0.1, discount=0.99)
    learner = load_learner(path, config)
    assert isinstance(learner, GradientAdaptedPolicy) and isinstance(learner.inner_lr, dict)
    assert set(learner.params) == set(params) and set(learner.inner_lr) == set(params)
    for k in params:
        assert torch.equal(learner.params[k], params[k])
        assert torch.equal(learner.inner_lr[k], step_sizes[k])
    # Same adaptation as the saved learner, and not the config's float alpha.
    env = BatchedNav2D([[0.3, -0.2], [-0.4, 0.1]], num_envs=3,
                       config=Nav2DFamilyConfig(max_steps=10))
    start = learner.initial_params(2)
    episodes = rollout(learner.explore(start), env, torch.Generator().manual_seed(3))
    loaded, saved = learner.adapt(start, episodes), original.adapt(start, episodes)
    fixed = GradientAdaptedPolicy(policy, params, 0.1, 0.99).adapt(start, episodes)
    for k in params:
        assert torch.equal(loaded[k], saved[k])
    assert any(not torch.allclose(loaded[k], fixed[k]) for k in params)
    # A fixed-alpha learner saves exactly its parameters, and loads with the float alpha.
    fixed_learner = GradientAdaptedPolicy(policy, params, 0.1, 0.99)
    plain = learner_weights(fixed_learner)
    assert set(plain) == set(params) and all(plain[k] is params[k] for k in params)
    save_params(plain, tmp_path / "plain.pt")
    assert load_learner(tmp_path / "plain.pt", config).inner_lr == 0.1
    # Step sizes that do not match the parameters are refused.
    bad = dict(weights)
    bad[INNER_LR_PREFIX + "log_std"] = torch.ones(3)
    save_params(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="learned step sizes"):
        load_learner(tmp_path / "bad.pt", config)
    partial = {k: v for k, v in weights.items() if k != INNER_LR_PREFIX + "net.0.bias"}
    save_params(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="learned step sizes"):
        load_learner(tmp_path / "partial.pt", config)


def test_per_parameter_step_sizes_must_match_the_parameters() -> None:
    policy = CategoricalMLPPolicy(4, 2, (8,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="keys and shapes"):
        GradientAdaptedPolicy(policy, params, {k: torch.ones(1) for k in params}, 0.99)
    with pytest.raises(ValueError, match="keys and shapes"):
        GradientAdaptedPolicy(policy, params, {"net.0.weight": torch.ones(8, 4)}, 0.99)
