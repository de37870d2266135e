"""The main job: train a small TAT on the built-in demo data for a few CPU minutes, evaluate it, report.

``python -m custom.tools.demo --output_dir demo_output`` (what ``make demo`` runs):

1. builds the demo data set (real CT/MRI images from PyPI wheels, synthetic PET) into ``OUTPUT_DIR/data`` with
   ``python -m custom.tools.demo_data`` (reused when already complete; ``--datalist`` skips this step);
2. trains with the real bundle CLI, ``python -m monai.bundle run training`` on the bundle's ``configs/train.json``
   (``--bundle_root``; default: the bundle shipped with the package, resolved when the demo runs),
   with the command-line overrides of :data:`DEMO_OVERRIDES` (a small TAT and a short schedule), checkpoints in
   ``OUTPUT_DIR/models`` (``model.pt`` = best EMA weights by validation PSNR);
3. evaluates ``model.pt`` on the test split with
   ``python -m monai.bundle run evaluating`` on ``['train.json', 'evaluate.json']`` and the same overrides,
   writing ``OUTPUT_DIR/evaluation/test_scans.csv``, ``test_summary.json`` and ``test_panel_<task>.png``;
4. prints per task PSNR/SSIM/RMSE of the degraded input and of the restored output, and exits with status 1 if a
   task's restored PSNR does not beat its input's;
5. writes ``OUTPUT_DIR/models/demo_inference.json``, an overlay of ``inference.json`` with the demo network and
   checkpoint, and prints the one command that restores a folder of the user's own scans with it;
6. restores the test split through that command (``OUTPUT_DIR/inference``, with ``difference_output``), prints each
   scan's predicted task, task distance and warnings (task statistics stored in ``model.pt`` by the training's
   ``TaskStatisticsHandler``), and writes ``OUTPUT_DIR/evaluation/review_panel_mri.png``: input, restored,
   difference and the k-space data-consistent result of the first MRI test scan.

Reruns: the data is reused; training starts fresh every run (``OUTPUT_DIR/models``, ``OUTPUT_DIR/train_logs``
and ``OUTPUT_DIR/evaluation`` are emptied first) so the figures always belong to one complete, known budget.
The budget is counted in iterations, not seconds, so the result does not depend on the machine's load; only
the wall time does.

Demo weights are for demonstration only: a few hundred iterations of a tiny network on a handful of slices.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from custom.data.datalist import load_datalist
from custom.evaluation import format_summary_table
from custom.evaluation.consistency import slice_metrics
from custom.evaluation.panels import plot_review_panel
from custom.io import write_text_atomic
from custom.settings import get_modality_setting, load_modality_settings, packaged_bundle
from custom.transforms.data_consistency import kspace_data_consistency

__all__ = [
    "DEMO_OVERRIDES",
    "bundle_root",
    "bundle_command",
    "inference_overlay",
    "restore_command",
    "inference_command",
    "review_test_split",
    "default_threads",
    "run_demo",
    "main",
]


def bundle_root(root: str | os.PathLike | None = None) -> str:
    """The bundle the demo trains, evaluates and restores with, resolved when used (never at import time).

    Args:
        root: a bundle folder (``--bundle_root``, e.g. an unzipped bundle zip); None: the bundle shipped as the
            package's data (:func:`custom.settings.packaged_bundle`).

    Returns:
        the absolute bundle folder.

    Raises:
        FileNotFoundError: ``root`` is None and the package carries no bundle (pass ``--bundle_root``).
    """
    return str(packaged_bundle()) if root is None else os.path.abspath(root)


# Every non-default knob of the demo (train.json keys), and why:
DEMO_OVERRIDES: dict[str, Any] = {
    # small TAT: published widths (dim 48, blocks 4/6/6/8, TREN 64/256) take seconds per step on a CPU; these
    # keep the whole architecture (4 levels, task-adaptive weights, local windows) at ~0.9 M parameters
    "network_def#dim": 8,
    "network_def#num_blocks": [1, 1, 1, 1],
    "network_def#num_refinement_blocks": 1,
    "network_def#heads": [1, 1, 2, 2],
    "network_def#tren_hidden_channels": 16,
    "network_def#tren_embed_dim": 64,
    # 64^2 crops, 2 per task (6 per step) instead of 128^2 x 4 per task: ~8x less compute per step
    "patch_size": 64,
    "samples_per_task": 2,
    # short schedule: the cosine schedule spans num_iterations, validated (EMA weights) every val_interval
    "num_iterations": 500,
    "val_interval": 100,
    # 10x the published 2e-4: a few hundred steps instead of 400k
    "learning_rate": 0.002,
    # EMA decay 0.99 (published 0.999 averages over ~1000 steps, longer than the whole demo run)
    "ema_decay": 0.99,
    # beyond the paper: a supervised contrastive term on the task embedding (custom.losses.SupervisedContrastiveLoss),
    # so that 500 steps give an embedding the task check can read (the restoration loss alone need not separate
    # the tasks in so short a run); it trains the task representation network only
    "task_contrast_weight": 0.1,
    # no DataLoader worker processes on a 2-core machine (they would compete with the training threads)
    "num_workers": 0,
}


def inference_overlay(settings: Mapping[str, Any], checkpoint: str) -> dict[str, Any]:
    """Config overlay for ``inference.json`` that restores scans with the demo's checkpoint.

    Merged after ``inference.json`` (``--config_file '["inference.json", "overlay.json"]'``: MONAI merges ``#`` keys
    into the nested config), it sets the demo network's hyper-parameters and the checkpoint, so that one command
    restores a user's scans with the demo weights.

    Args:
        settings: the demo's train.json overrides (:data:`DEMO_OVERRIDES` plus the user's).
        checkpoint: path of the trained ``model.pt``.

    Returns:
        ``{"checkpoint": ..., "network_def#...": ...}`` (``patch_size`` becomes ``network_def#train_patch_size``).
    """
    overlay: dict[str, Any] = {"checkpoint": os.path.abspath(checkpoint)}
    overlay.update({k: v for k, v in settings.items() if k.startswith("network_def#")})
    if "patch_size" in settings:
        overlay["network_def#train_patch_size"] = settings["patch_size"]
    return overlay


def restore_command(overlay_path: str, root: str | None = None) -> str:
    """The one-line shell command restoring a folder of scans with the demo weights (placeholders in capitals).

    Args:
        overlay_path: the demo's ``demo_inference.json``.
        root: the bundle folder (default: :func:`bundle_root`'s).
    """
    root = bundle_root(root)
    configs = json.dumps([os.path.join(root, "configs", "inference.json"), os.path.abspath(overlay_path)])
    return (
        f"python -m monai.bundle run inference --config_file {shlex.quote(configs)} --bundle_root {shlex.quote(root)} "
        "--dataset_dir YOUR_SCANS --output_dir YOUR_OUTPUT_DIR  # add --modality CT|PET|MRI for NIfTI"
    )


def bundle_command(
    target: str,
    config_files: Sequence[str],
    dataset_dir: str,
    ckpt_dir: str,
    output_dir: str,
    overrides: Mapping[str, Any],
    root: str | None = None,
) -> list[str]:
    """The ``python -m monai.bundle run <target>`` command line with ``--key value`` overrides.

    Args:
        target: config id to run (``training`` or ``evaluating``).
        config_files: config file names inside ``bundle/configs`` (layered in order).
        dataset_dir: folder of ``datalist.json``.
        ckpt_dir: checkpoint folder.
        output_dir: logs / report folder.
        overrides: extra config overrides; lists and dicts are passed as JSON.
        root: the bundle folder (default: :func:`bundle_root`'s).

    Returns:
        argv list.
    """
    root = bundle_root(root)
    configs = [os.path.join(root, "configs", name) for name in config_files]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        target,
        "--meta_file",
        os.path.join(root, "configs", "metadata.json"),
        "--config_file",
        configs[0] if len(configs) == 1 else json.dumps(configs),
        "--logging_file",
        os.path.join(root, "configs", "logging.conf"),
        "--bundle_root",
        root,
        "--dataset_dir",
        dataset_dir,
        "--ckpt_dir",
        ckpt_dir,
        "--output_dir",
        output_dir,
    ]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)]
    return cmd


def inference_command(
    overlay_path: str, datalist: str, split: str, output_dir: str, root: str | None = None
) -> list[str]:
    """``python -m monai.bundle run inference`` on a data-list split with the demo overlay, writing differences
    (``root``: the bundle folder, default :func:`bundle_root`'s)."""
    root = bundle_root(root)
    configs = [os.path.join(root, "configs", "inference.json"), os.path.abspath(overlay_path)]
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        json.dumps(configs),
        "--logging_file",
        os.path.join(root, "configs", "logging.conf"),
        "--bundle_root",
        root,
        "--dataset_dir",
        os.path.dirname(os.path.abspath(datalist)),
        "--datalist",
        os.path.abspath(datalist),
        "--datalist_split",
        split,
        "--output_dir",
        output_dir,
        "--difference_output",
        "true",
        "--overwrite",
        "true",
    ]


def _load_nifti(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def review_test_split(
    report_path: str, datalist: str, panel_path: str, factor: float = 4.0, root: str | None = None
) -> dict[str, Any]:
    """Per-scan task check lines and the review panel of the first MRI test scan (see the module docstring).

    Args:
        report_path: ``inference_report.json`` of :func:`inference_command`'s run.
        datalist: the demo data list (its ``test`` split has the targets).
        panel_path: destination of the PNG panel.
        factor: k-space truncation factor of the MRI inputs.
        root: the bundle folder whose ``configs/modality`` settings are used (default: :func:`bundle_root`'s).

    Returns:
        ``{"scans": [{image, predicted_task, task_distance, warnings}], "panel": path or None, "panel_psnr": {...}}``.

    Raises:
        ValueError: the report lacks a test scan's entry or the task check.
    """
    with open(report_path, encoding="utf-8") as f:
        entries = {os.path.realpath(s["image"]): s for s in json.load(f)["scans"]}
    scans, panel, panel_psnr = [], None, {}
    for item in load_datalist(datalist, "test"):
        entry = entries.get(os.path.realpath(item["image"]))
        if entry is None or entry["status"] != "written" or "predicted_task" not in entry:
            raise ValueError(f"{report_path}: no restored entry with a task check for {item['image']}.")
        scans.append({k: entry.get(k) for k in ("image", "predicted_task", "task_distance", "warnings")})
        scans[-1]["modality"] = item.get("modality")
        if panel is None and str(item.get("modality")).upper() == "MRI":
            x, r, y = _load_nifti(item["image"]), _load_nifti(entry["output"]), _load_nifti(item["label"])
            diff = _load_nifti(entry["difference_output"])
            dc = kspace_data_consistency(torch.from_numpy(r)[None], torch.from_numpy(x)[None], factor)[0].numpy()
            setting = get_modality_setting(
                load_modality_settings(os.path.join(bundle_root(root), "configs", "modality")), "MRI"
            )
            panel_psnr = {
                k: slice_metrics(v, y, setting)["psnr"][0]
                for k, v in (("input", x), ("restored", r), ("consistent", dc))
            }
            pick = (lambda a: a) if x.ndim == 2 else (lambda a: a[..., a.shape[-1] // 2])
            panel = plot_review_panel(
                panel_path,
                pick(x),
                pick(r),
                pick(diff),
                pick(dc),
                setting["eval_window"],
                f"MRI test scan {os.path.basename(item['image'])}: what the network changed, and the data-consistent result",
                setting["units"],
                dict(panel_psnr),
            )
    return {"scans": scans, "panel": panel, "panel_psnr": panel_psnr}


def default_threads() -> int:
    """Torch threads for the demo: 1.

    The small demo network has little intra-op parallelism, and two OpenMP threads stall whenever another process
    holds one of the cores; pass ``--threads 2`` on a dedicated machine to try 2.
    """
    return 1


def _run(cmd: Sequence[str], env: Mapping[str, str], step: str) -> float:
    """Run one step (output streamed to the console); returns its wall time in seconds.

    Raises:
        RuntimeError: the step failed (names the step and the exit status).
    """
    print(f"\n=== {step} ===\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    result = subprocess.run(list(cmd), env=dict(env))
    if result.returncode != 0:
        raise RuntimeError(f"demo step '{step}' failed with exit status {result.returncode} (see the output above).")
    return time.time() - start


def run_demo(
    output_dir: str,
    datalist: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    threads: int | None = None,
    require_gain: bool = True,
    root: str | None = None,
) -> dict[str, Any]:
    """Build data, train, evaluate and report (see the module docstring).

    Args:
        output_dir: demo folder (``data``, ``models``, ``train_logs``, ``evaluation`` inside).
        datalist: an existing ``datalist.json`` to use instead of building the demo data.
        overrides: config overrides replacing / extending :data:`DEMO_OVERRIDES`.
        threads: torch/OpenMP threads of the training and evaluation processes (default: :func:`default_threads`).
        require_gain: raise if a task's restored PSNR does not beat its input's.
        root: the bundle folder (``--bundle_root``; default: the one shipped with the package, :func:`bundle_root`).

    Returns:
        the evaluation summary (``test_summary.json`` content) plus ``timings`` (seconds per step).

    Raises:
        ValueError: ``datalist`` is missing, or (``require_gain``) a task did not improve.
        RuntimeError: a step failed.
        FileNotFoundError: no ``root`` given and the package carries no bundle.
    """
    root = bundle_root(root)
    output_dir = os.path.abspath(output_dir)
    threads = threads or default_threads()
    settings = {**DEMO_OVERRIDES, **(overrides or {})}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    timings: dict[str, float] = {}
    start = time.time()

    if datalist is None:
        data_dir = os.path.join(output_dir, "data")
        timings["data"] = _run(
            [sys.executable, "-m", "custom.tools.demo_data", "--output_dir", data_dir],
            env,
            "1/4 demo data (reused when already built)",
        )
        datalist = os.path.join(data_dir, "datalist.json")
    datalist = os.path.abspath(datalist)
    if not os.path.isfile(datalist):
        raise ValueError(f"{datalist}: data list not found.")
    dataset_dir = os.path.dirname(datalist)
    if os.path.basename(datalist) != "datalist.json":
        raise ValueError(f"{datalist}: the bundle reads DATASET_DIR/datalist.json; name the file datalist.json.")

    ckpt_dir, log_dir, eval_dir = (os.path.join(output_dir, d) for d in ("models", "train_logs", "evaluation"))
    for folder in (ckpt_dir, log_dir, eval_dir):  # fresh training every run (see the module docstring)
        shutil.rmtree(folder, ignore_errors=True)

    timings["training"] = _run(
        bundle_command("training", ["train.json"], dataset_dir, ckpt_dir, log_dir, settings, root),
        env,
        f"2/4 training a small TAT for {settings['num_iterations']} iterations (python -m monai.bundle run training)",
    )
    timings["evaluation"] = _run(
        bundle_command("evaluating", ["train.json", "evaluate.json"], dataset_dir, ckpt_dir, eval_dir, settings, root),
        env,
        "3/4 evaluation of models/model.pt on the test split (python -m monai.bundle run evaluating)",
    )
    overlay_path = os.path.join(ckpt_dir, "demo_inference.json")
    write_text_atomic(
        overlay_path, json.dumps(inference_overlay(settings, os.path.join(ckpt_dir, "model.pt")), indent=2)
    )
    inference_dir = os.path.join(output_dir, "inference")
    timings["inference"] = _run(
        inference_command(overlay_path, datalist, "test", inference_dir, root),
        env,
        "4/4 restoring the test split with the task check and the difference output (bundle inference CLI)",
    )
    timings["total"] = time.time() - start
    review = review_test_split(
        os.path.join(inference_dir, "inference_report.json"),
        datalist,
        os.path.join(eval_dir, "review_panel_mri.png"),
        root=root,
    )

    summary_path = os.path.join(eval_dir, "test_summary.json")
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    summary["timings"] = timings
    summary["review"] = review
    failed = [t for t, v in summary["tasks"].items() if not v["output"]["psnr"] > v["input"]["psnr"]]

    print("\n=== TAT demo: test split, degraded input vs restored output (physical units, published windows) ===")
    print(format_summary_table(summary))
    print(
        f"\nwall time: data {timings.get('data', 0.0):.0f} s, training {timings['training']:.0f} s, "
        f"evaluation {timings['evaluation']:.0f} s, inference {timings['inference']:.0f} s, "
        f"total {timings['total']:.0f} s (torch threads: {threads})"
    )
    print("\ntask check (the network's task representation; test split):")
    for scan in review["scans"]:
        dist = "n/a" if scan["task_distance"] is None else f"{scan['task_distance']:.2f}"
        warn = "; ".join(scan["warnings"] or []) or "no warning"
        print(
            f"  {os.path.basename(scan['image'])}: declared {scan['modality']}, predicted {scan['predicted_task']} "
            f"(distance {dist}): {warn}"
        )
    if review["panel"]:
        psnr = ", ".join(f"{k} {v:.2f} dB" for k, v in review["panel_psnr"].items())
        print(f"review panel (input, restored, difference, data-consistent MRI): {review['panel']}  ({psnr})")
    print(f"model:     {os.path.join(ckpt_dir, 'model.pt')}  (demonstration weights only)")
    print(f"per scan:  {summary['files']['scans_csv']}")
    print(f"summary:   {summary_path}")
    for path in summary["files"]["panels"].values():
        print(f"panel:     {path}")
    print(f"TensorBoard: tensorboard --logdir {log_dir}")
    print(f"restore your scans with these weights:\n  {restore_command(overlay_path, root)}")
    if failed:
        message = f"{summary_path}: restored PSNR does not beat the degraded input for {failed}."
        if require_gain:
            raise ValueError(message)
        print(f"NOTE: {message}")
    else:
        print("Every task's restored PSNR beats its degraded input's.")
    return summary


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"override {text!r} must look like KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m custom.tools.demo",
        description="Train a small TAT on the built-in demo data for a few CPU minutes, evaluate it and report.",
    )
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument(
        "--bundle_root",
        default=None,
        help="bundle folder (e.g. an unzipped bundle zip; default: the one shipped with the package)",
    )
    parser.add_argument("--datalist", default=None, help="use this datalist.json instead of building the demo data")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of training and evaluation (default 1, see default_threads)",
    )
    parser.add_argument(
        "--override",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra train.json override (JSON value), e.g. num_iterations=600; repeatable",
    )
    parser.add_argument(
        "--no_require_gain", action="store_true", help="exit 0 even if a task's restored PSNR does not beat its input's"
    )
    args = parser.parse_args(argv)
    try:
        run_demo(
            args.output_dir,
            args.datalist,
            dict(args.override),
            args.threads,
            not args.no_require_gain,
            args.bundle_root,
        )
    except (ValueError, RuntimeError, OSError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
