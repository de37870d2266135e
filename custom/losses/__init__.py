"""Losses: TAT's task-adaptive (uncertainty-weighted) loss balancing and its plain-L1 ablation."""

from __future__ import annotations

from .uncertainty_weighted import PlainL1Loss, TaskAdaptiveBalancedLoss, UncertaintyEstimator, per_sample_l1

__all__ = ["TaskAdaptiveBalancedLoss", "PlainL1Loss", "UncertaintyEstimator", "per_sample_l1"]
