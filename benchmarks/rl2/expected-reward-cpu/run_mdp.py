import sys, time
import numpy as np, torch
from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG, with_overrides, parse_overrides
torch.set_num_threads(1)
n, iters, seed, every = map(int, sys.argv[1:5])
over = parse_overrides(sys.argv[5:], "x")
cfg = with_overrides(MDP_CONFIG, over, "mdp")
fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
c = fam.config
algo = RL2(fam, c.num_states, c.num_actions, n, cfg, seed=_seed(10, 0, n, seed))
t0 = time.perf_counter()
for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        rs = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)))
        print(f"mdp{n} {over} it {i} {time.perf_counter()-t0:.0f}s train {st['trial_return']:.2f} "
              f"ent {st['entropy']:.3f} eval {rs.mean():.2f}", flush=True)
