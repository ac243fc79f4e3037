"""``metarl play``: roll a model out on a task of yours, print the returns, optionally film it.

The model is what ``metarl adapt`` reads (a registered version, a project's ``models/``) or,
with ``--adapted DIR``, the folder ``metarl adapt --out DIR`` wrote: the policy adapted to that
folder's first task. ``--video out.gif|out.mp4`` renders the first episode's frames (the
family's ``render_frame``: numpy drawings for the cheap families, MuJoCo's renderer for the
MuJoCo ones where a GL backend works).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.algos.base import WrapsEnv
from metarl.api import Model, checkpoint_family
from metarl.sampler import rollout
from pipelines.adapt import load_adapted, open_model, read_tasks


def play_model(uri: str | None, task: str | None = None, task_file: Path | None = None,
               adapted: Path | None = None, episodes: int = 5, seed: int = 0,
               video: Path | None = None, fps: float = 30.0) -> dict[str, Any]:
    """``metarl play``: the returns of ``episodes`` episodes; with ``video``, a film of one."""
    if episodes < 1:
        raise ValueError(f"--episodes={episodes}: must be >= 1")
    if video is not None and Path(video).suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"--video={str(video)!r}: the file must end in .gif or .mp4")
    with tempfile.TemporaryDirectory(prefix="metarl-play-") as tmp:
        if adapted is not None:
            learner, params, curve = load_adapted(Path(adapted))
            model = Model(learner, _config(Path(adapted)), params)
            model.steps = int(curve.get("steps", 1))
            tasks = tuple(curve["tasks"][:1]) if task is None and task_file is None else None
        elif uri is None:
            raise ValueError("give MODEL_URI, or --adapted DIR (a folder `metarl adapt` wrote)")
        else:
            opened = open_model(uri, Path(tmp))
            model = Model(opened.learner, opened.config)
            tasks = None
        family = checkpoint_family(model.config)
        if tasks is None:
            tasks = read_tasks(family, task, task_file)[:1]
        if adapted is not None and next(iter(model.params.values())).shape[0] != 1:
            model.params = {k: v[:1] for k, v in model.params.items()}
        env = family.make_env(list(tasks), episodes)
        if isinstance(model.learner, WrapsEnv):
            env = model.learner.wrap_env(env)
        frames: list[np.ndarray] = []
        watch = (lambda e: frames.append(e.render_frame(0, 0))) if video is not None else None
        batch = rollout(model.policy(), env, torch.Generator().manual_seed(seed), watch)
    returns = batch.episode_returns[0].tolist()
    lengths = batch.mask.sum(-1)[0].long().tolist()
    state = "adapted" if model.steps else "before adaptation"
    print(f"{family.name} task {tasks[0]} ({state}, {episodes} episodes, seed {seed})")
    print(" episode | return | steps")
    for i, (ret, steps) in enumerate(zip(returns, lengths, strict=True)):
        print(f" {i:7d} | {ret:6.1f} | {steps:5d}")
    print(f"    mean | {float(np.mean(returns)):6.1f} |")
    result: dict[str, Any] = {"task": tasks[0], "adapted": bool(model.steps),
                              "returns": returns, "lengths": lengths}
    if video is not None:
        from pipelines.video import write_video

        first = frames[: lengths[0] + 1]  # the reset's frame and each step of episode 0
        result["video"] = str(write_video(first, video, fps))
        result["frames"] = len(first)
        print(f"video: {video} ({len(first)} frames of episode 0)")
    return result


def _config(folder: Path) -> dict[str, Any]:
    from metarl.checkpoint import read_config

    return read_config(folder / "config.json")
