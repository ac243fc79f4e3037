"""The MLflow pyfunc flavour of a metarl policy: weights + config JSON, no pickled objects.

``mlflow.pyfunc.load_model("models:/<name>@champion").predict(obs)`` maps observations
``[batch, obs_dim]`` (float32) to the greedy actions of the meta-learned initialisation: for a
discrete family the most likely action, ``[batch]`` int64; for a continuous family the mean of
the Gaussian policy, ``[batch, action_dim]`` float32 (unclipped: the env clips it to its action
bounds, as it does every action). To adapt to a new task first, load the weights with
:func:`metarl.checkpoint.load_learner` from the model's ``artifacts/`` folder.

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
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

WEIGHTS = "weights"
CONFIG = "config"


class MetaPolicyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined,unused-ignore]
    """Greedy actions of a :class:`metarl.algos.base.GradientAdaptedPolicy`."""

    # The tensor signature given at logging validates input; MLflow's type-hint validation
    # (and its warning about missing hints) is not wanted.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Rebuild the policy from the logged weights (``weights_only`` load) and config."""
        from metarl.checkpoint import load_learner, read_config

        config = read_config(Path(context.artifacts[CONFIG]))
        self.learner = load_learner(Path(context.artifacts[WEIGHTS]), config)

    # No type hints here: MLflow would read them as a (list-based) input schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
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
    """Log the pyfunc model (from code, not pickled) to the active run; return ``ModelInfo``.

    The output signature follows the policy kind recorded in the checkpoint ``config``.
    """
    from metarl.checkpoint import read_config

    ckpt = read_config(config)
    action_dim = int(ckpt.get("action_dim", 0)) if ckpt.get("policy") == "gaussian" else 0
    sig = (rl2_signature(obs_dim, action_dim) if ckpt.get("learner") == "rl2"
           else signature(obs_dim, action_dim))
    entry = Path(__file__).with_name("pyfunc_entry.py")
    with warnings.catch_warnings():
        # The explicit tensor signature validates input; no example needed.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(entry),
            artifacts={WEIGHTS: str(weights), CONFIG: str(config)},
            signature=sig, pip_requirements=requirements())
