"""The MLflow pyfunc flavour of a metarl policy: data only (weights + config JSON), no code.

A registered version's artifact holds ``data/policy/weights.pt`` (a plain tensor dict, read with
``torch.load(weights_only=True)``), ``data/policy/config.json`` and MLflow's own metadata. Its
``MLmodel`` names this module as the ``loader_module``: loading runs :func:`_load_pyfunc` from
the *installed* package, never a Python file stored with the model, so write access to the
artifact store is not code execution for whoever loads the champion.
:func:`load_registered` goes one step further for metarl's own use (the registry's gate, the
CLI): it checks that the ``MLmodel`` still names this loader and stores no code, and reads the
data files itself.

``predict`` takes observations ``obs [batch, obs_dim]`` (float32) and, as optional params,
the context of the task at hand (:data:`metarl.algos.base.CONTEXT`: its recent steps' obs,
actions, rewards and done flags as flat lists, the same for every algorithm); it returns the
greedy actions of the policy adapted on that context (each learner adapts as the evaluator
adapts it: a gradient step, or its recurrent state over the steps) — with no context, of the
meta-learned initialisation. For a discrete
family the most likely action, ``[batch]`` int64; for a continuous family the Gaussian's mean,
``[batch, action_dim]`` float32 (unclipped: the env clips it). Both are logged: the tensor
signature with the context as its params schema, and an input example.

The train stage logs the model to its own MLflow run and records it in
``models/mlflow_model.json`` (:func:`write_logged`); ``register`` registers that logged model
when ``models/`` still holds exactly those files (:func:`trained_model_uri`), so a version's
source run is the run that trained it, and logs the model to its own run otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

from metarl.algos.base import CONTEXT

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
DATA_DIR = "data/policy"
"""Where MLflow keeps the ``data_path`` folder (``policy``) inside the model artifact."""
LOGGED_FILE = "mlflow_model.json"
"""In ``models/``: the model the train stage logged, its run, and the files it was logged from."""


class ArtifactError(ValueError):
    """A registered model artifact cannot be loaded (missing, unreadable or tampered with)."""


class MetaPolicyModel:
    """Greedy actions of a loaded learner (what :func:`_load_pyfunc` gives MLflow)."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Greedy actions for the observations ``obs``, adapted on the context in ``params``.

        The input is ``{"obs": array}`` or an array / DataFrame of observations; ``params``
        may hold the :data:`~metarl.algos.base.CONTEXT` (flat lists), the recent steps of the
        task at hand, which the learner adapts on before acting.
        """
        if isinstance(model_input, dict):
            model_input = model_input["obs"]
        if hasattr(model_input, "to_numpy"):
            model_input = model_input.to_numpy()
        context = {k: v for k, v in (params or {}).items() if k in CONTEXT}
        return np.asarray(self.learner.serve({"obs": np.asarray(model_input), **context}))


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


def signature(learner: Any) -> ModelSignature:
    """The tensor signature of ``learner``'s ``serving_spec``, and the context as params.

    The context (:data:`~metarl.algos.base.CONTEXT`) is four optional flat float lists,
    default empty (no adaptation): the same for every algorithm.
    """
    inputs, outputs = learner.serving_spec()

    def schema(specs: list[tuple[str, str, tuple[int, ...]]]) -> Schema:
        return Schema([TensorSpec(np.dtype(dtype), shape, name=name)
                       for name, dtype, shape in specs])

    context = ParamSchema([ParamSpec(name, "double", [], (-1,)) for name in CONTEXT])
    return ModelSignature(inputs=schema(inputs), outputs=schema(outputs), params=context)


def input_example(learner: Any) -> np.ndarray:
    """Two zero observations, the ``obs`` of a request."""
    (_, _, shape), *_ = learner.serving_spec()[0]
    return np.zeros((2, *shape[1:]), dtype=np.float32)


def requirements() -> list[str]:
    """Pinned requirements (given explicitly: MLflow's inference spawns a slow subprocess)."""
    names = ("torch", "numpy", "gymnasium", "mlflow")
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def log_model(weights: Path, config: Path) -> Any:
    """Log the model (data only, see the module docstring) to the active run; ``ModelInfo``.

    The output signature follows the policy kind recorded in the checkpoint ``config``.
    """
    from metarl.checkpoint import load_learner, read_config

    learner = load_learner(weights, read_config(config))
    sig = signature(learner)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / Path(DATA_DIR).name
        data.mkdir()
        shutil.copyfile(weights, data / WEIGHTS_FILE)
        shutil.copyfile(config, data / CONFIG_FILE)
        return mlflow.pyfunc.log_model(
            name="model", loader_module=__name__, data_path=str(data), signature=sig,
            input_example=input_example(learner), pip_requirements=requirements())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_logged(models_dir: Path, info: Any, weights: Path, config: Path) -> Path:
    """Record in ``models_dir/mlflow_model.json`` the model ``info`` logged from these files."""
    from pipelines.io import atomic_write_json

    path = models_dir / LOGGED_FILE
    atomic_write_json(path, {"model_id": info.model_id, "model_uri": info.model_uri,
                             "run_id": info.run_id, "weights": weights.name,
                             "weights_sha256": _sha256(weights), "config": config.name,
                             "config_sha256": _sha256(config)})
    return path


def trained_model_uri(models_dir: Path, weights: Path, config: Path) -> str | None:
    """``models:/<model id>`` of the model train logged from exactly ``weights`` and ``config``.

    None, with a line saying why where it helps, when ``models_dir`` records no logged model,
    the files changed since (a checkpoint put there by hand) or this tracking store does not
    hold that model (it was logged to another one): the caller then logs the files itself.
    """
    from mlflow.exceptions import MlflowException

    path = models_dir / LOGGED_FILE
    try:
        record = json.loads(path.read_text())
        model_id, run_id = str(record["model_id"]), str(record["run_id"])
        same = (record["weights"] == weights.name and record["config"] == config.name
                and record["weights_sha256"] == _sha256(weights)
                and record["config_sha256"] == _sha256(config))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"register: {path} is unreadable ({type(err).__name__}); the model is logged "
              "to this run", file=sys.stderr)
        return None
    if not same:
        print(f"register: {weights.name} or {config.name} changed since the train run "
              f"{run_id} logged them; the model is logged to this run", file=sys.stderr)
        return None
    try:
        logged = mlflow.get_logged_model(model_id)
    except MlflowException:
        print(f"register: this tracking store has no model {model_id} (train logged it to "
              "another one); the model is logged to this run", file=sys.stderr)
        return None
    return f"models:/{model_id}" if logged.source_run_id == run_id else None


def registered_by() -> dict[str, str]:
    """The version tag naming the run that registers it (its source run is train's)."""
    run = mlflow.active_run()
    return {"registered_by_run": run.info.run_id} if run is not None else {}
