"""RL²: recurrent inputs, hidden-state lifetime, truncated BPTT, GAE, determinism, learning."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from metarl.algos.rl2 import RL2, RL2Config, RL2Policy, chunked_forward, collect_trials
from metarl.config import ConfigError
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig, BatchedBandit
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from metarl.envs.wrappers import TrialClock
from metarl.history import StepEncoder
from metarl.returns import gae

torch.set_num_threads(1)

PAPER = {"hidden_size": 128, "meta_batch_size": 64, "gae_lambda": 0.3, "lr": 1e-3,
         "bptt_length": 0, "reward_scale": 1.0}
"""The paper's PPO settings these tests were written against (RL2Config's own defaults are
the pipeline's)."""


def _config(**changes: Any) -> RL2Config:
    return RL2Config(**{**PAPER, **changes})


def step_input(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
               prev_done: torch.Tensor, num_actions: int, inputs: str = "paper",
               prev_obs: torch.Tensor | None = None) -> torch.Tensor:
    encoder = StepEncoder(obs.shape[-1], num_actions, encoding=inputs)
    return encoder(obs, prev_action, prev_reward, prev_done,
                   torch.zeros_like(obs) if prev_obs is None else prev_obs)


def test_gae_hand_computed() -> None:
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 1.0, 0.0])
    # deltas: 1 + .5*1 - .5 = 1, 0 + .5*0 - 1 = -1, 2 + 0 - 0 = 2; A_t = delta_t + .25 A_{t+1}
    adv, ret = gae(rewards, values, discount=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([0.875, -0.5, 2.0]))
    torch.testing.assert_close(ret, torch.tensor([1.375, 0.5, 2.0]))
    # padding after step 1: step 1 is terminal, step 2 gets nothing
    adv, ret = gae(rewards, values, 0.5, 0.5, mask=torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(adv, torch.tensor([0.75, -1.0, 0.0]))
    torch.testing.assert_close(ret, torch.tensor([1.25, 0.0, 0.0]))


def test_step_input_layout() -> None:
    x = step_input(torch.tensor([[0.5]]), torch.tensor([2]), torch.tensor([1.5]),
                   torch.tensor([1.0]), num_actions=3)
    torch.testing.assert_close(x, torch.tensor([[0.5, 0.0, 0.0, 1.0, 1.5, 1.0]]))
    start = step_input(torch.tensor([[0.0]]), torch.tensor([-1]), torch.tensor([0.0]),
                       torch.tensor([0.0]), num_actions=3)
    torch.testing.assert_close(start, torch.zeros(1, 6))


def test_step_input_codes_put_the_reward_at_its_action_and_pair() -> None:
    args = (torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1]), torch.tensor([-2.0]),
            torch.tensor([0.0]))
    paper = step_input(*args, num_actions=2)
    torch.testing.assert_close(paper, torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, -2.0, 0.0]]))
    reward = step_input(*args, num_actions=2, inputs="reward_code")
    torch.testing.assert_close(reward[:, 7:], torch.tensor([[0.0, -2.0]]))
    # the previous action (1) was taken in state 2 of 3: pair index 2 · 2 + 1 = 5
    pair = step_input(*args, num_actions=2, inputs="pair_code",
                      prev_obs=torch.tensor([[0.0, 0.0, 1.0]]))
    assert pair.shape == (1, 7 + 6 + 6)
    torch.testing.assert_close(pair[:, :7], paper)
    torch.testing.assert_close(pair[:, 7:13], torch.eye(6)[5:6])
    torch.testing.assert_close(pair[:, 13:], -2.0 * torch.eye(6)[5:6])
    start = step_input(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([-1]), torch.tensor([0.0]),
                       torch.tensor([0.0]), num_actions=2, inputs="pair_code",
                       prev_obs=torch.zeros(1, 3))
    torch.testing.assert_close(start[:, 3:], torch.zeros(1, 16))  # nothing before the trial


