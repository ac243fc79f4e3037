"""Learning thresholds on the CartPole task distribution (slow: about a minute)."""

from __future__ import annotations

import pytest
import torch

from metarl.algos.base import GradientAdaptedPolicy, RandomLearner
from metarl.algos.maml import MAMLConfig, train_maml
from metarl.algos.pretrain import pretrain_multitask
from metarl.baselines.oracles import oracle_returns
from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig
from metarl.evaluation import meta_test, normalized
from metarl.tasks import sample_task_sets


@pytest.mark.slow
def test_maml_adapts_and_beats_baselines_on_held_out_tasks() -> None:
    family = CartPoleFamily(CartPoleFamilyConfig(max_steps=100))
    sets = sample_task_sets(family, {"train": 50, "test": 12}, seed=3)
    config = MAMLConfig(meta_batch_size=10, episodes_per_task=10, inner_lr=0.5)
    maml = train_maml(family, sets["train"], config, num_iterations=30, seed=0)
    pretrained = pretrain_multitask(family, sets["train"], config, num_iterations=60, seed=0)
    scratch = GradientAdaptedPolicy(maml.policy, maml.policy.init_params(
        torch.Generator().manual_seed(1)), config.inner_lr, config.discount)
    res = meta_test({"maml": maml.learner(), "pretrained": pretrained, "scratch": scratch,
                     "random": RandomLearner()}, family, sets["test"], num_adapt_steps=2,
                    episodes_per_task=10, seeds=[0, 1])
    rand = res["random"].mean[0]
    best = float(oracle_returns(family, sets["test"].tasks).mean())
    score = {k: float(normalized(v.mean[-1], rand, best)) for k, v in res.items()}
    # No single policy does well on every task: before adaptation MAML's init is near random.
    assert float(normalized(res["maml"].mean[0], rand, best)) < 0.3
    # After two steps it is close to the best possible return and beats every baseline.
    assert score["maml"] > 0.8, score
    assert score["maml"] > score["pretrained"] + 0.2, score
    assert score["maml"] > score["scratch"] + 0.5, score
