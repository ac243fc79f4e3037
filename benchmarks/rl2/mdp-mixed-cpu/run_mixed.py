"""Experiment: the bench's MDP training (seed SEED, `MDP_CONFIG`) on trials whose length
alternates between the episode counts given in LENGTHS (one per iteration, in turn), scored
on trials of each N given (the bench's instances and evaluation seeds) every EVERY iterations.

python run_mixed.py LENGTHS ITERS SEED EVERY N [N ...]      e.g. run_mixed.py 10,25 1000 0 200 10 25 50 100
Seeded as the bench's n = SHORT training (SHORT the first of LENGTHS).
"""
import sys
import time

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG

torch.set_num_threads(1)
lengths = [int(x) for x in sys.argv[1].split(",")]
iters, seed, every, *cells = map(int, sys.argv[2:])
families = [TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=m)) for m in lengths]
c = families[0].config
algo = RL2(families[0], c.num_states, c.num_actions, lengths[0], MDP_CONFIG,
           seed=_seed(10, 0, lengths[0], seed))
t0 = time.perf_counter()


def score(n: int) -> float:
    fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)), family=fam,
                      episodes_per_trial=n)
    return float(r.mean())


for i in range(1, iters + 1):
    j = (i - 1) % len(lengths)
    algo.family, algo.episodes_per_trial = families[j], lengths[j]
    st = algo.train_step()
    if i % every == 0 or i == iters:
        scores = " ".join(f"n={n} {score(n):.1f}" for n in cells)
        print(f"mixed {lengths} s{seed} it {i} {time.perf_counter()-t0:.0f}s "
              f"ent {st['entropy']:.3f} {scores}", flush=True)