def test_pair_code_of_a_trial_names_the_state_each_reward_was_earned_in() -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=3))
    env = family.make_env(family.sample(4, np.random.default_rng(0)), 2)
    model = RL2Policy(10, 5, 16, torch.Generator().manual_seed(0), inputs="pair_code")
    batch = collect_trials(model, env, 3, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (8, 30, 10 + 5 + 2 + 100)
    states = batch.inputs[..., :10].argmax(-1)  # [B, T]
    for t in range(1, 30):  # across the episode boundaries (t = 10, 20) too
        pair = states[:, t - 1] * 5 + batch.actions[:, t - 1]
        code = batch.inputs[:, t, 17:67]
        torch.testing.assert_close(code, torch.eye(50)[pair])
        torch.testing.assert_close(batch.inputs[:, t, 67:],
                                   code * batch.rewards[:, t - 1].unsqueeze(-1))
    assert batch.dones[:, 9].eq(1).all() and (states[:, 10] == 0).all()  # restarts in state 0
    assert (states[:, 9] != 0).any()  # the pair after the restart is the last episode's


def test_per_action_codes_need_discrete_actions() -> None:
    from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig

    with pytest.raises(ConfigError, match=r"inputs.*'reward_code'.*discrete"):
        RL2(Nav2DFamily(Nav2DFamilyConfig(max_steps=4)), None, None, 1,
            _config(inputs="reward_code"), seed=0)
    with pytest.raises(ConfigError, match=r"inputs.*'counts'"):
        _config(inputs="counts")


def test_bilinear_heads_read_the_gru_state_per_observation() -> None:
    model = RL2Policy(3, 2, 8, torch.Generator().manual_seed(0), inputs="pair_code",
                      head="bilinear")
    linear = RL2Policy(3, 2, 8, torch.Generator().manual_seed(0), inputs="pair_code")
    # a linear-head network has only the paper's parameters, drawn as before
    assert set(linear.state_dict()) == {k for k in model.state_dict() if "_obs" not in k}
    for key, value in linear.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    states = torch.tensor([[0, 2, 1, 2]])
    x = torch.cat([torch.nn.functional.one_hot(states, 3).float(),
                   torch.randn(1, 4, model.input_dim - 3, generator=torch.Generator()
                               .manual_seed(1))], dim=-1)
    h = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    logits, values, _ = model(x, h)
    z, _ = model.encode(x, h)
    assert model.pi_obs is not None and model.v_obs is not None
    w_pi, w_v = model.pi_obs.weight, model.v_obs.weight  # [out, obs, hidden]
    for t, s in enumerate(states[0].tolist()):  # one-hot state s: the head W[:, s] z
        torch.testing.assert_close(logits[0, t], model.pi(z[0, t]) + w_pi[:, s] @ z[0, t])
        torch.testing.assert_close(values[0, t], (model.v(z[0, t]) + w_v[:, s] @ z[0, t])[0])
    with torch.no_grad():  # the bilinear terms are what differs from the linear heads
        model.pi_obs.weight.zero_()
        model.v_obs.weight.zero_()
    torch.testing.assert_close(model(x, h)[0], linear(x, h)[0])
    with pytest.raises(ConfigError, match=r"head.*'mlp'"):
        _config(head="mlp")


def test_bilinear_term_equals_torchs_bilinear_for_any_observation() -> None:
    from metarl.recurrent import bilinear

    g = torch.Generator().manual_seed(3)
    obs, z = torch.randn(6, 4, generator=g), torch.randn(6, 7, generator=g)
    weight = torch.randn(5, 4, 7, generator=g, requires_grad=True)
    ours = bilinear(obs, z, weight)
    theirs = torch.nn.functional.bilinear(obs, z, weight)
    torch.testing.assert_close(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), weight)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), weight)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert not torch.allclose(ours, torch.zeros_like(ours))


def _model(obs_dim: int, num_actions: int, seed: int = 0, inputs: str = "paper") -> RL2Policy:
    return RL2Policy(obs_dim, num_actions, 16, torch.Generator().manual_seed(seed),
                     inputs=inputs)


