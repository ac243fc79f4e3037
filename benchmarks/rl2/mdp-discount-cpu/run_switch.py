"""Experiment: the bench's MDP n = SHORT training (seed SEED, `MDP_CONFIG`), with some RL²
settings replaced from iteration AT on (e.g. a longer discount once the policy is learning);
scores on trials of SHORT and, zero-shot, of each N given, every EVERY iterations from AT on
(and at AT).

python run_switch.py SHORT ITERS SEED AT EVERY N [N ...] -- KEY=VALUE ...
The bench's instances and evaluation seeds per cell (`metarl bench rl2 --cells N`): up to AT
this is the DVC table's training of the n = 10 model exactly.
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
args = sys.argv[1:]
over = parse_overrides(args[args.index("--") + 1:], "switch")
short, iters, seed, at, every, *longs = map(int, args[:args.index("--")])
train = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=short))
c = train.config
algo = RL2(train, c.num_states, c.num_actions, short, MDP_CONFIG, seed=_seed(10, 0, short, seed))
t0 = time.perf_counter()


def score(n: int) -> float:
    fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)), family=fam,
                      episodes_per_trial=n)
    return float(r.mean())


for i in range(1, iters + 1):
    if i == at + 1:
        algo.config = with_overrides(algo.config, over, "switch")
    st = algo.train_step()
    if i == at or (i > at and (i - at) % every == 0) or i == iters:
        scores = " ".join(f"n={n} {score(n):.1f}" for n in [short, *longs])
        what = over if i > at else "defaults"
        print(f"mdp{short} s{seed} it {i} ({what}) {time.perf_counter()-t0:.0f}s train "
              f"{st['trial_return']:.2f} ent {st['entropy']:.3f} lr {st['lr']:g} {scores}",
              flush=True)
    elif i % 400 == 0:
        print(f"mdp{short} s{seed} it {i} {time.perf_counter()-t0:.0f}s train "
              f"{st['trial_return']:.2f}", flush=True)
