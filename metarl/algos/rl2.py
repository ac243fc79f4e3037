"""RL²: in-context meta-RL with a recurrent policy trained by PPO.

Duan et al. 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning",
https://arxiv.org/abs/1611.02779. The policy is a GRU whose input at every step is

    (observation, previous action, previous reward, previous done flag)

and whose hidden state is kept across all the episodes of a *trial* (several episodes of the
same task) and reset only when a new trial starts; so the network itself is the learning
algorithm, and adapting to a task is just acting. It is meta-trained "slowly" with PPO
(clipped surrogate, GAE, value loss, entropy bonus) on trials of many sampled tasks.

One file, top to bottom:

1. :class:`RL2Config`: every knob, with its meaning.
2. :class:`RL2Policy`: the GRU with a policy head (categorical, or a Gaussian for continuous
   actions) and a value head; :meth:`RL2Policy.step_input` builds one step's input (the previous
   action one-hot, or the clipped action vector).
3. :func:`collect_trials`: plays one trial in every ``[tasks × envs]`` slot of a batched env
   (one loop over time, auto-reset between episodes, a per-slot episode counter).
4. :func:`ppo_loss` and :class:`RL2`: GAE, truncated back-propagation through time (the trial
   is cut into chunks of ``bptt_length`` steps that start from the hidden states recorded during
   the rollout, all chunks run in parallel), PPO epochs over minibatches of trials.
5. :class:`RL2Learner` and :func:`train_rl2`: the trained policy on the ``MetaLearner``
   contract, so the pipeline's tune / train / evaluate / register stages serve RL² as they
   serve MAML. Its parameters are the trial's context (hidden state, previous observation,
   action, reward, done); "adapting" after an episode is carrying that context into the next
   episode.

Trials: a bandit trial is ONE episode of ``n`` pulls (``episodes_per_trial = 1``); a tabular-MDP
trial is ``n`` episodes of horizon 10 (``episodes_per_trial = n``), each restarting in state 0.
The discount runs across episode boundaries: the objective is the total reward of the trial.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metarl.algos.base import TensorInfo, clipped_surrogate_loss, half_action_range, probe_env
from metarl.algos.maml import task_batches
from metarl.algos.registry import Algorithm, TrainContext, register
from metarl.baselines.task_conditioned import task_features
from metarl.checkpoint import FORMAT_VERSION, load_params, save_params
from metarl.config import check, to_dict
from metarl.envs.base import BatchedEnv
from metarl.logging import MetricLogger, NullLogger
from metarl.policies import Params, categorical_log_prob, gaussian_log_prob, sample_actions
from metarl.returns import gae
from metarl.sampler import EpisodeBatch
from metarl.tasks import TaskSet
from metarl.training import Resume, State, run_loop

CRITICS = ("shared", "separate", "task")
"""The value functions :class:`RL2Config` can train (see ``RL2Config.critic``)."""
INPUTS = ("paper", "reward_code", "pair_code")
"""The step encodings :class:`RL2Policy` can read (see ``RL2Config.inputs``)."""
HEADS = ("linear", "bilinear")
"""The policy and value heads :class:`RL2Policy` can have (see ``RL2Config.head``)."""
REWARD_SIGNALS = ("sampled", "expected")
"""The rewards :class:`RL2` can learn from (see ``RL2Config.reward_signal``)."""


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
    lr_drop_at: int = 0
    """A step schedule: from this many training iterations on, ``lr_drop_to`` replaces ``lr``
    (0: ``lr`` throughout). Constant-rate PPO plateaus where its gradient noise balances the
    gain; a smaller rate late in training lowers that floor."""
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
    bptt_length: int = 0
    """Truncated BPTT: gradients flow back at most this many steps (0: through the whole trial)."""
    normalize_advantages: bool = True
    """Standardise advantages over each minibatch's valid steps."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for GAE and the value targets (not in the GRU input), to
    keep the value loss from swamping the policy gradient when trial returns are large."""
    init_std: float = 0.5
    """Continuous actions only: the Gaussian's initial standard deviation, times half the
    action range (learned afterwards, state-independent)."""
    critic: str = "shared"
    """The value function: ``shared``, a head on the policy's GRU (the paper); ``separate``, its
    own GRU over the same step inputs; ``task``, its own GRU whose input also carries the task's
    parameters (a privileged critic: it only shapes the advantages in training, the policy
    still acts from its history alone, and it is not part of the trained model)."""
    inputs: str = "paper"
    """What the GRU reads each step, discrete actions only besides ``paper``. ``paper``: the
    observation, the previous action's one-hot, reward and done flag (Duan et al.);
    ``reward_code``: also the previous action's one-hot times the previous reward, so that
    summing an arm's rewards is linear in the input (bandits); ``pair_code``: also the outer
    product of the previous observation with the previous action's one-hot, and that times
    the previous reward, which for one-hot observations is the code of the ``(s, a)`` pair
    the reward belongs to (tabular MDPs). The same information as ``paper`` (the previous
    observation was the previous step's input), re-encoded so that per-pair statistics are
    linear in the input instead of a product the GRU must learn."""
    head: str = "linear"
    """The policy and value heads on the GRU state ``z``: ``linear`` (the paper), or
    ``bilinear``, which adds a term bilinear in the current observation ``o`` and ``z``
    (``Σ_i o_i · W_i z``): with one-hot states, a linear head per state, so that what the GRU
    remembers about each state can be read out in that state without the GRU having to learn
    the selection itself. The policy still acts from its history (``o`` is part of it)."""

    trial_clock: bool = False
    """The observation also carries the fraction of the trial's episodes already played
    (``0, 1/n, ..., (n-1)/n`` for a trial of ``n`` episodes), appended by RL² itself, like the
    bandit observation's ``t / n``: a policy trained on short trials then plays a longer one
    on the same schedule, stretched, instead of playing on past the end it learned (and a
    policy trained on several lengths can tell them apart). Off: the paper's inputs."""

    reward_signal: str = "sampled"
    """The rewards the advantages and value targets are computed from: ``sampled``, the
    rewards the env returned (the paper); ``expected``, each step's expected reward given the
    state and action (the env's ``mean_reward``: an arm's success probability, an ``(s, a)``
    pair's mean reward). Training only, like ``critic="task"``: the GRU still reads the sampled
    reward and the policy acts from its history alone. The policy gradient stays unbiased
    (``E[r_t | history, a_t]`` is that expectation, and every score term that multiplies
    ``r_t`` is fixed before ``r_t`` is drawn) and loses the reward noise's variance, which is
    most of a Bernoulli bandit's. Needs a family whose env has ``mean_reward``."""

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
        check(isinstance(self.lr_drop_at, int) and self.lr_drop_at >= 0, "lr_drop_at",
              self.lr_drop_at, "must be an integer >= 0 (0: no drop)")
        for name in ("lr", "lr_drop_to", "clip_eps", "max_grad_norm", "reward_scale",
                     "init_std"):
            value = getattr(self, name)
            check(value > 0, name, value, "must be > 0")
        for name in ("value_coef", "entropy_coef"):
            value = getattr(self, name)
            check(value >= 0, name, value, "must be >= 0")
        check(self.critic in CRITICS, "critic", self.critic, f"must be one of {list(CRITICS)}")
        check(self.inputs in INPUTS, "inputs", self.inputs, f"must be one of {list(INPUTS)}")
        check(isinstance(self.trial_clock, bool), "trial_clock", self.trial_clock,
              "must be true or false")
        check(self.head in HEADS, "head", self.head, f"must be one of {list(HEADS)}")
        check(self.reward_signal in REWARD_SIGNALS, "reward_signal", self.reward_signal,
              f"must be one of {list(REWARD_SIGNALS)}")
        check(self.num_minibatches <= self.meta_batch_size * self.trials_per_task,
              "num_minibatches", self.num_minibatches,
              "must be <= meta_batch_size * trials_per_task (a minibatch holds whole trials)")


# --------------------------------------------------------------------------------------------
# The recurrent policy
# --------------------------------------------------------------------------------------------

def step_input(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
               prev_done: torch.Tensor, num_actions: int, inputs: str = "paper",
               prev_obs: torch.Tensor | None = None) -> torch.Tensor:
    """One step's GRU input ``[..., input_dim(obs_dim, num_actions, inputs)]``, discrete actions.

    Args:
        obs: ``[..., obs_dim]`` current observation.
        prev_action: ``[...]`` long, the previous action, or ``-1`` at the start of a trial
            (encoded as an all-zero one-hot).
        prev_reward: ``[...]`` the previous reward (0 at the start of a trial).
        prev_done: ``[...]`` 1.0 if the previous step ended an episode, i.e. ``obs`` starts a
            new episode of the same trial (0 at the start of a trial).
        num_actions: size of the one-hot action code.
        inputs: the encoding (``RL2Config.inputs``): ``paper`` is ``(obs, one-hot, reward,
            done)``; ``reward_code`` appends ``one-hot · reward``; ``pair_code`` appends
            ``prev_obs ⊗ one-hot`` and that times the reward (flattened, observation-major).
        prev_obs: ``[..., obs_dim]`` the observation the previous action was taken in (zeros
            at the start of a trial); ``pair_code`` only.

    """
    one_hot = F.one_hot(prev_action.clamp(min=0), num_actions).to(obs.dtype)
    one_hot = one_hot * (prev_action >= 0).unsqueeze(-1).to(obs.dtype)
    x = _cat(obs, one_hot, prev_reward, prev_done)
    if inputs == "paper":
        return x
    reward = prev_reward.unsqueeze(-1).to(obs.dtype)
    if inputs == "reward_code":
        return torch.cat([x, one_hot * reward], dim=-1)
    if inputs != "pair_code":
        raise ValueError(f"inputs={inputs!r}: expected one of {list(INPUTS)}")
    if prev_obs is None:
        raise ValueError("step_input: inputs='pair_code' needs prev_obs")
    pair = (prev_obs.to(obs.dtype).unsqueeze(-1) * one_hot.unsqueeze(-2)).flatten(-2)
    return torch.cat([x, pair, pair * reward], dim=-1)


def _bilinear(obs: torch.Tensor, z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``Σ_i obs_i · W_i z`` for ``obs [B, I]``, ``z [B, H]``, ``weight [O, I, H]``: ``[B, O]``.

    What :class:`torch.nn.Bilinear` (without bias) computes, as one matrix product: its own
    kernel ran the RL² bandit cells 2.5 times slower on a CPU (backward included).
    """
    out_dim, in_dim, hidden = weight.shape
    u = (z @ weight.reshape(out_dim * in_dim, hidden).T).view(-1, out_dim, in_dim)
    return (u * obs.unsqueeze(-2)).sum(-1)


def input_dim(obs_dim: int, code_dim: int, inputs: str = "paper") -> int:
    """Size of one step's GRU input for the encoding ``inputs`` (see :func:`step_input`)."""
    extra = {"paper": 0, "reward_code": code_dim, "pair_code": 2 * obs_dim * code_dim}
    if inputs not in extra:
        raise ValueError(f"inputs={inputs!r}: expected one of {list(INPUTS)}")
    return obs_dim + code_dim + 2 + extra[inputs]


def _cat(obs: torch.Tensor, code: torch.Tensor, prev_reward: torch.Tensor,
         prev_done: torch.Tensor) -> torch.Tensor:
    return torch.cat([obs, code, prev_reward.unsqueeze(-1).to(obs.dtype),
                      prev_done.unsqueeze(-1).to(obs.dtype)], dim=-1)


def with_clock(obs: torch.Tensor, episode: torch.Tensor, episodes_per_trial: int
               ) -> torch.Tensor:
    """``obs [..., D]`` with the trial clock appended (``RL2Config.trial_clock``): ``[..., D + 1]``.

    The clock is ``episode / episodes_per_trial``, ``episode [...]`` counting the trial's
    episodes already played.
    """
    clock = (episode.to(obs.dtype) / episodes_per_trial).unsqueeze(-1)
    return torch.cat([obs, clock], dim=-1)


@torch.no_grad()
def _uniform_init(module: nn.Module, hidden_size: int, generator: torch.Generator) -> None:
    """Draw every parameter uniform in ``±1/sqrt(hidden_size)``, in order, from ``generator``.

    PyTorch's default range for a GRU and the heads on it; same seed, same network.
    """
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)


class RL2Policy(nn.Module):
    """GRU over step inputs, with a policy head and a value head.

    The step input is ``(obs, previous action code, previous reward, previous done)``; the
    action code is a one-hot for a discrete family (all zeros before the first action) and the
    action vector, clipped to the action bounds, for a continuous one (zeros before the first).
    The policy head gives logits (discrete) or the mean of a diagonal Gaussian with a learned,
    state-independent ``log_std`` (continuous). A discrete family may read a richer encoding
    of the same history (``inputs``, see :func:`step_input`), and both heads may add a term
    bilinear in the current observation and the GRU state (``head="bilinear"``).

    Args:
        obs_dim: observation size.
        num_actions: number of discrete actions (0 for a continuous family).
        hidden_size: GRU state width.
        generator: draws the initial parameters (PyTorch's default ranges), so that the same
            seed gives the same network.
        action_dim: continuous action size (0 for a discrete family).
        action_low, action_high: continuous action bounds (for the action code).
        init_std: continuous only, the Gaussian's initial standard deviation.
        inputs: the step encoding, ``RL2Config.inputs`` (only ``paper`` for a continuous
            family).
        head: ``linear`` or ``bilinear`` heads, ``RL2Config.head``.

    """

    def __init__(self, obs_dim: int, num_actions: int, hidden_size: int,
                 generator: torch.Generator, action_dim: int = 0,
                 action_low: Sequence[float] = (), action_high: Sequence[float] = (),
                 init_std: float = 1.0, inputs: str = "paper", head: str = "linear"
                 ) -> None:
        super().__init__()
        if (num_actions > 0) == (action_dim > 0):
            raise ValueError(f"RL2Policy: give num_actions ({num_actions}) for a discrete "
                             f"family or action_dim ({action_dim}) for a continuous one")
        self.discrete = action_dim == 0
        self.obs_dim, self.num_actions, self.action_dim = obs_dim, num_actions, action_dim
        self.hidden_size = hidden_size
        self.code_dim = num_actions if self.discrete else action_dim
        check(inputs == "paper" or self.discrete, "inputs", inputs,
              "the per-action codes need discrete actions; use 'paper' for this family")
        self.inputs = inputs
        self.input_dim = input_dim(obs_dim, self.code_dim, inputs)
        if not self.discrete and (len(action_low) != action_dim
                                  or len(action_high) != action_dim):
            raise ValueError(f"RL2Policy: action_low/action_high need {action_dim} values")
        self.action_low = tuple(float(v) for v in action_low)
        self.action_high = tuple(float(v) for v in action_high)
        check(head in HEADS, "head", head, f"must be one of {list(HEADS)}")
        self.head = head
        self.gru = nn.GRU(self.input_dim, hidden_size, batch_first=True)
        self.pi = nn.Linear(hidden_size, self.code_dim)
        self.v = nn.Linear(hidden_size, 1)
        # the bilinear terms exist only for head="bilinear" (a linear-head network has exactly
        # the parameters, and so the initial values, it always had)
        self.pi_obs: nn.Bilinear | None = None
        self.v_obs: nn.Bilinear | None = None
        if head == "bilinear":
            self.pi_obs = nn.Bilinear(obs_dim, hidden_size, self.code_dim, bias=False)
            self.v_obs = nn.Bilinear(obs_dim, hidden_size, 1, bias=False)
        _uniform_init(self, hidden_size, generator)
        with torch.no_grad():
            self.pi.weight.mul_(0.01)  # near-uniform (or zero-mean) initial policy
            self.pi.bias.zero_()
            if self.pi_obs is not None:
                self.pi_obs.weight.mul_(0.01)
        if not self.discrete:
            if init_std <= 0:
                raise ValueError(f"init_std={init_std}: must be > 0")
            self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    # -- the step input ------------------------------------------------------------------------
    def no_action(self, shape: tuple[int, ...], device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
        """The "previous action" at the start of a trial: ``-1`` (discrete) or zeros."""
        if self.discrete:
            return torch.full(shape, -1, dtype=torch.long, device=device)
        return torch.zeros(*shape, self.action_dim, device=device)

    def step_input(self, obs: torch.Tensor, prev_action: torch.Tensor,
                   prev_reward: torch.Tensor, prev_done: torch.Tensor,
                   prev_obs: torch.Tensor | None = None) -> torch.Tensor:
        """One step's input ``[..., input_dim]`` (see the class docstring).

        ``prev_obs``, the observation the previous action was taken in, is read only by the
        ``pair_code`` encoding.
        """
        if self.discrete:
            return step_input(obs, prev_action, prev_reward, prev_done, self.num_actions,
                              self.inputs, prev_obs)
        low = torch.tensor(self.action_low, device=obs.device, dtype=obs.dtype)
        high = torch.tensor(self.action_high, device=obs.device, dtype=obs.dtype)
        return _cat(obs, torch.maximum(torch.minimum(prev_action.to(obs.dtype), high), low),
                    prev_reward, prev_done)

    # -- the network ---------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The hidden state at the start of a trial: zeros ``[batch, hidden_size]``."""
        return torch.zeros(batch, self.hidden_size, device=device)

    def encode(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU states after each of ``L`` steps ``[B, L, hidden]`` and the last ``[B, hidden]``."""
        out, h_last = self.gru(x, h.unsqueeze(0))
        return out, h_last.squeeze(0)

    def forward(self, x: torch.Tensor, h: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run ``L`` steps: ``x [B, L, input_dim]``, ``h [B, hidden]``.

        Returns:
            ``(out [B, L, code_dim], values [B, L], h_last [B, hidden])``; ``out`` is the
            logits (discrete) or the Gaussian's mean (continuous).

        """
        out, h_last = self.encode(x, h)
        head, values = self.pi(out), self.v(out).squeeze(-1)
        if self.pi_obs is not None and self.v_obs is not None:
            obs = x[..., :self.obs_dim].reshape(-1, self.obs_dim)
            z = out.reshape(-1, self.hidden_size)
            head = head + _bilinear(obs, z, self.pi_obs.weight).reshape(head.shape)
            values = values + _bilinear(obs, z, self.v_obs.weight).reshape(values.shape)
        return head, values, h_last

    # -- the action distribution ---------------------------------------------------------------
    def log_prob(self, out: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability (density) of ``actions`` under the head output ``out``."""
        if self.discrete:
            return categorical_log_prob(out, actions)
        return gaussian_log_prob(out, self.log_std, actions)

    def sample(self, out: torch.Tensor, generator: torch.Generator, greedy: bool = False
               ) -> torch.Tensor:
        """Actions from the head output: sampled, or the mode when ``greedy``."""
        if self.discrete:
            return out.argmax(-1) if greedy else sample_actions(out, generator)
        if greedy:
            return out
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        return out + torch.exp(self.log_std) * noise

    def entropy(self, out: torch.Tensor) -> torch.Tensor:
        """Entropy of the action distribution at every step, ``out.shape[:-1]``."""
        if self.discrete:
            log_pi = torch.log_softmax(out, -1)
            return -(log_pi.exp() * log_pi).sum(-1)
        per_step = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
        return per_step.expand(out.shape[:-1])


class RL2Critic(nn.Module):
    """A value function with its own GRU (``RL2Config.critic`` ``separate`` or ``task``).

    It reads the trials' step inputs (with the task's features appended for a privileged
    critic) from a zero state at the start of each trial and gives a value per step; it is
    trained on the same targets as the shared head, with the same truncated BPTT, and never
    used to act.
    """

    def __init__(self, input_dim: int, hidden_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gru = nn.GRU(input_dim, hidden_size, batch_first=True)
        self.v = nn.Linear(hidden_size, 1)
        _uniform_init(self, hidden_size, generator)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Values ``[B, L]`` of the steps ``x [B, L, input_dim]`` from states ``h [B, hidden]``."""
        out, _ = self.gru(x, h.unsqueeze(0))
        return self.v(out).squeeze(-1)

    @torch.no_grad()
    def trial_values(self, x: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Values of whole trials ``x [B, T, input_dim]`` from a zero state ``[B, T]``.

        Also the hidden state before steps ``0, length, 2·length, ...`` (``[B, C, hidden]``),
        where truncated BPTT restarts; no gradient.
        """
        out, _ = self.gru(x)
        zero = torch.zeros(x.shape[0], 1, self.hidden_size, device=x.device, dtype=out.dtype)
        states = torch.cat([zero, out[:, length - 1:-1:length]], dim=1)
        return self.v(out).squeeze(-1), states


# --------------------------------------------------------------------------------------------
# Rollouts: one trial per slot
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialBatch:
    """``B = N·E`` trials (task-major: trial ``i·E + j`` is task ``i``'s ``j``-th), ``T`` steps.

    Attributes:
        inputs: ``[B, T, input_dim]`` the GRU inputs (see :meth:`RL2Policy.step_input`).
        actions: ``[B, T]`` long (discrete) or ``[B, T, action_dim]`` float (continuous).
        log_probs: ``[B, T]`` log-probabilities of the actions under the acting policy.
        values: ``[B, T]`` value estimates while acting.
        rewards: ``[B, T]`` (0 on padding).
        expected_rewards: ``[B, T]`` each step's expected reward given its state and action
            (the env's ``mean_reward``; 0 on padding), or ``None`` when not recorded.
        dones: ``[B, T]`` 1.0 where the step ended an episode.
        mask: ``[B, T]`` 1.0 on steps of the trial, 0.0 once it has played all its episodes.
        episode: ``[B, T]`` long, which episode of the trial each step belongs to.
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
    episode: torch.Tensor
    chunk_states: torch.Tensor
    num_tasks: int
    chunk_length: int
    expected_rewards: torch.Tensor | None = None

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


class _TaskFamily(Protocol):
    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]: ...

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 device: torch.device | str = "cpu") -> Any: ...


@torch.no_grad()
def collect_trials(model: RL2Policy, env: BatchedEnv, episodes_per_trial: int,
                   generator: torch.Generator, chunk_length: int = 0,
                   greedy: bool = False, expected_rewards: bool = False,
                   clock: bool = False) -> TrialBatch:
    """Play one trial of ``episodes_per_trial`` episodes in every slot of ``env``.

    The env is reset once; an episode that ends (termination, or ``env.max_steps`` steps) is
    restarted by the env's auto-reset (:meth:`reset_done`) and counted; the GRU state carries
    on. A slot stops (``mask`` 0) once its counter reaches ``episodes_per_trial``.

    Args:
        model: the recurrent policy (its action kind must match ``env``'s).
        env: batched env; its ``N × E`` slots are the trials.
        episodes_per_trial: episodes per trial (1 for a bandit trial).
        generator: source of env noise and action samples.
        chunk_length: record the hidden state every this many steps (0: only at the start).
        greedy: take the most likely action (the Gaussian's mean) instead of sampling.
        expected_rewards: also record every step's expected reward, ``env.mean_reward``
            of the action in the state it was taken in (``RL2Config.reward_signal``).
        clock: append the trial clock to every observation (``RL2Config.trial_clock``; the
            model's ``obs_dim`` counts it).

    """
    if env.discrete != model.discrete:
        raise ValueError(f"collect_trials: the env's actions are "
                         f"{'discrete' if env.discrete else 'continuous'}, the policy's not")
    mean_reward = getattr(env, "mean_reward", None) if expected_rewards else None
    if expected_rewards and mean_reward is None:
        raise ValueError(f"collect_trials: {type(env).__name__} has no mean_reward, so its "
                         "expected rewards are unknown; learn from the sampled ones")
    obs = env.reset(generator).float()
    n, e = env.num_tasks, env.num_envs
    b, device = n * e, obs.device
    episode = torch.zeros(n, e, dtype=torch.long, device=device)
    if clock:
        obs = with_clock(obs, episode, episodes_per_trial)
    horizon = episodes_per_trial * env.max_steps
    chunk = chunk_length if chunk_length > 0 else horizon
    h = model.initial_state(b, device)
    prev_action = model.no_action((n, e), device)
    prev_reward = torch.zeros(n, e, device=device)
    prev_done = torch.zeros(n, e, device=device)
    prev_obs = torch.zeros_like(obs)
    age = torch.zeros(n, e, dtype=torch.long, device=device)
    alive = torch.ones(n, e, dtype=torch.bool, device=device)
    buf: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "inputs", "actions", "log_probs", "values", "rewards", "dones", "mask", "episode",
        "states", "expected")}
    for t in range(horizon):
        if t % chunk == 0:
            buf["states"].append(h)
        x = model.step_input(obs, prev_action, prev_reward, prev_done, prev_obs)
        out, value, h = model(x.reshape(b, 1, -1), h)
        out = out.reshape(n, e, -1)
        actions = model.sample(out, generator, greedy)
        expected = None if mean_reward is None else mean_reward(actions)  # before the step
        _, reward, terminated = env.step(actions)
        age += 1
        done = terminated | (age >= env.max_steps)
        live = alive.float()
        if expected is not None:
            buf["expected"].append(expected.float() * live)
        for key, val in (("inputs", x), ("actions", actions),
                         ("log_probs", model.log_prob(out, actions)),
                         ("values", value.reshape(n, e)), ("rewards", reward.float() * live),
                         ("dones", done.float() * live), ("mask", live), ("episode", episode)):
            buf[key].append(val)
        episode = episode + (done & alive).long()
        alive = alive & (episode < episodes_per_trial)
        age.masked_fill_(done, 0)
        prev_obs = obs
        obs = env.reset_done(generator, ended=done).float()
        if clock:
            obs = with_clock(obs, episode, episodes_per_trial)
        prev_action, prev_reward, prev_done = actions, reward.float(), done.float()
        if not alive.any():
            break

    def stack(key: str) -> torch.Tensor:
        out = torch.stack(buf[key], dim=2)  # [N, E, T, ...]
        return out.reshape(b, *out.shape[2:])

    return TrialBatch(stack("inputs"), stack("actions"), stack("log_probs"), stack("values"),
                      stack("rewards"), stack("dones"), stack("mask"), stack("episode"),
                      torch.stack(buf["states"], dim=1), n, chunk,
                      stack("expected") if expected_rewards else None)


# --------------------------------------------------------------------------------------------
# PPO with truncated BPTT
# --------------------------------------------------------------------------------------------

def to_chunks(inputs: torch.Tensor, chunk_states: torch.Tensor, length: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``inputs [B, T, D]`` into ``C = ceil(T / length)`` chunks ``[B·C, length, D]``.

    The last chunk is zero-padded; each chunk's starting state comes from ``chunk_states
    [B, C, hidden]`` (returned ``[B·C, hidden]``, detached).
    """
    b, steps, d = inputs.shape
    c = chunk_states.shape[1]
    if c != math.ceil(steps / length):
        raise ValueError(f"chunk_states has {c} chunks; {steps} steps in chunks of {length} "
                         f"need {math.ceil(steps / length)}")
    x = F.pad(inputs, (0, 0, 0, c * length - steps)).reshape(b * c, length, d)
    return x, chunk_states.reshape(b * c, -1).detach()


def from_chunks(y: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
    """Undo :func:`to_chunks` on per-step outputs ``[B·C, length, ...]`` → ``[B, T, ...]``."""
    return y.reshape(batch, -1, *y.shape[2:])[:, :steps]


def chunked_forward(model: RL2Policy, inputs: torch.Tensor, chunk_states: torch.Tensor,
                    length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head outputs ``[B, T, code_dim]`` and values ``[B, T]`` by truncated BPTT.

    The ``T`` steps are cut into ``C = ceil(T / length)`` chunks; chunk ``c`` starts from
    ``chunk_states[:, c]`` (recorded while acting, no gradient), so gradients flow back at most
    ``length`` steps, and the chunks run as one batch of ``B·C`` sequences.
    """
    b, steps, _ = inputs.shape
    out, values, _ = model(*to_chunks(inputs, chunk_states, length))
    return from_chunks(out, b, steps), from_chunks(values, b, steps)


def ppo_loss(model: RL2Policy, batch: TrialBatch, idx: torch.Tensor, adv: torch.Tensor,
             returns: torch.Tensor, config: RL2Config, critic: RL2Critic | None = None,
             critic_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss on the trials ``idx`` of ``batch``.

    Clipped surrogate + ``value_coef`` · value MSE − ``entropy_coef`` · entropy, all averaged
    over the valid steps; returns the loss and its parts as floats. The values are the policy's
    head, or ``critic``'s when given, on ``critic_inputs``: its inputs ``[B, T, D]`` and its
    states at the chunk starts ``[B, C, hidden]`` (:meth:`RL2Critic.trial_values`).
    """
    mask = batch.mask[idx]
    out, values = chunked_forward(model, batch.inputs[idx], batch.chunk_states[idx],
                                  batch.chunk_length)
    if critic is not None:
        if critic_inputs is None:
            raise ValueError("ppo_loss: a critic needs its critic_inputs")
        x, states = critic_inputs[0][idx], critic_inputs[1][idx]
        values = from_chunks(critic(*to_chunks(x, states, batch.chunk_length)), len(idx),
                             x.shape[1])
    logp = model.log_prob(out, batch.actions[idx])
    a = adv[idx]
    if config.normalize_advantages:
        count = mask.sum().clamp(min=1)
        mean = (a * mask).sum() / count
        std = (((a - mean) * mask).square().sum() / count).sqrt()
        a = (a - mean) / (std + 1e-8)
    policy_loss = clipped_surrogate_loss(logp, batch.log_probs[idx], a, mask, config.clip_eps)
    count = mask.sum().clamp(min=1)
    value_loss = ((values - returns[idx]).square() * mask).sum() / count
    entropy = (model.entropy(out) * mask).sum() / count
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    return loss, {"policy_loss": float(policy_loss.detach()),
                  "value_loss": float(value_loss.detach()),
                  "entropy": float(entropy.detach())}


def model_for(family: _TaskFamily, hidden_size: int, generator: torch.Generator,
              init_std: float = 0.5, inputs: str = "paper", head: str = "linear",
              clock: bool = False) -> RL2Policy:
    """An :class:`RL2Policy` sized for ``family``'s observations and actions.

    A continuous family's Gaussian starts with standard deviation ``init_std`` times half the
    widest action range; ``inputs`` is the step encoding (discrete families), ``head`` the
    kind of heads; ``clock`` counts the trial clock in the observation.
    """
    env = probe_env(family)  # type: ignore[arg-type]
    obs_dim = env.obs_dim + int(clock)
    if env.discrete:
        return RL2Policy(obs_dim, env.num_actions, hidden_size, generator, inputs=inputs,
                         head=head)
    return RL2Policy(obs_dim, 0, hidden_size, generator, action_dim=env.action_dim,
                     action_low=env.action_low, action_high=env.action_high,
                     init_std=init_std * half_action_range(env), inputs=inputs, head=head)


TaskSampler = Callable[[], list[dict[str, Any]]]
"""Draws one meta-batch of tasks."""


class RL2:
    """Meta-trains an :class:`RL2Policy` on a task family (discrete or continuous actions).

    Args:
        family: samples tasks and builds batched envs.
        obs_dim, num_actions: the family's observation size and number of discrete actions;
            ``None`` reads both (and a continuous family's action size and bounds) from an env
            of ``family``. The model's ``obs_dim`` is one more with ``config.trial_clock``.
        episodes_per_trial: episodes per trial (bandit: 1; tabular MDP: ``num_episodes``).
        config: hyperparameters.
        seed: seeds the network, the training tasks and every rollout.
        device: torch device.
        task_sampler: draws each iteration's tasks (default: ``meta_batch_size`` fresh tasks
            from ``family.sample``; the pipeline draws from its training task set).

    """

    def __init__(self, family: _TaskFamily, obs_dim: int | None, num_actions: int | None,
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
        if config.reward_signal == "expected":
            env = probe_env(family)  # type: ignore[arg-type]
            check(hasattr(env, "mean_reward"), "reward_signal", config.reward_signal,
                  f"{type(env).__name__} has no mean_reward (its expected rewards are "
                  "unknown); use 'sampled'")
        self.critic: RL2Critic | None = None
        if config.critic != "shared":
            extra = 0
            if config.critic == "task":  # the feature count, from a task drawn aside
                probe = family.sample(1, np.random.default_rng(0))[0]
                extra = len(task_features(family, probe))  # type: ignore[arg-type]
            self.critic = RL2Critic(self.model.input_dim + extra, config.hidden_size,
                                    init).to(device)
        params = list(self.model.parameters())
        if self.critic is not None:
            params += list(self.critic.parameters())
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5)
        self.iteration = 0
        """Training iterations run so far (:meth:`train_step` calls, resumed ones included)."""
        self.sample_tasks: TaskSampler = task_sampler or (
            lambda: family.sample(config.meta_batch_size, self.rng))

    def training_state(self) -> dict[str, Any]:
        """What continuing this training later needs: weights, optimiser and random states.

        :meth:`load_training_state` on an ``RL2`` built with the same family, config and seed
        then trains on exactly as this one would have (same tasks, rollouts and minibatches).
        The default task sampler's numpy state is included; a custom ``task_sampler``'s is not.
        """
        return {"model": self.model.state_dict(),
                "critic": None if self.critic is None else self.critic.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "rng": self.rng.bit_generator.state,
                "iteration": self.iteration}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`training_state` (same family, config and seed)."""
        if (state["critic"] is None) != (self.critic is None):
            raise ValueError("training state: its critic does not match critic="
                             f"{self.config.critic!r}")
        self.model.load_state_dict(state["model"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.rng.bit_generator.state = state["rng"]
        self.iteration = int(state.get("iteration", 0))

    def critic_inputs(self, batch: TrialBatch, tasks: list[dict[str, Any]]) -> torch.Tensor:
        """What the separate critic reads: the step inputs, plus the task features (``task``)."""
        if self.config.critic == "separate":
            return batch.inputs
        feats = torch.tensor([task_features(self.family, t)  # type: ignore[arg-type]
                              for t in tasks], dtype=batch.inputs.dtype,
                             device=batch.inputs.device)
        per_trial = feats.repeat_interleave(batch.inputs.shape[0] // len(tasks), dim=0)
        steps = batch.inputs.shape[1]
        return torch.cat([batch.inputs, per_trial.unsqueeze(1).expand(-1, steps, -1)], dim=-1)

    def train_step(self) -> dict[str, float]:
        """One iteration: a meta-batch of tasks, one trial per slot, ``num_epochs`` PPO epochs.

        Returns PPO's loss parts, ``trial_return`` (mean total reward of a trial) and
        ``first_episode_return`` / ``last_episode_return`` (mean return of a trial's first and
        last episode: the in-context adaptation).
        """
        c = self.config
        lr = c.lr_drop_to if 0 < c.lr_drop_at <= self.iteration else c.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        tasks = self.sample_tasks()
        env = self.family.make_env(tasks, c.trials_per_task, device=self.device)
        batch = collect_trials(self.model, env, self.episodes_per_trial, self.generator,
                               c.bptt_length, expected_rewards=c.reward_signal == "expected",
                               clock=c.trial_clock)
        values, critic_inputs = batch.values, None
        if self.critic is not None:
            critic_x = self.critic_inputs(batch, tasks)
            values, states = self.critic.trial_values(critic_x, batch.chunk_length)
            critic_inputs = (critic_x, states)
        signal = batch.rewards if batch.expected_rewards is None else batch.expected_rewards
        adv, returns = gae(signal * c.reward_scale, values, c.discount,
                           c.gae_lambda, batch.mask)
        b = batch.inputs.shape[0]
        size = math.ceil(b / c.num_minibatches)
        stats: dict[str, float] = {}
        for _ in range(c.num_epochs):
            order = torch.randperm(b, generator=self.generator, device=self.generator.device)
            for start in range(0, b, size):
                idx = order[start:start + size].to(batch.inputs.device)
                loss, stats = ppo_loss(self.model, batch, idx, adv, returns, c, self.critic,
                                       critic_inputs)
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
                self.optimizer.step()
        per_episode = batch.episode_returns(self.episodes_per_trial).mean(0)
        stats["trial_return"] = float(batch.trial_returns.mean())
        stats["first_episode_return"] = float(per_episode[0])
        stats["last_episode_return"] = float(per_episode[-1])
        stats["lr"] = lr
        self.iteration += 1
        return stats

    def evaluate(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                 greedy: bool = False, family: _TaskFamily | None = None,
                 episodes_per_trial: int | None = None) -> np.ndarray:
        """Total reward of one trial on every task (a fresh hidden state per trial), ``[N]``.

        ``family`` / ``episodes_per_trial`` score the policy on trials other than those it
        trains on (default: the training family and trial length), e.g. a bandit family with
        more pulls per trial: its observation is the fraction of the trial played (``t / n``),
        so the policy plays the longer trial on the same schedule, stretched; a tabular-MDP
        policy sees no clock and plays on for as many episodes as asked, unless it has the
        trial clock (``RL2Config.trial_clock``), which then runs over the ``n`` episodes asked.
        """
        env = (family or self.family).make_env(tasks, 1, device=self.device)
        batch = collect_trials(self.model, env, episodes_per_trial or self.episodes_per_trial,
                               generator, greedy=greedy, clock=self.config.trial_clock)
        return batch.trial_returns[:, 0].double().cpu().numpy()

    def learner(self) -> RL2Learner:
        """The trained policy on the meta-learner contract (a copy of the current weights)."""
        return RL2Learner(copy.deepcopy(self.model).eval(),
                          trial_length=self.episodes_per_trial if self.config.trial_clock
                          else None)


# --------------------------------------------------------------------------------------------
# The meta-learner contract: "adapting" is carrying the hidden state into the next episode
# --------------------------------------------------------------------------------------------

class RecurrentAct:
    """The acting function of an :class:`RL2Policy` inside one batched episode.

    Built from a context (hidden state and previous observation/action/reward/done per slot, see
    :meth:`RL2Learner.initial_params`); each call advances the GRU one step, and
    :func:`metarl.sampler.rollout` reports every step's reward and end flag through
    :meth:`observe`. A slot whose episode has ended keeps its state. With ``trial_length``
    the trial clock (the context's ``episode`` over it) is appended to every observation.
    """

    def __init__(self, model: RL2Policy, context: Params, greedy: bool = False,
                 trial_length: int | None = None) -> None:
        self.model, self.greedy = model, greedy
        self.context = context
        self.trial_length = trial_length
        self.episode: torch.Tensor | None = None
        self.h: torch.Tensor | None = None
        self.finished: torch.Tensor | None = None

    def __call__(self, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Actions for ``obs [N, E, obs_dim]``; advances the hidden state of running slots."""
        n, e = obs.shape[:2]
        if self.h is None:  # broadcast the context's slots ([N, 1] at a trial's start)
            ctx = {k: v.to(obs.device).expand(n, e, *v.shape[2:]).clone()
                   for k, v in self.context.items()}
            self.h, self.prev_action = ctx["h"], ctx["prev_action"]
            self.prev_reward, self.prev_done = ctx["prev_reward"], ctx["prev_done"]
            self.prev_obs = ctx["prev_obs"]
            self.episode = ctx.get("episode")
            self.finished = torch.zeros(n, e, dtype=torch.bool, device=obs.device)
        assert self.finished is not None
        if self.trial_length is not None:
            if self.episode is None:
                raise ValueError("RecurrentAct: a clocked policy needs the context's 'episode' "
                                 "(RL2Learner.initial_params gives it)")
            obs = with_clock(obs.float(), self.episode, self.trial_length)
        x = self.model.step_input(obs, self.prev_action, self.prev_reward, self.prev_done,
                                  self.prev_obs)
        out, _, h = self.model(x.reshape(n * e, 1, -1), self.h.reshape(n * e, -1))
        actions = self.model.sample(out.reshape(n, e, -1), generator, self.greedy)
        keep = self.finished.unsqueeze(-1)
        self.h = torch.where(keep, self.h, h.reshape(n, e, -1))
        self.prev_action = torch.where(keep if not self.model.discrete else self.finished,
                                       self.prev_action, actions)
        self.prev_obs = torch.where(keep, self.prev_obs, obs.to(self.prev_obs.dtype))
        return actions

    def observe(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """The step's reward and whether it ended the episode (termination or horizon)."""
        assert self.finished is not None
        self.prev_reward = torch.where(self.finished, self.prev_reward, reward.float())
        self.prev_done = torch.where(self.finished, self.prev_done, done.float())
        self.finished = self.finished | done


class RL2Learner:
    """An :class:`RL2Policy` on the :class:`~metarl.algos.base.MetaLearner` contract.

    Its "parameters" are a per-slot *context*: the GRU state ``h [N, E, hidden]`` and the
    previous observation, action, reward and done flag. ``adapt`` replays an episode through
    the GRU (the same steps the acting function took) and returns the context at its end, so
    the next episode continues the same trial: the adaptation curve of the evaluator is the
    return of episode 1, 2, ... of a trial, each slot of a task being one trial.

    ``trial_length`` (a model trained with ``RL2Config.trial_clock``): the trial's episodes;
    the context then also counts the episodes played (``episode``), and the observations
    the model reads carry the clock ``episode / trial_length``.
    """

    def __init__(self, model: RL2Policy, greedy: bool = False,
                 trial_length: int | None = None) -> None:
        check(trial_length is None or (isinstance(trial_length, int) and trial_length >= 1),
              "trial_length", trial_length, "must be an integer >= 1 (or None: no clock)")
        self.model, self.greedy, self.trial_length = model, greedy, trial_length

    def initial_params(self, num_tasks: int) -> Params:
        """A fresh trial (``[N, 1, ...]``): zero state, no previous observation or action.

        The previous observation is zeros, the action "none", reward and done 0.
        """
        device = next(self.model.parameters()).device
        params = {"h": torch.zeros(num_tasks, 1, self.model.hidden_size, device=device),
                  "prev_obs": torch.zeros(num_tasks, 1, self.model.obs_dim, device=device),
                  "prev_action": self.model.no_action((num_tasks, 1), device),
                  "prev_reward": torch.zeros(num_tasks, 1, device=device),
                  "prev_done": torch.zeros(num_tasks, 1, device=device)}
        if self.trial_length is not None:
            params["episode"] = torch.zeros(num_tasks, 1, dtype=torch.long, device=device)
        return params

    def explore(self, params: Params) -> RecurrentAct:
        """Act from the context (sampling, unless built with ``greedy``)."""
        return RecurrentAct(self.model, params, self.greedy, self.trial_length)

    act = explore

    @torch.no_grad()
    def adapt(self, params: Params, episodes: EpisodeBatch) -> Params:
        """The context after ``episodes`` (one per slot), replayed through the GRU."""
        n, e, steps = episodes.mask.shape
        device = episodes.obs.device
        ctx = {k: v.to(device).expand(n, e, *v.shape[2:]) for k, v in params.items()}
        prev_action = torch.cat([ctx["prev_action"].unsqueeze(2), episodes.actions[:, :, :-1]],
                                dim=2)
        prev_reward = torch.cat([ctx["prev_reward"].unsqueeze(2), episodes.rewards[:, :, :-1]],
                                dim=2)
        prev_done = torch.cat([ctx["prev_done"].unsqueeze(2),
                               torch.zeros(n, e, steps - 1, device=device)], dim=2)
        obs = episodes.obs.float()
        if self.trial_length is not None:
            obs = with_clock(obs, ctx["episode"].unsqueeze(2).expand(n, e, steps),
                             self.trial_length)
        prev_obs = torch.cat([ctx["prev_obs"].unsqueeze(2).to(obs.dtype), obs[:, :, :-1]],
                             dim=2)
        x = self.model.step_input(obs, prev_action, prev_reward, prev_done, prev_obs)
        states, _ = self.model.encode(x.reshape(n * e, steps, -1), ctx["h"].reshape(n * e, -1))
        last = (episodes.mask.sum(-1).long() - 1).clamp(min=0)  # [N, E], the final step
        new = {"h": _at_step(states.reshape(n, e, steps, -1), last),
               "prev_obs": _at_step(obs, last),
               "prev_action": _at_step(episodes.actions, last),
               "prev_reward": _at_step(episodes.rewards, last),
               "prev_done": torch.ones(n, e, device=device)}
        if self.trial_length is not None:
            new["episode"] = ctx["episode"] + 1
        return new

    def serving_spec(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """The trial so far → the greedy action at each of its steps (see :meth:`serve`)."""
        m = self.model
        obs_dim = m.obs_dim - int(self.trial_length is not None)  # the clock is added here
        prev: TensorInfo
        out: TensorInfo
        if m.discrete:
            prev, out = ("prev_action", "int64", (-1, -1)), ("action", "int64", (-1, -1))
        else:
            prev = ("prev_action", "float32", (-1, -1, m.action_dim))
            out = ("action", "float32", (-1, -1, m.action_dim))
        return ([("obs", "float32", (-1, -1, obs_dim)), prev,
                 ("prev_reward", "float32", (-1, -1)), ("prev_done", "float32", (-1, -1))],
                [out])

    def serve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Greedy actions at every step of the trials given, the GRU run from a fresh state.

        ``obs [B, T, obs_dim]``, ``prev_action [B, T]`` (int64, ``-1`` at the trial's first
        step; continuous: ``[B, T, action_dim]``, zeros), ``prev_reward [B, T]``, ``prev_done
        [B, T]`` (1.0 where the previous step ended an episode). A clocked model counts the
        trial's episodes from ``prev_done``.
        """
        model = self.model
        obs = torch.as_tensor(np.asarray(inputs["obs"], dtype=np.float32))
        act_dtype = np.int64 if model.discrete else np.float32
        prev_action = torch.as_tensor(np.asarray(inputs["prev_action"], dtype=act_dtype))
        prev_reward = torch.as_tensor(np.asarray(inputs["prev_reward"], dtype=np.float32))
        prev_done = torch.as_tensor(np.asarray(inputs["prev_done"], dtype=np.float32))
        if self.trial_length is not None:  # the episodes the trial has played
            obs = with_clock(obs, prev_done.cumsum(-1), self.trial_length)
        # the observation each previous action was taken in: the previous step's
        prev_obs = torch.cat([torch.zeros_like(obs[..., :1, :]), obs[..., :-1, :]], dim=-2)
        with torch.no_grad():
            x = model.step_input(obs, prev_action, prev_reward, prev_done, prev_obs)
            out, _, _ = model(x, model.initial_state(x.shape[0]))
            actions = model.sample(out, torch.Generator(), greedy=True)
        return actions.numpy().astype(act_dtype)


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


def _at_step(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``x [N, E, T, ...]`` at step ``step [N, E]`` of each slot: ``[N, E, ...]``."""
    trailing = x.shape[3:]
    index = step.reshape(*step.shape, 1, *(1 for _ in trailing))
    return x.gather(2, index.expand(*step.shape, 1, *trailing)).squeeze(2)


def train_rl2(family: _TaskFamily, train_set: TaskSet, config: RL2Config,
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
                               for k in ("policy_loss", "value_loss", "entropy")}}, step=it)
        if hook is not None:
            hook(it, algo.learner())

    run_loop(step, num_iterations, lambda: {"rl2": algo.training_state(),
                                            "tasks": draw.state()}, set_state, resume)
    return algo


def _train(config: RL2Config, ctx: TrainContext) -> RL2:
    return train_rl2(ctx.family, ctx.train_set, config, ctx.episodes_per_trial,  # type: ignore[arg-type]
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
