"""Engines: the trainer for TAT's input-aware balanced loss, and the task-interference probe."""

from __future__ import annotations

from .trainer import TaskAdaptiveTrainer, batch_sources

__all__ = ["TaskAdaptiveTrainer", "batch_sources"]
