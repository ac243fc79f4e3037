"""Screen: the bench's MDP training (MDP_CONFIG, 10-episode trials, seed s, the bench's seeding)
with PPO settings replaced, scored on the bench's test instances every EVERY iterations.

python run_ppo.py ITERS SEED EVERY [KEY=VALUE ...]     e.g. run_ppo.py 2000 0 200 max_grad_norm=2
With no KEY=VALUE it is the table's seed-0 training (`../mdp-clock-cpu/clock-10.txt` row for row).
"""
import sys
import time

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG, parse_overrides, with_overrides

torch.set_num_threads(1)
iters, seed, every = map(int, sys.argv[1:4])
overrides = parse_overrides(sys.argv[4:], "settings")
config = with_overrides(MDP_CONFIG, overrides, "mdp")
family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=10))
c = family.config
algo = RL2(family, c.num_states, c.num_actions, 10, config, seed=_seed(10, 0, 10, seed))
label = " ".join(sys.argv[4:]) or "defaults"
t0 = time.perf_counter()


def score(n: int) -> float:
    fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)), family=fam,
                      episodes_per_trial=n)
    return float(r.mean())


for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        scores = " ".join(f"n={n} {score(n):.1f}" for n in (10, 25, 50, 75, 100))
        print(f"{label} s{seed} it {i} {time.perf_counter() - t0:.0f}s "
              f"ent {st['entropy']:.3f} {scores}", flush=True)