def test_prev_action_reward_done_wired_on_two_step_trial() -> None:
    # A trial of two 1-pull episodes on a deterministic 3-armed bandit: arm 0 always pays 1.
    probs = torch.tensor([[1.0, 0.0, 0.0]] * 8)
    env = BatchedBandit(probs, num_envs=2, num_pulls=1)
    batch = collect_trials(_model(1, 3), env, episodes_per_trial=2,
                           generator=torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (16, 2, 6)
    torch.testing.assert_close(batch.inputs[:, 0], torch.zeros(16, 6))  # trial start
    a0 = batch.actions[:, 0]
    r0 = (a0 == 0).float()
    expected = torch.cat([torch.zeros(16, 1),  # obs: t/n = 0 again (new episode)
                          torch.nn.functional.one_hot(a0, 3).float(),
                          r0.unsqueeze(1), torch.ones(16, 1)], dim=1)
    torch.testing.assert_close(batch.inputs[:, 1], expected)
    torch.testing.assert_close(batch.rewards, torch.stack([r0, (batch.actions[:, 1] == 0)
                                                           .float()], 1))
    torch.testing.assert_close(batch.dones, torch.ones(16, 2))
    torch.testing.assert_close(batch.mask, torch.ones(16, 2))
    assert {int(a) for a in a0} == {0, 1, 2}  # the check saw every arm


def test_hidden_state_persists_across_episodes_and_resets_per_trial() -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_states=4, num_actions=3, horizon=3))
    tasks = family.sample(3, np.random.default_rng(0))
    model = _model(4, 3)
    generator = torch.Generator().manual_seed(1)
    batch = collect_trials(model, family.make_env(tasks, 2), episodes_per_trial=3,
                           generator=generator, chunk_length=1)
    assert batch.inputs.shape[1] == 9
    states = batch.chunk_states  # hidden state before every step
    torch.testing.assert_close(states[:, 0], torch.zeros(6, 16))
    # episode boundaries (t = 3, 6) are flagged in the input but the state carries on: it is
    # exactly the GRU run over the whole trial so far from zeros, not a fresh zero state
    assert bool((batch.inputs[:, [3, 6], -1] == 1).all())
    assert bool((batch.inputs[:, [1, 2, 4, 5, 7, 8], -1] == 0).all())
    with torch.no_grad():
        out, _ = model.gru(batch.inputs, torch.zeros(1, 6, 16))
    torch.testing.assert_close(states[:, 3], out[:, 2])
    torch.testing.assert_close(states[:, 6], out[:, 5])
    assert float(states[:, 3].abs().min(-1).values.min()) > 0
    # a new trial starts from zeros again, even on the same env object
    again = collect_trials(model, family.make_env(tasks, 2), 3, generator, chunk_length=4)
    torch.testing.assert_close(again.chunk_states[:, 0], torch.zeros(6, 16))


def test_truncated_bptt_matches_rollout_and_cuts_gradients() -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_states=4, num_actions=3, horizon=3))
    env = family.make_env(family.sample(2, np.random.default_rng(0)), 2)
    model = _model(4, 3)
    batch = collect_trials(model, env, 3, torch.Generator().manual_seed(0), chunk_length=4)
    assert batch.chunk_states.shape == (4, 3, 16)  # ceil(9 / 4) chunks
    inputs = batch.inputs.clone().requires_grad_()
    logits, values = chunked_forward(model, inputs, batch.chunk_states, 4)
    logp = torch.log_softmax(logits, -1).gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, batch.log_probs)
    torch.testing.assert_close(values, batch.values)
    (grad,) = torch.autograd.grad(values[:, 8].sum(), inputs)
    assert float(grad[:, :8].abs().max()) == 0.0  # step 8 is in chunk [8, 12): no gradient back
    assert float(grad[:, 8].abs().max()) > 0.0


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="bptt_length"):
        _config(bptt_length=-1)
    with pytest.raises(ConfigError, match="gae_lambda"):
        _config(gae_lambda=1.5)
    with pytest.raises(ConfigError, match=r"inputs.*'counts'"):
        _config(inputs="counts")
    with pytest.raises(ConfigError, match=r"lr_drop_at.*-5"):
        _config(lr_drop_at=-5)
    with pytest.raises(ConfigError, match=r"lr_drop_to.*0"):
        _config(lr_drop_at=10, lr_drop_to=0.0)


SMALL = _config(hidden_size=16, meta_batch_size=8, trials_per_task=2, num_epochs=2,
                  num_minibatches=2, bptt_length=4)


def test_same_seed_same_parameters_after_two_iterations() -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=2, horizon=5))

    def trained(seed: int) -> dict[str, torch.Tensor]:
        algo = RL2(family, 10, 5, 2, SMALL, seed=seed)
        algo.train_step()
        algo.train_step()
        return algo.model.state_dict()

    first, second, other = trained(3), trained(3), trained(4)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_training_resumed_from_its_state_goes_on_exactly_as_uninterrupted(
        tmp_path: Any) -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=2, horizon=5))
    config = SMALL
    straight = RL2(family, None, None, 2, config, seed=3)
    for _ in range(4):
        straight.train_step()
    first = RL2(family, None, None, 2, config, seed=3)
    first.train_step()
    first.train_step()
    torch.save(first.training_state(), tmp_path / "state.pt")
    resumed = RL2(family, None, None, 2, config, seed=3)   # a fresh process would build this
    resumed.load_training_state(torch.load(tmp_path / "state.pt", weights_only=True))
    resumed.train_step()
    resumed.train_step()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # without the state, the same two steps land elsewhere
    fresh = RL2(family, None, None, 2, config, seed=3)
    fresh.train_step()
    fresh.train_step()
    assert not all(torch.equal(a, b) for a, b in zip(straight.model.parameters(),
                                                      fresh.model.parameters(), strict=True))


