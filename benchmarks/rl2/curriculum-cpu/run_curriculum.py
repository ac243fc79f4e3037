"""Experiment: pretrain RL² on SHORTxK bandit trials, then train on NxK (bench defaults for each).

python run_curriculum.py CELL SHORT PRE_ITERS ITERS SEED EVERY [KEY=VALUE ...] [post.KEY=VALUE ...]
(post.: the second phase only)
Prints the sampled-action test return on the cell's 1000 bench instances (those of
`metarl bench rl2`, same evaluation seed) at iteration 0 of the second phase (zero-shot) and
every EVERY iterations.
"""
import sys, time
import numpy as np, torch
from metarl.algos.rl2 import RL2
from metarl.envs.bandit import BanditFamily, BanditFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import bandit_config, with_overrides, parse_overrides

torch.set_num_threads(1)
cell, short, pre, iters, seed, every = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                        int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
args = sys.argv[7:]
over = parse_overrides([a for a in args if not a.startswith("post.")], "x")
post = {**over, **parse_overrides([a[5:] for a in args if a.startswith("post.")], "x")}
n, k = map(int, cell.split("x"))
fam = BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=n))
test = fam.sample(1000, np.random.default_rng(_seed(0, 1, n, k, 0)))
t0 = time.perf_counter()
first = RL2(BanditFamily(BanditFamilyConfig(num_arms=k, num_pulls=short)), 1, k, 1,
            with_overrides(bandit_config(short), over, "x"), seed=_seed(10, 0, short, k, seed))
for i in range(1, pre + 1):
    st = first.train_step()
    if i % 50 == 0 or i == pre:
        print(f"pre {short}x{k} it {i} {time.perf_counter()-t0:.0f}s train {st['trial_return']:.2f} "
              f"ent {st['entropy']:.3f}", flush=True)
algo = RL2(fam, 1, k, 1, with_overrides(bandit_config(n), post, "x"), seed=_seed(10, 0, n, k, seed))
algo.model.load_state_dict(first.model.state_dict())


def report(i, st=None):
    rs = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, k, seed)))
    tr = "" if st is None else f" train {st['trial_return']:.2f} ent {st['entropy']:.3f}"
    print(f"{cell} from {short}x{k}/{pre} {post} it {i} {time.perf_counter()-t0:.0f}s{tr} "
          f"sampled {rs.mean():.2f}", flush=True)


report(0)
for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        report(i, st)
