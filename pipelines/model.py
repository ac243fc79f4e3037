"""The MLflow pyfunc flavour of a metarl policy: weights + config JSON, no pickled objects.

``mlflow.pyfunc.load_model("models:/<name>@champion").predict(obs)`` maps observations
``[batch, obs_dim]`` (float32) to greedy actions ``[batch]`` (int64) of the meta-learned
initialisation. To adapt to a new task first, load the weights with
:func:`metarl.checkpoint.load_learner` from the model's ``artifacts/`` folder.
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
from torch.func import functional_call

WEIGHTS = "weights"
CONFIG = "config"


class MetaPolicyModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
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
        """Greedy action per observation row (an array, a DataFrame or ``{"obs": array}``)."""
        if isinstance(model_input, dict):  # a named tensor signature gives {"obs": array}
            model_input = model_input["obs"]
        if hasattr(model_input, "to_numpy"):
            model_input = model_input.to_numpy()
        obs = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            logits = functional_call(self.learner.policy, self.learner.params, (obs,))
        return logits.argmax(-1).numpy().astype(np.int64)


def signature(obs_dim: int) -> ModelSignature:
    """Tensor signature: ``obs float32 [-1, obs_dim]`` → ``action int64 [-1]``."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, obs_dim), name="obs")]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,), name="action")]))


def requirements() -> list[str]:
    """Pinned requirements (given explicitly: MLflow's inference spawns a slow subprocess)."""
    names = ("torch", "numpy", "gymnasium", "mlflow")
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def log_model(weights: Path, config: Path, obs_dim: int) -> Any:
    """Log the pyfunc model (from code, not pickled) to the active run; return ``ModelInfo``."""
    entry = Path(__file__).with_name("pyfunc_entry.py")
    with warnings.catch_warnings():
        # The explicit tensor signature validates input; no example needed.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(entry),
            artifacts={WEIGHTS: str(weights), CONFIG: str(config)},
            signature=signature(obs_dim), pip_requirements=requirements())
