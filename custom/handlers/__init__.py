"""Ignite handlers for TAT training: EMA, atomic checkpoints and resume, determinism, TensorBoard scalars."""

from __future__ import annotations

from .checkpoint import AtomicCheckpointSaver, AtomicDiskSaver, ResumeCheckpointLoader, SafeCheckpointLoader
from .determinism import EpochDataSeeder, GlobalRNGState, epoch_seed
from .ema import ModelEMA, ema_decay
from .tensorboard import TrainingScalarWriter, per_task_mean

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "ResumeCheckpointLoader",
    "SafeCheckpointLoader",
    "EpochDataSeeder",
    "GlobalRNGState",
    "epoch_seed",
    "ModelEMA",
    "ema_decay",
    "TrainingScalarWriter",
    "per_task_mean",
]
