"""A replay buffer per task, for the off-policy learners (PEARL, meta-Q-learning).

It stores the transitions contract (:class:`metarl.sampler.TransitionBatch`) task by task:
task ``i``'s ring buffer holds only task ``i``'s steps, so a learner can draw a context or a
training batch from one task, or the same number from each. Everything stays a tensor on the
buffer's device; sampling takes an explicit generator.
"""

from __future__ import annotations

import torch

from metarl.config import check
from metarl.sampler import TransitionBatch

FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")


class TaskReplayBuffer:
    """``num_tasks`` ring buffers of ``capacity`` transitions each.

    Args:
        num_tasks: tasks (the leading dim of what is added and sampled).
        capacity: transitions kept per task; the oldest are overwritten first.

    """

    def __init__(self, num_tasks: int, capacity: int) -> None:
        check(num_tasks >= 1, "num_tasks", num_tasks, "must be >= 1")
        check(capacity >= 1, "capacity", capacity, "must be >= 1")
        self.num_tasks, self.capacity = num_tasks, capacity
        self.data: dict[str, torch.Tensor] = {}
        self.size = torch.zeros(num_tasks, dtype=torch.long)
        """Transitions held per task ``[N]`` (at most ``capacity``)."""
        self.cursor = torch.zeros(num_tasks, dtype=torch.long)
        """Where each task's next transition goes."""

    def add(self, batch: TransitionBatch, tasks: torch.Tensor | None = None) -> None:
        """Store the valid steps (``mask``) of ``batch`` ``[n, E, T]`` under ``tasks`` ``[n]``.

        ``tasks`` are buffer rows (default ``0..n-1``); a task's steps keep their order.
        """
        n = batch.rewards.shape[0]
        rows = torch.arange(n) if tasks is None else tasks.cpu()
        check(len(rows) == n, "tasks", rows.tolist(), f"expected {n} task rows")
        check(bool(((rows >= 0) & (rows < self.num_tasks)).all()), "tasks", rows.tolist(),
              f"rows must be in [0, {self.num_tasks})")
        for i in range(n):  # a few tasks per call; each task's steps are written at once
            valid = batch.mask[i].reshape(-1).bool()
            steps = {k: getattr(batch, k)[i].reshape(-1, *getattr(batch, k).shape[3:])[valid]
                     for k in FIELDS}
            self._write(int(rows[i]), steps)

    def _write(self, row: int, steps: dict[str, torch.Tensor]) -> None:
        count = len(steps["rewards"])
        if count == 0:
            return
        if not self.data:
            self.data = {k: torch.zeros(self.num_tasks, self.capacity, *v.shape[1:],
                                        dtype=v.dtype, device=v.device)
                         for k, v in steps.items()}
        keep = min(count, self.capacity)  # more than fit: only the newest survive
        slots = (self.cursor[row] + torch.arange(count - keep, count)) % self.capacity
        for k, v in steps.items():
            self.data[k][row, slots.to(v.device)] = v[count - keep:]
        self.cursor[row] = (self.cursor[row] + count) % self.capacity
        self.size[row] = min(self.capacity, int(self.size[row]) + count)

    def state(self) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """Everything the buffer holds, as tensors (part of a training loop's state)."""
        return {"data": {k: v.cpu().clone() for k, v in self.data.items()},
                "size": self.size.clone(), "cursor": self.cursor.clone()}

    def load_state(self, state: dict[str, torch.Tensor | dict[str, torch.Tensor]],
                   device: torch.device | str = "cpu") -> None:
        """Continue from :meth:`state` (a buffer of the same tasks and capacity)."""
        data, size, cursor = state["data"], state["size"], state["cursor"]
        assert isinstance(data, dict) and isinstance(size, torch.Tensor)
        assert isinstance(cursor, torch.Tensor)
        check(tuple(size.shape) == (self.num_tasks,), "buffer state", tuple(size.shape),
              f"expected {self.num_tasks} tasks")
        self.data = {k: v.to(device).clone() for k, v in data.items()}
        self.size, self.cursor = size.clone(), cursor.clone()

    def sample(self, batch_size: int, generator: torch.Generator,
               tasks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``batch_size`` transitions of each of ``tasks`` (default: all), uniformly.

        Returns:
            Each field of the contract as ``[len(tasks), batch_size, ...]``.

        Raises:
            ValueError: a task asked for holds no transition yet.

        """
        rows = torch.arange(self.num_tasks) if tasks is None else tasks.cpu()
        sizes = self.size[rows]
        if not self.data or bool((sizes == 0).any()):
            empty = rows[sizes == 0].tolist() if self.data else rows.tolist()
            raise ValueError(f"tasks {empty}: no transitions stored yet; add some first")
        u = torch.rand(len(rows), batch_size, generator=generator)
        idx = (u * sizes.unsqueeze(1)).long().clamp(max=self.capacity - 1)
        device = next(iter(self.data.values())).device
        rows_d, idx_d = rows.to(device), idx.to(device)
        return {k: v[rows_d.unsqueeze(1), idx_d] for k, v in self.data.items()}
