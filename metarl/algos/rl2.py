"""RL²: in-context meta-RL with a recurrent policy trained by PPO.

Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning",
https://arxiv.org/abs/1611.02779. A GRU reads at every step the observation and the previous
action, reward and done flag (:mod:`metarl.history`), and keeps its hidden state across all
the episodes of a *trial* (several episodes of one task), so the network itself is the
learning algorithm and adapting to a task is acting. It is meta-trained "slowly" by PPO
(clipped surrogate, GAE, value loss, entropy bonus) on trials of many sampled tasks; the
discount runs across episode boundaries, so the objective is the trial's total reward.

1. :class:`RL2Config`, every knob. The policy, a GRU with a policy head (categorical or
   Gaussian) and a value head, and its learner on the ``MetaLearner`` contract (the trial's
   context as "parameters") are :mod:`metarl.recurrent`'s.
2. :func:`collect_trials`: one trial in every ``[tasks × envs]`` slot of a batched env.
3. :class:`RL2`: PPO with truncated back-propagation through time (chunks of ``bptt_length``
   steps restarting from the hidden states recorded while acting, run as one batch).
4. Checkpoints, :func:`train_rl2` and the registry entry.

Beyond the paper, three options that measurably earned their place on the paper's bandit and
MDP cells (``benchmarks/rl2/README.md``, "What was tried"), each off by default: a richer step
encoding (``inputs``, :mod:`metarl.history`) with heads bilinear in the observation and the
GRU state (``head``); the trial clock (``trial_clock``, an observation wrapper,
:class:`~metarl.envs.wrappers.TrialClock`); and advantages from each step's expected reward
(``reward_signal``, a training-time reward hook, :data:`REWARD_SIGNALS`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metarl.algos.base import clipped_surrogate_loss, probe_env
from metarl.algos.maml import task_batches
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.checkpoint import FORMAT_VERSION, load_params, save_params
from metarl.config import check, to_dict
from metarl.envs.base import BatchedEnv
from metarl.envs.wrappers import TrialClock
from metarl.history import ENCODINGS, StepHistory
from metarl.logging import MetricLogger, NullLogger
from metarl.recurrent import HEADS, RL2Learner, RL2Policy, model_for
from metarl.returns import gae
from metarl.sampler import TimeLimit
from metarl.tasks import TaskFamily, TaskSet
from metarl.training import Resume, State, run_loop

__all__ = ["REWARD_SIGNALS", "RL2", "RL2Config", "RL2Learner", "RL2Policy", "TrialBatch",
           "collect_trials", "expected_reward", "load_checkpoint", "model_for", "ppo_loss",
           "save_checkpoint", "train_rl2"]

RewardHook = Callable[[BatchedEnv, torch.Tensor], torch.Tensor]
"""A training signal read before each step: ``(env, actions [N, E]) -> [N, E]``."""


def expected_reward(env: BatchedEnv, actions: torch.Tensor) -> torch.Tensor:
    """Each slot's expected reward for ``actions`` in its current state (``env.mean_reward``).

    The policy gradient stays unbiased (``E[r_t | history, a_t]`` is this, and every score
    term that multiplies ``r_t`` is fixed before ``r_t`` is drawn) and loses the reward noise.
    """
    mean_reward = getattr(env, "mean_reward", None)
    if mean_reward is None:
        raise ValueError(f"reward_signal='expected': {type(env).__name__} has no mean_reward, "
                         "so its expected rewards are unknown; use 'sampled'")
    return mean_reward(actions)  # type: ignore[no-any-return]


REWARD_SIGNALS: dict[str, RewardHook | None] = {"sampled": None, "expected": expected_reward}
"""What the advantages are computed from (``RL2Config.reward_signal``): the rewards the env
returned (the paper), or a hook's signal. Training only: the GRU reads the sampled reward."""


