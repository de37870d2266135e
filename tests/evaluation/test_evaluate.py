"""Evaluation through the real CLI (``monai.bundle run evaluating`` on train.json + evaluate.json), and its parts."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pytest
import torch
from custom.evaluation import plot_task_panel, summarize_scans, write_csv_atomic
from custom.io import write_json_atomic
from custom.metrics import PhysicalUnitMetrics
from custom.networks import TAT
from custom.settings import load_modality_settings

from tests.utils import BUNDLE, CONFIGS, ENV, SETTINGS_DIR, TINY, TINY_TRAINING, TINY_TREN, make_tiny_dataset

SETTINGS = load_modality_settings(SETTINGS_DIR)


def _normalised(path: str, modality: str) -> torch.Tensor:
    lo, hi = SETTINGS[modality]["clip_range"]
    arr = np.clip((nib.load(path).get_fdata(dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return torch.as_tensor(arr, dtype=torch.float32)


def _evaluate(root: str) -> dict:
    """A random tiny network's checkpoint evaluated on the tiny data set's test split through the CLI."""
    datalist = make_tiny_dataset(os.path.join(root, "data"))
    torch.manual_seed(0)
    os.makedirs(os.path.join(root, "models"))
    # as the best saver writes
    torch.save(TAT(**TINY, **TINY_TREN).state_dict(), os.path.join(root, "models", "model.pt"))
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
        BUNDLE,
        "--dataset_dir",
        os.path.dirname(datalist),
        "--ckpt_dir",
        os.path.join(root, "models"),
        "--output_dir",
        os.path.join(root, "eval"),
    ]
    for key, value in TINY_TRAINING.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {
        "root": root,
        "data": os.path.dirname(datalist),
        "eval": os.path.join(root, "eval"),
        "log": proc.stdout + proc.stderr,
    }


@pytest.mark.slow
class TestEvaluateCLI(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.evaluated = _evaluate(tmp)

    def test_report_files(self):
        out = self.evaluated["eval"]
        with open(os.path.join(out, "test_summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        self.assertEqual(set(summary["tasks"]), {"low_dose_ct", "low_count_pet", "mri_super_resolution"})
        for task, entry in summary["tasks"].items():
            with open(os.path.join(out, f"test_panel_{task}.png"), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
            for side in ("input", "output", "input_scan_mean", "output_scan_mean"):
                self.assertTrue(all(math.isfinite(v) for v in entry[side].values()), (task, side, entry))
        self.assertEqual(summary["tasks"]["mri_super_resolution"]["n_scans"], 2)
        self.assertEqual(summary["tasks"]["mri_super_resolution"]["n_slices"], 4)  # one 2D slice + a 3-slice volume
        with open(os.path.join(out, "test_scans.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual(len(rows), 4)  # one row per scan
        self.assertEqual({int(r["n_slices"]) for r in rows if "vol" in r["scan"]}, {3})
        for r in rows:
            self.assertTrue(all(math.isfinite(float(r[k])) for k in r if k.startswith(("input_", "output_"))), r)
        self.assertIn("test metrics (input = degraded, output = restored)", self.evaluated["log"])

    def test_input_metrics_equal_direct_computation(self):
        with open(os.path.join(self.evaluated["eval"], "test_scans.csv"), newline="") as f:
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
                got = float(r[f"input_{m}"])
                self.assertLessEqual(abs(got - direct), max(1e-4 * abs(direct), 1e-5), (r["scan"], m, got, direct))


class TestEvaluationParts(unittest.TestCase):
    def test_writers_are_atomic_and_validate(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.csv")
            write_csv_atomic(path, [{"x": 1.0, "y": "a"}], ["x", "y"])
            with open(path, newline="") as f:  # line ends as written: "\n", not the csv module's "\r\n"
                self.assertEqual(f.read(), "x,y\n1,a\n")
            with self.assertRaisesRegex(ValueError, "a.csv"):
                write_csv_atomic(path, [{"x": 1.0}], ["x", "y"])
            with open(path, newline="") as f:
                self.assertEqual(f.read(), "x,y\n1,a\n")  # the failed write left the old file
            write_json_atomic(os.path.join(d, "b.json"), {"v": float("nan")})
            with open(os.path.join(d, "b.json")) as f:
                self.assertEqual(json.load(f), {"v": None})
            self.assertEqual([p for p in os.listdir(d) if p.startswith(".tmp_")], [])

    def test_summary_slice_and_scan_means(self):
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
        self.assertEqual(s["tasks"]["t"]["input"]["psnr"], 20.0)
        self.assertEqual(s["tasks"]["t"]["input_scan_mean"]["psnr"], 22.5)
        self.assertAlmostEqual(s["tasks"]["t"]["psnr_gain"], 2 + 1 / 3, delta=1e-6 * (2 + 1 / 3))
        self.assertAlmostEqual(s["mean_over_tasks"]["output"]["psnr"], 67 / 3, delta=1e-6 * 67 / 3)

    def test_panel(self):
        a = np.linspace(-200, 300, 24 * 20, dtype=np.float32).reshape(24, 20)
        with tempfile.TemporaryDirectory() as d:
            path = plot_task_panel(
                os.path.join(d, "p.png"),
                a + 5,
                a + 1,
                a,
                window=(-160, 240),
                title="ct",
                units="HU",
                input_psnr=30.0,
                output_psnr=40.0,
            )
            with open(path, "rb") as f:
                self.assertEqual(f.read(4), b"\x89PNG")
            with self.assertRaisesRegex(ValueError, "p2.png"):
                plot_task_panel(os.path.join(d, "p2.png"), a, a[:3], a, window=(0, 1), title="x")


if __name__ == "__main__":
    unittest.main()
