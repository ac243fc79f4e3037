"""Seconds per RL² iteration on the GPU for a few batch sizes (scratch, not shipped)."""
import dataclasses
import sys
import time

import torch

from metarl.algos.rl2 import RL2
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_rl2 import MDP_CONFIG, bandit_config

torch.set_num_threads(1)
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
only = sys.argv[2] if len(sys.argv) > 2 else None
cases = [
    ("500x50", 128, 2), ("500x50", 512, 2), ("500x50", 1024, 2), ("500x50", 2048, 2),
    ("100x50", 128, 4), ("100x50", 512, 4),
    ("mdp100", 64, 4), ("mdp100", 256, 4), ("mdp25", 256, 4), ("mdp10", 256, 4),
]
for name, mb, tpt in cases:
    if only and only not in (name, f"{name}:{mb}"):
        continue
    if name.startswith("mdp"):
        n = int(name[3:])
        fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
        cfg = dataclasses.replace(MDP_CONFIG, meta_batch_size=mb, trials_per_task=tpt)
        algo = RL2(fam, 10, 5, n, cfg, seed=0, device=dev)
    else:
        n, k = map(int, name.split("x"))
        fam = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
        cfg = dataclasses.replace(bandit_config(n), meta_batch_size=mb, trials_per_task=tpt)
        algo = RL2(fam, 1, k, 1, cfg, seed=0, device=dev)
    algo.train_step()
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 3
    for _ in range(reps):
        s = algo.train_step()
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    print(f"{name:8s} trials/iter {mb * tpt:5d}  {dt:6.2f} s/iter  {mb * tpt / dt:8.0f} trials/s"
          f"  trial return {s['trial_return']:.1f}", flush=True)
