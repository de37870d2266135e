from __future__ import annotations

import unittest
from collections import Counter

import torch
from parameterized import parameterized

from custom.data import TaskUniformBatchSampler

TASKS = ["ct"] * 30 + ["pet"] * 7 + ["mri"] * 13


class TestTaskUniformBatchSampler(unittest.TestCase):
    def test_equal_counts_per_task_in_every_batch(self):
        sampler = TaskUniformBatchSampler(TASKS, samples_per_task=4, seed=1)
        batches = list(sampler)
        self.assertEqual(len(batches), len(sampler))
        self.assertEqual(len(batches), 8)  # ceil(30 / 4): the largest task is seen once per epoch
        for b in batches:
            self.assertEqual(Counter(TASKS[i] for i in b), {"ct": 4, "pet": 4, "mri": 4})
        seen_ct = {i for b in batches for i in b if TASKS[i] == "ct"}
        self.assertEqual(len(seen_ct), 30)

    def test_data_list_input_and_single_task(self):
        items = [{"task": "a"}] * 10
        sampler = TaskUniformBatchSampler(items, samples_per_task=3, shuffle=True, seed=0)
        flat = [i for b in sampler for i in b]
        self.assertEqual(len(flat), 12)
        self.assertEqual(set(flat), set(range(10)))  # plain shuffled sampling, wrapping only at the end

    def test_epoch_changes_order_and_is_reproducible(self):
        s = TaskUniformBatchSampler(TASKS, seed=3)
        first = list(s)
        self.assertEqual(first, list(s))
        s.set_epoch(1)
        self.assertNotEqual(first, list(s))

    @parameterized.expand([(2,), (3,)])
    def test_ranks_get_distinct_samples(self, world_size):
        per_rank = [
            list(TaskUniformBatchSampler(TASKS, samples_per_task=2, seed=5, rank=r, world_size=world_size))
            for r in range(world_size)
        ]
        self.assertEqual(len({len(p) for p in per_rank}), 1)  # same number of steps on every rank
        first_batches = [set(p[0]) for p in per_rank]
        for a in range(world_size):
            for b in range(a + 1, world_size):
                self.assertFalse(first_batches[a] & first_batches[b])
        # within one permutation round the ranks' CT samples are disjoint
        ct = [{i for batch in p for i in batch if TASKS[i] == "ct"} for p in per_rank]
        self.assertFalse(ct[0] & ct[1])

    def test_works_as_dataloader_batch_sampler(self):
        data = [{"x": torch.tensor([float(i)]), "task": t} for i, t in enumerate(TASKS)]
        loader = torch.utils.data.DataLoader(data, batch_sampler=TaskUniformBatchSampler(data, samples_per_task=1))
        batch = next(iter(loader))
        self.assertEqual(sorted(batch["task"]), ["ct", "mri", "pet"])

    def test_errors(self):
        with self.assertRaises(ValueError):
            TaskUniformBatchSampler([])
        with self.assertRaises(ValueError):
            TaskUniformBatchSampler(TASKS, rank=2, world_size=2)
        with self.assertRaisesRegex(ValueError, "item 0"):
            TaskUniformBatchSampler([{"image": "a.nii"}])


if __name__ == "__main__":
    unittest.main()
