"""The notebook API: load a meta-learner, collect episodes on a task of yours, adapt, act.

::

    model = metarl.load("models:/metarl-cartpole-maml@champion")   # or a models/ folder
    env = gymnasium.make("metarl/CartPole-v0", task=...)           # any env of the family
    episodes = metarl.collect(env, model, num_episodes=20)          # adaptation data
    adapted = model.adapt(episodes)                                 # one step, as the evaluator
    action = adapted.act(obs)                                       # or adapted.policy()

A *model* is a meta-learner (:class:`~metarl.algos.base.MetaLearner`) with the per-task
parameters it has reached: :meth:`Model.adapt` returns a new model, one adaptation step further
(a gradient step for a MAML-like learner; the trial's context for RL²). ``collect`` plays any
gymnasium env of the model's family (or a batched env) and returns an
:class:`~metarl.sampler.EpisodeBatch` of one task.

``metarl.load`` reads a local model folder itself; a URI (``models:/…``, ``runs:/…``) is fetched
by the resolver that an installed package registers for its scheme under the entry-point group
``metarl.model_uris`` (metarl's own pipeline registers MLflow's: metarl itself imports no
tracking library).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.algos.base import MetaLearner, WrapsEnv
from metarl.checkpoint import load_learner, load_params, read_config
from metarl.config import from_mapping
from metarl.families import FAMILIES, make_family
from metarl.policies import ActFn, Params, RecurrentActor
from metarl.sampler import EpisodeBatch, rollout
from metarl.tasks import TaskFamily

URI_RESOLVERS = "metarl.model_uris"
"""Entry-point group: scheme (``models``, ``runs``) → ``resolve(uri, folder) -> Path``, which
downloads the model of ``uri`` into ``folder`` and returns the folder holding its files."""
ADAPTED_FILE = "adapted.pt"
"""Per-task adapted parameters, in a folder that ``metarl adapt`` (or :meth:`Model.save`) wrote."""


def model_files(folder: Path) -> tuple[Path, Path]:
    """The weights and config JSON of a model folder.

    A registered model's artifact (``data/policy/``), a folder ``metarl adapt`` wrote
    (``weights.pt`` + ``config.json``), or a project's ``models/`` (``<algo>.pt`` beside its
    config).
    """
    for base in (folder / "data" / "policy", folder):
        if (base / "weights.pt").is_file() and (base / "config.json").is_file():
            return base / "weights.pt", base / "config.json"
    shared = folder / "config.json"
    if not shared.is_file():
        raise ValueError(f"{folder}: not a model folder (no config.json; expected a project's "
                         "models/ after `metarl stage train`, a registered model's artifact, or "
                         "a folder `metarl adapt` wrote)")
    algo = str(read_config(shared).get("algo", ""))
    own = folder / f"{algo}.json"
    weights = folder / f"{algo}.pt"
    if not weights.is_file():
        raise ValueError(f"{folder}: {weights.name} is missing (config.json names algo={algo!r})")
    return weights, own if own.is_file() else shared


def checkpoint_family(config: dict[str, Any]) -> TaskFamily:
    """The task family a checkpoint config names, with the configuration it was trained on."""
    name = config.get("family")
    if name not in FAMILIES:
        raise ValueError(f"the model's config names family={name!r}, which this version of "
                         f"metarl does not have ({sorted(FAMILIES)})")
    config_cls, _ = FAMILIES[str(name)]
    return make_family(str(name), from_mapping(config_cls, config.get("family_config") or {},
                                               "family_config"))


class Model:
    """A meta-learner and the parameters it has adapted to (one task unless said otherwise).

    Args:
        learner: the meta-learner (what checkpoints load).
        config: its checkpoint config (family, algorithm, ...).
        params: per-task parameters (leading dim = tasks); None: the learner's initial ones.
        seed: seeds the action noise of :meth:`act` and :meth:`policy`.

    """

    def __init__(self, learner: MetaLearner, config: dict[str, Any],
                 params: Params | None = None, seed: int = 0) -> None:
        self.learner, self.config = learner, config
        self.params = params if params is not None else learner.initial_params(1)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        """Adaptation steps taken from the meta-learned start."""

    @property
    def family(self) -> TaskFamily:
        """The task family the model was trained on (builds envs and checks tasks)."""
        return checkpoint_family(self.config)

    def adapt(self, episodes: EpisodeBatch) -> Model:
        """A model one adaptation step further, on ``episodes`` (``[tasks, episodes, T]``)."""
        tasks = episodes.mask.shape[0]
        params = self.params
        if next(iter(params.values())).shape[0] != tasks:  # the start, broadcast over tasks
            params = self.learner.initial_params(tasks) if self.steps == 0 else params
        out = Model(self.learner, self.config, self.learner.adapt(params, episodes))
        out.generator, out.steps = self.generator, self.steps + 1
        return out

    def policy(self) -> ActFn:
        """The acting function of this model: observations ``[tasks, envs, obs_dim]`` → actions.

        A recurrent one (RL²) is told each step's reward and end through ``observe``
        (:class:`~metarl.policies.RecurrentActor`); :func:`collect` does that.
        """
        act = self.learner.explore(self.params) if self.steps == 0 else self.learner.act(
            self.params)
        if act is None:  # uniform random: the learner has no policy of its own
            raise ValueError("this learner acts uniformly at random; sample the action space")
        return act

    def act(self, obs: Any) -> np.ndarray:
        """The action for one observation (or a batch ``[B, obs_dim]``) of the task, sampled.

        Stateless learners only: a recurrent model's action depends on the trial so far, so
        play it with :meth:`policy` (or :func:`collect`).
        """
        act = self.policy()
        if isinstance(act, RecurrentActor):
            raise ValueError("a recurrent model acts on the trial so far: use model.policy() "
                             "and tell it each step through observe(), or metarl.collect")
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        single = x.dim() == 1
        out = act(x.reshape(1, -1, x.shape[-1]), self.generator)[0].cpu().numpy()
        return out[0] if single else out

    def save(self, folder: Path) -> None:
        """Write this model's adapted parameters beside its weights (``folder`` must hold them)."""
        from metarl.checkpoint import save_params

        save_params(self.params, Path(folder) / ADAPTED_FILE)