@dataclass(frozen=True)
class RL2Config:
    """RL² hyperparameters (PPO on trials of sampled tasks).

    The defaults are the pipeline's (any family, a trial of ``evaluate.num_adapt_steps + 1``
    episodes); the paper's bandit and MDP cells use the presets of ``metarl bench rl2``.
    """

    hidden_size: int = 64
    """Width of the GRU state (shared by the policy and value heads)."""
    meta_batch_size: int = 20
    """Tasks per training iteration."""
    trials_per_task: int = 4
    """Trials per task per iteration (each from a zero hidden state)."""
    discount: float = 0.99
    """Discount of the trial's rewards, across episode boundaries (the paper: 0.99)."""
    gae_lambda: float = 0.95
    """GAE's lambda (the paper: 0.3)."""
    lr: float = 3e-3
    """Adam learning rate."""
    lr_drop_at: int = 0
    """From this many iterations on, ``lr_drop_to`` replaces ``lr`` (0: never): a smaller rate
    late lowers the floor where constant-rate PPO's gradient noise balances its gain."""
    lr_drop_to: float = 1e-4
    """The learning rate from iteration ``lr_drop_at`` on."""
    num_epochs: int = 4
    """PPO epochs over each iteration's trials."""
    num_minibatches: int = 4
    """Minibatches per epoch; a minibatch is a set of whole trials."""
    clip_eps: float = 0.2
    """PPO's ratio clipping."""
    value_coef: float = 0.5
    """Weight of the squared-error value loss."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    bptt_length: int = 50
    """Truncated BPTT: gradients flow back at most this many steps (0: the whole trial)."""
    normalize_advantages: bool = True
    """Standardise advantages over each minibatch's valid steps."""
    reward_scale: float = 0.1
    """Rewards times this for GAE and the value targets (not in the GRU input)."""
    init_std: float = 0.5
    """Continuous actions: the Gaussian's initial std, times half the action range."""
    inputs: str = "paper"
    """The step encoding (:data:`metarl.history.ENCODINGS`): ``paper``, or for discrete
    actions ``reward_code`` (bandits) / ``pair_code`` (tabular MDPs)."""
    head: str = "linear"
    """``linear`` heads (the paper), or ``bilinear``: plus ``Σ_i o_i · W_i z`` of the current
    observation ``o`` and GRU state ``z``, a linear head per one-hot state."""
    trial_clock: bool = False
    """The observation also carries the fraction of the trial's episodes played
    (:class:`~metarl.envs.wrappers.TrialClock`), so a longer trial is played on the same
    schedule, stretched."""
    reward_signal: str = "sampled"
    """``sampled`` (the paper) or ``expected``: advantages from each step's expected reward
    given its state and action (:func:`expected_reward`; bandits, tabular MDPs)."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "meta_batch_size", "trials_per_task", "num_epochs",
                     "num_minibatches"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, value, "must be an integer >= 1")
        check(isinstance(self.bptt_length, int) and self.bptt_length >= 0, "bptt_length",
              self.bptt_length, "must be >= 0 (0 means the whole trial)")
        for name in ("discount", "gae_lambda"):
            check(0.0 <= getattr(self, name) <= 1.0, name, getattr(self, name),
                  "must be in [0, 1]")
        check(isinstance(self.lr_drop_at, int) and self.lr_drop_at >= 0, "lr_drop_at",
              self.lr_drop_at, "must be an integer >= 0 (0: no drop)")
        for name in ("lr", "lr_drop_to", "clip_eps", "max_grad_norm", "reward_scale",
                     "init_std"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        for name in ("value_coef", "entropy_coef"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check(isinstance(self.trial_clock, bool), "trial_clock", self.trial_clock,
              "must be true or false")
        check(self.inputs in ENCODINGS, "inputs", self.inputs,
              f"must be one of {list(ENCODINGS)}")
        check(self.head in HEADS, "head", self.head, f"must be one of {list(HEADS)}")
        check(self.reward_signal in REWARD_SIGNALS, "reward_signal", self.reward_signal,
              f"must be one of {list(REWARD_SIGNALS)}")
        check(self.num_minibatches <= self.meta_batch_size * self.trials_per_task,
              "num_minibatches", self.num_minibatches,
              "must be <= meta_batch_size * trials_per_task (a minibatch holds whole trials)")


# --------------------------------------------------------------------------------------------
# Rollouts: one trial per slot
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialBatch:
    """``B = N·E`` trials (task-major: trial ``i·E + j`` is task ``i``'s ``j``-th), ``T`` steps.

    ``inputs [B, T, input_dim]`` (the GRU's), ``actions [B, T]`` (or ``[B, T, action_dim]``),
    ``log_probs``, ``values``, ``rewards`` (0 on padding), ``signal`` (a reward hook's
    training signal, or None: the rewards), ``dones`` (1.0 where a step ended an episode),
    ``mask`` (1.0 until the trial has played all its episodes), ``episode`` (long, the
    episode of each step), all ``[B, T]``; ``chunk_states [B, C, hidden]``, the hidden state
    before steps ``0, L, 2L, …`` (``L = chunk_length``, ``C = ceil(T / L)``).
    """

    inputs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    mask: torch.Tensor
    episode: torch.Tensor
    chunk_states: torch.Tensor
    num_tasks: int
    chunk_length: int
    signal: torch.Tensor | None = None

    @property
    def trial_returns(self) -> torch.Tensor:
        """Undiscounted total reward of every trial, ``[N, E]``."""
        return self.rewards.sum(-1).reshape(self.num_tasks, -1)

    def episode_returns(self, episodes_per_trial: int) -> torch.Tensor:
        """Return of each episode of every trial, ``[B, episodes_per_trial]``."""
        index = self.episode.clamp(max=episodes_per_trial - 1)
        out = torch.zeros(self.rewards.shape[0], episodes_per_trial,
                          device=self.rewards.device, dtype=self.rewards.dtype)
        return out.scatter_add_(1, index, self.rewards * self.mask)


@torch.no_grad()
def collect_trials(model: RL2Policy, env: BatchedEnv, episodes_per_trial: int,
                   generator: torch.Generator, chunk_length: int = 0, greedy: bool = False,
                   reward_hook: RewardHook | None = None) -> TrialBatch:
    """Play one trial of ``episodes_per_trial`` episodes in every slot of ``env``.

    The env is reset once; an episode that ends (termination, or ``env.max_steps`` steps) is
    restarted by the env's auto-reset and counted; the GRU state carries on. A slot stops
    (``mask`` 0) once it has played ``episodes_per_trial`` episodes. ``chunk_length``: record
    the hidden state every this many steps (0: only at the start); ``greedy``: the most likely
    actions; ``reward_hook``: also record its signal, read before each step.
    """
    if env.discrete != model.discrete:
        raise ValueError(f"collect_trials: the env's actions are "
                         f"{'discrete' if env.discrete else 'continuous'}, the policy's not")
    obs = env.reset(generator).float()
    n, e = env.num_tasks, env.num_envs
    b, device = n * e, obs.device
    horizon = episodes_per_trial * env.max_steps
    chunk = chunk_length if chunk_length > 0 else horizon
    h = model.initial_state(b, device)
    history = StepHistory.start(model.encoder, (n, e), device)
    limit = TimeLimit(env, device)
    episode = torch.zeros(n, e, dtype=torch.long, device=device)
    alive = torch.ones(n, e, dtype=torch.bool, device=device)
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "inputs", "actions", "log_probs", "values", "rewards", "dones", "mask", "episode",
        "states", "signal")}
    for t in range(horizon):
        if t % chunk == 0:
            buf["states"].append(h)
        x = history.input(obs)
        out, value, h = model(x.reshape(b, 1, -1), h)
        out = out.reshape(n, e, -1)
        actions = model.sample(out, generator, greedy)
        live = alive.float()
        if reward_hook is not None:
            buf["signal"].append(reward_hook(env, actions).float() * live)
        _, reward, terminated = env.step(actions)
        _, done = limit.step(terminated)
        for key, val in (("inputs", x), ("actions", actions),
                         ("log_probs", model.log_prob(out, actions)),
                         ("values", value.reshape(n, e)), ("rewards", reward.float() * live),
                         ("dones", done.float() * live), ("mask", live), ("episode", episode)):
            buf[key].append(val)
        episode = episode + (done & alive).long()
        alive = alive & (episode < episodes_per_trial)
        history.push(obs, actions, reward, done)
        obs = env.reset_done(generator, ended=done).float()
        if not alive.any():
            break

    def stack(key: str) -> torch.Tensor:
        out = torch.stack(buf[key], dim=2)  # [N, E, T, ...]
        return out.reshape(b, *out.shape[2:])

    return TrialBatch(stack("inputs"), stack("actions"), stack("log_probs"), stack("values"),
                      stack("rewards"), stack("dones"), stack("mask"), stack("episode"),
                      torch.stack(buf["states"], dim=1), n, chunk,
                      stack("signal") if reward_hook is not None else None)


# --------------------------------------------------------------------------------------------
# PPO with truncated BPTT
# --------------------------------------------------------------------------------------------

def chunked_forward(model: RL2Policy, inputs: torch.Tensor, chunk_states: torch.Tensor,
                    length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs ``[B, T, code_dim]`` and values ``[B, T]`` by truncated BPTT.

    The ``T`` steps are cut into ``C = ceil(T / length)`` chunks (the last zero-padded); chunk
    ``c`` starts from ``chunk_states[:, c]`` (recorded while acting, detached), so gradients
    flow back at most ``length`` steps, and the chunks run as one batch of ``B·C`` sequences.
    """
    b, steps, d = inputs.shape
    c = chunk_states.shape[1]
    if c != math.ceil(steps / length):
        raise ValueError(f"chunk_states has {c} chunks; {steps} steps in chunks of {length} "
                         f"need {math.ceil(steps / length)}")
    x = F.pad(inputs, (0, 0, 0, c * length - steps)).reshape(b * c, length, d)
    out, values, _ = model(x, chunk_states.reshape(b * c, -1).detach())
    return (out.reshape(b, -1, *out.shape[2:])[:, :steps],
            values.reshape(b, -1)[:, :steps])


def ppo_loss(model: RL2Policy, batch: TrialBatch, idx: torch.Tensor, adv: torch.Tensor,
             returns: torch.Tensor, config: RL2Config) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss on the trials ``idx`` of ``batch``, and its parts as floats.

    Clipped surrogate + ``value_coef`` · value MSE − ``entropy_coef`` · entropy, each averaged
    over the valid steps.
    """
    mask = batch.mask[idx]
    out, values = chunked_forward(model, batch.inputs[idx], batch.chunk_states[idx],
                                  batch.chunk_length)
    logp = model.log_prob(out, batch.actions[idx])
    a = adv[idx]
    count = mask.sum().clamp(min=1)
    if config.normalize_advantages:
        mean = (a * mask).sum() / count
        std = (((a - mean) * mask).square().sum() / count).sqrt()
        a = (a - mean) / (std + 1e-8)
    policy_loss = clipped_surrogate_loss(logp, batch.log_probs[idx], a, mask, config.clip_eps)
    value_loss = ((values - returns[idx]).square() * mask).sum() / count
    entropy = (model.entropy(out) * mask).sum() / count
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    return loss, {"policy_loss": float(policy_loss.detach()),
                  "value_loss": float(value_loss.detach()),
                  "entropy": float(entropy.detach())}


TaskSampler = Callable[[], list[dict[str, Any]]]
"""Draws one meta-batch of tasks."""


class RL2:
    """Meta-trains an :class:`RL2Policy` on a task family (discrete or continuous actions).

    Args:
        family: samples tasks and builds batched envs.
        obs_dim, num_actions: a discrete family's observation size and actions; ``None``
            reads the spaces from an env of ``family``.
        episodes_per_trial: episodes per trial (bandit: 1; tabular MDP: ``num_episodes``).
        config: hyperparameters.
        seed: seeds the network, the training tasks and every rollout.
        device: torch device.
        task_sampler: draws each iteration's tasks (default: ``meta_batch_size`` fresh tasks
            from ``family.sample``; the pipeline draws from its training task set).

    """

    def __init__(self, family: TaskFamily, obs_dim: int | None, num_actions: int | None,
                 episodes_per_trial: int, config: RL2Config, seed: int,
                 device: torch.device | str = "cpu",
                 task_sampler: TaskSampler | None = None) -> None:
        check(isinstance(episodes_per_trial, int) and episodes_per_trial >= 1,
              "episodes_per_trial", episodes_per_trial, "must be an integer >= 1")
        self.family, self.config, self.device = family, config, device
        self.episodes_per_trial = episodes_per_trial
        self.generator = torch.Generator(device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        init = torch.Generator().manual_seed(seed)
        if obs_dim is None or num_actions is None:
            model = model_for(family, config.hidden_size, init, config.init_std, config.inputs,
                              config.head, config.trial_clock)
        else:
            model = RL2Policy(obs_dim + int(config.trial_clock), num_actions,
                              config.hidden_size, init, inputs=config.inputs, head=config.head)
        self.model = model.to(device)
        self.reward_hook = REWARD_SIGNALS[config.reward_signal]
        if self.reward_hook is expected_reward:  # fail now, not at the first rollout
            env = probe_env(family)
            check(hasattr(env, "mean_reward"), "reward_signal", config.reward_signal,
                  f"{type(env).__name__} has no mean_reward (its expected rewards are "
                  "unknown); use 'sampled'")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=1e-5)
        self.iteration = 0
        """Training iterations run so far (:meth:`train_step` calls, resumed ones included)."""
        self.sample_tasks: TaskSampler = task_sampler or (
            lambda: family.sample(config.meta_batch_size, self.rng))

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 family: TaskFamily | None = None, episodes_per_trial: int | None = None
                 ) -> BatchedEnv:
        """A batched env of ``tasks``, with the trial clock of a clocked model."""
        env = (family or self.family).make_env(tasks, num_envs, device=self.device)
        if self.config.trial_clock:
            return TrialClock(env, episodes_per_trial or self.episodes_per_trial)  # type: ignore[return-value]
        return env

    def training_state(self) -> dict[str, Any]:
        """What continuing this training later needs: weights, optimiser and random states.

        :meth:`load_training_state` on an ``RL2`` built with the same family, config and seed
        then trains on exactly as this one would have. The default task sampler's numpy state
        is included; a custom ``task_sampler``'s is not.
        """
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "rng": self.rng.bit_generator.state,
                "iteration": self.iteration}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` (same family, config and seed)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.rng.bit_generator.state = state["rng"]
        self.iteration = int(state.get("iteration", 0))

    def train_step(self) -> dict[str, float]:
        """One iteration: a meta-batch of tasks, one trial per slot, ``num_epochs`` PPO epochs.

        Returns PPO's loss parts, ``trial_return`` (mean total reward of a trial),
        ``first_episode_return`` / ``last_episode_return`` (a trial's first and last episode:
        the in-context adaptation), the ``lr`` used and the ``env_steps`` taken.
        """
        c = self.config
        lr = c.lr_drop_to if 0 < c.lr_drop_at <= self.iteration else c.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        env = self.make_env(self.sample_tasks(), c.trials_per_task)
        batch = collect_trials(self.model, env, self.episodes_per_trial, self.generator,
                               c.bptt_length, reward_hook=self.reward_hook)
        signal = batch.rewards if batch.signal is None else batch.signal
        adv, returns = gae(signal * c.reward_scale, batch.values, c.discount, c.gae_lambda,
                           batch.mask)
        b = batch.inputs.shape[0]
        size = math.ceil(b / c.num_minibatches)
        stats: dict[str, float] = {}
        for _ in range(c.num_epochs):
            order = torch.randperm(b, generator=self.generator, device=self.generator.device)
            for start in range(0, b, size):
                idx = order[start:start + size].to(batch.inputs.device)
                loss, stats = ppo_loss(self.model, batch, idx, adv, returns, c)
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                self.optimizer.step()
        per_episode = batch.episode_returns(self.episodes_per_trial).mean(0)
        stats["trial_return"] = float(batch.trial_returns.mean())
        stats["first_episode_return"] = float(per_episode[0])
        stats["last_episode_return"] = float(per_episode[-1])
        stats["lr"] = lr
        stats["env_steps"] = float(batch.mask.sum())
        self.iteration += 1
        return stats

    def evaluate(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                 greedy: bool = False, family: TaskFamily | None = None,
                 episodes_per_trial: int | None = None) -> np.ndarray:
        """Total reward of one trial on every task (a fresh hidden state per trial), ``[N]``.

        ``family`` / ``episodes_per_trial`` score the policy on other trials than it trains on
        (a bandit family with more pulls; more MDP episodes, the trial clock running over the
        ``n`` asked).
        """
        n = episodes_per_trial or self.episodes_per_trial
        env = self.make_env(tasks, 1, family, n)
        batch = collect_trials(self.model, env, n, generator, greedy=greedy)
        return batch.trial_returns[:, 0].double().cpu().numpy()

    def learner(self) -> RL2Learner:
        """The trained policy on the meta-learner contract (a copy of the current weights)."""
        return RL2Learner(copy.deepcopy(self.model).eval(),
                          trial_length=self.episodes_per_trial if self.config.trial_clock
                          else None)


# --------------------------------------------------------------------------------------------
# The meta-learner contract: "adapting" is carrying the hidden state into the next episode
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# Checkpoints, training, the registry entry
# --------------------------------------------------------------------------------------------

def checkpoint_config(model: RL2Policy, **extra: Any) -> dict[str, Any]:
    """The JSON needed to rebuild an :class:`RL2Learner` (plus ``extra``)."""
    return {"format_version": FORMAT_VERSION, "learner": "rl2",
            "policy": "categorical" if model.discrete else "gaussian",
            "obs_dim": model.obs_dim, "num_actions": model.num_actions,
            "action_dim": model.action_dim, "action_low": list(model.action_low),
            "action_high": list(model.action_high), "hidden_size": model.hidden_size,
            "inputs": model.inputs, "head": model.head, **extra}


def save_checkpoint(algo: RL2, weights_path: Path) -> dict[str, Any]:
    """Write ``algo``'s weights; return their :func:`checkpoint_config`."""
    save_params(dict(algo.model.state_dict()), weights_path)
    return checkpoint_config(algo.model, algo_config=to_dict(algo.config),
                             episodes_per_trial=algo.episodes_per_trial)


def load_checkpoint(weights_path: Path, config: dict[str, Any]) -> RL2Learner:
    """The :class:`RL2Learner` of a checkpoint (weights only)."""
    missing = [k for k in ("obs_dim", "num_actions", "action_dim", "hidden_size")
               if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; re-train to produce a full one")
    model = RL2Policy(int(config["obs_dim"]), int(config["num_actions"]),
                      int(config["hidden_size"]), torch.Generator().manual_seed(0),
                      action_dim=int(config["action_dim"]),
                      action_low=tuple(config.get("action_low", ())),
                      action_high=tuple(config.get("action_high", ())),
                      inputs=str(config.get("inputs", "paper")),
                      head=str(config.get("head", "linear")))
    params = load_params(weights_path)
    expected = model.state_dict()
    if set(params) != set(expected) or any(params[k].shape != v.shape
                                           for k, v in expected.items()):
        raise ValueError(f"{weights_path}: parameters do not match the RL² architecture in "
                         "its config (obs_dim, num_actions/action_dim, hidden_size, inputs, head)")
    model.load_state_dict(params)
    clocked = bool(config.get("algo_config", {}).get("trial_clock", False))
    if clocked and not isinstance(config.get("episodes_per_trial"), int):
        raise ValueError("checkpoint config: a model trained with trial_clock needs its "
                         "episodes_per_trial; re-train to produce a full one")
    return RL2Learner(model.eval(),
                      trial_length=int(config["episodes_per_trial"]) if clocked else None)


def train_rl2(family: TaskFamily, train_set: TaskSet, config: RL2Config,
              episodes_per_trial: int, num_iterations: int, seed: int,
              device: torch.device | str = "cpu", logger: MetricLogger | None = None,
              hook: Callable[[int, RL2Learner], None] | None = None,
              resume: Resume | None = None) -> RL2:
    """Meta-train RL² on meta-batches drawn from ``train_set``; same seed ⇒ same weights (CPU).

    Logs ``train/return_pre_adapt`` (a trial's first episode), ``train/return_post_adapt``
    (its last) and PPO's loss parts every iteration; ``hook(it, learner)`` may raise to stop.
    ``resume``: as for :func:`~metarl.algos.maml.train_maml`.
    """
    logger = logger or NullLogger()
    draw = task_batches(train_set, config.meta_batch_size, np.random.default_rng(seed))
    algo = RL2(family, None, None, episodes_per_trial, config, seed, device, task_sampler=draw)

    def set_state(state: State) -> None:
        algo.load_training_state(state["rl2"])
        draw.load_state(state["tasks"])

    def step(it: int) -> None:
        stats = algo.train_step()
        logger.log_metrics({"train/return_pre_adapt": stats["first_episode_return"],
                            "train/return_post_adapt": stats["last_episode_return"],
                            "train/trial_return": stats["trial_return"],
                            **{f"train/{k}": stats[k]
                               for k in ("policy_loss", "value_loss", "entropy", "env_steps")}},
                           step=it)
        if hook is not None:
            hook(it, algo.learner())

    run_loop(step, num_iterations, lambda: {"rl2": algo.training_state(),
                                            "tasks": draw.state()}, set_state, resume)
    return algo


def _train(config: RL2Config, ctx: TrainContext) -> RL2:
    return train_rl2(ctx.family, ctx.train_set, config, ctx.episodes_per_trial,
                     ctx.num_iterations, ctx.seed, ctx.device, logger=ctx.logger,
                     hook=ctx.hook, resume=ctx.resume)


register(Algorithm(
    name="rl2", config_cls=RL2Config, train=_train, save=save_checkpoint,  # type: ignore[arg-type]
    load=load_checkpoint,
    episodes=lambda c, iters, trial: iters * c.meta_batch_size * c.trials_per_task * trial,
    search_space={"lr": "outer_lr"},
    batch_factors=lambda c, trial: (("algo.rl2.meta_batch_size", c.meta_batch_size),
                                    ("algo.rl2.trials_per_task", c.trials_per_task),
                                    ("evaluate.num_adapt_steps + 1", trial)),
    step_note="RL²'s step k is episode k + 1 of one trial (the hidden state carried over).",
    summary="a recurrent policy that adapts in context, across the episodes of a trial "
            "(Duan et al. 2016)"))
