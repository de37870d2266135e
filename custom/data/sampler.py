"""Task-uniform batch sampling: every batch holds the same number of samples of each task (published: 4).

Replaces the reference code's one-loader-per-modality iterator by a ``batch_sampler`` for a single
``DataLoader``. Each task's indices are reshuffled every epoch (seeded by ``seed + epoch``); smaller tasks
cycle through fresh permutations so that all tasks contribute equally to every step. Under
DistributedDataParallel each rank takes a disjoint share (``rank::world_size``) of every permutation, so
ranks see distinct samples, and all ranks produce the same number of batches.
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
    """Batch sampler giving ``samples_per_task`` indices of every task per batch, shuffled together.

    Use as ``DataLoader(dataset, batch_sampler=TaskUniformBatchSampler(...))`` and call ``set_epoch`` at
    the start of each epoch (MONAI's workflows only do it for a ``DistributedSampler``; with ignite:
    ``trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))``).

    Args:
        tasks: per-item task labels (strings) or the data list itself (dicts with ``task`` or ``modality``),
            in dataset order.
        samples_per_task: samples of each task in one batch (batch size = tasks x samples_per_task).
        shuffle: shuffle each task's indices every epoch and the order inside each batch.
        seed: base random seed (the epoch is added).
        rank: this process's rank under DDP.
        world_size: number of DDP processes.
        num_batches: batches per epoch; default: enough for the largest task's share to be seen once.

    Raises:
        ValueError: empty data, ``samples_per_task`` < 1, or a rank outside ``[0, world_size)``.
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
        self.task_names = sorted(set(labels))
        arr = np.asarray(labels)
        self.task_indices = {t: np.flatnonzero(arr == t) for t in self.task_names}
        self.samples_per_task = int(samples_per_task)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        largest = max(math.ceil(len(v) / self.world_size) for v in self.task_indices.values())
        self.num_batches = int(num_batches) if num_batches else max(1, math.ceil(largest / self.samples_per_task))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed the shuffles (same on every rank)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def _stream(self, indices: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` indices of this rank from successive permutations of ``indices``."""
        per_rank = math.ceil(len(indices) / self.world_size)
        rounds = math.ceil(count / per_rank)
        chunks = []
        for _ in range(rounds):
            perm = rng.permutation(indices) if self.shuffle else indices
            perm = np.resize(perm, per_rank * self.world_size)  # pad by wrapping, as DistributedSampler
            chunks.append(perm[self.rank :: self.world_size])
        return np.concatenate(chunks)[:count]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)  # identical on all ranks
        count = self.num_batches * self.samples_per_task
        streams = np.stack([self._stream(self.task_indices[t], rng, count) for t in self.task_names])
        # (tasks, num_batches * k) -> (num_batches, tasks * k)
        k = self.samples_per_task
        batches = streams.reshape(len(self.task_names), self.num_batches, k).transpose(1, 0, 2)
        batches = batches.reshape(self.num_batches, -1)
        if self.shuffle:
            batches = rng.permuted(batches, axis=1)
        yield from (b.tolist() for b in batches)
