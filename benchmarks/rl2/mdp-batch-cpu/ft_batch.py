"""Experiment: does a larger batch lift the MDP plateau? Fine-tune a finished clocked model.

Both the 10- and the 25-episode clocked models stop at n = 25 ≈ 437 (``../mdp-clock-cpu/``),
so the plateau is not the trial length. This goes on training the 25-episode model of seed S
(the bench's training state after 2000 iterations, ``../mdp-clock-cpu/bench-25/ckpt``) at the
dropped learning rate with MDP_CONFIG's batch times MULT (``meta_batch_size``), and scores
n = 25 and 50 on the bench's test instances and evaluation seeds every EVERY iterations.
MULT 1 is the control at the same seconds (run it for MULT × the iterations).

python ft_batch.py SEED MULT ITERS EVERY
"""
import dataclasses
import sys
import time

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG

torch.set_num_threads(1)
seed, mult, iters, every = map(int, sys.argv[1:])
config = dataclasses.replace(MDP_CONFIG, meta_batch_size=MDP_CONFIG.meta_batch_size * mult)
family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=25))
c = family.config
algo = RL2(family, c.num_states, c.num_actions, 25, config, seed=_seed(10, 0, 25, seed))
saved = torch.load(f"../mdp-clock-cpu/bench-25/ckpt/mdp-25-s{seed}.pt", map_location="cpu",
                   weights_only=True)
algo.load_training_state(saved["state"])
tests = {}
for n in (25, 50):
    fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    tests[n] = (fam, fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0))))


def scores() -> str:
    out = []
    for n, (fam, test) in tests.items():
        r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)),
                          family=fam, episodes_per_trial=n)
        out.append(f"n={n} {float(np.mean(r)):.1f}")
    return " ".join(out)


t0 = time.perf_counter()
print(f"batch x{mult} s{seed} it {algo.iteration} 0s {scores()}", flush=True)
for i in range(1, iters + 1):
    algo.train_step()
    if i % every == 0:
        print(f"batch x{mult} s{seed} it {algo.iteration} {time.perf_counter() - t0:.0f}s "
              f"{scores()}", flush=True)
