"""RL²: recurrent inputs, hidden-state lifetime, truncated BPTT, GAE, determinism, learning."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.algos.rl2 import (
    RL2,
    RL2Config,
    RL2Critic,
    RL2Policy,
    chunked_forward,
    collect_trials,
    from_chunks,
    step_input,
    to_chunks,
)
from metarl.config import ConfigError
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig, BatchedBandit
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from metarl.returns import gae

torch.set_num_threads(1)


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
    with pytest.raises(ValueError, match="needs prev_obs"):
        step_input(*args, num_actions=2, inputs="pair_code")
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
            RL2Config(inputs="reward_code"), seed=0)
    with pytest.raises(ConfigError, match=r"inputs.*'counts'"):
        RL2Config(inputs="counts")


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
        RL2Config(head="mlp")


def test_bilinear_term_equals_torchs_bilinear_for_any_observation() -> None:
    from metarl.algos.rl2 import _bilinear

    g = torch.Generator().manual_seed(3)
    obs, z = torch.randn(6, 4, generator=g), torch.randn(6, 7, generator=g)
    weight = torch.randn(5, 4, 7, generator=g, requires_grad=True)
    ours = _bilinear(obs, z, weight)
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
        RL2Config(bptt_length=-1)
    with pytest.raises(ConfigError, match="gae_lambda"):
        RL2Config(gae_lambda=1.5)
    with pytest.raises(ConfigError, match=r"critic.*'oracle'.*shared"):
        RL2Config(critic="oracle")
    with pytest.raises(ConfigError, match=r"lr_drop_at.*-5"):
        RL2Config(lr_drop_at=-5)
    with pytest.raises(ConfigError, match=r"lr_drop_to.*0"):
        RL2Config(lr_drop_at=10, lr_drop_to=0.0)


def test_critic_chunks_restart_from_the_states_of_the_whole_trial() -> None:
    critic = RL2Critic(6, 8, torch.Generator().manual_seed(0))
    x = torch.randn(3, 11, 6, generator=torch.Generator().manual_seed(1))
    values, states = critic.trial_values(x, 4)
    assert values.shape == (3, 11) and states.shape == (3, 3, 8)  # ceil(11 / 4) chunks
    assert float(states[:, 0].abs().max()) == 0.0  # a trial starts from a zero state
    inputs = x.clone().requires_grad_()
    chunked = from_chunks(critic(*to_chunks(inputs, states, 4)), 3, 11)
    torch.testing.assert_close(chunked, values)  # same values as the whole trial at once
    (grad,) = torch.autograd.grad(chunked[:, 9].sum(), inputs)
    assert float(grad[:, :8].abs().max()) == 0.0  # step 9 is in chunk [8, 12)
    assert float(grad[:, 8:10].abs().min()) > 0.0


SMALL = RL2Config(hidden_size=16, meta_batch_size=8, trials_per_task=2, num_epochs=2,
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


@pytest.mark.parametrize("critic", ["shared", "task"])
def test_training_resumed_from_its_state_goes_on_exactly_as_uninterrupted(
        tmp_path: Any, critic: str) -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=2, horizon=5))
    config = dataclasses.replace(SMALL, critic=critic)
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
    assert len(straight.params) == len(resumed.params) == (len(list(straight.model.parameters()))
                                                          + (critic == "task") * 6)
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)
    # without the state, the same two steps land elsewhere
    fresh = RL2(family, None, None, 2, config, seed=3)
    fresh.train_step()
    fresh.train_step()
    assert not all(torch.equal(a, b) for a, b in zip(straight.params, fresh.params, strict=True))
    other = RL2(family, None, None, 2, dataclasses.replace(SMALL, critic="separate"), seed=3)
    if critic == "shared":
        with pytest.raises(ValueError, match="critic does not match critic='separate'"):
            other.load_training_state(first.training_state())


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
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert torch.equal(a, b)
    constant = RL2(family, None, None, 2, dataclasses.replace(config, lr_drop_at=0), seed=3)
    assert [constant.train_step()["lr"] for _ in range(4)] == [3e-3] * 4
    assert not all(torch.equal(a, b) for a, b in zip(straight.params, constant.params,
                                                      strict=True))


def test_bench_rl2_resumes_a_cell_from_its_checkpoint(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    base = ["bench", "rl2", "--cells", "10x5", "--instances", "30", "--bandit", "hidden_size=8",
            "meta_batch_size=8"]

    def row() -> str:
        out = capsys.readouterr().out
        return next(line for line in out.splitlines() if " RL2 s0 " in line)

    assert main([*base, "--iterations", "4"]) == 0
    straight = row()
    assert main([*base, "--iterations", "2", "--checkpoints", str(tmp_path)]) == 0
    assert (tmp_path / "bandit-10x5-s0.pt").exists() and "2 it, " in row()
    assert main([*base, "--iterations", "4", "--checkpoints", str(tmp_path)]) == 0
    resumed = row()
    assert "4 it (resumed at 2), " in resumed
    assert resumed.split()[5:7] == straight.split()[5:7]   # same score and interval
    assert torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)["iterations"] == 4
    # other settings than the checkpoint's are refused, naming them; the file is kept
    assert main([*base[:-2], "hidden_size=16", "meta_batch_size=8", "--iterations", "6",
                 "--checkpoints", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bandit-10x5-s0.pt was trained with other settings (hidden_size=8 there, 16 here)" in err
    assert torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)["iterations"] == 4
    # a file written before `inputs` / `head` existed was trained with their defaults
    state = torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)
    older = {k: v for k, v in state["config"].items() if k not in ("inputs", "head")}
    torch.save({**state, "config": older}, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "5", "--checkpoints", str(tmp_path)]) == 0
    assert "5 it (resumed at 4), " in row()
    assert main([*base, "--bandit", "hidden_size=8", "meta_batch_size=8", "head=bilinear",
                 "--iterations", "6", "--checkpoints", str(tmp_path)]) == 2
    assert "(head='linear' there, 'bilinear' here)" in capsys.readouterr().err
    # a state trained on another device type (its generator state would not fit) is refused
    state = torch.load(tmp_path / "bandit-10x5-s0.pt", weights_only=True)
    torch.save({**state, "device": "cuda"}, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "6", "--checkpoints", str(tmp_path)]) == 2
    assert "(device cuda there, cpu here)" in capsys.readouterr().err
    # files written before the device was recorded: told apart by the generator's state (a
    # CPU one is thousands of bytes, a CUDA one 16); the CPU file resumes, the CUDA one is refused
    undated = {k: v for k, v in state.items() if k != "device"}
    torch.save(undated, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "6", "--checkpoints", str(tmp_path)]) == 0
    assert "6 it (resumed at 5), " in row()
    cuda_like = {**undated, "state": {**undated["state"],
                                      "generator": torch.zeros(16, dtype=torch.uint8)}}
    torch.save(cuda_like, tmp_path / "bandit-10x5-s0.pt")
    assert main([*base, "--iterations", "7", "--checkpoints", str(tmp_path)]) == 2
    assert "(device cuda there, cpu here)" in capsys.readouterr().err


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
    config = RL2Config(hidden_size=32, meta_batch_size=32, trials_per_task=4, lr=3e-3)
    algo = RL2(family, 1, 2, 1, config, seed=0)
    test = family.sample(500, np.random.default_rng(123))
    before = algo.evaluate(test, torch.Generator().manual_seed(0)).mean()
    for _ in range(60):
        algo.train_step()
    after = algo.evaluate(test, torch.Generator().manual_seed(0)).mean()
    assert 4.6 < before < 5.4  # random: 10 pulls × 0.5
    assert after > 7.0, (before, after)  # optimal about 8.6 (one exploratory pull)


@pytest.mark.parametrize("critic", ["separate", "task"])
def test_rl2_with_its_own_critic_learns_an_easy_bandit(critic: str) -> None:
    # The critic sees the arm probabilities ("task"); the policy it trains does not.
    family = FarApartBandits()
    config = RL2Config(hidden_size=32, meta_batch_size=32, trials_per_task=4, lr=3e-3,
                       critic=critic, bptt_length=4)
    algo = RL2(family, 1, 2, 1, config, seed=0)
    assert algo.critic is not None
    assert algo.critic.gru.input_size == algo.model.input_dim + (2 if critic == "task" else 0)
    critic_before = [p.clone() for p in algo.critic.parameters()]
    test = family.sample(500, np.random.default_rng(123))
    for _ in range(60):
        algo.train_step()
    after = algo.evaluate(test, torch.Generator().manual_seed(0)).mean()
    assert after > 7.0, after
    assert all(not torch.equal(a, b) for a, b in zip(critic_before, algo.critic.parameters(),
                                                     strict=True))
    learner = algo.learner()  # the trained model is the policy alone
    assert not any(isinstance(m, RL2Critic) for m in learner.model.modules())


def test_task_critic_reads_a_tabular_mdp_s_tables() -> None:
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_states=4, num_actions=3, horizon=3))
    algo = RL2(family, None, None, 2, dataclasses.replace(SMALL, critic="task"), seed=0)
    assert algo.critic is not None  # reward means 4×3 and transitions 4×3×4 as features
    assert algo.critic.gru.input_size == algo.model.input_dim + 4 * 3 + 4 * 3 * 4
    stats = algo.train_step()
    assert all(np.isfinite(v) for v in stats.values()), stats


def test_cli_bench_rl2_prints_table_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    assert main(["bench", "rl2", "--cells", "10", "--iterations", "1", "--instances",
                 "20"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    methods = [line.split()[2] for line in out if line.startswith("mdp ")]
    assert methods == ["RL2", "Random", "PSRL", "Myopic-Bayes", "Oracle"]
    assert out[-1].endswith("0/0 bandit, 0/1 MDP")
    assert any("wall-clock: RL²" in line for line in out)
    assert main(["bench", "rl2", "--cells", "10x1"]) == 2
    assert "--cells '10x1'" in capsys.readouterr().err


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
        assert torch.equal(new["prev_action"], act.prev_action)
        torch.testing.assert_close(new["prev_reward"], act.prev_reward)
        torch.testing.assert_close(new["prev_obs"], act.prev_obs)
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
    config = RL2Config(hidden_size=32, meta_batch_size=32, trials_per_task=8, lr=3e-3,
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
    config = RL2Config(hidden_size=16, meta_batch_size=4, trials_per_task=2, num_epochs=1,
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
    x = model.step_input(torch.zeros(2), torch.tensor([5.0, -0.05]), torch.tensor(0.0),
                         torch.tensor(0.0))
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


def test_cli_bench_rl2_reads_params_file_and_writes_json(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from pipelines.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": ["10"], "iterations": 1, "instances": 20}))
    out = tmp_path / "results.json"
    assert main(["bench", "rl2", "--params", str(params), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    cell = results["cells"]["mdp n=10"]
    assert cell["paper_rl2"] == pytest.approx(156.2)
    assert set(cell) >= {"rl2", "rl2_half_width", "Random", "PSRL", "Myopic-Bayes", "Oracle"}
    assert cell["Random"] < cell["PSRL"] < cell["Oracle"]
    assert cell["Random"] < cell["Myopic-Bayes"] < cell["Oracle"]
    assert results["at_or_above_paper"] == {"bandit": 0, "bandit_cells": 0, "mdp": 0,
                                            "mdp_cells": 1}
    table = capsys.readouterr().out
    assert f"{cell['rl2']:.1f}" in table  # the JSON holds the printed numbers
    params.write_text(yaml.safe_dump({"cells": ["10"], "iteratons": 1}))
    assert main(["bench", "rl2", "--params", str(params)]) == 2
    assert "iteratons" in capsys.readouterr().err


@pytest.mark.slow
def test_cells_run_apart_combine_into_the_table_of_one_run(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from pipelines.bench.rl2 import _print_header, read_params
    from pipelines.cli import main

    # the DVC layout: cells as a mapping per family, --cells picks one, --combine prints all
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": {"bandit": [], "mdp": ["25", "10"]},
                                      "iterations": 1, "instances": 20, "mdp_seeds": [1]}))
    assert read_params(params).cells == ("25", "10")
    cells = tmp_path / "cells"
    for cell in ("10", "25"):
        assert main(["bench", "rl2", "--params", str(params), "--cells", cell, "--json",
                     str(cells / f"mdp-{cell}.json")]) == 0
        apart = capsys.readouterr().out.splitlines()
        assert sum(line.startswith("mdp ") for line in apart) == 5  # that cell alone
    assert main(["bench", "rl2", "--params", str(params), "--combine", str(cells), "--json",
                 str(tmp_path / "results.json")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in table if " RL2 s1 " in line] == ["n=25", "n=10"]
    assert "training seeds [1]," in table[0] and " RL2 s0 " not in "".join(table)
    assert table[-1].endswith("0/0 bandit, 0/2 MDP")
    combined = json.loads((tmp_path / "results.json").read_text())
    for cell in ("10", "25"):
        alone = json.loads((cells / f"mdp-{cell}.json").read_text())
        assert combined["cells"][f"mdp n={cell}"] == alone["cells"][f"mdp n={cell}"]
        rl2 = alone["cells"][f"mdp n={cell}"]["rl2"]
        assert any(" RL2 s1 " in line and f" {rl2:.1f} " in line for line in table)
    assert combined["settings"]["instances"] == 20
    header = io.StringIO()
    _print_header({"instances": 9, "instance_seed": 0, "device": "cpu", "bandit_seeds": [0, 1],
                   "mdp_seeds": [0]}, header)
    assert "training seeds [0, 1] (bandit), [0] (MDP), torch" in header.getvalue()
    assert combined["at_or_above_paper"]["mdp_cells"] == 2

    # a cell run with other settings, a missing one, a file of another cell: clear errors
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"cells": ["10"], "iterations": 1, "instances": 20}))
    assert main(["bench", "rl2", "--params", str(other), "--json",
                 str(cells / "mdp-10.json")]) == 0
    capsys.readouterr()
    assert main(["bench", "rl2", "--params", str(params), "--combine", str(cells)]) == 2
    assert "mdp-10.json was run with mdp_seeds=[0], an earlier cell with mdp_seeds=[1]" in (
        capsys.readouterr().err)
    assert main(["bench", "rl2", "--cells", "50", "--combine", str(cells)]) == 2
    assert f"no {cells / 'mdp-50.json'}; run the cell first: metarl bench rl2 --cells 50" in (
        capsys.readouterr().err)
    (cells / "mdp-50.json").write_text((cells / "mdp-25.json").read_text())
    assert main(["bench", "rl2", "--cells", "50", "--combine", str(cells)]) == 2
    assert "holds cell mdp n=25, not mdp 50" in capsys.readouterr().err
    params.write_text(yaml.safe_dump({"cells": {"bandits": ["10x5"]}}))
    assert main(["bench", "rl2", "--params", str(params), "--combine", str(cells)]) == 2
    assert "cells.bandits=['10x5']: expected the lists cells.bandit" in capsys.readouterr().err


def test_the_benchmarks_dvc_params_file_reads() -> None:
    from pipelines.bench.rl2 import mdp_training_lengths, read_params, training_pulls

    params = read_params(Path(__file__).parents[2] / "benchmarks/rl2/params.yaml")
    assert len([c for c in params.cells if "x" in c]) == 9
    assert params.cells[-5:] == ("10", "25", "50", "75", "100")  # all of Table 2
    # the DVC stages run every cell once, a cell that shares a model in one stage with it
    grouped = [c for runs in params.runs.values() for group in runs.values()
               for c in str(group).split()]
    assert sorted(grouped) == sorted(params.cells)
    for runs in params.runs.values():
        for group in runs.values():
            cells = str(group).split()
            assert len({training_pulls(int(c.split("x")[0]), params.bandit_train_pulls)
                        if "x" in c else mdp_training_lengths(int(c), params.mdp_train_episodes)
                        for c in cells}) == 1  # one model per stage


def test_bandit_config_scales_rewards_and_trials_with_the_trial_length() -> None:
    from pipelines.bench.rl2 import BANDIT_CONFIG, bandit_config, default_iterations

    assert bandit_config(10) == BANDIT_CONFIG
    assert [default_iterations("bandit", n) for n in (10, 100, 500)] == [400, 600, 150]
    assert default_iterations("mdp", 25) == 200
    assert default_iterations("mdp", 10) == 2000
    long, longer = bandit_config(100), bandit_config(500)
    assert (long.reward_scale, long.trials_per_task, long.bptt_length) == (0.1, 4, 0)
    assert (longer.reward_scale, longer.trials_per_task, longer.bptt_length) == (0.02, 2, 100)
    for config in (long, longer):  # long trials: expected rewards, long-horizon credit
        assert (config.reward_signal, config.gae_lambda, config.discount) == (
            "expected", 0.8, 0.999)
        assert (config.inputs, config.head) == ("reward_code", "bilinear")
    assert BANDIT_CONFIG.reward_signal == "sampled"
    assert (BANDIT_CONFIG.inputs, BANDIT_CONFIG.head) == ("paper", "linear")


def test_bench_rl2_settings_overrides_and_time_budget(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from pipelines.bench.rl2 import bandit_config, parse_overrides, with_overrides
    from pipelines.cli import main

    wide = with_overrides(bandit_config(500), {"hidden_size": 256, "num_minibatches": 8},
                          "bandit")
    assert (wide.hidden_size, wide.num_minibatches) == (256, 8)
    assert (wide.reward_scale, wide.bptt_length) == (0.02, 100)  # the rest kept
    assert parse_overrides(["lr=3e-3", "hidden_size=256", "normalize_advantages=false"],
                           "--bandit") == {"lr": 0.003, "hidden_size": 256,
                                           "normalize_advantages": False}
    with pytest.raises(ConfigError, match=r"mdp\.hidden_size=0"):
        with_overrides(bandit_config(10), {"hidden_size": 0}, "mdp")

    # a one-second budget stops a 10000-iteration run early, and the table says so
    assert main(["bench", "rl2", "--cells", "10x5", "--iterations", "10000", "--instances",
                 "20", "--time-budget", "1", "--bandit", "hidden_size=8"]) == 0
    out = capsys.readouterr().out
    assert "bandit cells: RL² settings {'hidden_size': 8}" in out
    row = next(line for line in out.splitlines() if " RL2 s0 " in line)
    done = int(row.split("  ")[-1].split(" it ")[0].split()[-1])
    assert 1 <= done < 10000 and "(time budget 1 s)" in row

    for argv, expected in ((["--mdp", "lr=-1"], "mdp.lr=-1.0: must be > 0"),
                           (["--mdp", "lr=inf"], "mdp.lr=inf: expected a finite number, not"),
                           (["--mdp", "lr=[1,"], "--mdp 'lr=[1,': cannot read the value"),
                           (["--mdp", "hidden_size=0", "--mdp", "lr=1e-3"],  # both kept
                            "mdp.hidden_size=0: must be an integer >= 1"),
                           (["--bandit", "hidden=3"], "bandit.hidden=3: unknown key"),
                           (["--mdp", "lr"], "--mdp 'lr': expected KEY=VALUE"),
                           (["--time-budget", "0"], "--time-budget 0.0: must be > 0")):
        assert main(["bench", "rl2", "--cells", "10", "--iterations", "1", *argv]) == 2
        assert expected in capsys.readouterr().err
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": ["10"], "mdp": {"hiden_size": 8}}))
    assert main(["bench", "rl2", "--params", str(params)]) == 2
    assert "mdp.hiden_size=8: unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_commands_need_no_mlflow() -> None:
    # GPU machines and minimal installs run the benches without the MLOps stack.
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('mlflow', 'optuna', 'prefect', 'dvc'): sys.modules[m] = None\n"
            "from pipelines.cli import main\n"
            "sys.exit(main(['bench', 'rl2', '--cells', '10', '--iterations', '1',"
            " '--instances', '5']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mdp    n=10        RL2 s0" in result.stdout


def test_bench_rl2_plot_normalises_each_cell(tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main
    from pipelines.plots import rl2_plot_points

    results = {"cells": {
        "mdp n=10": {"paper_rl2": 156.2, "rl2": 120.0, "rl2_half_width": 2.0, "Random": 100.0,
                     "PSRL": 140.0, "Oracle": 220.0},
        "bandit n=100 k=5": {"paper_rl2": 78.7, "rl2": 76.0, "rl2_half_width": 1.0,
                             "Random": 50.0, "Gittins": 78.0, "Oracle": 90.0},
        "bandit n=10 k=5": {"paper_rl2": 6.7, "rl2": 6.6, "rl2_half_width": 0.1, "Random": 5.0,
                            "Gittins": 6.6, "Oracle": 9.0}}}
    points = rl2_plot_points(results)
    assert [p["cell"] for p in points] == ["bandit n=10 k=5", "bandit n=100 k=5", "mdp n=10"]
    mdp = points[2]
    assert mdp["ours"] == pytest.approx(20 / 120) and mdp["low"] == pytest.approx(18 / 120)
    assert mdp["paper"] == pytest.approx(56.2 / 120)
    assert (mdp["yardstick_name"], mdp["yardstick"]) == ("PSRL", pytest.approx(40 / 120))
    assert points[1]["yardstick_name"] == "Gittins"

    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    png = tmp_path / "plot.png"
    assert main(["bench", "rl2", "--replot", str(source), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "rl2", "--replot", str(source)]) == 2
    assert "--replot: give --plot PNG" in capsys.readouterr().err
    source.write_text("{}")
    assert main(["bench", "rl2", "--replot", str(source), "--plot", str(png)]) == 2
    assert "no 'cells'" in capsys.readouterr().err
    source.write_text(json.dumps({"cells": {"mdp n=10": {"rl2": 1.0, "rl2_half_width": 0.1,
                                                          "Random": 1.0}}}))
    assert main(["bench", "rl2", "--replot", str(source), "--plot", str(png)]) == 2
    assert "cell 'mdp n=10': no number under 'Oracle'" in capsys.readouterr().err
    # a run draws its own plot, its numbers beside it
    run_png = tmp_path / "run.png"
    assert main(["bench", "rl2", "--cells", "10", "--iterations", "1", "--instances", "10",
                 "--plot", str(run_png)]) == 0
    assert run_png.is_file() and "mdp n=10" in json.loads(
        run_png.with_suffix(".json").read_text())["cells"]


def test_served_rl2_model_derives_the_previous_observation_from_the_trial() -> None:
    # The registry's model takes the trial so far (obs, prev_action, prev_reward, prev_done);
    # with pair_code it must rebuild the previous observation itself and act as in training.
    from metarl.algos.rl2 import RL2Learner

    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=2))
    env = family.make_env(family.sample(3, np.random.default_rng(0)), 2)
    model = RL2Policy(10, 5, 16, torch.Generator().manual_seed(3), inputs="pair_code",
                      head="bilinear")
    batch = collect_trials(model, env, 2, torch.Generator().manual_seed(0), greedy=True)
    start = torch.full((6, 1), -1)
    trial = {"obs": batch.inputs[..., :10].numpy(),
             "prev_action": torch.cat([start, batch.actions[:, :-1]], 1).numpy(),
             "prev_reward": torch.cat([torch.zeros(6, 1), batch.rewards[:, :-1]], 1).numpy(),
             "prev_done": torch.cat([torch.zeros(6, 1), batch.dones[:, :-1]], 1).numpy()}
    np.testing.assert_array_equal(RL2Learner(model).serve(trial), batch.actions.numpy())
    assert len(set(batch.actions.flatten().tolist())) > 1  # not one constant action


def test_trial_clock_counts_the_episodes_a_trial_has_played() -> None:
    # RL2Config.trial_clock: the observation the GRU reads ends with episode / n, in
    # training, in evaluate (over the n asked), and the model's obs_dim counts it.
    from metarl.algos.rl2 import RL2

    family = TabularMDPFamily(TabularMDPFamilyConfig(horizon=2, num_episodes=3))
    config = RL2Config(hidden_size=8, meta_batch_size=2, trials_per_task=2, num_minibatches=1,
                       inputs="pair_code", head="bilinear", trial_clock=True)
    algo = RL2(family, 10, 5, 3, config, seed=0)
    assert algo.model.obs_dim == 11
    env = family.make_env(family.sample(2, np.random.default_rng(0)), 2)
    batch = collect_trials(algo.model, env, 3, torch.Generator().manual_seed(0), clock=True)
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
        RL2Config(trial_clock=1)  # type: ignore[arg-type]


def test_clocked_learner_acts_in_the_evaluator_and_registry_as_in_training(
        tmp_path: Any) -> None:
    # The contract (explore / adapt per episode), a checkpoint of it and the served model
    # must read the same clock as collect_trials: greedy, same noise, same actions.
    from metarl.algos.rl2 import RL2
    from metarl.algos.rl2 import checkpoint_config as rl2_config
    from metarl.checkpoint import load_learner, save_params
    from metarl.sampler import rollout

    family = TabularMDPFamily(TabularMDPFamilyConfig(horizon=3, num_episodes=4))
    config = RL2Config(hidden_size=16, inputs="pair_code", head="bilinear", trial_clock=True)
    algo = RL2(family, 10, 5, 4, config, seed=3)
    tasks = family.sample(5, np.random.default_rng(0))
    batch = collect_trials(algo.model, family.make_env(tasks, 1), 4,
                           torch.Generator().manual_seed(1), greedy=True, clock=True)
    assert len(set(batch.actions.flatten().tolist())) > 1  # not one constant action
    save_params(dict(algo.model.state_dict()), tmp_path / "rl2.pt")
    saved = rl2_config(algo.model, algo_config={"trial_clock": True}, episodes_per_trial=4)
    for learner in (algo.learner(), load_learner(tmp_path / "rl2.pt", saved)):
        learner.greedy = True
        assert learner.trial_length == 4
        params, env = learner.initial_params(5), family.make_env(tasks, 1)
        generator, actions = torch.Generator().manual_seed(1), []
        for episode in range(4):
            episodes = rollout(learner.explore(params), env, generator)
            actions.append(episodes.actions[:, 0])
            params = learner.adapt(params, episodes)
            assert torch.equal(params["episode"], torch.full((5, 1), episode + 1))
        assert torch.equal(torch.cat(actions, dim=1), batch.actions)
    start = torch.full((5, 1), -1)
    trial = {"obs": batch.inputs[..., :10].numpy(),
             "prev_action": torch.cat([start, batch.actions[:, :-1]], 1).numpy(),
             "prev_reward": torch.cat([torch.zeros(5, 1), batch.rewards[:, :-1]], 1).numpy(),
             "prev_done": torch.cat([torch.zeros(5, 1), batch.dones[:, :-1]], 1).numpy()}
    np.testing.assert_array_equal(algo.learner().serve(trial), batch.actions.numpy())
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
        config = RL2Config(hidden_size=64, meta_batch_size=32, trials_per_task=4, lr=3e-3,
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
    family = FixedBandits([0.3, 0.8])
    env = family.make_env(family.sample(3, np.random.default_rng(0)), 2)
    batch = collect_trials(_model(1, 2), env, 1, torch.Generator().manual_seed(0),
                           expected_rewards=True)
    assert batch.expected_rewards is not None
    want = torch.tensor([0.3, 0.8])[batch.actions] * batch.mask
    torch.testing.assert_close(batch.expected_rewards, want)
    assert not torch.equal(batch.rewards, batch.expected_rewards)  # the GRU read 0/1 rewards
    plain = collect_trials(_model(1, 2), family.make_env(family.sample(3, np.random.default_rng(0)),
                                                          2), 1, torch.Generator().manual_seed(0))
    assert plain.expected_rewards is None
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
        RL2Config(reward_signal="mean")


def test_expected_reward_signal_needs_an_env_that_knows_its_means() -> None:
    from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig

    family = CartPoleFamily(CartPoleFamilyConfig())
    config = dataclasses.replace(SMALL, reward_signal="expected")
    with pytest.raises(ConfigError, match=r"reward_signal.*expected.*no mean_reward.*sampled"):
        RL2(family, None, None, 1, config, seed=0)
    env = family.make_env(family.sample(2, np.random.default_rng(0)), 1)
    with pytest.raises(ValueError, match=r"no mean_reward.*sampled"):
        collect_trials(RL2Policy(4, 2, 8, torch.Generator().manual_seed(0)), env, 1,
                       torch.Generator().manual_seed(0), expected_rewards=True)


def test_long_bandit_cells_are_played_by_the_shorter_cells_model(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from pipelines.bench.baselines import _seed
    from pipelines.bench.rl2 import bandit_config, read_params, training_pulls, with_overrides
    from pipelines.cli import main

    assert [training_pulls(n) for n in (10, 100, 500)] == [10, 100, 100]
    assert training_pulls(500, None) == 500 and training_pulls(30, 10) == 10
    small = ["hidden_size=8", "meta_batch_size=8"]
    base = ["bench", "rl2", "--instances", "20", "--iterations", "2", "--bandit", *small]

    def run(*argv: str) -> tuple[dict[str, Any], str]:
        path = tmp_path / "out.json"
        assert main([*base, "--json", str(path), *argv]) == 0
        return json.loads(path.read_text()), capsys.readouterr().out

    ckpt = tmp_path / "ckpt"
    run("--cells", "10x3", "--bandit-train-pulls", "10", "--checkpoints", str(ckpt))
    _, out = run("--cells", "30x3", "--bandit-train-pulls", "10", "--checkpoints", str(ckpt))
    assert sorted(p.name for p in ckpt.iterdir()) == ["bandit-10x3-s0.pt"]  # one training
    row = next(line for line in out.splitlines() if " n=30 k=3 " in line and " RL2 s0 " in line)
    assert "2 it on 10 pulls (resumed at 2), " in row
    assert "RL² trains on trials of at most 10 pulls" in out
    alone, _ = run("--cells", "30x3", "--bandit-train-pulls", "10")  # trains it afresh
    played = alone["cells"]["bandit n=30 k=3"]["rl2"]
    assert f" {played:.2f} " in row  # the same model as the 10x3 cell's, trained once
    both, out = run("--cells", "10x3", "30x3", "--bandit-train-pulls", "10")  # one run
    assert both["cells"]["bandit n=30 k=3"]["rl2"] == pytest.approx(played)
    assert "2 it on 10 pulls: the 10x3 cell's model (trained above), " in out

    # by hand: the 10x3 cell's seed and settings, scored on the 30x3 cell's instances
    config = with_overrides(bandit_config(10), {"hidden_size": 8, "meta_batch_size": 8}, "b")
    algo = RL2(BanditFamily(BanditFamilyConfig(num_arms=3, num_pulls=10)), 1, 3, 1, config,
               seed=_seed(10, 0, 10, 3, 0))
    for _ in range(2):
        algo.train_step()
    family = BanditFamily(BanditFamilyConfig(num_arms=3, num_pulls=30))
    test = family.sample(20, np.random.default_rng(_seed(0, 1, 30, 3, 0)))
    returns = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, 30, 3, 0)),
                            family=family)
    assert returns.shape == (20,) and returns.max() > 10  # 30-pull trials: more than 10 pulls
    assert float(returns.mean()) == pytest.approx(played)

    own, out = run("--cells", "30x3", "--bandit-train-pulls", "0")  # each on its own length
    assert own["cells"]["bandit n=30 k=3"]["rl2"] != pytest.approx(played)
    assert " on 10 pulls" not in out and "trains on trials of at most" not in out
    assert own["settings"]["bandit_train_pulls"] is None

    assert main([*base, "--cells", "30x3", "--bandit-train-pulls", "-1"]) == 2
    assert "--bandit-train-pulls -1: must be >= 1" in capsys.readouterr().err
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cells": ["30x3"], "bandit_train_pulls": "ten"}))
    assert main(["bench", "rl2", "--params", str(params)]) == 2
    assert "bandit_train_pulls" in capsys.readouterr().err
    assert read_params(Path(__file__).parents[2]
                       / "benchmarks/rl2/params.yaml").bandit_train_pulls == 100
    # cells run apart with different training lengths do not combine into one table
    cells = tmp_path / "cells"
    for cell, pulls in (("10x3", "10"), ("30x3", "0")):
        assert main([*base, "--cells", cell, "--bandit-train-pulls", pulls, "--json",
                     str(cells / f"bandit-{cell}.json")]) == 0
    capsys.readouterr()
    assert main(["bench", "rl2", "--cells", "10x3", "30x3", "--combine", str(cells)]) == 2
    assert "bandit-30x3.json was run with bandit_train_pulls=None, an earlier cell with " \
        "bandit_train_pulls=10" in capsys.readouterr().err


@pytest.mark.slow
def test_mdp_cells_played_by_one_model_write_a_file_per_cell_that_combines(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "20", "--iterations", "1", "--mdp", "hidden_size=8",
            "meta_batch_size=4"]
    group = tmp_path / "cells" / "mdp-all"
    assert main([*base, "--cells", "10", "25", "--mdp-train-episodes", "10", "--json-dir",
                 str(group)]) == 0
    out = capsys.readouterr().out
    assert "MDP cells: RL² trains on trials of at most 10 episodes" in out
    row = next(line for line in out.splitlines() if " n=25 " in line and " RL2 s0 " in line)
    assert "1 it on 10 episodes: the 10 cell's model (trained above), " in row
    assert sorted(p.name for p in group.iterdir()) == ["mdp-10.json", "mdp-25.json"]
    for cell in ("10", "25"):
        alone = json.loads((group / f"mdp-{cell}.json").read_text())
        assert list(alone["cells"]) == [f"mdp n={cell}"]
        assert alone["at_or_above_paper"]["mdp_cells"] == 1
        assert alone["settings"]["mdp_train_episodes"] == 10
        assert alone["cells"][f"mdp n={cell}"]["played_by"] == (None if cell == "10" else "10")
    # the scores are those of the 10-episode model on 25-episode trials: a run of cell 25
    # alone with the same training length -- the default's -- trains the same model
    assert main([*base, "--cells", "25", "--json", str(tmp_path / "25.json")]) == 0
    assert " 1 it on 10 episodes, " in capsys.readouterr().out
    alone = json.loads((tmp_path / "25.json").read_text())
    assert alone["settings"]["mdp_train_episodes"] == 10
    assert json.loads((group / "mdp-25.json").read_text())["cells"]["mdp n=25"]["rl2"] == (
        pytest.approx(alone["cells"]["mdp n=25"]["rl2"]))
    # 0: the cell trains on its own 25-episode trials, another model
    assert main([*base, "--cells", "25", "--mdp-train-episodes", "0", "--json",
                 str(tmp_path / "own.json")]) == 0
    out = capsys.readouterr().out
    assert " on 10 episodes" not in out and "trains on trials of at most" not in out
    own = json.loads((tmp_path / "own.json").read_text())
    assert own["settings"]["mdp_train_episodes"] is None
    assert own["cells"]["mdp n=25"]["rl2"] != pytest.approx(alone["cells"]["mdp n=25"]["rl2"])
    # --combine finds the files in the run's subfolder; --out keeps the printed table
    saved = tmp_path / "table.txt"
    assert main(["bench", "rl2", "--cells", "10", "25", "--combine", str(tmp_path / "cells"),
                 "--out", str(saved)]) == 0
    table = capsys.readouterr().out
    assert saved.read_text() == table
    assert "RL² trains on trials of at most 10 episodes" in table
    assert table.splitlines()[-1].endswith("0/0 bandit, 0/2 MDP")
    walls = [line for line in table.splitlines() if "wall-clock: RL²" in line]
    assert len(walls) == 2 and "evaluation only" not in walls[0]
    assert "(all seeds, evaluation only: training is counted in the n=10 cell's line)" in walls[1]
    bad = json.loads((group / "mdp-25.json").read_text())
    bad["cells"]["mdp n=25"]["played_by"] = 10
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mdp-25.json").write_text(json.dumps(bad))
    assert main(["bench", "rl2", "--cells", "25", "--combine", str(tmp_path / "bad")]) == 2
    assert "played_by 10 is not a cell name" in capsys.readouterr().err
    copy = tmp_path / "cells" / "other"
    copy.mkdir()
    (copy / "mdp-25.json").write_text((group / "mdp-25.json").read_text())
    assert main(["bench", "rl2", "--cells", "25", "--combine", str(tmp_path / "cells"),
                 "--out", str(saved)]) == 2
    assert "all hold mdp-25.json; keep one" in capsys.readouterr().err
    assert saved.read_text() == table  # a failed run leaves the last table as it was
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".table.txt")] == []
    assert main([*base, "--cells", "25", "--mdp-train-episodes", "-2"]) == 2
    assert "--mdp-train-episodes -2: must be >= 1 (episodes per training trial)" in (
        capsys.readouterr().err)


def test_mdp_training_lengths_of_a_number_or_a_list() -> None:
    from pipelines.bench.rl2 import mdp_training_lengths

    assert mdp_training_lengths(25, None) == (25,)
    assert mdp_training_lengths(25, 10) == (10,)
    assert mdp_training_lengths(5, 10) == (5,)  # shorter than the training trials: its own
    assert mdp_training_lengths(10, (10, 25)) == (10, 25)
    assert mdp_training_lengths(100, [10, 25]) == (10, 25)
    assert mdp_training_lengths(5, (10, 25)) == (5,)
    assert mdp_training_lengths(25, [10]) == mdp_training_lengths(25, 10) == (10,)


@pytest.mark.slow
def test_mdp_cells_train_on_alternating_trial_lengths_and_resume_in_step(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import re

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "20", "--mdp", "hidden_size=8",
            "meta_batch_size=4", "--mdp-train-episodes", "10,25"]
    assert main([*base, "--cells", "10", "25", "--iterations", "4", "--json",
                 str(tmp_path / "straight.json")]) == 0
    captured = capsys.readouterr()
    assert ("MDP cells: RL² trains on trials of 10 and 25 episodes in turn, one iteration each "
            "(every cell of 10 episodes or more is played by that one model)") in captured.out
    row = next(line for line in captured.out.splitlines()
               if " n=25 " in line and " RL2 s0 " in line)
    assert "4 it on 10/25 episodes alternating: the 10 cell's model (trained above), " in row
    # iterations 1 and 3 play 10-episode trials, 2 and 4 25-episode ones (about 2.5x the return)
    returns = [float(x) for x in re.findall(r"train trial return ([0-9.]+)", captured.err)]
    assert len(returns) == 4
    assert min(returns[1], returns[3]) > 2 * max(returns[0], returns[2])
    straight = json.loads((tmp_path / "straight.json").read_text())
    assert straight["settings"]["mdp_train_episodes"] == [10, 25]
    # trained in two runs (1 iteration, then on to 4 from the checkpoint): the same model,
    # the turns picked by the iteration count
    ckpt = tmp_path / "ckpt"
    for iterations in ("1", "4"):
        assert main([*base, "--cells", "10", "25", "--iterations", iterations, "--checkpoints",
                     str(ckpt), "--json", str(tmp_path / "pieces.json")]) == 0
    assert "resumed at iteration 1" in capsys.readouterr().err
    assert [p.name for p in ckpt.iterdir()] == ["mdp-10+25-s0.pt"]
    pieces = json.loads((tmp_path / "pieces.json").read_text())
    for cell in ("mdp n=10", "mdp n=25"):
        assert pieces["cells"][cell]["rl2"] == pytest.approx(straight["cells"][cell]["rl2"])
    # one length: not the same model as the alternating one
    assert main([*base[:-1], "10", "--cells", "25", "--iterations", "4", "--json",
                 str(tmp_path / "ten.json")]) == 0
    capsys.readouterr()
    ten = json.loads((tmp_path / "ten.json").read_text())["cells"]["mdp n=25"]["rl2"]
    assert ten != pytest.approx(straight["cells"]["mdp n=25"]["rl2"])


@pytest.mark.parametrize(("value", "message"), [
    ("10,10", "--mdp-train-episodes (10, 10): list each length once, shortest first"),
    ("25,10", "--mdp-train-episodes (25, 10): list each length once, shortest first"),
    ("10,-3", "--mdp-train-episodes (10, -3): must be >= 1 (episodes per training trial)"),
    ("10,x", "argument --mdp-train-episodes: '10,x': expected a number of episodes or a "
             "comma-separated list, e.g. 10,25"),
])
def test_bad_mdp_training_lengths_are_refused_by_name(
        value: str, message: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    try:
        code = main(["bench", "rl2", "--cells", "25", "--iterations", "1", "--instances", "20",
                     "--mdp-train-episodes", value, "--json", str(tmp_path / "out.json")])
    except SystemExit as exit_:  # argparse's own error exit
        code = int(str(exit_.code))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_a_params_file_takes_a_list_of_mdp_training_lengths(tmp_path: Any) -> None:
    from metarl.config import ConfigError
    from pipelines.bench.rl2 import mdp_training_lengths, read_params

    path = tmp_path / "params.yaml"
    path.write_text("mdp_train_episodes: [10, 25]\n")
    assert read_params(path).mdp_train_episodes == (10, 25)
    path.write_text("cells: ['25']\n")  # absent: the 10-episode model, as on the command line
    assert read_params(path).mdp_train_episodes == 10
    path.write_text("mdp_train_episodes: null\n")
    assert read_params(path).mdp_train_episodes is None
    path.write_text("mdp_train_episodes: [10]\n")
    assert mdp_training_lengths(50, read_params(path).mdp_train_episodes) == (10,)
    path.write_text("mdp_train_episodes: [10, ten]\n")
    with pytest.raises(ConfigError, match="mdp_train_episodes"):
        read_params(path)


@pytest.mark.slow
def test_select_every_keeps_the_checkpoint_best_on_tuning_instances(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import re

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "30", "--cells", "10", "--mdp", "hidden_size=8",
            "meta_batch_size=4", "lr=0.05"]
    assert main([*base, "--iterations", "6", "--mdp-select-every", "2", "--json",
                 str(tmp_path / "sel.json")]) == 0
    captured = capsys.readouterr()
    assert "MDP cells: RL² keeps, of checks every 2 training iterations, the weights that " \
        "scored best on the tuning instances (200 per cell it plays" in captured.out
    checks = re.findall(r"iteration (\d+), tuning-instance score ([0-9.]+) per step \(best "
                        r"([0-9.]+), iteration (\d+)\)", captured.err)
    assert [int(c[0]) for c in checks] == [2, 4, 6]
    kept = int(checks[-1][3])
    assert float(checks[-1][2]) == max(float(c[1]) for c in checks)
    row = next(line for line in captured.out.splitlines() if " RL2 s0 " in line)
    assert f"6 it, kept it {kept} (best of 3 checks on tuning instances)" in row
    # the weights kept are those of iteration `kept`: a run stopped there scores the same
    assert main([*base, "--iterations", str(kept), "--json", str(tmp_path / "plain.json")]) == 0
    capsys.readouterr()
    sel = json.loads((tmp_path / "sel.json").read_text())
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert sel["cells"]["mdp n=10"]["rl2"] == pytest.approx(plain["cells"]["mdp n=10"]["rl2"])
    assert sel["settings"]["mdp_select_every"] == 2
    # in two runs from a checkpoint: the same checks, the same pick
    ckpt = tmp_path / "ckpt"
    for iterations in ("3", "6"):
        assert main([*base, "--iterations", iterations, "--mdp-select-every", "2",
                     "--checkpoints", str(ckpt), "--json", str(tmp_path / "pieces.json")]) == 0
    err = capsys.readouterr().err
    assert [int(x) for x in re.findall(r"iteration (\d+), tuning-instance", err)] == [2, 3, 4, 6]
    pieces = json.loads((tmp_path / "pieces.json").read_text())
    row = pieces["cells"]["mdp n=10"]["rows"][0]["setting"]
    # the first run's last check (3) is one more candidate than the straight run had
    best = max(((float(s), int(i)) for i, s in re.findall(
        r"iteration (\d+), tuning-instance score ([0-9.]+)", err)), key=lambda t: t[0])
    assert f"kept it {best[1]} (best of 4 checks" in row
    assert main([*base, "--iterations", "1", "--mdp-select-every", "-1"]) == 2
    assert "--mdp-select-every -1: must be >= 1 (training iterations between checks)" in (
        capsys.readouterr().err)


def test_select_every_scores_the_papers_cells_a_model_plays() -> None:
    from pipelines.bench.rl2 import (
        VALIDATION_INSTANCES,
        _validation,
        load_reference,
        mdp_training_lengths,
        training_pulls,
    )

    reference = load_reference()

    def cells(table: str, cell: tuple[int, int], trains_like: Any) -> list[tuple[int, int]]:
        found = _validation(table, cell, trains_like, 0, reference)
        assert all(len(v.tasks) == VALIDATION_INSTANCES for v in found)
        return [(v.steps, len(v.tasks[0].get("probs", ()))) for v in found]

    def pulls(c: tuple[int, int]) -> tuple[int, int]:
        return training_pulls(c[0], 100), c[1]

    assert cells("bandit", (500, 5), pulls) == [(100, 5), (500, 5)]
    assert cells("bandit", (10, 5), pulls) == [(10, 5)]
    assert cells("bandit", (30, 3), pulls) == [(30, 3)]  # not a paper cell: itself
    assert [n for n, _ in cells("mdp", (10, 0), lambda c: mdp_training_lengths(
        c[0], (10, 25)))] == [10, 25, 50, 75, 100]
    assert [n for n, _ in cells("mdp", (25, 0), lambda c: (c[0],))] == [25]
    # tuning instances, not the test ones: the split `bench baselines` tunes on
    bandit = _validation("bandit", (10, 5), pulls, 0, reference)[0]
    from pipelines.bench.baselines import _seed

    test = bandit.family.sample(VALIDATION_INSTANCES, np.random.default_rng(_seed(0, 1, 10, 5, 0)))
    assert [t["probs"] for t in bandit.tasks] != [t["probs"] for t in test]


@pytest.mark.slow
def test_workers_train_a_cells_seeds_at_once_into_the_same_models(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipelines.cli import main

    base = ["bench", "rl2", "--instances", "40", "--cells", "10x5", "--seeds", "0", "1", "2",
            "--bandit", "hidden_size=8", "meta_batch_size=8", "lr=0.05"]
    assert main([*base, "--iterations", "3", "--json", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    # three seeds, two processes: the pool is reused for the third
    assert main([*base, "--iterations", "3", "--workers", "2", "--json-dir",
                 str(tmp_path / "cells"), "--json", str(tmp_path / "two.json")]) == 0
    captured = capsys.readouterr()
    assert "wall-clock: RL² " in captured.out and "(all seeds, trained 2 at a time)" in captured.out
    one = json.loads((tmp_path / "one.json").read_text())["cells"]["bandit n=10 k=5"]
    two = json.loads((tmp_path / "two.json").read_text())["cells"]["bandit n=10 k=5"]
    assert two["train_workers"] == 2 and one["train_workers"] == 1
    scores = [(r["method"], r["ours"], r["half_width"]) for r in one["rows"]]
    assert [(r["method"], r["ours"], r["half_width"]) for r in two["rows"]] == scores
    assert len({s for m, s, _ in scores if m.startswith("RL2 s")}) == 3  # three models
    assert all("3 it, " in r["setting"] for r in two["rows"] if r["method"].startswith("RL2 s"))
    # --combine reprints the cell as run
    assert main(["bench", "rl2", "--cells", "10x5", "--combine", str(tmp_path / "cells")]) == 0
    assert "(all seeds, trained 2 at a time)" in capsys.readouterr().out
    # workers write and resume checkpoints as one process does: 2 + 1 iterations = 3
    ckpt = tmp_path / "ckpt"
    for iterations in ("2", "3"):
        assert main([*base, "--iterations", iterations, "--workers", "2", "--checkpoints",
                     str(ckpt), "--json", str(tmp_path / "pieces.json")]) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == [f"bandit-10x5-s{s}.pt" for s in range(3)]
    pieces = json.loads((tmp_path / "pieces.json").read_text())["cells"]["bandit n=10 k=5"]
    assert [(r["method"], r["ours"]) for r in pieces["rows"]] == [(m, s) for m, s, _ in scores]
    assert "3 it (resumed at 2), " in pieces["rows"][0]["setting"]
    capsys.readouterr()
    assert main([*base, "--iterations", "1", "--workers", "0"]) == 2
    assert "--workers 0: must be >= 1 (seeds trained at a time" in capsys.readouterr().err
