"""Meta-World ML1 (Yu et al., 2019): one manipulation task with varied goals, official split.

``metaworld_ml1`` batches ``N`` tasks × ``E`` episodes of one Meta-World v3 environment
(``reach-v3`` by default; any of ``metaworld.ML1.ENV_NAMES``, 50 in Meta-World 3.1.1). Each task is
one of the benchmark's goals:

* **The split.** ``metaworld.ML1(env_name, seed=benchmark_seed)`` draws 50 training goals (from
  ``benchmark_seed``) and 50 test goals (from ``benchmark_seed + 1``): Meta-World's own rule.
  They come from ``metaworld.ML1`` directly: in Meta-World 3.1.1
  ``gym.make_vec("Meta-World/ML1-train", ...)`` hands out the *test* goals too (its
  registration lambdas bind the loop variable ``split`` late; checked here). The
  pipeline's ``train`` and ``val`` task sets are drawn from the ML1 *train* goals, the ``test``
  task set from the ML1 *test* goals (Meta-World has no validation split), so held-out
  evaluation uses only goals never trained on. A split of more than 50 tasks repeats goals
  (every goal once per 50, in a random order).
* **The task dict.** ``{"test_split": 0|1, "goal_index": i, "benchmark_seed": s,
  "rand_vec": [...]}``: ``test_split`` 1 means the ML1 test goals; ``goal_index`` is the
  position in ``ML1(env_name, seed=s).train_tasks`` (or ``.test_tasks``); ``rand_vec`` is that
  goal's vector as Meta-World stores it (for ``reach-v3``: 3 start-position values of the
  object, then the 3-d goal). The env is built from ``rand_vec`` alone, so a task-set file
  reproduces the exact goal without regenerating the benchmark; the other three keys record
  where it came from (``ml1_goal(...)`` regenerates it — the tests check they agree).
  ``task.metaworld_ml1.env_name`` is not in the dict: the task-set stage depends on the whole
  ``task`` section, so changing it regenerates the task sets.

The env: observations are Meta-World's 39 values (hand, gripper, object poses, the previous
frame's 18, and the goal, which ML1 zeroes: ``partially_observable=True``), cast to float32;
actions ``[-1, 1]^4`` (Δxyz of the hand, gripper), clipped before stepping. Rewards are
Meta-World's own (``reward_function_version`` ``v2``: 0–10 per step). Episodes never terminate
(Meta-World's ML1-train setting; its ML1-test ends an episode at success); they are truncated
at ``max_steps``. Meta-World's horizon (``max_path_length``) is 500; the default here is 150,
Meta-World v1's horizon and the one MAML/PEARL-era ML1 results used, which keeps a CPU pipeline
run affordable — set ``max_steps: 500`` for the benchmark's current setting (more is refused:
Meta-World raises past 500).

Success: :attr:`BatchedMetaWorld.success` is ``[N, E]`` bool, whether the slot's episode has
reached Meta-World's ``info["success"]`` at any step since its reset (Meta-World's per-episode
success metric); :meth:`BatchedMetaWorld.success_rate` averages it per task.

Seeding: with the task fixed, Meta-World's reset is deterministic (the object and goal positions
are the task's ``rand_vec``, the arm starts at its fixed home pose), so a rollout depends only on
the tasks and the actions: the same seed (hence the same policy noise) gives the same rollout.
:meth:`BatchedMetaWorld.reset` accepts the generator for the :class:`BatchedEnv` contract but
draws nothing from it.

Oracle: none cheap and honest (Meta-World's scripted policies do not reach every goal and their
returns would need rollouts per task), so :meth:`MetaWorldML1Family.oracle_returns` is NaN.

Meta-World is an optional dependency (``pip install -e ".[metaworld]"``, which pins
``mujoco==3.3.0``): without it, building the family raises a
:class:`~metarl.config.ConfigError` naming ``task.family``.

Gymnasium: :class:`MetaWorldML1Env` is one goal as a gymnasium env (the batched env with a batch
of one), registered as ``metarl/MetaWorldML1-v0`` where Meta-World is installed; its frames come
from MuJoCo (:func:`~metarl.envs.mujoco_tasks.render_mujoco`: ``MUJOCO_GL=egl`` or ``osmesa``
where there is no display).
"""

