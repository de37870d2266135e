"""Engines: the trainer for TAT's input-aware balanced loss, and its guards (ignite handlers)."""

from __future__ import annotations

from .trainer import FiniteGradientGuard, FiniteLossGuard, InputAwareLoss, TaskAdaptiveTrainer, batch_sources

__all__ = ["TaskAdaptiveTrainer", "InputAwareLoss", "FiniteLossGuard", "FiniteGradientGuard", "batch_sources"]
