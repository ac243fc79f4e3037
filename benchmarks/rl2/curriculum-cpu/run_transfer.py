"""Experiment: train RL² on SHORTxK bandit trials (bench defaults), score it on SHORTxK and NxK.

python run_transfer.py SHORT N K ITERS SEED EVERY [KEY=VALUE ...]
Every EVERY iterations: the sampled-action test return on the 1000 bench instances of the
SHORTxK cell and, zero-shot, of the NxK cell (the evaluation seeds of `metarl bench rl2`).
"""
import sys, time
import numpy as np, torch
from metarl.algos.rl2 import RL2
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import bandit_config, with_overrides, parse_overrides

torch.set_num_threads(1)
short, n, k, iters, seed, every = map(int, sys.argv[1:7])
over = parse_overrides(sys.argv[7:], "x")
t0 = time.perf_counter()
train = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=short))
algo = RL2(train, 1, k, 1, with_overrides(bandit_config(short), over, "x"),
           seed=_seed(10, 0, short, k, seed))


def score(m):
    fam = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=m))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 1, m, k, 0)))
    algo.family = fam
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, m, k, seed)))
    algo.family = train
    return r.mean()


for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        print(f"{short}x{k} {over} it {i} {time.perf_counter()-t0:.0f}s train "
              f"{st['trial_return']:.2f} ent {st['entropy']:.3f} score {score(short):.2f} "
              f"{n}x{k} {score(n):.2f}", flush=True)
