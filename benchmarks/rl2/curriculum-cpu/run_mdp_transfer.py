"""Experiment: train RL² on tabular-MDP trials of SHORT episodes (bench defaults), score it on
trials of SHORT and, zero-shot, of each N given.

python run_mdp_transfer.py SHORT ITERS SEED EVERY N [N ...] [-- KEY=VALUE ...]
The bench's instances and evaluation seeds per cell (`metarl bench rl2 --cells N`).
"""
import sys, time
import numpy as np, torch
from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG, with_overrides, parse_overrides

torch.set_num_threads(1)
args = sys.argv[1:]
over_args = args[args.index("--") + 1:] if "--" in args else []
args = args[:args.index("--")] if "--" in args else args
short, iters, seed, every, *longs = map(int, args)
over = parse_overrides(over_args, "x")
train = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=short))
c = train.config
algo = RL2(train, c.num_states, c.num_actions, short, with_overrides(MDP_CONFIG, over, "mdp"),
           seed=_seed(10, 0, short, seed))
t0 = time.perf_counter()


def score(n):
    fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)), family=fam,
                      episodes_per_trial=n)
    return r.mean()


for i in range(1, iters + 1):
    st = algo.train_step()
    if i % every == 0 or i == iters:
        scores = " ".join(f"n={n} {score(n):.1f}" for n in [short, *longs])
        print(f"mdp{short} {over} it {i} {time.perf_counter()-t0:.0f}s train "
              f"{st['trial_return']:.2f} ent {st['entropy']:.3f} {scores}", flush=True)