def test_lr_drop_switches_the_rate_at_its_iteration_and_across_a_resume(tmp_path: Any) -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=2, horizon=5))
    config = dataclasses.replace(SMALL, lr=3e-3, lr_drop_at=2, lr_drop_to=1e-3)
    straight = RL2(family, None, None, 2, config, seed=3)
    assert [straight.train_step()["lr"] for _ in range(4)] == [3e-3, 3e-3, 1e-3, 1e-3]
    assert straight.iteration == 4
    assert [g["lr"] for g in straight.optimizer.param_groups] == [1e-3]
    first = RL2(family, None, None, 2, config, seed=3)
    first.train_step()
    torch.save(first.training_state(), tmp_path / "state.pt")
    resumed = RL2(family, None, None, 2, config, seed=3)
    resumed.load_training_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.iteration == 1
    assert [resumed.train_step()["lr"] for _ in range(3)] == [3e-3, 1e-3, 1e-3]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    constant = RL2(family, None, None, 2, dataclasses.replace(config, lr_drop_at=0), seed=3)
    assert [constant.train_step()["lr"] for _ in range(4)] == [3e-3] * 4
    assert not all(torch.equal(a, b) for a, b in zip(straight.model.parameters(),
                                                      constant.model.parameters(), strict=True))


class FarApartBandits:
    """Two arms with probabilities {0.9, 0.1} in random order: easy to learn to exploit."""

    def __init__(self) -> None:
        self.inner = BanditFamily(BanditFamilyConfig(num_arms=2, num_pulls=10))

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        first = rng.random(num_tasks) < 0.5
        return [{"probs": [0.9, 0.1] if f else [0.1, 0.9]} for f in first]

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedBandit:
        return self.inner.make_env(tasks, num_envs, device)


def test_rl2_learns_an_easy_bandit() -> None:
    family = FarApartBandits()
    config = _config(hidden_size=32, meta_batch_size=32, trials_per_task=4, lr=3e-3)
    algo = RL2(family, 1, 2, 1, config, seed=0)
    test = family.sample(500, np.random.default_rng(123))
    before = algo.evaluate(test, torch.Generator().manual_seed(0)).mean()
    for _ in range(60):
        algo.train_step()
    after = algo.evaluate(test, torch.Generator().manual_seed(0)).mean()
    assert 4.6 < before < 5.4  # random: 10 pulls × 0.5
    assert after > 7.0, (before, after)  # optimal about 8.6 (one exploratory pull)


# --------------------------------------------------------------------------------------------
# The meta-learner contract: RL² in the evaluator, continuous actions, checkpoints
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs", ["paper", "reward_code", "pair_code"])
def test_adapt_replays_to_the_state_the_acting_function_reached(inputs: str) -> None:
    from metarl.algos.rl2 import RL2Learner
    from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
    from metarl.sampler import rollout

    family = CartPoleFamily(CartPoleFamilyConfig(max_steps=30))
    env = family.make_env(family.sample(3, np.random.default_rng(0)), 4)
    learner = RL2Learner(_model(4, 2, inputs=inputs))
    params = learner.initial_params(3)
    for episode in range(2):  # the second episode starts from the adapted context
        act = learner.explore(params)
        batch = rollout(act, env, torch.Generator().manual_seed(episode))
        lengths = batch.mask.sum(-1)
        assert lengths.min() < lengths.max()  # episodes of different lengths
        new = learner.adapt(params, batch)
        assert act.h is not None
        torch.testing.assert_close(new["h"], act.h)
        assert act.history is not None
        assert torch.equal(new["prev_action"], act.history.prev_action)
        torch.testing.assert_close(new["prev_reward"], act.history.prev_reward)
        torch.testing.assert_close(new["prev_obs"], act.history.prev_obs)
        # the observation of each slot's final step: the next episode's first pair code
        final = (lengths.long() - 1).reshape(3, 4, 1, 1).expand(-1, -1, 1, 4)
        torch.testing.assert_close(new["prev_obs"], batch.obs.gather(2, final).squeeze(2))
        torch.testing.assert_close(new["prev_done"], torch.ones(3, 4))
        assert float((new["h"] - params["h"]).abs().max()) > 0.0
        params = new


