"""The MLflow pyfunc flavour of a metarl policy: data only (weights + config JSON), no code.

A registered version's artifact holds ``data/policy/weights.pt`` (a plain tensor dict, read with
``torch.load(weights_only=True)``), ``data/policy/config.json`` and MLflow's own metadata. Its
``MLmodel`` names this module as the ``loader_module``: loading runs :func:`_load_pyfunc` from
the *installed* package, never a Python file stored with the model, so write access to the
artifact store is not code execution for whoever loads the champion.
:func:`load_registered` goes one step further for metarl's own use (the registry's gate, the
CLI): it checks that the ``MLmodel`` still names this loader and stores no code, and reads the
data files itself.

``mlflow.pyfunc.load_model("models:/<name>@champion").predict(obs)`` maps observations
``[batch, obs_dim]`` (float32) to the greedy actions of the meta-learned initialisation: for a
discrete family the most likely action, ``[batch]`` int64; for a continuous family the mean of
the Gaussian policy, ``[batch, action_dim]`` float32 (unclipped: the env clips it to its action
bounds, as it does every action). To adapt to a new task first, load the learner with
:func:`load_registered`.

An RL² model is recurrent: its input is the trial so far, as named tensors ``obs [B, T,
obs_dim]``, ``prev_action [B, T]`` (int64, ``-1`` at the trial's first step; continuous:
``[B, T, action_dim]`` float32, zeros at the first step), ``prev_reward [B, T]`` and
``prev_done [B, T]`` (float32, 1.0 where the previous step ended an episode); the output is
the greedy action at every step (the GRU run from a fresh state over the ``T`` steps), the last
one being what to do now. A model trained with a trial clock (``trial_clock``) counts the
trial's episodes from ``prev_done`` and reads the clock it was trained with.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
DATA_DIR = "data/policy"
"""Where MLflow keeps the ``data_path`` folder (``policy``) inside the model artifact."""


class ArtifactError(ValueError):
    """A registered model artifact cannot be loaded (missing, unreadable or tampered with)."""


class MetaPolicyModel:
    """Greedy actions of a loaded learner (what :func:`_load_pyfunc` gives MLflow)."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Greedy actions: per observation row, or per step of the trials given (RL²).

        The input is an array, a DataFrame or ``{"obs": array}``; for RL², the named tensors
        of the module docstring.
        """
        from metarl.algos.rl2 import RL2Learner

        if isinstance(self.learner, RL2Learner):
            return _predict_rl2(self.learner, model_input)
        if isinstance(model_input, dict):  # a named tensor signature gives {"obs": array}
            model_input = model_input["obs"]
        if hasattr(model_input, "to_numpy"):
            model_input = model_input.to_numpy()
        obs = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        policy = self.learner.policy
        with torch.no_grad():
            out = policy.mlp(self.learner.params, obs)  # logits, or the Gaussian's mean
        if policy.discrete:
            return out.argmax(-1).numpy().astype(np.int64)
        return out.numpy().astype(np.float32)


def load_data(data_path: Path) -> tuple[Any, dict[str, Any]]:
    """The learner and its checkpoint config from a model's data folder.

    Raises:
        ArtifactError: a file is missing or is not a metarl checkpoint.

    """
    from metarl.checkpoint import load_learner, read_config

    weights, config = data_path / WEIGHTS_FILE, data_path / CONFIG_FILE
    for path in (weights, config):
        if not path.is_file():
            raise ArtifactError(f"{path.name} is missing from the model's data")
    try:
        ckpt = read_config(config)
        return load_learner(weights, ckpt), ckpt
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise ArtifactError(f"its data does not load ({err})") from None


def _load_pyfunc(data_path: str) -> MetaPolicyModel:
    """MLflow's ``loader_module`` hook: the policy from the model's data folder."""
    learner, _ = load_data(Path(data_path))
    return MetaPolicyModel(learner)


def check_mlmodel(model_dir: Path) -> None:
    """Refuse a model whose ``MLmodel`` would load anything but this module's data loader.

    Raises:
        ArtifactError: no ``MLmodel``, another loader, stored code or a pickled model.

    """
    try:
        meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ArtifactError(f"its MLmodel file is missing or unreadable ({err})") from None
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    conf = flavors.get("python_function") if isinstance(flavors, dict) else None
    if not isinstance(conf, dict) or conf.get("loader_module") != __name__:
        found = conf.get("loader_module") if isinstance(conf, dict) else None
        raise ArtifactError(f"its MLmodel names loader_module={found!r}, not {__name__!r}: not "
                            "a metarl model, or its MLmodel was edited")
    assert isinstance(flavors, dict)
    stored_code = [k for k in ("code", "python_model", "cloudpickle_version") if conf.get(k)]
    if stored_code or set(flavors) != {"python_function"} or conf.get("data") != DATA_DIR:
        raise ArtifactError(f"its MLmodel asks to load stored code or other flavours "
                            f"({stored_code or sorted(flavors)}): refused")


def load_registered(model_uri: str) -> tuple[Any, dict[str, Any]]:
    """Download ``model_uri`` (``models:/name@alias``, ``runs:/...``) and load its learner.

    Only data is read: the ``MLmodel`` is checked (:func:`check_mlmodel`), then the weights
    (``weights_only``) and the config JSON; nothing in the artifact is imported or unpickled.

    Raises:
        ArtifactError: the URI does not resolve, or the artifact is incomplete or tampered with.

    """
    from mlflow.exceptions import MlflowException

    tmp = Path(tempfile.mkdtemp(prefix="metarl-model-"))
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                             dst_path=str(tmp)))
        except (MlflowException, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ArtifactError(f"its artifact cannot be downloaded ({first})") from None
        check_mlmodel(local)
        return load_data(local / DATA_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _predict_rl2(learner: Any, model_input: dict[str, Any]) -> np.ndarray:
    from metarl.algos.rl2 import with_clock

    model = learner.model
    obs = torch.as_tensor(np.asarray(model_input["obs"], dtype=np.float32))
    act_dtype = np.int64 if model.discrete else np.float32
    prev_action = torch.as_tensor(np.asarray(model_input["prev_action"], dtype=act_dtype))
    prev_reward = torch.as_tensor(np.asarray(model_input["prev_reward"], dtype=np.float32))
    prev_done = torch.as_tensor(np.asarray(model_input["prev_done"], dtype=np.float32))
    if learner.trial_length is not None:  # the trial clock: the episodes the trial has played
        obs = with_clock(obs, prev_done.cumsum(-1), learner.trial_length)
    # the observation each previous action was taken in: the previous step's (the sequence's
    # first step has none)
    prev_obs = torch.cat([torch.zeros_like(obs[..., :1, :]), obs[..., :-1, :]], dim=-2)
    with torch.no_grad():
        x = model.step_input(obs, prev_action, prev_reward, prev_done, prev_obs)
        out, _, _ = model(x, model.initial_state(x.shape[0]))
        actions = model.sample(out, torch.Generator(), greedy=True)
    return actions.numpy().astype(act_dtype)


def rl2_signature(obs_dim: int, action_dim: int = 0) -> ModelSignature:
    """Tensor signature of an RL² model: the trial so far → the greedy action at each step."""
    f32 = np.dtype(np.float32)
    if action_dim == 0:
        prev = TensorSpec(np.dtype(np.int64), (-1, -1), name="prev_action")
        output = TensorSpec(np.dtype(np.int64), (-1, -1), name="action")
    else:
        prev = TensorSpec(f32, (-1, -1, action_dim), name="prev_action")
        output = TensorSpec(f32, (-1, -1, action_dim), name="action")
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, -1, obs_dim), name="obs"), prev,
                       TensorSpec(f32, (-1, -1), name="prev_reward"),
                       TensorSpec(f32, (-1, -1), name="prev_done")]),
        outputs=Schema([output]))


def signature(obs_dim: int, action_dim: int = 0) -> ModelSignature:
    """Tensor signature of :meth:`MetaPolicyModel.predict`.

    ``obs float32 [-1, obs_dim]`` → ``action int64 [-1]`` (discrete, ``action_dim`` 0) or
    ``action float32 [-1, action_dim]`` (continuous).
    """
    output = (TensorSpec(np.dtype(np.int64), (-1,), name="action") if action_dim == 0 else
              TensorSpec(np.dtype(np.float32), (-1, action_dim), name="action"))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, obs_dim), name="obs")]),
        outputs=Schema([output]))


def requirements() -> list[str]:
    """Pinned requirements (given explicitly: MLflow's inference spawns a slow subprocess)."""
    names = ("torch", "numpy", "gymnasium", "mlflow")
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def log_model(weights: Path, config: Path, obs_dim: int) -> Any:
    """Log the model (data only, see the module docstring) to the active run; ``ModelInfo``.

    The output signature follows the policy kind recorded in the checkpoint ``config``.
    """
    from metarl.checkpoint import read_config

    ckpt = read_config(config)
    action_dim = int(ckpt.get("action_dim", 0)) if ckpt.get("policy") == "gaussian" else 0
    sig = (rl2_signature(obs_dim, action_dim) if ckpt.get("learner") == "rl2"
           else signature(obs_dim, action_dim))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / Path(DATA_DIR).name
        data.mkdir()
        shutil.copyfile(weights, data / WEIGHTS_FILE)
        shutil.copyfile(config, data / CONFIG_FILE)
        with warnings.catch_warnings():
            # The explicit tensor signature validates input; no example needed.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            return mlflow.pyfunc.log_model(
                name="model", loader_module=__name__, data_path=str(data),
                signature=sig, pip_requirements=requirements())
