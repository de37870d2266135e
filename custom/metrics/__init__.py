"""Metrics: TAT's evaluation protocol (physical units, published windows) on MONAI metrics, per task."""

from __future__ import annotations

from .physical import METRIC_NAMES, PhysicalUnitMetrics, to_physical
from .taskwise import TaskwiseImageQuality

__all__ = ["METRIC_NAMES", "PhysicalUnitMetrics", "TaskwiseImageQuality", "to_physical"]