class ArmThatPays:
    """Two arms, one pays 1 always and the other 0, in random order; one pull per episode."""

    def __init__(self) -> None:
        self.inner = BanditFamily(BanditFamilyConfig(num_arms=2, num_pulls=1))
        self.name, self.max_steps = "arm_that_pays", 1

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        first = rng.random(num_tasks) < 0.5
        return [{"probs": [1.0, 0.0] if f else [0.0, 1.0]} for f in first]

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedBandit:
        return self.inner.make_env(tasks, num_envs, device)


def test_evaluator_sees_rl2_adapt_across_the_episodes_of_a_trial() -> None:
    # Episode 1 can only guess (0.5); from episode 2 on, the arm that paid (or the other one)
    # is known: the adaptation curve must rise to ~1, which needs the previous action and
    # reward carried from one episode to the next through `adapt`.
    from metarl.evaluation import adaptation_curve
    from metarl.tasks import TaskSet

    family = ArmThatPays()
    train = TaskSet(family.name, "train", 0, tuple(family.sample(64, np.random.default_rng(0))))
    config = _config(hidden_size=32, meta_batch_size=32, trials_per_task=8, lr=3e-3,
                       num_minibatches=4, entropy_coef=0.01)
    from metarl.algos.rl2 import train_rl2

    algo = train_rl2(family, train, config, 3, 80, seed=0)  # type: ignore[arg-type]
    test = family.sample(200, np.random.default_rng(1))
    curve = adaptation_curve(algo.learner(), family, test, 2, 4, seed=0)  # type: ignore[arg-type]
    means = curve.mean(1)
    assert 0.35 < means[0] < 0.65, means
    assert means[1] > 0.9 and means[2] > 0.9, means


def test_rl2_continuous_actions_train_and_act() -> None:
    from metarl.algos.rl2 import RL2Learner
    from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig
    from metarl.sampler import rollout

    family = Nav2DFamily(Nav2DFamilyConfig(max_steps=8))
    config = _config(hidden_size=16, meta_batch_size=4, trials_per_task=2, num_epochs=1,
                       num_minibatches=2, bptt_length=5, init_std=0.5)
    algo = RL2(family, None, None, 2, config, seed=0)
    model = algo.model
    assert not model.discrete and model.action_dim == 2 and model.input_dim == 2 + 2 + 2
    torch.testing.assert_close(model.log_std.exp(), torch.full((2,), 0.05))  # 0.5 × 0.1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = algo.train_step()
    assert np.isfinite(stats["trial_return"]) and stats["trial_return"] < 0
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    learner = algo.learner()
    assert isinstance(learner, RL2Learner)
    env = family.make_env(family.sample(2, np.random.default_rng(0)), 3)
    batch = rollout(learner.explore(learner.initial_params(2)), env, torch.Generator())
    assert batch.actions.shape == (2, 3, 8, 2) and batch.actions.dtype == torch.float32
    ctx = learner.adapt(learner.initial_params(2), batch)
    assert ctx["prev_action"].shape == (2, 3, 2)
    # the action code is the action clipped to the bounds
    x = model.encoder(torch.zeros(2), torch.tensor([5.0, -0.05]), torch.tensor(0.0),
                      torch.tensor(0.0), torch.zeros(2))
    torch.testing.assert_close(x[2:4], torch.tensor([0.1, -0.05]))


@pytest.mark.parametrize(("continuous", "inputs", "head"), [
    (False, "paper", "linear"), (True, "paper", "linear"), (False, "pair_code", "bilinear"),
    (True, "paper", "bilinear")])
