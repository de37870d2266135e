"""Ignite handler collecting per-slice input/output metrics on paired test data and writing the report."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.io import write_json_atomic
from custom.metrics import METRIC_NAMES, PhysicalUnitMetrics, to_physical
from custom.settings import get_modality_setting
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from .panels import plot_task_panel
from .writers import summarize_scans, write_csv_atomic

__all__ = [
    "RestorationReport",
    "format_summary_table",
    "format_reference_table",
    "load_reference_results",
    "check_reference_results",
]

SCAN_COLUMNS = ("task", "modality", "scan", "degraded_file", "n_slices") + tuple(
    f"{side}_{m}" for side in ("input", "output") for m in METRIC_NAMES
)
SLICE_COLUMNS = ("task", "modality", "scan", "degraded_file", "slice_index") + SCAN_COLUMNS[5:]


def _items(data: Any, size_key: str) -> list[Mapping]:
    """Per-sample dicts from a decollated list or a collated batch dict."""
    if isinstance(data, Mapping):
        size = len(data[size_key])
        return [
            {k: (v[i] if isinstance(v, (torch.Tensor, list, tuple)) and len(v) == size else v) for k, v in data.items()}
            for i in range(size)
        ]
    return list(data)


def _filename(value: Any, fallback: str) -> str:
    meta = getattr(value, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else fallback


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """Plain-text table of a :func:`summarize_scans` summary: per task, input vs restored PSNR/SSIM/RMSE."""
    head = (
        f"{'task':<22}{'slices':>7}  {'PSNR in':>8} {'PSNR out':>8} {'gain':>6}  {'SSIM in':>7} {'SSIM out':>8}"
        f"  {'RMSE in':>9} {'RMSE out':>9}"
    )
    lines = [head, "-" * len(head)]
    for task, t in summary["tasks"].items():
        i, o = t["input"], t["output"]
        lines.append(
            f"{task:<22}{t['n_slices']:>7}  {i['psnr']:>8.2f} {o['psnr']:>8.2f} {o['psnr'] - i['psnr']:>+6.2f}"
            f"  {i['ssim']:>7.4f} {o['ssim']:>8.4f}  {i['rmse']:>9.4g} {o['rmse']:>9.4g}"
        )
    return "\n".join(lines)


def load_reference_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read the published reference rows (``bundle/configs/reference_results.json``).

    The file holds ``tasks`` (modality column order), ``metrics`` (the order of each cell's values) and
    ``methods``: ``{method: {modality: [psnr, ssim, rmse], "mean_psnr": value}}``.

    Raises:
        ValueError: unreadable file, a metric this report does not compute, or a method lacking a task's values or
            its number ``mean_psnr`` (the message names the file).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: unreadable reference results ({type(e).__name__}: {e}).") from e
    return check_reference_results(data, path)


def check_reference_results(data: Any, path: str = "reference results") -> dict[str, Any]:
    """Check reference rows (the layout of :func:`load_reference_results`) before any scan is scored.

    Args:
        data: the rows, as read from the file or given in a config.
        path: the file (or what to call the rows) in messages.

    Returns:
        ``data``.

    Raises:
        ValueError: as :func:`load_reference_results`.
    """
    try:
        tasks, metrics, methods = list(data["tasks"]), list(data["metrics"]), dict(data["methods"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable reference results ({type(e).__name__}: {e}).") from e
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"{path}: metrics {unknown} are not among the report's {list(METRIC_NAMES)}.")
    for name, row in methods.items():
        if not isinstance(row, Mapping):
            raise ValueError(f"{path}: method {name!r} must map each task to its values, got {type(row).__name__}.")
        bad = [t for t in tasks if not _numbers(row.get(t), len(metrics))]
        if bad:
            raise ValueError(f"{path}: method {name!r} needs {len(metrics)} values {metrics} for {bad}.")
        if not _numbers([row.get("mean_psnr")], 1):
            raise ValueError(f"{path}: method {name!r} needs a number 'mean_psnr', got {row.get('mean_psnr')!r}.")
    return data


def _numbers(values: Any, count: int) -> bool:
    """Whether ``values`` is a list of ``count`` real numbers (not booleans)."""
    return (
        isinstance(values, (list, tuple))
        and len(values) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    )


def _task_means(summary: Mapping[str, Any], side: str, modalities: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """``{modality: {metric: mean over the task's slices}}`` of one side (``input`` / ``output``)."""
    return {str(modalities[task]).upper(): dict(t[side]) for task, t in summary["tasks"].items() if task in modalities}


def format_reference_table(
    summary: Mapping[str, Any], reference: Mapping[str, Any], modalities: Mapping[str, str], name: str = "this model"
) -> str:
    """The published reference rows and this evaluation's rows in one plain-text table.

    Columns: per task (``reference["tasks"]``, e.g. MRI, CT, PET) PSNR / SSIM / RMSE, then the mean PSNR over the
    tasks. Rows: each reference method, then ``name`` (restored) and the degraded input; a task that was not
    evaluated shows ``-`` and the mean is then given over the evaluated tasks only, marked ``*``.

    Args:
        summary: :func:`custom.evaluation.summarize_scans` output (per-slice task means under ``input``/``output``).
        reference: :func:`load_reference_results` output.
        modalities: task name -> modality of each task in ``summary``.
        name: label of the evaluated model's row.

    Returns:
        the table.
    """
    # the reference rows are keyed by its own task names; this model's means by modality, matched case-insensitively
    tasks, metrics = list(reference["tasks"]), list(reference["metrics"])
    keys = [str(t).upper() for t in tasks]
    width = 30

    def cell(values: Sequence[float] | None) -> str:
        if values is None:
            return f"{'-':>{width}}"
        return f"{' / '.join(f'{v:.4f}' for v in values):>{width}}"

    head = f"{'method':<28}" + "".join(f"{k + ' ' + '/'.join(m.upper() for m in metrics):>{width}}" for k in keys)
    head += f"{'mean PSNR':>11}"
    lines = [head, "-" * len(head)]
    for method, row in reference["methods"].items():
        lines.append(f"{method:<28}" + "".join(cell(row[t]) for t in tasks) + f"{float(row['mean_psnr']):>11.4f}")
    lines.append("-" * len(head))
    for label, side in ((f"{name} (restored)", "output"), ("degraded input", "input")):
        means = _task_means(summary, side, modalities)
        cells = [cell([means[k][m] for m in metrics]) if k in means else cell(None) for k in keys]
        psnrs = [means[k]["psnr"] for k in keys if k in means]
        mean = f"{sum(psnrs) / len(psnrs):>10.4f}" + (" " if len(psnrs) == len(tasks) else "*") if psnrs else "-"
        lines.append(f"{label:<28}" + "".join(cells) + f"{mean:>11}")
    return "\n".join(lines)


class RestorationReport:
    """Per-scan and per-task PSNR/SSIM/RMSE of the degraded input and of the restored output (TAT protocol).

    Attach to a MONAI ``SupervisedEvaluator`` running over test slices (whole slices, any batch size; 3D scans as
    axial slices from :func:`custom.data.expand_slices`). Every slice is scored in physical units with
    :class:`custom.metrics.PhysicalUnitMetrics` (clip to the modality's evaluation window, data range of the
    clipped target slice, SSIM Gaussian 11 / 1.5): ``input`` = ``image`` vs ``label``, ``output`` = ``pred`` vs
    ``label``. At the end of the run it writes to ``output_dir``:

    * ``<prefix>_scans.csv``: one row per scan (the ``label`` file), metrics averaged over the scan's slices;
    * ``<prefix>_slices_<task>.csv``: one row per test slice of the task (the published test phase: per-slice
      metrics, whose plain mean is the task's figure);
    * ``<prefix>_summary.json``: per task the mean over its test slices (published protocol) of input and output
      metrics, the per-scan means, the PSNR gain, and the mean over tasks;
    * ``<prefix>_panel_<task>.png``: input / restored / target / |error| of one slice per task (the first scan's
      slice with the most structure: largest target standard deviation), in the modality's display window
      (``display_window`` of the modality config if present, else ``eval_window``).

    Single-process: under DistributedDataParallel run the evaluation on one rank.

    Args:
        settings: modality settings (:func:`custom.settings.load_modality_settings`).
        output_dir: report folder (created).
        prefix: file-name prefix. Defaults to ``"test"``.
        task_key: batch key of the modality. Defaults to ``"modality"``.
        index_key: batch key of the slice index (read from the evaluator output when the batch lacks it, as the
            modality is). Defaults to ``"slice_index"``.
        panels: write the PNG panels. Defaults to True.
        log_table: log the per-task table at the end. Defaults to True.
        reference: published reference rows (:func:`load_reference_results` output or its file) to log beside
            this model's per-task means; None for none.

    Raises:
        ValueError: empty settings.
    """

    def __init__(
        self,
        settings: Mapping[str, Mapping[str, Any]],
        output_dir: str,
        prefix: str = "test",
        task_key: str = "modality",
        index_key: str = "slice_index",
        panels: bool = True,
        log_table: bool = True,
        reference: Mapping[str, Any] | str | os.PathLike | None = None,
    ) -> None:
        if not settings:
            raise ValueError("settings are empty: pass custom.settings.load_modality_settings(<modality dir>).")
        self.settings = settings
        self.output_dir = output_dir
        self.prefix = prefix
        self.task_key = task_key
        self.index_key = index_key
        self.panels = panels
        self.log_table = log_table
        if isinstance(reference, (str, os.PathLike)):
            self.reference = load_reference_results(reference)
        else:
            self.reference = None if reference is None else check_reference_results(reference)
        self._fns: dict[str, PhysicalUnitMetrics] = {}
        self.slices: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._panel: dict[str, dict[str, Any]] = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.slices, self._panel, self.summary = [], {}, {}

    def _setting(self, modality: Any) -> dict[str, Any]:
        return dict(get_modality_setting(self.settings, modality))

    def _metrics(self, setting: Mapping[str, Any]) -> PhysicalUnitMetrics:
        name = setting["modality"]
        if name not in self._fns:
            self._fns[name] = PhysicalUnitMetrics(setting["clip_range"], setting["eval_window"], spatial_dims=2)
        return self._fns[name]

    def collect(self, engine: Engine) -> None:
        """Score every sample of the iteration (``engine.state.output`` and ``engine.state.batch``).

        Raises:
            ValueError: a sample lacks its modality or its ``image``/``pred``/``label``.
        """
        outputs = _items(engine.state.output, Keys.PRED)
        batch = _items(engine.state.batch, Keys.LABEL) if engine.state.batch is not None else [{}] * len(outputs)
        for out, item in zip(outputs, batch):
            modality = item.get(self.task_key, out.get(self.task_key))
            if modality is None or any(k not in out for k in (Keys.IMAGE, Keys.LABEL, Keys.PRED)):
                raise ValueError(
                    f"evaluation sample {item.get(Keys.LABEL, '?')!s:.200}: needs '{self.task_key}' in "
                    "the batch and image/label/pred in the evaluator output."
                )
            setting = self._setting(modality)
            image, label, pred = (
                torch.as_tensor(out[k]).detach().cpu().float() for k in (Keys.IMAGE, Keys.LABEL, Keys.PRED)
            )
            fn = self._metrics(setting)
            v_in, v_out = fn(image[None], label[None]), fn(pred[None], label[None])
            scan = _filename(item.get(Keys.LABEL, out.get(Keys.LABEL)), f"item{len(self.slices)}")
            index = item.get(self.index_key, out.get(self.index_key, 0))
            row = {
                "task": str(setting["task"]),
                "modality": setting["modality"],
                "scan": scan,
                "degraded_file": _filename(item.get(Keys.IMAGE, out.get(Keys.IMAGE)), ""),
                "slice_index": int(torch.as_tensor(index).reshape(-1)[0]) if index is not None else 0,
            }
            row.update({f"input_{m}": float(v_in[m][0]) for m in METRIC_NAMES})
            row.update({f"output_{m}": float(v_out[m][0]) for m in METRIC_NAMES})
            self.slices.append(row)
            if self.panels:
                self._keep_panel(row, setting, image, pred, label)

    def _keep_panel(
        self,
        row: Mapping[str, Any],
        setting: Mapping[str, Any],
        image: torch.Tensor,
        pred: torch.Tensor,
        label: torch.Tensor,
    ) -> None:
        """Keep, per task, the first scan's slice with the largest target standard deviation."""
        current = self._panel.get(row["task"])
        if current is not None and current["row"]["scan"] != row["scan"]:
            return
        window = setting.get("display_window", setting["eval_window"])
        phys = [to_physical(t[0], setting["clip_range"], setting["clip_range"]).numpy() for t in (image, pred, label)]
        spread = float(np.clip(phys[2], *window).std())
        if current is None or spread > current["spread"]:
            self._panel[row["task"]] = {
                "row": dict(row),
                "arrays": phys,
                "window": window,
                "spread": spread,
                "units": str(setting.get("units", "")),
            }

    def write(self, engine: Engine | None = None) -> dict[str, Any]:
        """Write the CSV, JSON summary and panels; returns the summary (also kept in ``self.summary``).

        Raises:
            ValueError: no slice was evaluated (empty test split).
        """
        if not self.slices:
            raise ValueError(f"{self.output_dir}: no test slice was evaluated (is the 'test' split empty?).")
        scans: dict[tuple[str, str], dict[str, Any]] = {}
        for s in self.slices:
            scans.setdefault((s["task"], s["scan"]), {"rows": [], **{k: s[k] for k in SCAN_COLUMNS[:4]}})[
                "rows"
            ].append(s)
        scan_rows = []
        for entry in scans.values():
            rows = entry.pop("rows")
            entry["n_slices"] = len(rows)
            for key in SCAN_COLUMNS[5:]:
                entry[key] = float(np.mean([r[key] for r in rows]))
            scan_rows.append(entry)
        scan_rows.sort(key=lambda r: (r["task"], r["scan"]))
        summary = summarize_scans(scan_rows, self.slices, METRIC_NAMES)
        os.makedirs(self.output_dir, exist_ok=True)
        csv_path = write_csv_atomic(os.path.join(self.output_dir, f"{self.prefix}_scans.csv"), scan_rows, SCAN_COLUMNS)
        panels = {}
        for task, p in sorted(self._panel.items()):
            r = p["row"]
            panels[task] = plot_task_panel(
                os.path.join(self.output_dir, f"{self.prefix}_panel_{task}.png"),
                *p["arrays"],
                window=p["window"],
                title=f"{task}: {os.path.basename(r['scan'])} slice {r['slice_index']} "
                f"(window [{p['window'][0]:g}, {p['window'][1]:g}] {p['units']})",
                units=p["units"],
                input_psnr=r["input_psnr"],
                output_psnr=r["output_psnr"],
            )
        slice_csvs = {
            task: write_csv_atomic(
                os.path.join(self.output_dir, f"{self.prefix}_slices_{task}.csv"),
                sorted((s for s in self.slices if s["task"] == task), key=lambda r: (r["scan"], r["slice_index"])),
                SLICE_COLUMNS,
            )
            for task in sorted({s["task"] for s in self.slices})
        }
        summary["files"] = {"scans_csv": csv_path, "slices_csv": slice_csvs, "panels": panels}
        summary["files"]["summary_json"] = os.path.join(self.output_dir, f"{self.prefix}_summary.json")
        summary["protocol"] = (
            "physical units clipped to each modality's eval_window; PSNR/SSIM data range = max - min "
            "of the clipped target slice; SSIM Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03; RMSE "
            "in units; task value = mean over its test slices"
        )
        self.summary = summary
        if self.reference is not None:
            modalities = {s["task"]: s["modality"] for s in self.slices}
            summary["reference_table"] = format_reference_table(summary, self.reference, modalities)
        write_json_atomic(summary["files"]["summary_json"], summary)
        if self.log_table:
            self.logger.info("test metrics (input = degraded, output = restored):\n%s", format_summary_table(summary))
            if self.reference is not None:
                self.logger.info(
                    "beside the published all-in-one results (%s):\n%s",
                    self.reference.get("source", "reference"),
                    summary["reference_table"],
                )
        return summary
