"""Reproducible, resumable data randomness: per-epoch data seeding and a checkpointable global RNG state.

Training is iteration-based: one trainer "epoch" is one validation period (``epoch_length`` iterations). At each
epoch start, :class:`EpochDataSeeder` re-seeds the data pipeline from ``(seed, epoch, rank)`` and restarts the data
iterator, so the batches of an epoch do not depend on what ran before: a run resumed at an epoch boundary sees
exactly the batches the uninterrupted run saw. :class:`GlobalRNGState` puts the Python, NumPy and torch global RNG
states in the checkpoint for whatever else draws from them.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from torch.utils.data import DataLoader

__all__ = ["EpochDataSeeder", "GlobalRNGState", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 31-bit seed derived from ``(seed, epoch, rank)`` (NumPy ``SeedSequence``: distinct, well-mixed).

    Args:
        seed: base seed of the run.
        epoch: trainer epoch (1-based in ignite).
        rank: distributed rank.

    Returns:
        an int in [0, 2**31).
    """
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0] & 0x7FFFFFFF)


class EpochDataSeeder:
    """Ignite handler re-seeding a ``DataLoader`` at every ``EPOCH_STARTED`` and restarting its iterator.

    For epoch ``e`` on rank ``r`` with ``s = epoch_seed(seed, e, r)``: calls ``set_epoch(e)`` on the loader's batch
    sampler / sampler when they have one (task-uniform or distributed samplers; a ``DistributedSampler`` orders by its
    own ``seed`` and the epoch), seeds with ``s`` the generator of a random sampler (``shuffle=True`` or inside a batch
    sampler; one is created where it has none) and the loader's own generator (re-seeded in place: other code sharing
    a generator given to the loader sees that), seeds the MONAI random transforms
    of the dataset with ``s`` (used when ``num_workers == 0``; workers are seeded by MONAI's ``worker_init_fn`` from
    the base seed the iterator draws), and creates the iterator under ``torch.manual_seed(s)`` without disturbing
    the global torch RNG. With ``persistent_workers=True`` the workers are seeded once, at the first epoch, so a
    resumed run's worker draws differ from the uninterrupted run's: a warning says so.

    Args:
        loader: the training data loader given to the trainer.
        seed: base seed. Defaults to 0.
    """

    def __init__(self, loader: DataLoader, seed: int = 0) -> None:
        if not isinstance(loader, DataLoader):
            raise ValueError(f"loader must be a torch DataLoader, got {type(loader).__name__}.")
        if loader.persistent_workers:  # the loader allows them only with workers
            warnings.warn(
                "EpochDataSeeder: the loader has persistent workers, seeded once at the first epoch: a run resumed "
                "from a checkpoint will not see the random draws of the uninterrupted run in its workers "
                "(use persistent_workers=False for exact resumes).",
                stacklevel=2,
            )
        self.loader = loader
        self.seed = seed

    def attach(self, engine: Engine) -> None:
        """Register on ``Events.EPOCH_STARTED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        s = epoch_seed(self.seed, epoch, rank)
        batch_sampler, sampler = getattr(self.loader, "batch_sampler", None), getattr(self.loader, "sampler", None)
        for one in (batch_sampler, sampler):
            if hasattr(one, "set_epoch"):
                one.set_epoch(epoch)
        # a random sampler (shuffle=True, or inside a batch sampler) draws its seed at the first batch, from the global
        # RNG as training left it: its generator is seeded here instead (one is created where it has none)
        samplers = {id(one): one for one in (batch_sampler, getattr(batch_sampler, "sampler", None), sampler)}
        for one in samplers.values():
            generator = getattr(one, "generator", False)
            if generator is None:
                one.generator = torch.Generator().manual_seed(s)
            elif isinstance(generator, torch.Generator):
                generator.manual_seed(s)
        if isinstance(self.loader.generator, torch.Generator):  # the workers' base seed is drawn from it
            self.loader.generator.manual_seed(s)
        set_rnd(self.loader.dataset, s)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            engine.set_data(self.loader)  # fresh iterator: the epoch's data depends on (seed, epoch, rank) only


class GlobalRNGState:
    """Checkpointable Python / NumPy / torch (CPU and CUDA) global RNG states.

    ``state_dict`` holds tensors, ints and tuples only, so checkpoints load with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        """Returns: the current global RNG states."""
        np_state = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_rest": (int(np_state[2]), int(np_state[3]), float(np_state[4])),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the global RNG states.

        Args:
            state_dict: output of :meth:`state_dict`.
        """
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        pos, has_gauss, cached = state_dict["numpy_rest"]
        keys = state_dict["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
