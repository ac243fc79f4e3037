"""Experiment: the 25-episode clocked MDP models (``bench-25/ckpt``) on every row, n = 10 too.

``metarl bench rl2 --mdp-train-episodes 25`` scores n = 25 to 100 with the model trained on
25-episode trials, and trains n = 10 a model of its own. Here the 25-episode models also play
the 10-episode trial (the clock runs over 10 episodes: a compressed schedule), scored on the
bench's test instances and evaluation seeds, as the table's rows are:

python play_short.py SEED [SEED ...]
"""
import sys

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG

torch.set_num_threads(1)
rows = (10, 25, 50, 75, 100)
scores = {n: [] for n in rows}
for seed in map(int, sys.argv[1:]):
    family = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=25))
    c = family.config
    algo = RL2(family, c.num_states, c.num_actions, 25, MDP_CONFIG, seed=_seed(10, 0, 25, seed))
    saved = torch.load(f"bench-25/ckpt/mdp-25-s{seed}.pt", map_location="cpu",
                       weights_only=True)
    algo.load_training_state(saved["state"])
    line = []
    for n in rows:
        fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
        test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
        r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)),
                          family=fam, episodes_per_trial=n)
        scores[n].append(np.asarray(r))
        line.append(f"n={n} {float(r.mean()):.1f}")
    print(f"seed {seed} it {saved['iterations']}: " + " ".join(line), flush=True)
if len(sys.argv) > 2:
    line = []
    for n in rows:
        mean = np.mean(scores[n], axis=0)
        half = 1.96 * mean.std(ddof=1) / np.sqrt(len(mean))
        line.append(f"n={n} {mean.mean():.1f} [{mean.mean() - half:.1f}, {mean.mean() + half:.1f}]")
    print("mean of seeds: " + " ".join(line))
