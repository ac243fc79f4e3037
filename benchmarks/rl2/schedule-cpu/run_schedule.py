"""Experiment: RL² on an N-pull bandit cell (bench defaults + KEY=VALUE overrides, e.g. an lr drop),
scored every EVERY iterations on the cell's and, zero-shot, the LONGxK cell's 1000 bench instances
(the evaluation seeds of `metarl bench rl2`), with sampled actions (what the bench reports) and
greedy ones.

python run_schedule.py N LONG K ITERS SEED EVERY [KEY=VALUE ...]
"""
import sys, time
import numpy as np, torch
from metarl.algos.rl2 import RL2
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import bandit_config, with_overrides, parse_overrides

torch.set_num_threads(1)
n, long_, k, iters, seed, every = map(int, sys.argv[1:7])
over = parse_overrides(sys.argv[7:], "x")
t0 = time.perf_counter()
train = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
algo = RL2(train, 1, k, 1, with_overrides(bandit_config(n), over, "x"),
           seed=_seed(10, 0, n, k, seed))


def score(m, greedy):
    fam = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=m))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 1, m, k, 0)))
    return algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, m, k, seed)),
                         greedy=greedy, family=fam).mean()


for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        print(f"{n}x{k} s{seed} {over} it {i} {time.perf_counter()-t0:.0f}s train "
              f"{st['trial_return']:.2f} ent {st['entropy']:.3f} | sampled {score(n, False):.2f} "
              f"{long_}x{k} {score(long_, False):.2f} | greedy {score(n, True):.2f} "
              f"{long_}x{k} {score(long_, True):.2f}", flush=True)
