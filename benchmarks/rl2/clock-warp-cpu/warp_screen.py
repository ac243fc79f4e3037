"""Score the MDP model (trained with the trial clock) with its clock warped at test time.

    python warp_screen.py CKPT SEED [P ...]
The clock an n-episode trial shows is (episode / n) ** P instead of episode / n (P = 1: as
trained; P > 1 runs it slow early, stretching the exploring part of the trial; P < 1 runs it
fast). Prints, per P, each cell's tuning-instance score (the bench's 200 per cell, apart from
the test instances) and test score (the bench's 1000 instances and evaluation seed).
"""
import sys

import numpy as np
import torch

import metarl.algos.rl2 as rl2
from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import load_reference
from pipelines.bench_rl2 import MDP_CONFIG, _seed, _validation

torch.set_num_threads(1)
ckpt, s = sys.argv[1], int(sys.argv[2])
powers = [float(p) for p in sys.argv[3:]] or [0.7, 0.85, 1.0, 1.2, 1.5, 2.0]
saved = torch.load(ckpt, map_location="cpu", weights_only=True)
fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=10))
algo = RL2(fam, 10, 5, 10, MDP_CONFIG, seed=0)
algo.load_training_state(saved["state"])
straight = rl2.with_clock
P = [1.0]


def warped(obs, episode, n):
    clock = (episode.to(obs.dtype) / n) ** P[0]
    return torch.cat([obs, clock.unsqueeze(-1)], dim=-1)


rl2.with_clock = warped
ref = load_reference()
for p in powers:
    P[0] = p
    line = [f"P={p:.2f}"]
    for n in (10, 25, 50, 75, 100):
        f = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
        test = f.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
        val = [v for v in _validation("mdp", (n, 0), lambda c: 10, 0, ref) if v.steps == n][0]
        tune = val.score(algo, "cpu") * n
        ret = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, s)), family=f,
                            episodes_per_trial=n)
        line.append(f"n={n} tune {tune:.1f} test {ret.mean():.1f}")
    print("  ".join(line), flush=True)