def test_rl2_checkpoint_round_trip(tmp_path: Any, continuous: bool, inputs: str,
                                   head: str) -> None:
    from metarl.algos.rl2 import RL2Learner, model_for
    from metarl.algos.rl2 import checkpoint_config as rl2_config
    from metarl.checkpoint import load_learner, save_params
    from metarl.envs.nav2d import Nav2DFamily, Nav2DFamilyConfig

    family: Any = (Nav2DFamily(Nav2DFamilyConfig()) if continuous
                   else TabularMDPFamily(TabularMDPFamilyConfig()))
    model = model_for(family, 16, torch.Generator().manual_seed(1), inputs=inputs, head=head)
    save_params(dict(model.state_dict()), tmp_path / "rl2.pt")
    loaded = load_learner(tmp_path / "rl2.pt", rl2_config(model))
    assert isinstance(loaded, RL2Learner)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.model.action_low == model.action_low and loaded.model.inputs == inputs
    assert loaded.model.head == head
    if (inputs, head) == ("paper", "linear"):  # a config written before the two keys
        older = {k: v for k, v in rl2_config(model).items() if k not in ("inputs", "head")}
        old = load_learner(tmp_path / "rl2.pt", older)
        assert isinstance(old, RL2Learner)
        assert (old.model.inputs, old.model.head) == ("paper", "linear")
    wrong = rl2_config(model)
    wrong["hidden_size"] = 8
    with pytest.raises(ValueError, match="do not match the RL² architecture"):
        load_learner(tmp_path / "rl2.pt", wrong)


def _served_actions(learner: Any, batch: Any, obs_dim: int, trial: int) -> list[int]:
    """Serve each step of one recorded trial with the steps before it as the context."""
    obs = batch.inputs[trial, :, :obs_dim]
    steps = int(batch.mask[trial].sum())
    actions = []
    for t in range(steps):
        context = {"context_obs": obs[:t].flatten().numpy(),
                   "context_action": batch.actions[trial, :t].numpy(),
                   "context_reward": batch.rewards[trial, :t].numpy(),
                   "context_done": batch.dones[trial, :t].numpy()}
        actions.append(int(learner.serve({"obs": obs[t:t + 1].numpy(), **context})[0]))
    return actions


def test_served_rl2_model_acts_on_the_trial_so_far_as_in_training() -> None:
    # The registry's model takes the current observation and the trial so far as its context
    # (obs, action, reward, done per step); with pair_code it must rebuild the previous
    # observation itself and act as in training.
    from metarl.algos.rl2 import RL2Learner

    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=2))
    env = family.make_env(family.sample(3, np.random.default_rng(0)), 2)
    model = RL2Policy(10, 5, 16, torch.Generator().manual_seed(3), inputs="pair_code",
                      head="bilinear")
    batch = collect_trials(model, env, 2, torch.Generator().manual_seed(0), greedy=True)
    for trial in (0, 4):  # each step served with the trial before it as the context
        assert _served_actions(RL2Learner(model), batch, 10, trial) == batch.actions[
            trial].tolist()
    assert len(set(batch.actions.flatten().tolist())) > 1  # not one constant action
    with pytest.raises(ValueError, match="context_obs: 3 values, but context_reward has 1"):
        RL2Learner(model).serve({"obs": np.zeros((1, 10)), "context_obs": np.zeros(3),
                                 "context_action": [1], "context_reward": [0.5],
                                 "context_done": [0.0]})


def test_trial_clock_counts_the_episodes_a_trial_has_played() -> None:
    # RL2Config.trial_clock: the observation the GRU reads ends with episode / n, in
    # training, in evaluate (over the n asked), and the model's obs_dim counts it.
    from metarl.algos.rl2 import RL2

    family = TabularMDPFamily(TabularMDPFamilyConfig(horizon=2, num_episodes=3))
    config = _config(hidden_size=8, meta_batch_size=2, trials_per_task=2, num_minibatches=1,
                       inputs="pair_code", head="bilinear", trial_clock=True)
    algo = RL2(family, 10, 5, 3, config, seed=0)
    assert algo.model.obs_dim == 11
    env = family.make_env(family.sample(2, np.random.default_rng(0)), 2)
    batch = collect_trials(algo.model, TrialClock(env, 3), 3,  # type: ignore[arg-type]
                           torch.Generator().manual_seed(0))
    assert batch.inputs.shape[:2] == (4, 6)
    expected = torch.tensor([0, 0, 1, 1, 2, 2]) / 3
    torch.testing.assert_close(batch.inputs[:, :, 10], expected.expand(4, 6))
    assert torch.equal(batch.inputs[:, :, :10].sum(-1), torch.ones(4, 6))  # the one-hot state
    # the pair code's previous observation carries the previous step's clock
    pair = batch.inputs[:, 3, 11 + 5 + 2:11 + 5 + 2 + 55].reshape(4, 11, 5)
    torch.testing.assert_close(pair[:, 10].sum(-1), torch.full((4,), 1 / 3))
    algo.train_step()
    long = TabularMDPFamily(TabularMDPFamilyConfig(horizon=2, num_episodes=6))
    scores = algo.evaluate(long.sample(3, np.random.default_rng(1)),
                           torch.Generator().manual_seed(0), family=long, episodes_per_trial=6)
    assert scores.shape == (3,)
    with pytest.raises(ConfigError, match="trial_clock"):
        _config(trial_clock=1)  # type: ignore[arg-type]


