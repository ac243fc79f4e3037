"""Fine-tune the bench's MDP model from a checkpoint with other RL² settings.

python run_finetune.py CKPT EPISODES ITERS EVERY WARMUP -- KEY=VALUE ...
CKPT: a `--checkpoints` file of `metarl bench rl2 --cells 10 ...` (the table's n = 10 model at
2000 iterations); EPISODES: the training trials' episodes from here on; WARMUP: iterations that
train only the value head (the policy unchanged) so that it learns the new settings' targets
before the policy follows them. Scores n = 10 / 25 / 50 / 100 on the bench's test instances and
evaluation seeds (seed 0) every EVERY iterations, and n = 25 / 100 on their tuning instances.
"""
import sys
import time

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed, load_reference
from pipelines.bench_rl2 import MDP_CONFIG, _validation, parse_overrides, with_overrides

torch.set_num_threads(1)
args = sys.argv[1:]
over = parse_overrides(args[args.index("--") + 1:], "finetune")
ckpt = args[0]
episodes, iters, every, warmup = map(int, args[1:args.index("--")])
fam = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=episodes))
c = fam.config
saved = torch.load(ckpt, map_location="cpu", weights_only=True)
algo = RL2(fam, c.num_states, c.num_actions, episodes, MDP_CONFIG, seed=saved["seed"])
algo.load_training_state(saved["state"])
algo.config = with_overrides(MDP_CONFIG, over, "finetune")
val = {v.steps: v for v in _validation("mdp", (10, 0), lambda x: 10, 0, load_reference())}
t0 = time.perf_counter()


def score(n: int) -> float:
    f = TabularMDPFamily(TabularMDPFamilyConfig(num_episodes=n))
    test = f.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, 0)), family=f,
                      episodes_per_trial=n)
    return float(r.mean())


def report(i: int, st: dict | None) -> None:
    tests = " ".join(f"n={n} {score(n):.1f}" for n in (10, 25, 50, 100))
    tunes = " ".join(f"tune{n} {val[n].score(algo, 'cpu') * n:.1f}" for n in (25, 100))
    train = "" if st is None else f"train {st['trial_return']:.2f} ent {st['entropy']:.3f} "
    print(f"it {i} {time.perf_counter() - t0:.0f}s {train}{tests} | {tunes}", flush=True)


report(0, None)
main_opt, main_params = algo.optimizer, algo.params
if warmup:
    head = [p for name, p in algo.model.named_parameters() if name.split(".")[0] in ("v", "v_obs")]
    algo.optimizer, algo.params = torch.optim.Adam(head, lr=3e-3, eps=1e-5), head
for i in range(1, warmup + iters + 1):
    if i == warmup + 1:
        algo.optimizer, algo.params = main_opt, main_params
    st = algo.train_step()
    if i == warmup or (i > warmup and (i - warmup) % every == 0):
        report(i, st)
    elif i % 10 == 0:
        print(f"it {i} {time.perf_counter() - t0:.0f}s train {st['trial_return']:.2f} "
              f"vloss {st.get('value_loss', float('nan')):.4f}", flush=True)
