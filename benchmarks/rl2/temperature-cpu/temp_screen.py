"""Score a trained RL² checkpoint with its action logits divided by a temperature.

    python temp_screen.py bandit 100 10 CKPT SEED [T ...]      # scores 100x10 and 500x10
    python temp_screen.py mdp 10 0 CKPT SEED [T ...]           # scores n = 10 / 25 / 50 / 75 / 100
Prints, per temperature, the tuning-instance score (200 per cell) and the test score (1000).
"""
import sys

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_rl2 import MDP_CONFIG, _seed, _validation, bandit_config
from pipelines.bench_baselines import load_reference

torch.set_num_threads(1)
table, n, k, ckpt, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
temps = [float(t) for t in sys.argv[6:]] or [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
saved = torch.load(ckpt, map_location="cpu", weights_only=True)
if table == "bandit":
    fam = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
    algo = RL2(fam, 1, k, 1, bandit_config(n), seed=0)
    cells = [(n, k), (5 * n, k)]
else:
    fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    c = fam.config
    algo = RL2(fam, c.num_states, c.num_actions, n, MDP_CONFIG, seed=0)
    cells = [(10, 0), (25, 0), (50, 0), (75, 0), (100, 0)]
algo.load_training_state(saved["state"])
model = algo.model
orig = model.sample
T = [1.0]
def sample(out, generator, greedy=False):
    if T[0] == 0.0:
        return orig(out, generator, True)
    return orig(out / T[0], generator, False)
model.sample = sample
ref = load_reference()
for temp in temps:
    T[0] = temp
    line = [f"T={temp:.2f}"]
    for cn, ck in cells:
        if table == "bandit":
            f = BanditFamily(BanditFamilyConfig(num_arms=ck, num_pulls=cn))
            test = f.sample(1000, np.random.default_rng(_seed(0, 1, cn, ck, 0)))
            g = _seed(11, 0, cn, ck, s)
            ep = 1
            val = _validation("bandit", (cn, ck), lambda c: (100, c[1]), 0, ref)
            val = [v for v in val if (v.steps, v.family.config.num_arms) == (cn, ck)][0]
        else:
            f = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=cn))
            test = f.sample(1000, np.random.default_rng(_seed(0, 3, cn, 0)))
            g = _seed(11, 0, cn, s)
            ep = cn
            val = _validation("mdp", (cn, 0), lambda c: 10, 0, ref)
            val = [v for v in val if v.steps == cn][0]
        tune = val.score(algo, "cpu") * cn
        ret = algo.evaluate(test, torch.Generator().manual_seed(g), family=f, episodes_per_trial=ep)
        line.append(f"{cn}x{ck}: tune {tune:.2f} test {ret.mean():.2f}")
    print("  ".join(line), flush=True)