def _resolver(scheme: str) -> Callable[[str, Path], Path]:
    for entry in importlib.metadata.entry_points(group=URI_RESOLVERS):
        if entry.name == scheme:
            return entry.load()  # type: ignore[no-any-return]
    raise ValueError(f"no resolver for {scheme}:/ URIs is installed (entry-point group "
                     f"{URI_RESOLVERS!r}); install metarl's pipeline (pip install -e .) or "
                     "pass a local model folder")


def load(uri_or_dir: str | Path, seed: int = 0) -> Model:
    """The model of a local folder, or of a ``models:/`` / ``runs:/`` URI (see the module).

    A folder that ``metarl adapt`` wrote loads with its adapted parameters.
    """
    import tempfile

    text = str(uri_or_dir)
    if ":/" in text and not Path(text).exists():
        scheme = text.split(":", 1)[0]
        with tempfile.TemporaryDirectory(prefix="metarl-load-") as tmp:
            return _load_folder(_resolver(scheme)(text, Path(tmp)), seed)
    return _load_folder(Path(text), seed)


def _load_folder(folder: Path, seed: int) -> Model:
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such model folder")
    weights, config_path = model_files(folder)
    config = read_config(config_path)
    learner = load_learner(weights, config)
    adapted = folder / ADAPTED_FILE
    model = Model(learner, config, load_params(adapted) if adapted.is_file() else None, seed)
    if adapted.is_file():
        model.steps = 1
    return model


def collect(env: Any, model: Model, num_episodes: int, seed: int = 0) -> EpisodeBatch:
    """Episodes of ``model``'s policy on ``env``, as adaptation data (one task).

    ``env`` is a gymnasium env of the model's family (one episode after another; the env's own
    time limit ends an episode) or a batched env (``num_episodes`` slots of one task, in one
    rollout). Returns an :class:`~metarl.sampler.EpisodeBatch` ``[1, num_episodes, T]``.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes={num_episodes}: must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    if hasattr(env, "num_tasks"):  # a batched env
        if isinstance(model.learner, WrapsEnv):
            env = model.learner.wrap_env(env)
        return rollout(model.policy(), env, generator)
    if getattr(model.learner, "trial_length", None) is not None:
        raise ValueError("a model trained with the trial clock reads it from a batched env: "
                         "collect with family.make_env(tasks, n) instead")
    episodes = [_episode(env, model, seed + i, generator) for i in range(num_episodes)]
    steps = max(len(e["rewards"]) for e in episodes)

    def stack(key: str, pad: Any = 0.0) -> torch.Tensor:
        rows = []
        for e in episodes:
            values = torch.stack(e[key]) if e[key] else torch.zeros(0)
            fill = steps - len(e[key])
            if fill:
                values = torch.cat([values, torch.full((fill, *values.shape[1:]), pad,
                                                       dtype=values.dtype)])
            rows.append(values)
        return torch.stack(rows).unsqueeze(0)

    return EpisodeBatch(obs=stack("obs"), actions=stack("actions", 0), rewards=stack("rewards"),
                        mask=stack("mask"), next_obs=stack("next_obs"),
                        terminated=stack("terminated", False), truncated=stack("truncated", False))


def _episode(env: Any, model: Model, seed: int, generator: torch.Generator
             ) -> dict[str, list[torch.Tensor]]:
    act = model.policy()
    observer = act if isinstance(act, RecurrentActor) else None
    obs, _ = env.reset(seed=seed)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "obs", "actions", "rewards", "mask", "next_obs", "terminated", "truncated")}
    done = False
    while not done:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, 1, -1)
        action = act(x, generator)[0, 0]
        obs, reward, terminated, truncated, _ = env.step(
            action.item() if action.dim() == 0 else action.cpu().numpy())
        done = bool(terminated or truncated)
        if observer is not None:
            observer.observe(torch.tensor([[float(reward)]]), torch.tensor([[done]]))
        for key, value in (("obs", x[0, 0]), ("actions", action),
                           ("rewards", torch.tensor(float(reward))), ("mask", torch.tensor(1.0)),
                           ("next_obs", torch.as_tensor(np.asarray(obs, dtype=np.float32))),
                           ("terminated", torch.tensor(bool(terminated))),
                           ("truncated", torch.tensor(bool(truncated) and not terminated))):
            out[key].append(value)
    return out


__all__ = ["Model", "checkpoint_family", "collect", "load", "model_files"]
