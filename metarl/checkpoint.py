"""Checkpoints: a ``state_dict`` file plus a JSON config; nothing is ever pickled.

Loading uses ``torch.load(..., weights_only=True)`` so a checkpoint from a registry or a user
cannot execute code. The config's ``learner`` names the algorithm whose
:attr:`~metarl.algos.registry.Algorithm.load` rebuilds it; a config without one is an MLP policy
adapted by gradient steps (the baselines, and checkpoints written before the registry).

A learner with meta-learned per-parameter step sizes (Meta-SGD, ``learn_inner_lr``)
stores them in the same weights file under ``inner_lr.<parameter name>``
(:func:`learner_weights`); a weights file without such keys adapts with the config's float
``inner_lr`` as before.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from metarl.algos.base import GradientAdaptedPolicy, MetaLearner
from metarl.policies import POLICY_KINDS, GaussianMLPPolicy, MLPPolicy, Params, make_policy_for

FORMAT_VERSION = 1

INNER_LR_PREFIX = "inner_lr."
"""Weights-file key prefix of learned per-parameter inner step sizes (Meta-SGD)."""


def policy_config(policy: MLPPolicy, hidden_sizes: tuple[int, ...], inner_lr: float,
                  discount: float, **extra: Any) -> dict[str, Any]:
    """The JSON needed to rebuild a :class:`GradientAdaptedPolicy` (plus ``extra`` fields).

    ``policy`` records the policy kind (``categorical`` or ``gaussian``); a config without it
    (written before continuous actions existed) loads as categorical.
    """
    gaussian = {"init_std": policy.init_std} if isinstance(policy, GaussianMLPPolicy) else {}
    return {"format_version": FORMAT_VERSION, "policy": policy.kind, "obs_dim": policy.obs_dim,
            "num_actions": policy.num_actions, "action_dim": policy.action_dim,
            "hidden_sizes": list(hidden_sizes), "inner_lr": inner_lr, "discount": discount,
            **gaussian, **extra}


def learner_weights(learner: GradientAdaptedPolicy) -> Params:
    """The tensors to save for ``learner`` (with :func:`save_params`).

    Its parameters, plus its step sizes under ``inner_lr.<name>`` when they are learned per
    parameter (Meta-SGD); a fixed-``alpha`` learner gives exactly its parameters.
    """
    weights = dict(learner.params)
    if isinstance(learner.inner_lr, dict):
        weights.update({INNER_LR_PREFIX + k: v for k, v in learner.inner_lr.items()})
    return weights


def save_params(params: Params, path: Path) -> None:
    """Save parameters as a plain tensor dict."""
    torch.save({k: v.detach().cpu().contiguous() for k, v in params.items()}, path)


def load_params(path: Path) -> Params:
    """Load a tensor dict saved by :func:`save_params` (weights only)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a metarl parameter file ({type(err).__name__}); "
                         "re-run `metarl stage train`") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a metarl parameter file (expected a dict of tensors)")
    return data


def load_learner(weights_path: Path, config: dict[str, Any]) -> MetaLearner:
    """Rebuild the learner from a weights file and its config JSON.

    The config's ``learner`` picks the algorithm's loader from the registry; without one, an
    MLP policy adapted by gradient steps (:func:`load_policy`).

    Raises:
        ValueError: another format version, an unknown learner, or weights that do not match.

    """
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version={config.get('format_version')!r}: expected "
                         f"{FORMAT_VERSION}; re-train to produce a current checkpoint")
    name = config.get("learner")
    if name is None:
        return load_policy(weights_path, config)
    from metarl.algos import registry

    return registry.get(str(name), key="checkpoint config: learner").load(weights_path, config)


def load_policy(weights_path: Path, config: dict[str, Any]) -> GradientAdaptedPolicy:
    """An MLP policy adapted by gradient steps, from its weights and :func:`policy_config`."""
    kind = config.get("policy", "categorical")
    if kind not in POLICY_KINDS:
        raise ValueError(f"policy={kind!r}: unknown policy kind; expected one of "
                         f"{list(POLICY_KINDS)}")
    size_key = "num_actions" if kind == "categorical" else "action_dim"
    missing = [k for k in ("obs_dim", size_key, "hidden_sizes", "inner_lr", "discount")
               if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; re-train to produce a full one")
    # init_std only matters for fresh parameters (the from-scratch baseline); weights carry
    # their own log_std.
    policy = make_policy_for(kind == "categorical", int(config["obs_dim"]),
                             int(config.get("num_actions", 0)), int(config.get("action_dim", 0)),
                             tuple(int(h) for h in config["hidden_sizes"]),
                             float(config.get("init_std", 1.0)))
    weights = load_params(weights_path)
    params = {k: v for k, v in weights.items() if not k.startswith(INNER_LR_PREFIX)}
    expected = dict(policy.named_parameters())
    if set(params) != set(expected) or any(params[k].shape != v.shape
                                           for k, v in expected.items()):
        raise ValueError(f"{weights_path}: parameters do not match the architecture in its "
                         f"config (policy={kind!r}, hidden_sizes, obs_dim, {size_key})")
    inner_lr: float | Params = float(config["inner_lr"])
    learned = {k[len(INNER_LR_PREFIX):]: v for k, v in weights.items()
               if k.startswith(INNER_LR_PREFIX)}
    if learned:
        if set(learned) != set(params) or any(learned[k].shape != v.shape
                                              for k, v in params.items()):
            raise ValueError(f"{weights_path}: its learned step sizes ({INNER_LR_PREFIX}*) do "
                             "not match its parameters")
        inner_lr = learned
    return GradientAdaptedPolicy(policy, params, inner_lr, float(config["discount"]))


def read_config(path: Path) -> dict[str, Any]:
    """Read a checkpoint's config JSON."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
