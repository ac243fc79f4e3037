"""Training loops that can stop anywhere and resume bit-identically (on CPU).

Every meta-training loop in metarl runs through :func:`run_loop`: it takes one iteration at a
time and, after each, hands a :class:`Resume`'s ``save`` callback the number of iterations done
and a function that returns the loop's *whole* state — parameters, optimiser moments, every
random generator (torch and numpy, the task draws' included) — as plain tensors, numbers and
dicts (safe for ``torch.save`` and ``torch.load(weights_only=True)``). Given that state back,
the loop continues with exactly the tasks, rollouts and updates the uninterrupted run would
have had. Where and how often the state is written is the caller's business (the pipeline
writes it atomically every ``train.checkpoint_every`` iterations).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from metarl.tasks import TaskSet

State = dict[str, Any]
"""A loop's whole state: tensors, numbers, strings and (nested) dicts and lists of them."""

StateFn = Callable[[], State]
"""Returns the current state (called only when it is to be saved: it copies tensors)."""


@dataclass(frozen=True)
class Resume:
    """How a training loop starts and reports its state.

    Attributes:
        state: a state an earlier run handed to ``save`` (its ``iteration`` says where to go
            on from); None starts from scratch.
        save: called after each iteration as ``save(iterations_done, state_fn)``.

    """

    state: State | None = None
    save: Callable[[int, StateFn], None] | None = None


class TaskBatches:
    """Draws meta-batches of ``batch_size`` distinct tasks (with replacement if too few).

    Its numpy generator is part of a training loop's state (:meth:`state`).
    """

    def __init__(self, task_set: TaskSet, batch_size: int, rng: np.random.Generator) -> None:
        self.task_set, self.batch_size, self.rng = task_set, batch_size, rng

    def __call__(self) -> list[dict[str, Any]]:
        """One meta-batch."""
        replace = self.batch_size > len(self.task_set)
        idx = self.rng.choice(len(self.task_set), size=self.batch_size, replace=replace)
        return [self.task_set.tasks[i] for i in idx]

    def state(self) -> State:
        """The generator's state."""
        return dict(self.rng.bit_generator.state)

    def load_state(self, state: State) -> None:
        """Continue from :meth:`state`."""
        self.rng.bit_generator.state = state


def run_loop(step: Callable[[int], None], num_iterations: int, get_state: StateFn,
             set_state: Callable[[State], None], resume: Resume | None = None) -> None:
    """Run ``step(it)`` for ``it`` in ``[start, num_iterations)``, saving as asked.

    ``start`` is 0, or the ``iteration`` of ``resume.state`` after ``set_state`` restored it.

    Raises:
        ValueError: the state to resume from is past ``num_iterations``.

    """
    start = 0
    if resume is not None and resume.state is not None:
        start = int(resume.state["iteration"])
        if not 0 <= start <= num_iterations:
            raise ValueError(f"training state: iteration={start} is outside [0, "
                             f"{num_iterations}]; delete the state file to start over")
        set_state(resume.state["loop"])
    save = resume.save if resume is not None else None
    for it in range(start, num_iterations):
        step(it)
        if save is not None:
            save(it + 1, functools.partial(_snapshot, it + 1, get_state))


def _snapshot(iteration: int, get_state: StateFn) -> State:
    return {"iteration": iteration, "loop": get_state()}


class MetaBatchTrainer(Protocol):
    """A learner trained one meta-batch of tasks per iteration (MAML, Reptile, ES-MAML, ...)."""

    def meta_train_step(self, family: Any, tasks: list[dict[str, Any]]) -> dict[str, float]:
        """One meta-iteration on ``tasks``; its metrics."""
        ...

    def learner(self) -> Any:
        """The current learner (what the hook gets)."""
        ...

    def training_state(self) -> State:
        """Its whole state."""
        ...

    def load_training_state(self, state: State) -> None:
        """Continue from :meth:`training_state`."""
        ...


def run_meta_batches(name: str, trainer: MetaBatchTrainer, family: Any, draw: TaskBatches,
                     num_iterations: int, logger: Any, hook: Callable[[int, Any], None] | None,
                     resume: Resume | None) -> None:
    """:func:`run_loop` over meta-batches from ``draw``: log each step's metrics, call ``hook``.

    The state is ``{name: trainer.training_state(), "tasks": draw.state()}``.
    """

    def step(it: int) -> None:
        logger.log_metrics(trainer.meta_train_step(family, draw()), step=it)
        if hook is not None:
            hook(it, trainer.learner())

    def set_state(state: State) -> None:
        trainer.load_training_state(state[name])
        draw.load_state(state["tasks"])

    run_loop(step, num_iterations, lambda: {name: trainer.training_state(),
                                            "tasks": draw.state()}, set_state, resume)
