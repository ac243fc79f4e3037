"""Run pytorch-maml-rl's ``train.py`` or ``test.py`` unchanged, timed from outside.

Executed by the *reference's* Python interpreter (``metarl bench maml --reference``), so it
imports nothing from metarl: only the standard library, torch, tqdm and the reference itself.
The reference's files are not modified; three things are patched in memory before its script
runs:

* ``torch.lstsq`` (removed in PyTorch 2.0; the reference's ``LinearFeatureBaseline`` solves its
  normal equations with it) is provided through ``torch.linalg.lstsq`` on PyTorch >= 2. The
  solution of the square, regularised system is the same.
* ``tqdm.trange`` (the reference's meta-training loop) also records a timestamp after every
  iteration and, every ``--checkpoint-every`` iterations, copies the ``policy.th`` the
  iteration just saved to ``policy-<iteration>.th``.
* ``maml_rl.utils.reinforcement_learning.get_returns`` (called once per iteration on the
  pre- and once on the post-adaptation episodes) also adds up the episodes' lengths: the env
  steps of the iteration, counted as the reference's own ``num_iterations`` log counts them.

Usage: ``python maml_reference_launcher.py LOG.json CHECKPOINT_EVERY SCRIPT.py [ARGS...]``;
``LOG.json`` receives ``{"stamps": [...], "env_steps": N}`` (rewritten after every iteration).
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any


def _patch_torch() -> None:
    import torch

    if int(torch.__version__.split(".")[0]) >= 2:
        def lstsq(b: Any, a: Any) -> tuple[Any, None]:
            return torch.linalg.lstsq(a, b).solution, None

        torch.lstsq = lstsq  # type: ignore[assignment,attr-defined,unused-ignore]


def _output_folder(argv: list[str]) -> str | None:
    return argv[argv.index("--output-folder") + 1] if "--output-folder" in argv else None


def main(argv: list[str]) -> None:
    """Patch, then run ``SCRIPT.py`` as ``__main__`` with ``ARGS`` (see the module docstring)."""
    log_path, every, script, *script_args = argv
    checkpoint_every = int(every)
    folder = _output_folder(script_args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    _patch_torch()
    log: dict[str, Any] = {"stamps": [], "env_steps": 0}

    def write_log() -> None:
        with open(log_path + ".tmp", "w") as f:
            json.dump(log, f)
        os.replace(log_path + ".tmp", log_path)

    import tqdm

    original_trange = tqdm.trange

    def trange(*args: Any, **kwargs: Any) -> Iterator[int]:
        total = len(range(*args))
        log["stamps"].append(time.perf_counter())
        for i in original_trange(*args, **kwargs):
            yield i
            log["stamps"].append(time.perf_counter())
            done = i + 1
            if folder and checkpoint_every and (done % checkpoint_every == 0 or done == total):
                shutil.copyfile(os.path.join(folder, "policy.th"),
                                os.path.join(folder, f"policy-{done}.th"))
            write_log()

    tqdm.trange = trange

    import maml_rl.utils.reinforcement_learning as rl

    original_get_returns = rl.get_returns

    def get_returns(episodes: Any) -> Any:
        log["env_steps"] += int(sum(int(sum(episode.lengths)) for episode in episodes))
        return original_get_returns(episodes)

    rl.get_returns = get_returns
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")
    write_log()


if __name__ == "__main__":
    main(sys.argv[1:])
