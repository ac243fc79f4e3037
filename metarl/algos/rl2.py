"""RL²: in-context meta-RL with a recurrent policy trained by PPO.

Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning",
https://arxiv.org/abs/1611.02779. The policy is a GRU whose input at every step is

    (observation, one-hot previous action, previous reward, previous done flag)

and whose hidden state is kept across all the episodes of a *trial* (several episodes of the
same task) and reset only when a new trial starts; so the network itself is the learning
algorithm, and adapting to a task is just acting. It is meta-trained "slowly" with PPO
(clipped surrogate, GAE, value loss, entropy bonus) on trials of many sampled tasks.

One file, top to bottom:

1. :class:`RL2Config`: every knob, with its meaning.
2. :class:`RL2Policy`: the GRU with a policy head and a value head; :func:`step_input` builds
   one step's input.
3. :func:`collect_trials`: plays one trial in every ``[tasks × envs]`` slot of a batched env
   (one loop over time, auto-reset between episodes, a per-slot episode counter).
4. :func:`ppo_loss` and :class:`RL2`: GAE, truncated back-propagation through time (the trial
   is cut into chunks of ``bptt_length`` steps that start from the hidden states recorded during
   the rollout, all chunks run in parallel), PPO epochs over minibatches of trials.

Trials: a bandit trial is ONE episode of ``n`` pulls (``episodes_per_trial = 1``); a tabular-MDP
trial is ``n`` episodes of horizon 10 (``episodes_per_trial = n``), each restarting in state 0.
The discount runs across episode boundaries: the objective is the total reward of the trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metarl.algos.base import clipped_surrogate_loss
from metarl.config import check
from metarl.envs.base import BatchedEnv
from metarl.policies import categorical_log_prob, sample_actions
from metarl.returns import gae


@dataclass(frozen=True)
class RL2Config:
    """RL² hyperparameters (PPO on trials of sampled tasks)."""

    hidden_size: int = 128
    """Width of the GRU state (shared by the policy and value heads)."""
    meta_batch_size: int = 64
    """Tasks sampled (fresh) per training iteration, ``N``."""
    trials_per_task: int = 4
    """Trials played per task per iteration, ``E`` (each starts from a zero hidden state)."""
    discount: float = 0.99
    """Discount of the trial's rewards, across episode boundaries (the paper: 0.99)."""
    gae_lambda: float = 0.3
    """GAE's lambda (the paper: 0.3)."""
    lr: float = 1e-3
    """Adam learning rate."""
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
    bptt_length: int = 0
    """Truncated BPTT: gradients flow back at most this many steps (0: through the whole trial)."""
    normalize_advantages: bool = True
    """Standardise advantages over each minibatch's valid steps."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for GAE and the value targets (not in the GRU input), to
    keep the value loss from swamping the policy gradient when trial returns are large."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "meta_batch_size", "trials_per_task", "num_epochs",
                     "num_minibatches"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, value, "must be an integer >= 1")
        check(isinstance(self.bptt_length, int) and self.bptt_length >= 0, "bptt_length",
              self.bptt_length, "must be >= 0 (0 means the whole trial)")
        for name in ("discount", "gae_lambda"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, value, "must be in [0, 1]")
        for name in ("lr", "clip_eps", "max_grad_norm", "reward_scale"):
            value = getattr(self, name)
            check(value > 0, name, value, "must be > 0")
        for name in ("value_coef", "entropy_coef"):
            value = getattr(self, name)
            check(value >= 0, name, value, "must be >= 0")
        check(self.num_minibatches <= self.meta_batch_size * self.trials_per_task,
              "num_minibatches", self.num_minibatches,
              "must be <= meta_batch_size * trials_per_task (a minibatch holds whole trials)")


# --------------------------------------------------------------------------------------------
# The recurrent policy
# --------------------------------------------------------------------------------------------

def step_input(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
               prev_done: torch.Tensor, num_actions: int) -> torch.Tensor:
    """One step's GRU input ``[..., obs_dim + num_actions + 2]``.

    Args:
        obs: ``[..., obs_dim]`` current observation.
        prev_action: ``[...]`` long, the previous action, or ``-1`` at the start of a trial
            (encoded as an all-zero one-hot).
        prev_reward: ``[...]`` the previous reward (0 at the start of a trial).
        prev_done: ``[...]`` 1.0 if the previous step ended an episode, i.e. ``obs`` starts a
            new episode of the same trial (0 at the start of a trial).
        num_actions: size of the one-hot action code.

    """
    one_hot = F.one_hot(prev_action.clamp(min=0), num_actions).to(obs.dtype)
    one_hot = one_hot * (prev_action >= 0).unsqueeze(-1).to(obs.dtype)
    return torch.cat([obs, one_hot, prev_reward.unsqueeze(-1).to(obs.dtype),
                      prev_done.unsqueeze(-1).to(obs.dtype)], dim=-1)


class RL2Policy(nn.Module):
    """GRU over :func:`step_input` vectors, with a categorical policy head and a value head.

    Args:
        obs_dim: observation size.
        num_actions: number of discrete actions.
        hidden_size: GRU state width.
        generator: draws the initial parameters (PyTorch's default ranges), so that the same
            seed gives the same network.

    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.obs_dim, self.num_actions, self.hidden_size = obs_dim, num_actions, hidden_size
        self.input_dim = obs_dim + num_actions + 2
        self.gru = nn.GRU(self.input_dim, hidden_size, batch_first=True)
        self.pi = nn.Linear(hidden_size, num_actions)
        self.v = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(hidden_size)  # GRU's and the heads' default range
            for p in self.parameters():
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            self.pi.weight.mul_(0.01)  # near-uniform initial policy
            self.pi.bias.zero_()

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The hidden state at the start of a trial: zeros ``[batch, hidden_size]``."""
        return torch.zeros(batch, self.hidden_size, device=device)

    def forward(self, x: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``L`` steps: ``x [B, L, input_dim]``, ``h [B, hidden]``.

        Returns:
            ``(logits [B, L, A], values [B, L], h_last [B, hidden])``.

        """
        out, h_last = self.gru(x, h.unsqueeze(0))
        return self.pi(out), self.v(out).squeeze(-1), h_last.squeeze(0)


# --------------------------------------------------------------------------------------------
# Rollouts: one trial per slot
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialBatch:
    """``B = N·E`` trials (task-major: trial ``i·E + j`` is task ``i``'s ``j``-th), ``T`` steps.

    Attributes:
        inputs: ``[B, T, input_dim]`` the GRU inputs (see :func:`step_input`).
        actions: ``[B, T]`` long.
        log_probs: ``[B, T]`` log-probabilities of the actions under the acting policy.
        values: ``[B, T]`` value estimates while acting.
        rewards: ``[B, T]`` (0 on padding).
        dones: ``[B, T]`` 1.0 where the step ended an episode.
        mask: ``[B, T]`` 1.0 on steps of the trial, 0.0 once it has played all its episodes.
        chunk_states: ``[B, C, hidden]`` hidden state before steps ``0, L, 2L, ...`` for
            truncated BPTT with chunks of ``L`` steps (``C = ceil(T / L)``).
        num_tasks: ``N``.
        chunk_length: ``L``, the steps between recorded hidden states.

    """

    inputs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    mask: torch.Tensor
    chunk_states: torch.Tensor
    num_tasks: int
    chunk_length: int

    @property
    def trial_returns(self) -> torch.Tensor:
        """Undiscounted total reward of every trial, ``[N, E]``."""
        return self.rewards.sum(-1).reshape(self.num_tasks, -1)


class _TaskFamily(Protocol):
    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]: ...

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 device: torch.device | str = "cpu") -> Any: ...


