"""Evaluation through the real CLI (``monai.bundle run evaluating`` on train.json + evaluate.json), and its parts."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from custom.evaluation import plot_task_panel, summarize_scans, write_csv_atomic
from custom.io import write_json_atomic
from custom.metrics import PhysicalUnitMetrics
from custom.networks import TAT
from custom.settings import load_modality_settings

from tests.utils import TINY, TINY_TRAINING, TINY_TREN, make_tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "bundle", "configs")
SETTINGS = load_modality_settings(os.path.join(CONFIGS, "modality"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _normalised(path: str, modality: str) -> torch.Tensor:
    lo, hi = SETTINGS[modality]["clip_range"]
    arr = np.clip((nib.load(path).get_fdata(dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return torch.as_tensor(arr, dtype=torch.float32)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    datalist = make_tiny_dataset(str(root / "data"))
    torch.manual_seed(0)
    os.makedirs(root / "models")
    torch.save(TAT(**TINY, **TINY_TREN).state_dict(), root / "models" / "model.pt")  # as the best saver writes
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "evaluating",
        "--meta_file",
        os.path.join(CONFIGS, "metadata.json"),
        "--config_file",
        json.dumps([os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")]),
        "--logging_file",
        os.path.join(CONFIGS, "logging.conf"),
        "--bundle_root",
        os.path.join(REPO, "bundle"),
        "--dataset_dir",
        os.path.dirname(datalist),
        "--ckpt_dir",
        str(root / "models"),
        "--output_dir",
        str(root / "eval"),
    ]
    for key, value in TINY_TRAINING.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"root": root, "data": os.path.dirname(datalist), "eval": root / "eval", "log": proc.stdout + proc.stderr}


@pytest.mark.slow
def test_report_files(evaluated):
    out = evaluated["eval"]
    summary = json.loads((out / "test_summary.json").read_text())
    assert set(summary["tasks"]) == {"low_dose_ct", "low_count_pet", "mri_super_resolution"}
    for task, entry in summary["tasks"].items():
        assert (out / f"test_panel_{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for side in ("input", "output", "input_scan_mean", "output_scan_mean"):
            assert all(math.isfinite(v) for v in entry[side].values()), (task, side, entry)
    assert summary["tasks"]["mri_super_resolution"]["n_scans"] == 2
    assert summary["tasks"]["mri_super_resolution"]["n_slices"] == 4  # one 2D slice + a 3-slice volume
    with open(out / "test_scans.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # one row per scan
    assert {int(r["n_slices"]) for r in rows if "vol" in r["scan"]} == {3}
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in r if k.startswith(("input_", "output_")))
    assert "test metrics (input = degraded, output = restored)" in evaluated["log"]


@pytest.mark.slow
def test_input_metrics_equal_direct_computation(evaluated):
    with open(evaluated["eval"] / "test_scans.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        image, label = _normalised(r["degraded_file"], r["modality"]), _normalised(r["scan"], r["modality"])
        if image.ndim == 2:
            image, label = image[..., None], label[..., None]
        s = SETTINGS[r["modality"]]
        fn = PhysicalUnitMetrics(s["clip_range"], s["eval_window"])
        slices = [fn(image[None, None, ..., z], label[None, None, ..., z]) for z in range(image.shape[-1])]
        for m in ("psnr", "ssim", "rmse"):
            direct = float(np.mean([float(v[m][0]) for v in slices]))  # slice-wise, averaged over the scan
            assert float(r[f"input_{m}"]) == pytest.approx(direct, rel=1e-4, abs=1e-5), (r["scan"], m)


def test_writers_are_atomic_and_validate(tmp_path):
    path = str(tmp_path / "a.csv")
    write_csv_atomic(path, [{"x": 1.0, "y": "a"}], ["x", "y"])
    assert open(path).read() == "x,y\n1,a\n"
    with pytest.raises(ValueError, match="a.csv"):
        write_csv_atomic(path, [{"x": 1.0}], ["x", "y"])
    assert open(path).read() == "x,y\n1,a\n"  # the failed write left the old file
    write_json_atomic(str(tmp_path / "b.json"), {"v": float("nan")})
    assert json.loads((tmp_path / "b.json").read_text()) == {"v": None}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp_")] == []


def test_summary_slice_and_scan_means():
    slices = [
        {"task": "t", "input_psnr": 10.0, "output_psnr": 12.0},
        {"task": "t", "input_psnr": 20.0, "output_psnr": 22.0},
        {"task": "t", "input_psnr": 30.0, "output_psnr": 33.0},
    ]
    scans = [
        {"task": "t", "input_psnr": 15.0, "output_psnr": 17.0},
        {"task": "t", "input_psnr": 30.0, "output_psnr": 33.0},
    ]
    s = summarize_scans(scans, slices, ["psnr"])
    assert s["tasks"]["t"]["input"]["psnr"] == 20.0 and s["tasks"]["t"]["input_scan_mean"]["psnr"] == 22.5
    assert s["tasks"]["t"]["psnr_gain"] == pytest.approx(2 + 1 / 3)
    assert s["mean_over_tasks"]["output"]["psnr"] == pytest.approx(67 / 3)


def test_panel(tmp_path):
    a = np.linspace(-200, 300, 24 * 20, dtype=np.float32).reshape(24, 20)
    path = plot_task_panel(
        str(tmp_path / "p.png"),
        a + 5,
        a + 1,
        a,
        window=(-160, 240),
        title="ct",
        units="HU",
        input_psnr=30.0,
        output_psnr=40.0,
    )
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="p2.png"):
        plot_task_panel(str(tmp_path / "p2.png"), a, a[:3], a, window=(0, 1), title="x")