from __future__ import annotations

import functools
import importlib
import pickle
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch

from metarl.config import ConfigError, check, check_array, check_fields, check_int
from metarl.envs import render
from metarl.envs.base import render_view
from metarl.envs.mujoco_tasks import render_mujoco

DEFAULT_MAX_STEPS = 150
"""Pipeline default horizon (Meta-World v1's; the benchmark's own is 500)."""
MAX_PATH_LENGTH = 500
"""Meta-World's ``max_path_length``: an episode cannot be longer."""
NUM_GOALS = 50
"""Goals per ML1 split."""

Task = dict[str, Any]
_TASK_FIELDS = ("test_split", "goal_index", "benchmark_seed", "rand_vec")

_POOL: dict[tuple[str, str], list[Any]] = {}
"""Built Meta-World envs no batch holds, by (env_name, reward version): building one parses its
MuJoCo model (~0.13 s), and the pipeline builds batches over and over. A batch takes its envs
from here and gives them back when it is garbage-collected; ``set_task`` and ``reset`` restore
every piece of state (``mj_resetData``), so a reused env steps exactly like a fresh one."""


def require_metaworld(family: str) -> None:
    """Raise :class:`ConfigError` on ``task.family`` unless Meta-World imports."""
    try:
        importlib.import_module("mujoco")
        importlib.import_module("metaworld")
    except (ImportError, OSError) as err:
        raise ConfigError(
            "task.family", family,
            f"needs Meta-World, which is not importable ({err}); install it with "
            "`pip install -e \".[metaworld]\"` (i.e. `pip install \"metaworld==3.1.1\" "
            "\"mujoco==3.3.0\"` in one command), or choose another family",
        ) from None


def env_names() -> list[str]:
    """The Meta-World v3 environments ML1 accepts (needs Meta-World)."""
    import metaworld

    return list(metaworld.ML1.ENV_NAMES)