def test_clocked_learner_acts_in_the_evaluator_and_registry_as_in_training(
        tmp_path: Any) -> None:
    # The contract (explore / adapt per episode), a checkpoint of it and the served model
    # must read the same clock as collect_trials: greedy, same noise, same actions.
    from metarl.algos.rl2 import RL2
    from metarl.algos.rl2 import checkpoint_config as rl2_config
    from metarl.checkpoint import load_learner, save_params
    from metarl.sampler import rollout

    family = TabularMDPFamily(TabularMDPFamilyConfig(horizon=3, num_episodes=4))
    config = _config(hidden_size=16, inputs="pair_code", head="bilinear", trial_clock=True)
    algo = RL2(family, 10, 5, 4, config, seed=3)
    tasks = family.sample(5, np.random.default_rng(0))
    batch = collect_trials(algo.model, algo.make_env(tasks, 1), 4,
                           torch.Generator().manual_seed(1), greedy=True)
    assert len(set(batch.actions.flatten().tolist())) > 1  # not one constant action
    save_params(dict(algo.model.state_dict()), tmp_path / "rl2.pt")
    saved = rl2_config(algo.model, algo_config={"trial_clock": True}, episodes_per_trial=4)
    for learner in (algo.learner(), load_learner(tmp_path / "rl2.pt", saved)):
        learner.greedy = True
        assert learner.trial_length == 4
        params, env = learner.initial_params(5), learner.wrap_env(family.make_env(tasks, 1))
        generator, actions = torch.Generator().manual_seed(1), []
        for episode in range(4):
            episodes = rollout(learner.explore(params), env, generator)
            actions.append(episodes.actions[:, 0])
            params = learner.adapt(params, episodes)
            assert isinstance(env, TrialClock) and env.episode is not None
            assert torch.equal(env.episode, torch.full((5, 1), episode))
        assert torch.equal(torch.cat(actions, dim=1), batch.actions)
    for trial in (0, 3):  # the served model counts the episodes from context_done
        assert _served_actions(algo.learner(), batch, 10, trial) == batch.actions[
            trial].tolist()
    with pytest.raises(ValueError, match="episodes_per_trial"):
        load_learner(tmp_path / "rl2.pt", {**saved, "episodes_per_trial": None})


@pytest.mark.slow
def test_pair_code_and_bilinear_heads_learn_tabular_mdps_faster() -> None:
    # Random 10-state MDPs, trials of 5 episodes (random play: 50). In 40 iterations the
    # paper's encoding and heads barely move (51.3); with the reward of each (s, a) pair in its
    # own input and a head per state the policy already keeps the pairs that paid (55.4).
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=5))
    test = family.sample(500, np.random.default_rng(123))
    scores = {}
    for inputs, head in (("paper", "linear"), ("pair_code", "bilinear")):
        config = _config(hidden_size=64, meta_batch_size=32, trials_per_task=4, lr=3e-3,
                           discount=0.9, bptt_length=10, reward_scale=0.1, inputs=inputs,
                           head=head)
        algo = RL2(family, None, None, 5, config, seed=0)
        for _ in range(40):
            algo.train_step()
        scores[head] = algo.evaluate(test, torch.Generator().manual_seed(0)).mean()
    assert scores["bilinear"] > 54.0, scores
    assert scores["bilinear"] > scores["linear"] + 2.5, scores


