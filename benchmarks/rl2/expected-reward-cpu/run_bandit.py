"""Experiment: train a bandit cell with bench defaults (+ overrides), eval sampled & greedy."""
import sys, time, json, dataclasses
import numpy as np, torch
from metarl.algos.rl2 import RL2, RL2Config
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import bandit_config, with_overrides, parse_overrides

torch.set_num_threads(1)
cell, iters, seed, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
over = parse_overrides(sys.argv[5:], "x")
n, k = map(int, cell.split("x"))
cfg = with_overrides(bandit_config(n), over, "bandit")
fam = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
test = fam.sample(1000, np.random.default_rng(_seed(0, 1, n, k, 0)))
algo = RL2(fam, 1, k, 1, cfg, seed=_seed(10, 0, n, k, seed))
t0 = time.perf_counter()
for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        g = torch.Generator().manual_seed(_seed(11, 0, n, k, seed))
        rs = algo.evaluate(test, g)
        rg = algo.evaluate(test, torch.Generator().manual_seed(1), greedy=True)
        print(f"{cell} {over} it {i} {time.perf_counter()-t0:.0f}s train {st['trial_return']:.2f} "
              f"ent {st['entropy']:.3f} sampled {rs.mean():.2f} greedy {rg.mean():.2f}", flush=True)
