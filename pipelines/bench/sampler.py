"""``metarl bench sampler``: batched torch sampler vs a gymnasium SyncVectorEnv loop.

Both sides run the same policy (a 32×32 tanh MLP, categorical sampling) on the same CartPole
physics for the same number of steps with auto-reset, in one process, one torch thread each,
measured back to back; the best of ``repeats`` timings is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import gymnasium as gym
import torch

from metarl.envs.cartpole import CartPoleFamily, CartPoleFamilyConfig, CartPoleTask
from metarl.policies import CategoricalMLPPolicy, act_fn, expand_params
from metarl.sampler import rollout_steps, sample_actions


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def batched_steps_per_s(policy: CategoricalMLPPolicy, num_envs: int, steps: int,
                        repeats: int) -> float:
    """Env-steps/s of :func:`metarl.sampler.rollout_steps` over ``num_envs`` slots."""
    num_tasks = max(1, num_envs // 10)
    env_per_task = num_envs // num_tasks
    family = CartPoleFamily(CartPoleFamilyConfig(max_steps=500))
    tasks = [CartPoleTask().to_dict()] * num_tasks  # the reference's physics in every slot
    env = family.make_env(tasks, env_per_task)
    params = expand_params(dict(policy.named_parameters()), num_tasks)
    act = act_fn(policy, {k: v.detach() for k, v in params.items()})
    generator = torch.Generator().manual_seed(0)
    elapsed = _best_time(lambda: rollout_steps(act, env, steps, generator), repeats)
    return num_tasks * env_per_task * steps / elapsed


def gym_steps_per_s(policy: CategoricalMLPPolicy, num_envs: int, steps: int,
                    repeats: int) -> float:
    """Env-steps/s of ``SyncVectorEnv(CartPole-v1)`` stepped with the same policy."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")
                                     for _ in range(num_envs)])
    generator = torch.Generator().manual_seed(0)

    def loop() -> None:
        obs, _ = envs.reset(seed=0)
        for _ in range(steps):
            with torch.no_grad():
                logits = policy(torch.from_numpy(obs))
            actions = sample_actions(logits, generator).numpy()
            obs, *_ = envs.step(actions)

    try:
        elapsed = _best_time(loop, repeats)
    finally:
        envs.close()
    return num_envs * steps / elapsed


def bench_sampler(sizes: Sequence[int], steps: int = 200, repeats: int = 3) -> list[dict]:
    """Print and return the table: envs, ours, gymnasium, speed-up."""
    torch.set_num_threads(1)
    policy = CategoricalMLPPolicy(4, 2, (32, 32))
    rows = []
    print(f"CartPole, {steps} steps per slot, policy MLP 32x32, torch threads 1, "
          f"best of {repeats}")
    print(f"{'envs':>6} | {'metarl batched (steps/s)':>24} | {'gym SyncVectorEnv (steps/s)':>27}"
          f" | {'speed-up':>8}")
    print("-" * 76)
    for n in sizes:
        ours = batched_steps_per_s(policy, n, steps, repeats)
        ref = gym_steps_per_s(policy, n, steps, repeats)
        rows.append({"envs": n, "metarl": ours, "gymnasium": ref, "speedup": ours / ref})
        print(f"{n:>6} | {ours:>24,.0f} | {ref:>27,.0f} | {ours / ref:>7.1f}x", flush=True)
    return rows


