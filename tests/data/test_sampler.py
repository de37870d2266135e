from __future__ import annotations

import unittest
from collections import Counter

import numpy as np
import torch
from custom.data import TaskUniformBatchSampler
from parameterized import parameterized

TASKS = ["ct"] * 30 + ["pet"] * 7 + ["mri"] * 13


def _run(sampler: TaskUniformBatchSampler, epochs) -> list[list[int]]:
    out = []
    for e in epochs:
        sampler.set_epoch(e)
        out.extend(sampler)
    return out


def _task_draws(batches, labels, task) -> list[int]:
    return [i for b in batches for i in b if labels[i] == task]


class TestTaskUniformBatchSampler(unittest.TestCase):
    def test_equal_counts_per_task_in_every_batch(self):
        sampler = TaskUniformBatchSampler(TASKS, samples_per_task=4, seed=1)
        batches = list(sampler)
        self.assertEqual(len(batches), len(sampler))
        self.assertEqual(len(batches), 7)  # one pass of the largest task: 30 // 4 (drop_last)
        for b in batches:
            self.assertEqual(Counter(TASKS[i] for i in b), {"ct": 4, "pet": 4, "mri": 4})

    @parameterized.expand([("ct", 30), ("pet", 7), ("mri", 13)])
    def test_each_pass_draws_distinct_samples_then_reshuffles(self, task, size):
        k = 4
        sampler = TaskUniformBatchSampler(TASKS, samples_per_task=k, seed=2, num_batches=3)  # epochs of 3 batches
        draws = _task_draws(_run(sampler, range(12)), TASKS, task)
        per_pass = (size // k) * k  # drop_last: the rest of a permutation is not drawn in that pass
        passes = [draws[i : i + per_pass] for i in range(0, len(draws) - per_pass + 1, per_pass)]
        self.assertGreaterEqual(len(passes), 2)
        for p in passes:
            self.assertEqual(len(set(p)), per_pass)  # every drawn sample once before any is repeated
            self.assertTrue(set(p) <= {i for i, t in enumerate(TASKS) if t == task})
        self.assertNotEqual(passes[0], passes[1])  # reshuffled at the restart
        self.assertEqual(len({tuple(p) for p in passes}), len(passes))

    def test_one_pass_covers_a_task_across_epoch_boundaries(self):
        """Streams restart when they run out, not every epoch (validation period): 28 of 30 CT samples per pass."""
        sampler = TaskUniformBatchSampler(TASKS, samples_per_task=4, seed=0, num_batches=2)
        ct = _task_draws(_run(sampler, range(4)), TASKS, "ct")  # 4 epochs of 2 batches: 32 CT draws
        self.assertEqual(len(set(ct[:28])), 28)
        self.assertEqual(sorted(ct[28:]), sorted(sampler.task_stream("ct", 7, 1)[0].tolist()))  # batch 7: next pass

    def test_streams_are_independent(self):
        """A task's stream does not depend on the sizes of the others (each restarts on its own)."""
        other = ["ct"] * 30 + ["pet"] * 9 + ["mri"] * 13
        a = TaskUniformBatchSampler(TASKS, samples_per_task=4, seed=3, num_batches=20)
        b = TaskUniformBatchSampler(other, samples_per_task=4, seed=3, num_batches=20)
        np.testing.assert_array_equal(a.task_stream("ct", 0, 20), b.task_stream("ct", 0, 20))
        self.assertFalse(np.array_equal(a.task_stream("pet", 0, 20), b.task_stream("pet", 0, 20)))

    def test_resume_draws_the_same_batches(self):
        full = _run(TaskUniformBatchSampler(TASKS, samples_per_task=2, seed=42, num_batches=5), range(1, 7))
        first = TaskUniformBatchSampler(TASKS, samples_per_task=2, seed=42, num_batches=5)
        head = _run(first, range(1, 4))
        state = first.state_dict()
        self.assertEqual(state["next_batch"], 20)  # epochs 1..3 drew batches 5..19
        self.assertEqual(state["pass"], {"ct": 1, "mri": 3, "pet": 6})
        self.assertEqual(state["group"], {"ct": 5, "mri": 2, "pet": 2})
        resumed = TaskUniformBatchSampler(TASKS, samples_per_task=2, seed=42, num_batches=5)
        resumed.load_state_dict(state)
        tail = list(resumed)  # without set_epoch: the loaded position
        tail += _run(resumed, range(5, 7))
        self.assertEqual(head + tail, full)

    def test_resume_with_other_streams_is_refused(self):
        state = TaskUniformBatchSampler(TASKS, seed=1).state_dict()
        with self.assertRaisesRegex(ValueError, "seed"):
            TaskUniformBatchSampler(TASKS, seed=2).load_state_dict(state)
        with self.assertRaisesRegex(ValueError, "task_sizes"):
            TaskUniformBatchSampler(TASKS + ["pet"], seed=1).load_state_dict(state)

    def test_iterating_does_not_move_the_streams(self):
        s = TaskUniformBatchSampler(TASKS, seed=3)
        first = list(s)
        iter(s)  # a discarded (e.g. prefetching) iterator
        self.assertEqual(first, list(s))
        s.set_epoch(1)
        self.assertNotEqual(first, list(s))

    def test_in_batch_order_is_shuffled(self):
        s = TaskUniformBatchSampler(TASKS, samples_per_task=4, seed=0, num_batches=20)
        blocks = [[TASKS[i] for i in b] for b in s]
        self.assertTrue(any(b != sorted(b) for b in blocks))
        plain = TaskUniformBatchSampler(TASKS, samples_per_task=2, shuffle=False, num_batches=16)
        batches = list(plain)
        self.assertEqual(batches[0], [0, 1, 37, 38, 30, 31])  # ct, mri, pet in dataset order
        # pet: 7 samples, 3 groups a pass; sample 36 is dropped (drop_last) and pass 5 restarts at batch 15
        self.assertEqual([b[4:] for b in batches[13:16]], [[32, 33], [34, 35], [30, 31]])

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
        ct = [{i for batch in p for i in batch if TASKS[i] == "ct"} for p in per_rank]
        self.assertFalse(ct[0] & ct[1])  # within one pass the ranks' CT samples are disjoint

    def test_works_as_dataloader_batch_sampler(self):
        data = [{"x": torch.tensor([float(i)]), "task": t} for i, t in enumerate(TASKS)]
        loader = torch.utils.data.DataLoader(data, batch_sampler=TaskUniformBatchSampler(data, samples_per_task=1))
        batch = next(iter(loader))
        self.assertEqual(sorted(batch["task"]), ["ct", "mri", "pet"])

    def test_defaults_are_the_published_batch(self):
        """Published: 4 samples of every task per step; the default seed is fixed (0), so runs repeat."""
        batches = list(TaskUniformBatchSampler(TASKS))
        self.assertEqual(len(batches), 7)
        for b in batches:
            self.assertEqual(Counter(TASKS[i] for i in b), {"ct": 4, "pet": 4, "mri": 4})
        self.assertEqual(batches, list(TaskUniformBatchSampler(TASKS, samples_per_task=4, seed=0)))

    def test_task_stream_of_no_batch_is_empty(self):
        s = TaskUniformBatchSampler(TASKS, samples_per_task=4)
        for count in (0, 3):
            stream = s.task_stream("pet", 5, count)
            self.assertEqual(stream.shape, (count, 4))
            self.assertEqual(stream.dtype.kind, "i")  # dataset indices

    def test_errors(self):
        with self.assertRaises(ValueError):
            TaskUniformBatchSampler([])
        with self.assertRaises(ValueError):
            TaskUniformBatchSampler(TASKS, rank=2, world_size=2)
        with self.assertRaisesRegex(ValueError, "item 0"):
            TaskUniformBatchSampler([{"image": "a.nii"}])
        with self.assertRaisesRegex(ValueError, r"\{'pet': 4\} have fewer samples per rank"):
            TaskUniformBatchSampler(TASKS, samples_per_task=5, world_size=2)
        with self.assertRaisesRegex(ValueError, "seed"):
            TaskUniformBatchSampler(TASKS, seed=-1)
        with self.assertRaisesRegex(ValueError, "samples_per_task must be >= 1, got 0"):
            TaskUniformBatchSampler(TASKS, samples_per_task=0)


if __name__ == "__main__":
    unittest.main()