@torch.no_grad()
def collect_trials(model: RL2Policy, env: BatchedEnv, episodes_per_trial: int,
                   generator: torch.Generator, chunk_length: int = 0,
                   greedy: bool = False) -> TrialBatch:
    """Play one trial of ``episodes_per_trial`` episodes in every slot of ``env``.

    The env is reset once; an episode that ends (termination, or ``env.max_steps`` steps) is
    restarted by the env's auto-reset (:meth:`reset_done`) and counted; the GRU state carries
    on. A slot stops (``mask`` 0) once its counter reaches ``episodes_per_trial``.

    Args:
        model: the recurrent policy.
        env: discrete batched env; its ``N × E`` slots are the trials.
        episodes_per_trial: episodes per trial (1 for a bandit trial).
        generator: source of env noise and action samples.
        chunk_length: record the hidden state every this many steps (0: only at the start).
        greedy: take the most likely action instead of sampling.

    """
    if not env.discrete:
        raise ValueError("collect_trials: RL² here supports discrete-action families only")
    obs = env.reset(generator).float()
    n, e = env.num_tasks, env.num_envs
    b, device = n * e, obs.device
    horizon = episodes_per_trial * env.max_steps
    chunk = chunk_length if chunk_length > 0 else horizon
    h = model.initial_state(b, device)
    prev_action = torch.full((n, e), -1, dtype=torch.long, device=device)
    prev_reward = torch.zeros(n, e, device=device)
    prev_done = torch.zeros(n, e, device=device)
    age = torch.zeros(n, e, dtype=torch.long, device=device)
    episode = torch.zeros(n, e, dtype=torch.long, device=device)
    alive = torch.ones(n, e, dtype=torch.bool, device=device)
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "inputs", "actions", "log_probs", "values", "rewards", "dones", "mask", "states")}
    for t in range(horizon):
        if t % chunk == 0:
            buf["states"].append(h)
        x = step_input(obs, prev_action, prev_reward, prev_done, model.num_actions)
        logits, value, h = model(x.reshape(b, 1, -1), h)
        logits = logits.reshape(n, e, -1)
        actions = logits.argmax(-1) if greedy else sample_actions(logits, generator)
        _, reward, terminated = env.step(actions)
        age += 1
        done = terminated | (age >= env.max_steps)
        live = alive.float()
        for key, val in (("inputs", x), ("actions", actions),
                         ("log_probs", categorical_log_prob(logits, actions)),
                         ("values", value.reshape(n, e)), ("rewards", reward.float() * live),
                         ("dones", done.float() * live), ("mask", live)):
            buf[key].append(val)
        episode += (done & alive).long()
        alive = alive & (episode < episodes_per_trial)
        env.done |= done
        age.masked_fill_(done, 0)
        obs = env.reset_done(generator).float()
        prev_action, prev_reward, prev_done = actions, reward.float(), done.float()
        if not alive.any():
            break

    def stack(key: str) -> torch.Tensor:
        out = torch.stack(buf[key], dim=2)  # [N, E, T, ...]
        return out.reshape(b, *out.shape[2:])

    return TrialBatch(stack("inputs"), stack("actions"), stack("log_probs"), stack("values"),
                      stack("rewards"), stack("dones"), stack("mask"),
                      torch.stack(buf["states"], dim=1), n, chunk)