def test_envs_expected_reward_is_the_mean_of_the_sampled_one() -> None:
    probs = torch.tensor([[0.2, 0.7, 1.0], [0.0, 0.5, 0.9]])
    bandit = BatchedBandit(probs, 20000, 3)
    bandit.reset(torch.Generator().manual_seed(0))
    actions = torch.tensor([1, 2]).reshape(2, 1).expand(2, 20000)
    torch.testing.assert_close(bandit.mean_reward(actions)[:, 0], torch.tensor([0.7, 0.9]))
    _, reward, _ = bandit.step(actions)
    torch.testing.assert_close(reward.mean(1), torch.tensor([0.7, 0.9]), atol=0.01, rtol=0)
    bandit.done[0] = True  # a trial that ended pays nothing, in expectation too
    torch.testing.assert_close(bandit.mean_reward(actions)[:, 0], torch.tensor([0.0, 0.9]))
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_states=4, num_actions=3, horizon=2))
    tasks = family.sample(2, np.random.default_rng(0))
    mdp = family.make_env(tasks, 1)
    mdp.reset(torch.Generator().manual_seed(0))
    mdp.state = torch.tensor([[3], [1]])
    means = torch.tensor([t["reward_means"] for t in tasks], dtype=torch.float32)
    want = torch.stack([means[0, 3, 2], means[1, 1, 0]]).reshape(2, 1)
    torch.testing.assert_close(mdp.mean_reward(torch.tensor([[2], [0]])), want)
    _, reward, _ = mdp.step_with(torch.tensor([[2], [0]]), torch.zeros(2, 1, 2))  # no noise
    torch.testing.assert_close(reward, want)


class FixedBandits:
    """Two-armed bandits whose arms all have the probabilities ``probs``."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = probs
        self.inner = BanditFamily(BanditFamilyConfig(num_arms=2, num_pulls=6))

    def sample(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        return [{"probs": list(self.probs)} for _ in range(num_tasks)]

    def make_env(self, tasks: list[dict[str, Any]], num_envs: int,
                 device: torch.device | str = "cpu") -> BatchedBandit:
        return self.inner.make_env(tasks, num_envs, device)


def test_expected_reward_signal_is_recorded_and_drives_the_update() -> None:
    from metarl.algos.rl2 import expected_reward

    family = FixedBandits([0.3, 0.8])
    env = family.make_env(family.sample(3, np.random.default_rng(0)), 2)
    batch = collect_trials(_model(1, 2), env, 1, torch.Generator().manual_seed(0),
                           reward_hook=expected_reward)
    assert batch.signal is not None
    want = torch.tensor([0.3, 0.8])[batch.actions] * batch.mask
    torch.testing.assert_close(batch.signal, want)
    assert not torch.equal(batch.rewards, batch.signal)  # the GRU read 0/1 rewards
    plain = collect_trials(_model(1, 2), family.make_env(family.sample(3, np.random.default_rng(0)),
                                                          2), 1, torch.Generator().manual_seed(0))
    assert plain.signal is None
    torch.testing.assert_close(plain.rewards, batch.rewards)  # same trials either way

    def trained(probs: list[float], signal: str) -> dict[str, torch.Tensor]:
        config = dataclasses.replace(SMALL, reward_signal=signal)
        algo = RL2(FixedBandits(probs), 1, 2, 1, config, seed=0)
        algo.train_step()
        return algo.model.state_dict()

    # arms that always / never pay: the expected reward is the sampled one, same update
    sure, sure_expected = trained([0.0, 1.0], "sampled"), trained([0.0, 1.0], "expected")
    assert all(torch.equal(sure[k], sure_expected[k]) for k in sure)
    # coin-flip arms: the update follows the expectations, not the draws
    coin, coin_expected = trained([0.5, 0.5], "sampled"), trained([0.5, 0.5], "expected")
    assert any(not torch.equal(coin[k], coin_expected[k]) for k in coin)
    with pytest.raises(ConfigError, match=r"reward_signal.*'mean'.*sampled"):
        _config(reward_signal="mean")


def test_expected_reward_signal_needs_an_env_that_knows_its_means() -> None:
    from metarl.algos.rl2 import expected_reward
    from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig

    family = CartPoleFamily(CartPoleFamilyConfig())
    config = dataclasses.replace(SMALL, reward_signal="expected")
    with pytest.raises(ConfigError, match=r"reward_signal.*expected.*no mean_reward.*sampled"):
        RL2(family, None, None, 1, config, seed=0)
    env = family.make_env(family.sample(2, np.random.default_rng(0)), 1)
    with pytest.raises(ValueError, match=r"no mean_reward.*sampled"):
        collect_trials(RL2Policy(4, 2, 8, torch.Generator().manual_seed(0)), env, 1,
                       torch.Generator().manual_seed(0), reward_hook=expected_reward)
