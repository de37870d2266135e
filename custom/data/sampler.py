"""Task-uniform batch sampling as published: one stream per task, each restarted on its own when it runs out.

The published code keeps one shuffled, ``drop_last`` data loader per task (batch 4) and takes the next batch of
each at every step; a loader that runs out is reshuffled and restarted alone, the others go on. This module does
the same as a ``batch_sampler`` for a single ``DataLoader``: task ``t``'s stream is a sequence of passes, pass
``p`` a permutation of the task's samples cut into ``len // samples_per_task`` groups (the rest of the
permutation is dropped, as ``drop_last``). Batch ``b`` of the run holds group ``b`` of every task's stream,
shuffled together.

Nothing depends on what was drawn before: pass ``p`` of task ``t`` is drawn from ``seed`` and ``(t, p)`` alone,
the order inside batch ``b`` from ``seed`` and ``b``. The position of every stream is therefore the batch number,
which :meth:`TaskUniformBatchSampler.state_dict` puts in the checkpoint, and a resumed run draws exactly the
batches of an uninterrupted one (there is no other random state to keep). Under DistributedDataParallel each
pass is padded by wrapping to a multiple of the world size and rank ``r`` takes ``r::world_size`` of it (as
``DistributedSampler``), so ranks see disjoint samples and make the same number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["task_labels", "TaskUniformBatchSampler"]


def task_labels(items: Sequence[Any], task_key: str = "task", fallback_key: str = "modality") -> list[str]:
    """Task label of each item: a string item is its own label, a dict gives ``task`` (else ``modality``).

    Raises:
        ValueError: an item has neither key.
    """
    labels = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            labels.append(item)
        elif isinstance(item, Mapping) and (item.get(task_key) or item.get(fallback_key)):
            labels.append(str(item.get(task_key) or item.get(fallback_key)))
        else:
            raise ValueError(f"item {i}: no '{task_key}' or '{fallback_key}' to group it by task.")
    return labels


class TaskUniformBatchSampler(Sampler[list[int]]):
    """Batch sampler giving ``samples_per_task`` indices of every task per batch from independent task streams.

    Use as ``DataLoader(dataset, batch_sampler=TaskUniformBatchSampler(...))``. One iteration yields
    ``num_batches`` batches: batches ``[epoch * num_batches, (epoch + 1) * num_batches)`` of the streams, where
    ``epoch`` is set by :meth:`set_epoch` (``custom.handlers.EpochDataSeeder`` passes the trainer's epoch) or by
    :meth:`load_state_dict`. Iterating does not change the sampler, so a prefetching or discarded iterator cannot
    shift the streams.

    Args:
        tasks: per-item task labels (strings) or the data list itself (dicts with ``task`` or ``modality``),
            in dataset order.
        samples_per_task: samples of each task in one batch (batch size = tasks x samples_per_task); published 4.
        shuffle: shuffle each pass of each task and the order inside each batch; False keeps dataset order.
        seed: random seed (>= 0) of the passes and of the order inside batches.
        rank: this process's rank under DDP.
        world_size: number of DDP processes.
        num_batches: batches per iteration (the trainer's epoch length); default: one pass of the largest task.

    Raises:
        ValueError: empty data, ``samples_per_task`` < 1, a negative seed, a rank outside ``[0, world_size)``, or a
            task whose share per rank is smaller than ``samples_per_task`` (a pass would yield no batch).
    """

    def __init__(
        self,
        tasks: Sequence[Any],
        samples_per_task: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        labels = task_labels(tasks)
        if not labels:
            raise ValueError("TaskUniformBatchSampler: no items.")
        if samples_per_task < 1:
            raise ValueError(f"TaskUniformBatchSampler: samples_per_task must be >= 1, got {samples_per_task}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TaskUniformBatchSampler: rank {rank} outside [0, {world_size}).")
        if int(seed) < 0:
            raise ValueError(f"TaskUniformBatchSampler: seed must be >= 0, got {seed}.")
        self.task_names = sorted(set(labels))
        arr = np.asarray(labels)
        self.task_indices = {t: np.flatnonzero(arr == t) for t in self.task_names}
        self.samples_per_task = int(samples_per_task)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.per_rank = {t: math.ceil(len(v) / self.world_size) for t, v in self.task_indices.items()}
        self.groups_per_pass = {t: n // self.samples_per_task for t, n in self.per_rank.items()}
        short = {t: n for t, n in self.per_rank.items() if self.groups_per_pass[t] == 0}
        if short:
            raise ValueError(
                f"TaskUniformBatchSampler: task(s) {short} have fewer samples per rank than samples_per_task "
                f"{self.samples_per_task} (world size {self.world_size}); a pass would yield no batch."
            )
        self.num_batches = int(num_batches) if num_batches else max(self.groups_per_pass.values())

    def set_epoch(self, epoch: int) -> None:
        """Iterate over batches ``[epoch * num_batches, (epoch + 1) * num_batches)`` next (same on every rank)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def _pass(self, t: int, p: int) -> np.ndarray:
        """This rank's share of pass ``p`` of task number ``t`` (length ``per_rank``)."""
        indices = self.task_indices[self.task_names[t]]
        perm = np.random.default_rng([self.seed, 0, t, p]).permutation(indices) if self.shuffle else indices
        perm = np.resize(perm, self.per_rank[self.task_names[t]] * self.world_size)  # pad by wrapping
        return perm[self.rank :: self.world_size]

    def task_stream(self, task: str, start: int, count: int) -> np.ndarray:
        """Groups ``start .. start + count - 1`` of one task's stream.

        Args:
            task: a task label.
            start: first batch number.
            count: number of batches.

        Returns:
            (count, samples_per_task) dataset indices.
        """
        t, k = self.task_names.index(task), self.samples_per_task
        groups = self.groups_per_pass[task]
        chunks, b, end = [], int(start), int(start) + int(count)
        while b < end:
            p, g = divmod(b, groups)
            take = min(groups - g, end - b)
            chunks.append(self._pass(t, p)[g * k : (g + take) * k])
            b += take
        return np.concatenate(chunks).reshape(int(count), k) if chunks else np.zeros((0, k), dtype=np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        start = self.epoch * self.num_batches
        streams = [self.task_stream(t, start, self.num_batches) for t in self.task_names]
        for i in range(self.num_batches):
            batch = np.concatenate([s[i] for s in streams])
            if self.shuffle:
                batch = np.random.default_rng([self.seed, 1, start + i]).permutation(batch)
            yield batch.tolist()

    def state_dict(self) -> dict[str, Any]:
        """Where the streams stand after this epoch's batches (the trainer saves at the end of an epoch).

        Returns:
            ``next_batch`` (the batch number the next iteration starts at), each task's ``pass`` and ``group``
            there, and what fixes the streams (seed, samples per task, world size, task sizes): ints only, the same
            on every rank (rank 0's checkpoint resumes all ranks).
        """
        nxt = (self.epoch + 1) * self.num_batches
        return {
            "next_batch": nxt,
            "num_batches": self.num_batches,
            "seed": self.seed,
            "samples_per_task": self.samples_per_task,
            "world_size": self.world_size,
            "task_sizes": {t: len(v) for t, v in self.task_indices.items()},
            "pass": {t: nxt // g for t, g in self.groups_per_pass.items()},
            "group": {t: nxt % g for t, g in self.groups_per_pass.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the streams where :meth:`state_dict` left them: the next iteration starts at ``next_batch``.

        Args:
            state_dict: output of :meth:`state_dict`.

        Raises:
            ValueError: the checkpoint's streams differ from this sampler's (other data list, seed, samples per
                task or world size): resuming would not continue them.
        """
        mine = self.state_dict()
        keys = ("seed", "samples_per_task", "world_size", "task_sizes", "num_batches")  # same on every rank
        changed = {k: (state_dict.get(k), mine[k]) for k in keys if state_dict.get(k) != mine[k]}
        if changed:
            raise ValueError(
                "TaskUniformBatchSampler: the checkpoint's sampling streams differ from this run's "
                f"(checkpoint, now): {changed}; resume with the same data list, seed and batch layout."
            )
        self.epoch = int(state_dict["next_batch"]) // self.num_batches