# --------------------------------------------------------------------------------------------
# PPO with truncated BPTT
# --------------------------------------------------------------------------------------------

def chunked_forward(model: RL2Policy, inputs: torch.Tensor, chunk_states: torch.Tensor,
                    length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, T, A]`` and values ``[B, T]`` by truncated BPTT.

    The ``T`` steps are cut into ``C = ceil(T / length)`` chunks; chunk ``c`` starts from
    ``chunk_states[:, c]`` (recorded while acting, no gradient), so gradients flow back at most
    ``length`` steps, and the chunks run as one batch of ``B·C`` sequences.
    """
    b, steps, d = inputs.shape
    c = chunk_states.shape[1]
    if c != math.ceil(steps / length):
        raise ValueError(f"chunk_states has {c} chunks; {steps} steps in chunks of {length} "
                         f"need {math.ceil(steps / length)}")
    x = F.pad(inputs, (0, 0, 0, c * length - steps)).reshape(b * c, length, d)
    logits, values, _ = model(x, chunk_states.reshape(b * c, -1).detach())
    return (logits.reshape(b, c * length, -1)[:, :steps],
            values.reshape(b, c * length)[:, :steps])


def ppo_loss(model: RL2Policy, batch: TrialBatch, idx: torch.Tensor, adv: torch.Tensor,
             returns: torch.Tensor, config: RL2Config) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss on the trials ``idx`` of ``batch``.

    Clipped surrogate + ``value_coef`` · value MSE − ``entropy_coef`` · entropy, all averaged
    over the valid steps; returns the loss and its parts as floats.
    """
    mask = batch.mask[idx]
    logits, values = chunked_forward(model, batch.inputs[idx], batch.chunk_states[idx],
                                     batch.chunk_length)
    logp = categorical_log_prob(logits, batch.actions[idx])
    a = adv[idx]
    if config.normalize_advantages:
        count = mask.sum().clamp(min=1)
        mean = (a * mask).sum() / count
        std = (((a - mean) * mask).square().sum() / count).sqrt()
        a = (a - mean) / (std + 1e-8)
    policy_loss = clipped_surrogate_loss(logp, batch.log_probs[idx], a, mask, config.clip_eps)
    count = mask.sum().clamp(min=1)
    value_loss = ((values - returns[idx]).square() * mask).sum() / count
    log_pi = torch.log_softmax(logits, -1)
    entropy = (-(log_pi.exp() * log_pi).sum(-1) * mask).sum() / count
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    return loss, {"policy_loss": float(policy_loss.detach()),
                  "value_loss": float(value_loss.detach()),
                  "entropy": float(entropy.detach())}


