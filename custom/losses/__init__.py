"""Losses: TAT's task-adaptive (uncertainty-weighted) loss balancing, its plain-L1 ablation, and the optional
supervised contrastive loss on the task embedding."""

from __future__ import annotations

from .task_contrast import SupervisedContrastiveLoss, task_labels
from .uncertainty_weighted import PlainL1Loss, TaskAdaptiveBalancedLoss, UncertaintyEstimator, per_sample_l1

__all__ = [
    "TaskAdaptiveBalancedLoss",
    "PlainL1Loss",
    "UncertaintyEstimator",
    "per_sample_l1",
    "SupervisedContrastiveLoss",
    "task_labels",
]
