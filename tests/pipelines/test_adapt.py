"""``metarl adapt``: a model adapted to a task of the user's, as the evaluator adapts it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.algos.maml import MAMLConfig, save_checkpoint, train_maml
from metarl.checkpoint import load_params
from metarl.config import to_dict
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.evaluation import adaptation_curve
from pipelines.adapt import load_adapted, open_model
from pipelines.cli import main

REVERSED = {"pole_length": 0.6, "pole_mass": 0.2, "cart_mass": 1.0, "gravity": 9.8,
            "force_mag": -10.0}
"""A held-out task with reversed controls (force_mag < 0)."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project's ``models/`` as the train stage writes it: MAML meta-trained on cartpole."""
    from metarl.tasks import TaskSet

    torch.set_num_threads(1)
    config = CartPoleFamilyConfig(max_steps=100)
    family = CartPoleFamily(config)
    train = TaskSet("cartpole", "train", 0, tuple(family.sample(40, np.random.default_rng(0))))
    cfg = MAMLConfig(hidden_sizes=(32, 32), meta_batch_size=10, episodes_per_task=10,
                     inner_lr=0.35, outer_lr=0.005)
    maml = train_maml(family, train, cfg, 40, seed=0)  # about 4 s
    folder = tmp_path_factory.mktemp("project") / "models"
    folder.mkdir()
    saved = save_checkpoint(maml, folder / "maml.pt")
    common = {"family": "cartpole", "family_config": to_dict(config), "algo": "maml"}
    (folder / "maml.json").write_text(json.dumps({**saved, **common}))
    (folder / "config.json").write_text(json.dumps({**saved, **common}))
    return folder


