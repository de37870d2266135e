"""Per-epoch data seeding and the checkpointable global RNG state (custom.handlers.determinism)."""

from __future__ import annotations

import io
import random
import unittest
import warnings
from unittest import mock

import numpy as np
import torch
from custom.handlers import EpochDataSeeder, GlobalRNGState, determinism, epoch_seed
from ignite.engine import Engine, Events
from monai.transforms import Randomizable
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler


class _Noise(Randomizable):
    """A MONAI random transform: adds a draw of its own generator (seeded by ``set_rnd``)."""

    def randomize(self, data: object = None) -> None:
        self.value = self.R.random()

    def __call__(self, x: float) -> float:
        self.randomize()
        return x + self.value


class _Items(Dataset):
    """``n`` items, each its index plus the transform's draw plus a torch draw (a worker's torch RNG)."""

    def __init__(self, n: int) -> None:
        self.n, self.transform = n, _Noise()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([self.transform(float(i)), float(torch.rand(()))], dtype=torch.float64)


class _EpochSampler(Sampler):
    """An epoch-aware sampler (as the task-uniform and distributed ones): the order depends on ``set_epoch``."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch, self.epochs_set = n, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def __iter__(self):
        return iter(np.random.default_rng(self.epoch).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def _run(loader: DataLoader, seed: int, max_epochs: int, resume_epoch: int = 0) -> dict[int, list[torch.Tensor]]:
    """Batches seen per epoch by a trainer with the seeder attached (resumed after ``resume_epoch`` epochs)."""
    seen: dict[int, list[torch.Tensor]] = {}
    engine = Engine(lambda e, batch: seen.setdefault(e.state.epoch, []).append(batch))
    EpochDataSeeder(loader, seed).attach(engine)
    if resume_epoch:
        engine.load_state_dict({"epoch": resume_epoch, "max_epochs": max_epochs, "epoch_length": 2})
    engine.run(loader, max_epochs=max_epochs, epoch_length=2)
    return seen


class TestEpochSeed(unittest.TestCase):
    def test_numpy_seed_sequence_of_seed_epoch_rank(self):
        for seed, epoch, rank in [(0, 1, 0), (7, 3, 1), (2**40, 12, 5)]:
            expected = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]) & (2**31 - 1)
            self.assertEqual(epoch_seed(seed, epoch, rank), expected)
        self.assertEqual(epoch_seed(5, 2), epoch_seed(5, 2, 0))  # rank 0 by default

    def test_distinct_and_31_bit(self):
        seeds = {epoch_seed(s, e, r) for s in range(3) for e in range(1, 6) for r in range(3)}
        self.assertEqual(len(seeds), 45)  # the order of the three matters too: (0, 1, 2) != (0, 2, 1)
        self.assertTrue(all(0 <= s < 2**31 for s in seeds))
        self.assertGreater(max(seeds), 2**30)  # all 31 bits used


class TestEpochDataSeeder(unittest.TestCase):
    def test_refuses_a_non_loader(self):
        with self.assertRaisesRegex(ValueError, "loader must be a torch DataLoader, got list"):
            EpochDataSeeder([1, 2, 3])

    def test_warns_about_persistent_workers(self):
        with self.assertWarnsRegex(UserWarning, "persistent workers.*persistent_workers=False"):
            EpochDataSeeder(DataLoader(_Items(4), num_workers=1, persistent_workers=True))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            EpochDataSeeder(DataLoader(_Items(4), num_workers=1))
            EpochDataSeeder(DataLoader(_Items(4)))

    def test_resumed_epoch_sees_the_batches_of_the_uninterrupted_run(self):
        loader = DataLoader(_Items(6), batch_size=3, sampler=_EpochSampler(6))
        full = _run(loader, seed=0, max_epochs=3)
        self.assertEqual(sorted(full), [1, 2, 3])
        self.assertEqual(loader.sampler.epochs_set, [1, 2, 3])
        torch.manual_seed(123)  # whatever ran before the resume: global and transform RNGs elsewhere
        loader.dataset.transform.set_random_state(99)
        resumed = _run(loader, seed=0, max_epochs=3, resume_epoch=2)
        self.assertEqual(sorted(resumed), [3])
        for a, b in zip(full[3], resumed[3]):
            torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=0)  # order and transform draws
        # the epochs differ from each other, and another base seed gives other data
        self.assertFalse(torch.equal(full[2][0][:, 0], full[3][0][:, 0]))
        other = _run(loader, seed=1, max_epochs=3)
        self.assertFalse(torch.equal(full[3][0][:, 0], other[3][0][:, 0]))

    def test_shuffled_loader_epochs_independent_of_the_global_rng(self):
        """``shuffle=True`` (a random sampler, which draws its seed at the first batch): an epoch's order depends on
        (seed, epoch) only, whatever the global torch RNG holds; a generator the loader was given is seeded too."""
        for generator in (None, torch.Generator().manual_seed(7)):
            loader = DataLoader(_Items(16), batch_size=4, shuffle=True, generator=generator)
            runs = []
            for global_seed in (1, 2):
                torch.manual_seed(global_seed)
                runs.append(_run(loader, seed=0, max_epochs=2))
            for epoch in (1, 2):
                for a, b in zip(runs[0][epoch], runs[1][epoch]):
                    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=0)
            self.assertFalse(torch.equal(runs[0][1][0][:, 0], runs[0][2][0][:, 0]))  # the epochs differ
            torch.manual_seed(1)
            resumed = _run(loader, seed=0, max_epochs=2, resume_epoch=1)
            torch.testing.assert_close(resumed[2][0][:, 0], runs[0][2][0][:, 0], rtol=0, atol=0)
            other = _run(loader, seed=1, max_epochs=2)
            self.assertFalse(torch.equal(other[2][0][:, 0], runs[0][2][0][:, 0]))

    def test_inner_random_sampler_and_loader_generator_seeded(self):
        """A random sampler inside a user's batch sampler, and the loader's own generator (the workers' base seed with
        a non-random sampler): both seeded per epoch, whatever the global torch RNG holds (column 0: the order,
        column 1: the workers' torch draws)."""

        def make(case: int, generator: torch.Generator) -> DataLoader:
            if case == 0:
                return DataLoader(_Items(16), batch_sampler=BatchSampler(RandomSampler(range(16)), 4, False))
            return DataLoader(_Items(16), batch_size=4, sampler=_EpochSampler(16), num_workers=1, generator=generator)

        for case in range(2):
            runs = []
            for global_seed in (1, 2):
                torch.manual_seed(global_seed)
                runs.append(_run(make(case, torch.Generator().manual_seed(global_seed)), seed=0, max_epochs=2))
            for epoch in (1, 2):
                for a, b in zip(runs[0][epoch], runs[1][epoch]):
                    torch.testing.assert_close(a[:, case], b[:, case], rtol=0, atol=0)

    def test_transforms_seeded_with_the_epoch_seed(self):
        loader = DataLoader(_Items(4), batch_size=2, sampler=_EpochSampler(4))
        engine = Engine(lambda e, b: None)
        engine.state.epoch = 5
        EpochDataSeeder(loader, seed=3)(engine)
        self.assertEqual(loader.sampler.epochs_set, [5])
        self.assertEqual(loader.dataset.transform.R.random(), np.random.RandomState(epoch_seed(3, 5)).random())
        self.assertIs(engine.state.dataloader, loader)
        EpochDataSeeder(loader)(engine)  # base seed 0 by default
        self.assertEqual(loader.dataset.transform.R.random(), np.random.RandomState(epoch_seed(0, 5)).random())

    def test_each_distributed_rank_gets_its_own_seed(self):
        loader = DataLoader(_Items(4), batch_size=2)
        engine = Engine(lambda e, b: None)
        engine.state.epoch = 2
        for rank in (0, 1):
            fake = mock.Mock(**{"is_available.return_value": True, "is_initialized.return_value": True})
            fake.get_rank.return_value = rank
            with mock.patch.object(determinism, "dist", fake):  # a distributed run as the seeder sees it
                EpochDataSeeder(loader, seed=4)(engine)
            expected = np.random.RandomState(epoch_seed(4, 2, rank)).random()
            self.assertEqual(loader.dataset.transform.R.random(), expected)

    def test_batch_sampler_gets_the_epoch(self):
        batches = torch.utils.data.BatchSampler(_EpochSampler(4), batch_size=2, drop_last=False)
        batches.set_epoch = batches.sampler.set_epoch  # an epoch-aware batch sampler (TaskUniformBatchSampler)
        loader = DataLoader(_Items(4), batch_sampler=batches)
        engine = Engine(lambda e, b: None)
        engine.state.epoch = 4
        EpochDataSeeder(loader)(engine)
        self.assertEqual(batches.sampler.epochs_set, [4])

    def test_workers_seeded_from_the_epoch(self):
        """With workers, the iterator's base seed (the workers' torch seeds) is drawn under the epoch seed: a resumed
        epoch sees the worker draws of the uninterrupted run, whatever the global torch RNG held."""
        loader = DataLoader(_Items(4), batch_size=2, sampler=_EpochSampler(4), num_workers=1)
        full = _run(loader, seed=0, max_epochs=2)
        torch.manual_seed(123)
        resumed = _run(loader, seed=0, max_epochs=2, resume_epoch=1)
        for a, b in zip(full[2], resumed[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_global_torch_rng_untouched(self):
        loader = DataLoader(_Items(2), batch_size=2)
        engine = Engine(lambda e, b: None)
        engine.state.epoch = 2
        state = torch.get_rng_state()
        EpochDataSeeder(loader)(engine)
        torch.testing.assert_close(torch.get_rng_state(), state, rtol=0, atol=0)

    def test_attached_to_epoch_started(self):
        loader = DataLoader(_Items(2), batch_size=2)
        engine = Engine(lambda e, b: None)
        seeder = EpochDataSeeder(loader)
        seeder.attach(engine)
        self.assertTrue(engine.has_event_handler(seeder, Events.EPOCH_STARTED))


class TestGlobalRNGState(unittest.TestCase):
    @staticmethod
    def _draws() -> tuple:
        return random.random(), float(np.random.random()), np.random.standard_normal(), float(torch.rand(()))

    def test_restores_python_numpy_and_torch_through_a_weights_only_checkpoint(self):
        for cached_gauss in (False, True):  # numpy caches the second Gaussian of a pair: part of its state
            with self.subTest(cached_gauss=cached_gauss):
                random.seed(1)
                np.random.seed(1)
                np.random.random(3)
                if cached_gauss:
                    np.random.standard_normal()
                torch.manual_seed(1)
                buffer = io.BytesIO()
                torch.save(GlobalRNGState().state_dict(), buffer)
                expected = self._draws()
                random.seed(2)
                np.random.seed(2)
                np.random.standard_normal()
                torch.manual_seed(2)
                self.assertNotEqual(self._draws(), expected)
                buffer.seek(0)
                GlobalRNGState().load_state_dict(torch.load(buffer, weights_only=True))
                self.assertEqual(self._draws(), expected)

    def test_cuda_state_of_a_gpu_run_is_skipped_without_cuda(self):
        if torch.cuda.is_available():
            self.skipTest("needs a machine without CUDA")
        state = GlobalRNGState().state_dict()
        self.assertNotIn("cuda", state)
        expected = float(torch.rand(()))
        GlobalRNGState().load_state_dict({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]})
        self.assertEqual(float(torch.rand(())), expected)

    def test_cuda_states_saved_and_restored_when_cuda_is_in_use(self):
        cuda_states = [torch.arange(4, dtype=torch.uint8)]
        with (
            mock.patch.object(torch.cuda, "is_available", return_value=True),
            mock.patch.object(torch.cuda, "is_initialized", return_value=True),
            mock.patch.object(torch.cuda, "get_rng_state_all", return_value=cuda_states),
        ):
            self.assertIs(GlobalRNGState().state_dict()["cuda"], cuda_states)
        with (
            mock.patch.object(torch.cuda, "is_available", return_value=True),
            mock.patch.object(torch.cuda, "is_initialized", return_value=False),  # not initialised just for this
            mock.patch.object(torch.cuda, "get_rng_state_all", return_value=cuda_states),
        ):
            self.assertNotIn("cuda", GlobalRNGState().state_dict())
        state = GlobalRNGState().state_dict()
        with (
            mock.patch.object(torch.cuda, "is_available", return_value=True),
            mock.patch.object(torch.cuda, "set_rng_state_all") as set_cuda,
        ):
            GlobalRNGState().load_state_dict({**state, "cuda": cuda_states})
            set_cuda.assert_called_once_with(cuda_states)
            set_cuda.reset_mock()
            GlobalRNGState().load_state_dict(state)  # a CPU run's checkpoint resumed on a GPU
            set_cuda.assert_not_called()


if __name__ == "__main__":
    unittest.main()
