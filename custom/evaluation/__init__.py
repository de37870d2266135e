"""Evaluation on paired test data: per-scan / per-task metrics of input and output, CSV + JSON, PNG panels."""

from __future__ import annotations

from .panels import plot_task_panel
from .report import (
    RestorationReport,
    check_reference_results,
    format_reference_table,
    format_summary_table,
    load_reference_results,
)
from .writers import summarize_scans, write_csv_atomic

__all__ = [
    "RestorationReport",
    "check_reference_results",
    "format_reference_table",
    "format_summary_table",
    "load_reference_results",
    "plot_task_panel",
    "summarize_scans",
    "write_csv_atomic",
]
