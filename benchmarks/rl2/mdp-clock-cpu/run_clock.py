"""Experiment: the bench's MDP training with a trial clock in the observation.

The MDP observation is the one-hot state; here it also carries the fraction of the trial's
episodes already played (0, 1/n, ..., (n-1)/n), like the bandit's ``t / n``. A model trained
on n = 10 episodes then plays a 25-episode trial on the same schedule, stretched, instead of
playing on past what it trained for; trained on a mix of lengths it can tell them apart.

python run_clock.py LENGTHS ITERS SEED EVERY N [N ...]     e.g. run_clock.py 10 2000 0 200 10 25 50 75 100
LENGTHS: trial lengths trained on, one per iteration in turn (e.g. 10 or 10,25). Seeded, and
scored on the instances, as the bench's n = SHORT training (SHORT the first of LENGTHS).
"""
import dataclasses
import sys
import time

import numpy as np
import torch

from metarl.algos.rl2 import RL2
from metarl.envs.tabular_mdp import BatchedTabularMDP, TabularMDPFamily, TabularMDPFamilyConfig
from pipelines.bench_baselines import _seed
from pipelines.bench_rl2 import MDP_CONFIG


class ClockedMDP(BatchedTabularMDP):
    """The batched MDP with the played fraction of the trial appended to the observation."""

    def __init__(self, *args, num_episodes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_episodes = num_episodes
        self.obs_dim = self.num_states + 1
        self.episodes = torch.zeros_like(self.t)

    def observe(self) -> torch.Tensor:
        clock = (self.episodes.to(self.dtype) / self.num_episodes).unsqueeze(-1)
        return torch.cat([super().observe(), clock], dim=-1)

    def restart(self) -> torch.Tensor:
        self.episodes = torch.zeros_like(self.t)
        return super().restart()

    def reset_done(self, generator: torch.Generator) -> torch.Tensor:
        self.episodes = self.episodes + self.done.long()
        return super().reset_done(generator)


class ClockedFamily(TabularMDPFamily):
    def make_env(self, tasks, num_envs, device="cpu"):
        c = self.config
        means = torch.tensor([t["reward_means"] for t in tasks], dtype=torch.float32)
        rows = torch.tensor([t["transitions"] for t in tasks], dtype=torch.float32)
        return ClockedMDP(means, rows, num_envs, c.horizon, c.reward_noise_std, device=device,
                          num_episodes=c.num_episodes)


torch.set_num_threads(1)
lengths = [int(x) for x in sys.argv[1].split(",")]
iters, seed, every, *cells = map(int, sys.argv[2:])
families = [ClockedFamily(TabularMDPFamilyConfig(num_episodes=m)) for m in lengths]
c = families[0].config
# The env adds the clock here: the library's own (MDP_CONFIG.trial_clock, on since this script's
# first runs) stays off, else the model reads two copies of it (as clock-25.txt and
# clock-10-50.txt did: README.md).
CONFIG = dataclasses.replace(MDP_CONFIG, trial_clock=False)
algo = RL2(families[0], c.num_states + 1, c.num_actions, lengths[0], CONFIG,
           seed=_seed(10, 0, lengths[0], seed))
t0 = time.perf_counter()


def score(n: int) -> float:
    fam = ClockedFamily(TabularMDPFamilyConfig(num_episodes=n))
    test = fam.sample(1000, np.random.default_rng(_seed(0, 3, n, 0)))
    r = algo.evaluate(test, torch.Generator().manual_seed(_seed(11, 0, n, seed)), family=fam,
                      episodes_per_trial=n)
    return float(r.mean())


for i in range(1, iters + 1):
    j = (i - 1) % len(lengths)
    algo.family, algo.episodes_per_trial = families[j], lengths[j]
    st = algo.train_step()
    if i % every == 0 or i == iters:
        scores = " ".join(f"n={n} {score(n):.1f}" for n in cells)
        print(f"clock {lengths} s{seed} it {i} {time.perf_counter()-t0:.0f}s "
              f"ent {st['entropy']:.3f} {scores}", flush=True)
        torch.save(algo.model.state_dict(), f"clock-{'-'.join(map(str, lengths))}-s{seed}.pt")
