"""The CUDA paths: batched envs, MAML and RL² on a GPU (skipped where there is none).

On the CPU machines of CI these skip; run them where a GPU is present with
``pytest tests/unit/test_gpu.py`` (``METARL_TEST_DEVICE`` picks another device, e.g. ``cpu`` to
check the tests themselves). Each test compares the device with the CPU or checks learning, so
a device mix-up (a tensor or generator left on the CPU) fails here rather than in a long run.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from metarl.families import make_family

CUDA = os.environ.get("METARL_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(CUDA == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU")
FAMILIES = ["cartpole", "nav2d", "pendulum", "bandit", "tabular_mdp"]


def _family(name: str) -> Any:
    return make_family(name, None)


def _actions(env: Any, gen: torch.Generator) -> torch.Tensor:
    if env.discrete:
        return torch.randint(0, env.num_actions, (env.num_tasks, env.num_envs), generator=gen)
    return torch.rand((env.num_tasks, env.num_envs, env.action_dim), generator=gen) * 2 - 1


@pytest.mark.parametrize("name", FAMILIES)
def test_env_on_gpu_steps_like_the_cpu(name: str) -> None:
    # Same tasks, same state, same actions: the device env's observations and rewards equal
    # the CPU env's for the deterministic families; same shapes, dtypes for all.
    family = _family(name)
    tasks = family.sample(3, np.random.default_rng(0))
    cpu, gpu = family.make_env(tasks, 4), family.make_env(tasks, 4, device=CUDA)
    obs_c = cpu.reset(torch.Generator().manual_seed(0))
    obs_g = gpu.reset(torch.Generator(CUDA).manual_seed(0))
    assert obs_g.device.type == torch.device(CUDA).type
    assert obs_g.shape == obs_c.shape and obs_g.dtype == obs_c.dtype
    for key in ("state", "done"):  # the same state; task parameters computed on each device
        if isinstance(getattr(cpu, key, None), torch.Tensor):
            setattr(gpu, key, getattr(cpu, key).clone().to(CUDA))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        actions = _actions(cpu, gen)
        o_c, r_c, d_c = cpu.step(actions)
        o_g, r_g, d_g = gpu.step(actions.to(CUDA))
        assert (o_g.shape, r_g.shape, d_g.shape) == (o_c.shape, r_c.shape, d_c.shape)
        assert (o_g.dtype, r_g.dtype, d_g.dtype) == (o_c.dtype, r_c.dtype, d_c.dtype)
        if name in ("cartpole", "nav2d", "pendulum"):
            torch.testing.assert_close(o_g.cpu(), o_c, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(r_g.cpu(), r_c, rtol=1e-5, atol=1e-5)
            assert torch.equal(d_g.cpu(), d_c)


def test_gpu_rollouts_are_reproducible() -> None:
    from metarl.algos.rl2 import collect_trials, model_for

    family = _family("tabular_mdp")
    tasks = family.sample(4, np.random.default_rng(0))
    model = model_for(family, 16, torch.Generator().manual_seed(0)).to(CUDA)

    def play(seed: int) -> torch.Tensor:
        env = family.make_env(tasks, 3, device=CUDA)
        batch = collect_trials(model, env, 2, torch.Generator(CUDA).manual_seed(seed))
        return batch.rewards

    first, second, other = play(5), play(5), play(6)
    assert first.device.type == torch.device(CUDA).type
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", FAMILIES)
def test_rl2_trains_and_evaluates_on_gpu(name: str) -> None:
    from metarl.algos.rl2 import RL2, RL2Config

    family = _family(name)
    config = RL2Config(hidden_size=16, meta_batch_size=4, trials_per_task=2, num_epochs=1,
                       num_minibatches=2, bptt_length=7, gae_lambda=0.3, lr=1e-3,
                       reward_scale=1.0)
    algo = RL2(family, None, None, 2, config, seed=0, device=CUDA)
    before = {k: v.clone() for k, v in algo.model.state_dict().items()}
    stats = algo.train_step()
    assert all(np.isfinite(v) for v in stats.values()), stats
    after = algo.model.state_dict()
    assert all(v.device.type == torch.device(CUDA).type for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after)
    returns = algo.evaluate(family.sample(5, np.random.default_rng(1)),
                            torch.Generator(CUDA).manual_seed(0))
    assert returns.shape == (5,) and np.isfinite(returns).all()


def test_rl2_with_the_mdp_options_trains_on_gpu() -> None:
    # the trial clock (an env wrapper), the expected-reward hook and the pair code on CUDA
    from metarl.algos.rl2 import RL2, RL2Config

    family = _family("tabular_mdp")
    config = RL2Config(hidden_size=16, meta_batch_size=4, trials_per_task=2, num_epochs=1,
                       num_minibatches=2, bptt_length=0, inputs="pair_code", head="bilinear",
                       trial_clock=True, reward_signal="expected")
    algo = RL2(family, None, None, 2, config, seed=0, device=CUDA)
    stats = algo.train_step()
    assert all(np.isfinite(v) for v in stats.values()), stats
    returns = algo.evaluate(family.sample(5, np.random.default_rng(1)),
                            torch.Generator(CUDA).manual_seed(0), episodes_per_trial=4)
    assert returns.shape == (5,) and np.isfinite(returns).all()


def test_rl2_learns_on_gpu() -> None:
    # The CPU test's "one arm pays 0.9, the other 0.1" bandit, trained on the GPU.
    from metarl.algos.rl2 import RL2, RL2Config
    from tests.unit.test_rl2 import FarApartBandits

    family = FarApartBandits()
    config = RL2Config(hidden_size=32, meta_batch_size=32, trials_per_task=4, lr=3e-3,
                       gae_lambda=0.3, bptt_length=0, reward_scale=1.0)  # the CPU test's
    algo = RL2(family, 1, 2, 1, config, seed=0, device=CUDA)
    test = family.sample(500, np.random.default_rng(123))
    before = algo.evaluate(test, torch.Generator(CUDA).manual_seed(0)).mean()
    for _ in range(60):
        algo.train_step()
    after = algo.evaluate(test, torch.Generator(CUDA).manual_seed(0)).mean()
    assert 4.6 < before < 5.4
    assert after > 7.0, (before, after)


def test_maml_learns_nav2d_on_gpu() -> None:
    import dataclasses

    from metarl.algos.maml import MAML, make_policy
    from metarl.evaluation import adaptation_curve
    from pipelines.bench.maml import BENCH_CONFIG

    family = _family("nav2d")
    config = dataclasses.replace(BENCH_CONFIG, meta_batch_size=10, episodes_per_task=10)
    maml = MAML(make_policy(family, config.hidden_sizes, config.init_std), config, seed=0,
                device=CUDA)
    assert all(v.device.type == torch.device(CUDA).type for v in maml.theta.values())
    test = family.sample(20, np.random.default_rng(1))

    def post_adapt() -> float:
        curve = adaptation_curve(maml.learner(), family, test, 1, 10, seed=0, device=CUDA)
        return float(curve.mean(1)[1])

    before = post_adapt()
    rng = np.random.default_rng(0)
    for _ in range(15):
        stats = maml.meta_train_step(family, family.sample(10, rng))
        assert all(np.isfinite(v) for v in stats.values())
    after = post_adapt()
    assert after > before + 5, (before, after)


def test_rl2_pair_code_and_bilinear_heads_learn_an_mdp_on_gpu() -> None:
    # The CPU test's MDP (trials of 5 episodes, random play 50) with the MDP defaults'
    # encoding and heads, trained on the GPU.
    from metarl.algos.rl2 import RL2, RL2Config
    from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig

    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=5))
    config = RL2Config(hidden_size=64, meta_batch_size=32, trials_per_task=4, lr=3e-3,
                       discount=0.9, bptt_length=10, reward_scale=0.1, inputs="pair_code",
                       head="bilinear", gae_lambda=0.3)  # the CPU test's
    algo = RL2(family, None, None, 5, config, seed=0, device=CUDA)
    assert algo.model.pi_obs is not None and algo.model.pi_obs.weight.is_cuda
    test = family.sample(500, np.random.default_rng(123))
    for _ in range(40):
        algo.train_step()
    after = algo.evaluate(test, torch.Generator(CUDA).manual_seed(0)).mean()
    assert after > 53.5, after