def test_adapt_prints_and_writes_the_curve_the_evaluator_measures(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adapted"
    assert main(["adapt", str(models), "--task", json.dumps(REVERSED), "--steps", "2",
                 "--episodes", "8", "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    curve = json.loads((out / "curve.json").read_text())
    model = open_model(str(models), tmp_path)
    family = CartPoleFamily(CartPoleFamilyConfig(max_steps=100))
    want = adaptation_curve(model.learner, family, [REVERSED], 2, 8, seed=3)[:, 0]
    np.testing.assert_allclose(curve["returns"][0], want)  # the evaluator's numbers, exactly
    assert want[1] > want[0] + 20, want  # one step: the reversed controls found (36 → 85)
    assert f"{want[2]:.1f}" in printed.splitlines()[-1]
    # the adapted policy: weights-only tensors, one row per task, and it loads again
    learner, params, again = load_adapted(out)
    assert again == curve
    assert all(v.shape[0] == 1 for v in params.values())
    assert load_params(out / "adapted.pt").keys() == params.keys()
    rollout_after = adaptation_curve(learner, family, [REVERSED], 0, 8, seed=3)
    assert rollout_after.shape == (1, 1)


@pytest.mark.parametrize(("args", "message"), [
    (["--task", json.dumps({"goal": [0.1, 0.2]})], "tasks[0].pole_length=<missing>"),
    (["--task", json.dumps({**REVERSED, "pole_mass": -1.0})], "tasks[0].pole_mass=-1.0"),
    (["--task", "{not json"], "--task: not JSON"),
    ([], "give exactly one of --task JSON and --task-file FILE"),
    (["--task", json.dumps(REVERSED), "--steps", "0"], "--steps=0: must be >= 1"),
])
def test_bad_tasks_and_options_exit_2_naming_the_value(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        message: str) -> None:
    out = tmp_path / "adapted"
    assert main(["adapt", str(models), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_a_model_that_does_not_resolve_or_load_exits_2(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = ["--task", json.dumps(REVERSED)]
    assert main(["adapt", str(tmp_path / "nowhere"), *task]) == 2
    assert "no such folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((models / "maml.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    (broken / "maml.pt").write_bytes((models / "maml.pt").read_bytes())
    assert main(["adapt", str(broken), *task]) == 2
    assert "cannot load its model (format_version=99" in capsys.readouterr().err


def test_the_python_api_loads_collects_adapts_and_acts(models: Path, tmp_path: Path) -> None:
    import gymnasium as gym

    import metarl
    from metarl.envs.cartpole import CartPoleTask

    assert {"load", "collect", "Model"} <= set(metarl.__all__)
    model = metarl.load(models)
    assert model.family.name == "cartpole" and model.steps == 0
    env = gym.make("metarl/CartPole-v0", task=CartPoleTask(**REVERSED), max_episode_steps=100)
    episodes = metarl.collect(env, model, num_episodes=12)
    n, e, t = episodes.mask.shape
    assert (n, e) == (1, 12) and t <= 100
    lengths = episodes.mask.sum(-1)[0]
    # each episode ends once: terminated, or truncated at the env's 100-step limit
    ends = (episodes.terminated | episodes.truncated).sum(-1)[0]
    assert torch.equal(ends, torch.ones(12, dtype=ends.dtype))
    assert torch.equal(episodes.truncated.any(-1)[0], lengths == 100)
    adapted = model.adapt(episodes)
    assert adapted.steps == 1 and model.steps == 0  # a new model; the old one is unchanged
    after = metarl.collect(env, adapted, num_episodes=12, seed=1)
    before_return = float(episodes.episode_returns.mean())
    after_return = float(after.episode_returns.mean())
    assert after_return > before_return + 10, (before_return, after_return)  # 38.6 → 58.2
    action = adapted.act(env.reset(seed=0)[0])
    assert action.shape == () and int(action) in (0, 1)
    assert adapted.act(np.zeros((5, 4), np.float32)).shape == (5,)
    # a folder `metarl adapt` wrote loads with its adapted parameters
    out = tmp_path / "adapted"
    assert main(["adapt", str(models), "--task", json.dumps(REVERSED), "--steps", "1",
                 "--out", str(out)]) == 0
    loaded = metarl.load(out)
    _, params, _ = load_adapted(out)
    assert loaded.steps == 1
    assert all(torch.equal(loaded.params[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="no such model folder"):
        metarl.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no resolver for nope:/ URIs"):
        metarl.load("nope:/x")


def _logged_model(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The models/ folder's MAML logged as the pipeline logs it, in a temp tracking store.

    MLflow exports the URI it is given as MLFLOW_TRACKING_URI: set through monkeypatch, so
    the variable is gone again after the test (later tests' stages would obey it).
    """
    import mlflow

    from pipelines.model import log_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve")
    with mlflow.start_run():
        info = log_model(models / "maml.pt", models / "maml.json")
    return str(info.model_uri)


def test_the_served_model_adapts_on_the_context_it_is_given(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    import metarl
    from metarl.envs.cartpole import CartPoleTask, MetaCartPoleEnv

    uri = _logged_model(models, tmp_path, monkeypatch)
    served = mlflow.pyfunc.load_model(uri)
    assert served.metadata.get_params_schema() is not None
    model = metarl.load(models)
    env = MetaCartPoleEnv(CartPoleTask(**REVERSED))
    from gymnasium.wrappers import TimeLimit

    episodes = metarl.collect(TimeLimit(env, 100), model, num_episodes=10)
    valid = episodes.mask[0].bool()
    context = {"context_obs": episodes.obs[0][valid].flatten().tolist(),
               "context_action": episodes.actions[0][valid].tolist(),
               "context_reward": episodes.rewards[0][valid].tolist(),
               "context_done": (episodes.terminated | episodes.truncated)[0][valid].float()
               .tolist()}
    obs = np.random.default_rng(0).normal(scale=0.1, size=(64, 4)).astype(np.float32)
    adapted = model.adapt(episodes)
    policy = adapted.learner
    with torch.no_grad():  # the adapted policy's most likely actions
        logits = policy.policy.mlp({k: v[0] for k, v in adapted.params.items()},  # type: ignore[attr-defined]
                                   torch.as_tensor(obs))
    np.testing.assert_array_equal(served.predict(obs, params=context), logits.argmax(-1).numpy())
    before = served.predict(obs)  # no context: the meta-learned initialisation
    assert (before != served.predict(obs, params=context)).any()


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request_with_context(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import mlflow

    uri = _logged_model(models, tmp_path, monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    obs = [[0.0, 0.0, 0.05, 0.0], [0.0, 0.0, -0.05, 0.0]]
    context = {"context_obs": [0.0, 0.0, 0.01, 0.0] * 3, "context_action": [1, 1, 0],
               "context_reward": [1.0, 1.0, 1.0], "context_done": [0.0, 0.0, 1.0]}

    def request(body: dict[str, object]) -> list[int]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read())["predictions"]  # type: ignore[no-any-return]

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "the model server did not start"
                time.sleep(0.5)
        served = mlflow.pyfunc.load_model(uri)
        np_obs = np.asarray(obs, dtype=np.float32)
        assert request({"inputs": {"obs": obs}}) == served.predict(np_obs).tolist()
        answer = request({"inputs": {"obs": obs}, "params": context})
        assert answer == served.predict(np_obs, params=context).tolist()
        assert set(answer) <= {0, 1} and len(answer) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_play_films_the_adapted_policy_and_prints_its_returns(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.play import play_model

    out = tmp_path / "adapted"
    assert main(["adapt", str(models), "--task", json.dumps(REVERSED), "--steps", "2",
                 "--episodes", "8", "--seed", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    before = play_model(str(models), task=json.dumps(REVERSED), episodes=8, seed=5)
    after = play_model(None, adapted=out, episodes=8, seed=5, video=tmp_path / "run.gif")
    printed = capsys.readouterr().out
    assert after["adapted"] and not before["adapted"] and after["task"] == REVERSED
    assert np.mean(after["returns"]) > np.mean(before["returns"]) + 20, (before, after)
    assert f"{np.mean(after['returns']):6.1f}" in printed and "video:" in printed
    # the film: the reset's frame and one per step of episode 0, a GIF that reads back
    assert after["frames"] == after["lengths"][0] + 1
    from PIL import Image

    with Image.open(tmp_path / "run.gif") as gif:
        assert gif.size[0] > 0 and gif.n_frames > 1
    assert main(["play", "--adapted", str(out), "--video", str(tmp_path / "x.avi")]) == 2
    assert "must end in .gif or .mp4" in capsys.readouterr().err
    assert main(["play"]) == 2
    assert "give MODEL_URI, or --adapted DIR" in capsys.readouterr().err