@functools.lru_cache(maxsize=8)
def _benchmark_goals(env_name: str, benchmark_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``ML1(env_name, seed)``'s train and test ``rand_vec`` arrays, ``[50, D]`` each."""
    import metaworld

    bench = metaworld.ML1(env_name, seed=benchmark_seed)

    def goals(tasks: list[Any]) -> np.ndarray:
        return np.stack([np.asarray(pickle.loads(t.data)["rand_vec"], dtype=np.float64)
                         for t in tasks])

    return goals(bench.train_tasks), goals(bench.test_tasks)


def ml1_goal(env_name: str, benchmark_seed: int, test_split: bool, goal_index: int
             ) -> np.ndarray:
    """The ``rand_vec`` of goal ``goal_index`` of ML1's train or test set (regenerated)."""
    train, test = _benchmark_goals(env_name, benchmark_seed)
    return (test if test_split else train)[goal_index].copy()


class BatchedMetaWorld:
    """``N`` tasks × ``E`` episodes of one Meta-World environment, stepped together.

    Args:
        env_name: the Meta-World v3 environment, e.g. ``reach-v3``.
        rand_vecs: ``[N, D]`` each task's goal vector (Meta-World's ``rand_vec``).
        num_envs: episodes per task, ``E``.
        max_steps: horizon (truncation; at most 500).
        reward_function_version: Meta-World's ``v1`` or ``v2`` reward.
        device: torch device of the returned tensors.

    """

    discrete = False
    num_actions = 0

    def __init__(self, env_name: str, rand_vecs: np.ndarray, num_envs: int,
                 max_steps: int = DEFAULT_MAX_STEPS, reward_function_version: str = "v2",
                 device: torch.device | str = "cpu") -> None:
        import metaworld

        cls = metaworld.env_dict.ALL_V3_ENVIRONMENTS[env_name]
        kwargs = dict(metaworld.env_dict.ML1_ARGS_KWARGS[env_name]["kwargs"])
        kwargs.pop("task_id", None)
        vecs = np.asarray(rand_vecs, dtype=np.float64)
        if vecs.ndim != 2 or vecs.shape[0] == 0:
            raise ValueError("tasks: got none; pass at least one task")
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: must be >= 1")
        if not 1 <= max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_steps={max_steps}: must be in [1, {MAX_PATH_LENGTH}]")
        self.num_tasks = int(vecs.shape[0])
        self.num_envs = num_envs
        self.max_steps = max_steps
        self.device = torch.device(device)
        self.envs: list[Any] = []
        self.env_name, self._env_cls, self._task_kwargs = env_name, cls, kwargs
        pool = _POOL.setdefault((env_name, reward_function_version), [])
        weakref.finalize(self, pool.extend, self.envs)  # give the envs back when collected
        for _ in range(self.num_tasks * num_envs):
            self.envs.append(pool.pop() if pool
                             else cls(reward_function_version=reward_function_version))
        self.set_goals(vecs)
        space = self.envs[0].action_space
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.action_dim = int(self.low.size)
        self.action_low: tuple[float, ...] = tuple(float(v) for v in self.low)
        self.action_high: tuple[float, ...] = tuple(float(v) for v in self.high)
        self.obs_dim = int(np.prod(self.envs[0].observation_space.shape))
        shape = (self.num_tasks, num_envs)
        self.obs = torch.zeros(*shape, self.obs_dim, device=self.device)
        self.done = torch.ones(shape, dtype=torch.bool, device=self.device)
        self.success = torch.zeros(shape, dtype=torch.bool, device=self.device)
        """``[N, E]``: the episode reached Meta-World's success at some step since its reset."""

    def set_goals(self, rand_vecs: np.ndarray) -> None:
        """Give task ``i``'s envs the goal ``rand_vecs[i]`` (``[N, D]``); reset before stepping."""
        import metaworld

        vecs = np.asarray(rand_vecs, dtype=np.float64)
        if vecs.ndim != 2 or vecs.shape[0] != self.num_tasks:
            raise ValueError(f"rand_vecs shape {vecs.shape}: expected [{self.num_tasks}, D]")
        for i, vec in enumerate(vecs):
            data = {**self._task_kwargs, "rand_vec": vec.copy(), "env_cls": self._env_cls,
                    "partially_observable": True}  # ML1: the goal is hidden
            task = metaworld.Task(env_name=self.env_name, data=pickle.dumps(data))
            for env in self.envs[i * self.num_envs:(i + 1) * self.num_envs]:
                space = env._random_reset_space
                if space is not None and space.low.size != vec.size:
                    raise ValueError(f"rand_vec has {vec.size} values, {self.env_name} expects "
                                     f"{space.low.size}: the task set was made for another "
                                     "env_name; regenerate it with `metarl stage tasks`")
                env.set_task(task)

    def render_frame(self, task_index: int = 0, env_index: int = 0) -> np.ndarray:
        """Slot ``(task_index, env_index)`` drawn by MuJoCo (:func:`render_mujoco`)."""
        slot = render.check_slot(self.num_tasks, self.num_envs, task_index, env_index)
        return render_mujoco(self.envs[slot])

    def _to_torch(self, obs: list[np.ndarray]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32)).to(self.device).view(
            self.num_tasks, self.num_envs, self.obs_dim)

    def reset(self, generator: torch.Generator) -> torch.Tensor:
        """Reset every slot (deterministic per task; ``generator`` is unused)."""
        self.obs = self._to_torch([env.reset()[0] for env in self.envs])
        self.done = torch.zeros_like(self.done)
        self.success = torch.zeros_like(self.success)
        return self.obs

    def reset_done(self, generator: torch.Generator,
                   ended: torch.Tensor | None = None) -> torch.Tensor:
        """Reset the ended slots only; return the observations."""
        if ended is not None:  # slots the caller ends too (a time limit)
            self.done = self.done | ended
        mask = self.done.reshape(-1).cpu().tolist()
        if any(mask):
            flat = self.obs.reshape(-1, self.obs_dim).clone()
            for i, ended in enumerate(mask):
                if ended:
                    flat[i] = torch.as_tensor(np.asarray(self.envs[i].reset()[0],
                                                         dtype=np.float32))
            self.obs = flat.to(self.device).view_as(self.obs)
            self.success = self.success & ~self.done
        self.done = torch.zeros_like(self.done)
        return self.obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step every slot with its clipped action ``[N, E, 4]``.

        Returns:
            ``(obs [N,E,39], reward [N,E], terminated [N,E])``; never terminated (truncation
            at ``max_steps`` is the sampler's), and :attr:`success` is updated.

        """
        a = actions.detach().to("cpu", torch.float64).reshape(-1, self.action_dim).numpy()
        a = np.clip(a, self.low, self.high).astype(np.float32)
        obs, rewards, successes = [], [], []
        for env, act in zip(self.envs, a, strict=True):
            o, r, _, _, info = env.step(act)
            obs.append(o)
            rewards.append(float(r))
            successes.append(bool(info.get("success", 0.0)))
        shape = (self.num_tasks, self.num_envs)
        self.obs = self._to_torch(obs)
        reward = torch.tensor(rewards, dtype=torch.float32).to(self.device).view(shape)
        self.success |= torch.tensor(successes, dtype=torch.bool).to(self.device).view(shape)
        return self.obs, reward, torch.zeros(shape, dtype=torch.bool, device=self.device)

    def success_rate(self) -> torch.Tensor:
        """``[N]``: the share of each task's episodes that have succeeded since reset."""
        return self.success.float().mean(dim=1)

    def close(self) -> None:
        """Nothing to release: the sub-envs go back to the pool when this batch is collected."""


@dataclass(frozen=True)
class MetaWorldML1FamilyConfig:
    """Meta-World ML1 (``task.metaworld_ml1`` in params.yaml)."""

    env_name: str = "reach-v3"
    """The Meta-World v3 environment (one of ``metaworld.ML1.ENV_NAMES``)."""
    benchmark_seed: int = 0
    """Seed of ``metaworld.ML1``: its train goals use it, its test goals ``benchmark_seed + 1``
    (so seed ``s + 1``'s train goals are seed ``s``'s test goals: compare runs at one seed)."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Episode horizon, steps (1..500; Meta-World's own is 500, v1's 150)."""
    reward_function_version: Literal["v1", "v2"] = "v2"
    """Meta-World's reward function (``v2``: the current one, 0–10 per step)."""

    def __post_init__(self) -> None:
        check(isinstance(self.env_name, str) and self.env_name.endswith("-v3"), "env_name",
              self.env_name, "must be a Meta-World v3 environment name, e.g. reach-v3")
        check(self.benchmark_seed >= 0, "benchmark_seed", self.benchmark_seed, "must be >= 0")
        check(1 <= self.max_steps <= MAX_PATH_LENGTH, "max_steps", self.max_steps,
              f"must be in [1, {MAX_PATH_LENGTH}] (Meta-World's max_path_length is 500)")


class MetaWorldML1Family:
    """One Meta-World task with ML1's train/test goals (see the module docstring)."""

    name: ClassVar[str] = "metaworld_ml1"

    def __init__(self, config: MetaWorldML1FamilyConfig) -> None:
        require_metaworld(self.name)
        names = env_names()
        if config.env_name not in names:
            raise ConfigError("task.metaworld_ml1.env_name", config.env_name,
                              f"not a Meta-World ML1 environment; choose one of {names}")
        self.config = config
        self.max_steps = config.max_steps

    def sample_split(self, split: str, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """``num_tasks`` goals of ML1's test set (``split == "test"``) or train set (else).

        Every one of the 50 goals once, in a random order, before any repeats.
        """
        test = split == "test"
        c = self.config
        goals = _benchmark_goals(c.env_name, c.benchmark_seed)[int(test)]
        order = np.concatenate([rng.permutation(len(goals))
                                for _ in range(-(-num_tasks // len(goals)))])[:num_tasks]
        return [{"test_split": int(test), "goal_index": int(i),
                 "benchmark_seed": c.benchmark_seed,
                 "rand_vec": [float(v) for v in goals[i]]} for i in order]

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """Goals from ML1's train set (use :meth:`sample_split` for the test set)."""
        return self.sample_split("train", num_tasks, rng)

    def check_task(self, task: Task) -> None:
        """The fields :meth:`sample_split` writes, each of the right type.

        ``test_split`` 0 or 1, ``goal_index`` in ``[0, 50)``, ``benchmark_seed`` >= 0 and
        ``rand_vec`` a non-empty list of finite numbers.
        """
        check_fields(task, _TASK_FIELDS)
        check_int("test_split", task["test_split"], low=0, high=1)
        check_int("goal_index", task["goal_index"], low=0, high=NUM_GOALS - 1)
        check_int("benchmark_seed", task["benchmark_seed"], low=0)
        check_array("rand_vec", task["rand_vec"], (-1,))

    def make_env(self, tasks: list[Task], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedMetaWorld:
        """Meta-World env copies, each set to its task's goal (``rand_vec``)."""
        c = self.config
        return BatchedMetaWorld(c.env_name, np.array([t["rand_vec"] for t in tasks]), num_envs,
                                self.max_steps, c.reward_function_version, device)

    def task_features(self, task: Task) -> list[float]:
        """``rand_vec``: the object's start and the goal positions (for the oracle)."""
        return [float(v) for v in task["rand_vec"]]

    def oracle_returns(self, tasks: list[Task]) -> np.ndarray:
        """No oracle: NaN per task (see the module docstring)."""
        return np.full(len(tasks), np.nan)


class MetaWorldML1Env(gym.Env[np.ndarray, np.ndarray]):
    """Gymnasium view of one ML1 goal: :class:`BatchedMetaWorld` with a batch of one.

    Args:
        task: the family's task dict (``test_split``, ``goal_index``, ``benchmark_seed``,
            ``rand_vec``, as a task set stores it); when omitted, every reset draws one of
            ML1's *train* goals with ``np_random`` (a meta-env: one goal per episode).
        env_name: the Meta-World v3 environment (``reach-v3`` by default).
        config: the family's config (overrides ``env_name``): benchmark seed, reward version.
        render_mode: ``"rgb_array"`` (:meth:`render` returns MuJoCo's frames) or None.

    Raises:
        ConfigError: Meta-World is not installed, ``env_name`` is unknown, or ``task`` is not
            one of the family's.

    ``gym.make("metarl/MetaWorldML1-v0")`` wraps it in the family's 150-step ``TimeLimit``
    (Meta-World's own limit, 500, is the most it can step). ``info["success"]`` says whether
    the episode has succeeded at some step so far; ``info["task"]`` holds the goal.

    """

    metadata = {"render_modes": list(render.RENDER_MODES),  # noqa: RUF012 (gymnasium's form)
                "render_fps": 80}

    def __init__(self, task: Mapping[str, Any] | None = None, env_name: str = "reach-v3",
                 config: MetaWorldML1FamilyConfig | None = None,
                 render_mode: str | None = None) -> None:
        self.render_mode = render.check_render_mode(render_mode, "MetaWorldML1")
        self.family = MetaWorldML1Family(config or MetaWorldML1FamilyConfig(env_name=env_name))
        self.task = dict(task) if task is not None else None
        if self.task is not None:
            self.family.check_task(self.task)
        first = self.task or self.family.sample(1, np.random.default_rng(0))[0]
        self._env = self.family.make_env([first], 1)
        self.action_space = gym.spaces.Box(self._env.low.astype(np.float32),
                                           self._env.high.astype(np.float32), dtype=np.float32)
        bound = np.finfo(np.float32).max
        self.observation_space = gym.spaces.Box(-bound, bound, shape=(self._env.obs_dim,),
                                                dtype=np.float32)
        self._current: Task = first

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode (at a freshly drawn train goal unless the env was given a task)."""
        super().reset(seed=seed)
        self._current = self.task or self.family.sample(1, self.np_random)[0]
        self._env.set_goals(np.array([self._current["rand_vec"]]))
        obs = self._env.reset(torch.Generator())
        return obs[0, 0].cpu().numpy(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One Meta-World step (the action clipped); never terminates."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self._env.action_dim,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action={action!r}: expected {self._env.action_dim} finite numbers")
        obs, reward, _ = self._env.step(torch.from_numpy(a).view(1, 1, -1))
        return obs[0, 0].cpu().numpy(), float(reward.item()), False, False, self._info()

    def render(self) -> np.ndarray | None:
        """MuJoCo's frame of the current state (``render_mode="rgb_array"``)."""
        return render_view(self.render_mode, self._env.render_frame)

    def _info(self) -> dict[str, Any]:
        return {"success": bool(self._env.success.item()), "task": dict(self._current)}