class RL2:
    """Meta-trains an :class:`RL2Policy` on a discrete task family.

    Args:
        family: samples tasks and builds batched envs (``BanditFamily``, ``TabularMDPFamily``).
        obs_dim, num_actions: the family's observation size and number of actions.
        episodes_per_trial: episodes per trial (bandit: 1; tabular MDP: ``num_episodes``).
        config: hyperparameters.
        seed: seeds the network, the training tasks and every rollout.
        device: torch device.

    """

    def __init__(self, family: _TaskFamily, obs_dim: int, num_actions: int,
                 episodes_per_trial: int, config: RL2Config, seed: int,
                 device: torch.device | str = "cpu") -> None:
        check(isinstance(episodes_per_trial, int) and episodes_per_trial >= 1,
              "episodes_per_trial", episodes_per_trial, "must be an integer >= 1")
        self.family, self.config, self.device = family, config, device
        self.episodes_per_trial = episodes_per_trial
        self.generator = torch.Generator(device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.model = RL2Policy(obs_dim, num_actions, config.hidden_size,
                               torch.Generator().manual_seed(seed)).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=1e-5)

    def train_step(self) -> dict[str, float]:
        """One iteration: fresh tasks, one trial per slot, ``num_epochs`` PPO epochs."""
        c = self.config
        tasks = self.family.sample(c.meta_batch_size, self.rng)
        env = self.family.make_env(tasks, c.trials_per_task, device=self.device)
        batch = collect_trials(self.model, env, self.episodes_per_trial, self.generator,
                               c.bptt_length)
        adv, returns = gae(batch.rewards * c.reward_scale, batch.values, c.discount,
                           c.gae_lambda, batch.mask)
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
        stats["trial_return"] = float(batch.trial_returns.mean())
        return stats

    def evaluate(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                 greedy: bool = False) -> np.ndarray:
        """Total reward of one trial on every task (a fresh hidden state per trial), ``[N]``."""
        env = self.family.make_env(tasks, 1, device=self.device)
        batch = collect_trials(self.model, env, self.episodes_per_trial, generator,
                               greedy=greedy)
        return batch.trial_returns[:, 0].double().cpu().numpy()
