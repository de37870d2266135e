"""Measure MRI k-space data consistency on restored scans: PSNR / SSIM of input, restored and each DC mode.

``python -m custom.evaluation.consistency --report OUT/inference_report.json --datalist DATA/datalist.json
[--split test] [--factor 4]`` reads the MRI items of the split (``image`` = degraded input, ``label`` = target),
the restored scan of each from the inference report, applies :func:`custom.transforms.data_consistency
.kspace_data_consistency` in every mode to the restored scan, and prints the published metrics (physical units,
the modality's evaluation window, per slice, then averaged over the slices of all scans). Scans are read by the
bundle's one reader stack (:func:`custom.data.readers.load_image`: NIfTI or DICOM, physical units, checked), and the
modality settings come from ``--modality_dir`` (default: the shipped bundle's, :func:`custom.settings.default_modality_dir`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.data.datalist import load_datalist
from custom.data.readers import load_image
from custom.io import write_json_atomic
from custom.metrics.physical import PhysicalUnitMetrics
from custom.settings import default_modality_dir, get_modality_setting, load_modality_settings
from custom.transforms.data_consistency import DC_MODES, kspace_data_consistency

__all__ = ["DESCRIPTION", "slice_metrics", "measure_scans", "main"]

DESCRIPTION = "Measure MRI k-space data consistency on restored scans: PSNR / SSIM of input, restored and each DC mode."


def slice_metrics(image: np.ndarray, target: np.ndarray, setting: Mapping[str, Any]) -> dict[str, list[float]]:
    """Published PSNR / SSIM / RMSE per slice of ``image`` against ``target`` (both (H, W) or (H, W, D)).

    Returns:
        ``{"psnr": [...], "ssim": [...], "rmse": [...]}``, one value per slice.
    """
    low, high = setting["clip_range"]

    def batch(a: np.ndarray) -> torch.Tensor:
        a = np.asarray(a, dtype=np.float64)
        a = a[..., None] if a.ndim == 2 else a
        return torch.from_numpy((np.moveaxis(a, -1, 0)[:, None] - low) / (high - low))

    out = PhysicalUnitMetrics(setting["clip_range"], setting["eval_window"])(batch(image), batch(target))
    return {k: [float(v) for v in vals] for k, vals in out.items()}


def measure_scans(
    scans: Sequence[Mapping[str, str]], setting: Mapping[str, Any], factor: float = 4.0
) -> dict[str, dict[str, float]]:
    """Mean per-slice metrics of the input, the restored scan and every data-consistency mode.

    Args:
        scans: ``{"image": input, "label": target, "restored": output}`` image paths (NIfTI or DICOM, read by
            :func:`custom.data.readers.load_image`).
        setting: the MRI modality settings.
        factor: k-space truncation factor of the inputs.

    Returns:
        ``{"input" | "restored" | "dc_<mode>": {"psnr", "ssim", "rmse", "slices"}}``.

    Raises:
        ValueError: an unreadable scan, or input, target and restored scan of different shapes (the message names
            the input).
    """
    sums: dict[str, dict[str, list[float]]] = {}
    for scan in scans:
        x, y, r = (load_image(scan[k]).numpy() for k in ("image", "label", "restored"))
        if not x.shape == y.shape == r.shape:
            raise ValueError(
                f"{scan['image']}: input, target and restored shapes differ ({x.shape}, {y.shape}, {r.shape})."
            )
        versions = {"input": x, "restored": r}
        for mode in DC_MODES:
            dc = kspace_data_consistency(torch.from_numpy(r)[None], torch.from_numpy(x)[None], factor, mode)
            versions[f"dc_{mode}"] = dc[0].numpy()
        for name, img in versions.items():
            for k, v in slice_metrics(img, y, setting).items():
                sums.setdefault(name, {}).setdefault(k, []).extend(v)
    return {
        name: {**{k: float(np.mean(v)) for k, v in m.items()}, "slices": len(m["psnr"])} for name, m in sums.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints the table and writes ``--output`` (json) when given.

    Returns:
        0 on success, 1 (message on stderr) when a scan is not restored, or the modality settings (``--modality_dir``,
        default the shipped bundle's) or a scan are unusable.
    """
    parser = argparse.ArgumentParser(prog="python -m custom.evaluation.consistency", description=DESCRIPTION)
    parser.add_argument("--report", required=True, help="inference_report.json of a run over the split")
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument(
        "--modality_dir", default=None, help="modality json folder (default: the shipped bundle's configs/modality)"
    )
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    with open(args.report, encoding="utf-8") as f:
        outputs = {os.path.realpath(s["image"]): s["output"] for s in json.load(f)["scans"] if s["status"] == "written"}
    scans = []
    for item in load_datalist(args.datalist, args.split):
        if str(item.get("modality", "")).upper() not in ("MRI", "MR"):
            continue
        restored = outputs.get(os.path.realpath(item["image"]))
        if restored is None:
            print(f"{item['image']}: not restored in {args.report}", file=sys.stderr)
            return 1
        scans.append({"image": item["image"], "label": item["label"], "restored": restored})
    if not scans:
        print(f"{args.datalist}: no MRI item with a restored output in split {args.split!r}", file=sys.stderr)
        return 1
    try:
        modality_dir = os.fspath(args.modality_dir or default_modality_dir())
        setting = get_modality_setting(load_modality_settings(modality_dir), "MRI", where=modality_dir)
        result = measure_scans(scans, setting, args.factor)
    except (ValueError, OSError) as e:
        print(f"data consistency failed: {e}", file=sys.stderr)
        return 1
    for name, m in result.items():
        print(
            f"{name:16s} PSNR {m['psnr']:7.3f} dB  SSIM {m['ssim']:.4f}  RMSE {m['rmse']:8.3f}  ({m['slices']} slices)"
        )
    if args.output:
        write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
