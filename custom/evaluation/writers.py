"""Atomic writers of the evaluation report: per-scan CSV, and the per-task summary (written as JSON by
:func:`custom.io.write_json_atomic`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from custom.io import write_text_atomic

__all__ = ["write_csv_atomic", "summarize_scans"]


def write_csv_atomic(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Write ``rows`` (dicts) as CSV with header ``columns``, atomically.

    Raises:
        ValueError: a row lacks one of ``columns`` (the message names ``path``).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"{path}: row {dict(row)} lacks columns {missing}.")
        writer.writerow({c: (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in columns})
    return write_text_atomic(path, buf.getvalue())


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def summarize_scans(
    scans: Sequence[Mapping[str, Any]], slices: Sequence[Mapping[str, Any]], metrics: Sequence[str]
) -> dict[str, Any]:
    """Per-task means of input and output metrics.

    The headline value of a task (``input``/``output``) is the mean over its test slices, the published protocol;
    ``input_scan_mean``/``output_scan_mean`` average the per-scan means instead (equal for 2D scans).

    Args:
        scans: per-scan rows with ``task`` and ``input_<m>``/``output_<m>`` for every metric ``m``.
        slices: per-slice rows with the same keys.
        metrics: metric names, e.g. ``("psnr", "ssim", "rmse")``.

    Returns:
        ``{"tasks": {task: {...}}, "mean_over_tasks": {...}}``.
    """
    tasks: dict[str, Any] = {}
    for task in sorted({str(s["task"]) for s in scans}):
        t_slices = [s for s in slices if s["task"] == task]
        t_scans = [s for s in scans if s["task"] == task]
        entry: dict[str, Any] = {"n_scans": len(t_scans), "n_slices": len(t_slices)}
        for side in ("input", "output"):
            entry[side] = {m: _mean([float(s[f"{side}_{m}"]) for s in t_slices]) for m in metrics}
            entry[f"{side}_scan_mean"] = {m: _mean([float(s[f"{side}_{m}"]) for s in t_scans]) for m in metrics}
        entry["psnr_gain"] = entry["output"]["psnr"] - entry["input"]["psnr"] if "psnr" in metrics else None
        tasks[task] = entry
    overall = {side: {m: _mean([t[side][m] for t in tasks.values()]) for m in metrics} for side in ("input", "output")}
    return {"tasks": tasks, "mean_over_tasks": overall}
