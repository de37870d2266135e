"""custom.evaluation.RestorationReport: the per-slice scores, the files it writes, its panels and its log, driven
by a plain ignite engine (the bundle CLI run is in test_evaluate.py)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import unittest
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch
from custom.evaluation import RestorationReport, plot_task_panel
from custom.metrics import PhysicalUnitMetrics
from custom.settings import load_modality_settings
from ignite.engine import Engine
from monai.data import MetaTensor, list_data_collate

from tests.utils import CONFIGS, SETTINGS_DIR

SETTINGS = load_modality_settings(SETTINGS_DIR)
REFERENCE = os.path.join(CONFIGS, "reference_results.json")
H, W = 24, 20  # not square: a transposed slice would not go unnoticed
METRICS = ("psnr", "ssim", "rmse")


def _normalised(phys: np.ndarray, modality: str) -> torch.Tensor:
    lo, hi = SETTINGS[modality]["clip_range"]
    return torch.as_tensor((phys - lo) / (hi - lo), dtype=torch.float32)[None]  # (1, H, W), network range


def _sample(modality: str, scan: str, index: int, seed: int, spread: float = 1.0) -> dict[str, Any]:
    """A decollated evaluation sample: target, a noisier input and a less noisy restored slice (inside the window)."""
    rng = np.random.default_rng(seed)
    lo, hi = SETTINGS[modality]["eval_window"]
    centre, scale = (lo + hi) / 2, (hi - lo) / 4
    yy, xx = np.mgrid[:H, :W]
    target = centre + spread * scale * np.sin(yy / 3.0 + seed) * np.cos(xx / 4.0)
    noisy, restored = (target + rng.normal(0, s * scale, target.shape) for s in (0.3, 0.1))
    return {
        "image": MetaTensor(_normalised(noisy, modality), meta={"filename_or_obj": scan.replace(".nii", "_in.nii")}),
        "label": MetaTensor(_normalised(target, modality), meta={"filename_or_obj": scan}),
        "pred": _normalised(restored, modality),
        "modality": modality,
        "slice_index": torch.tensor(index),
    }


def _direct(sample: Mapping[str, Any]) -> dict[str, float]:
    """The published metrics of a sample computed here, input then output."""
    s = SETTINGS[sample["modality"]]
    fn = PhysicalUnitMetrics(s["clip_range"], s["eval_window"])
    image, label, pred = (torch.as_tensor(sample[k])[None] for k in ("image", "label", "pred"))
    values = {f"input_{m}": float(v[0]) for m, v in fn(image, label).items()}
    values.update({f"output_{m}": float(v[0]) for m, v in fn(pred, label).items()})
    return values


def _run(report: RestorationReport, iterations: list[list[dict[str, Any]]]) -> None:
    """One epoch of an ignite engine whose batches are decollated samples and whose output echoes them."""

    def step(engine: Engine, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: s[k] for k in ("image", "label", "pred")} for s in batch]

    engine = Engine(step)
    report.attach(engine)
    engine.run(iterations, max_epochs=1)


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class TestRestorationReport(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.out = tmp.name  # exists already, as the bundle's evaluating step makes it
        # CT scan a: three slices (slice 1 with the most structure), CT scan b (seen second): one slice with more,
        # PET scan p: two slices (slice 4 with the most); given out of order, in batches of two
        self.samples = [
            _sample("CT", "/d/ct_a.nii.gz", 2, 1, spread=0.5),
            _sample("CT", "/d/ct_b.nii.gz", 0, 2, spread=1.2),
            _sample("CT", "/d/ct_a.nii.gz", 0, 3, spread=0.8),
            _sample("PET", "/d/pet_p.nii.gz", 3, 4, spread=0.2),
            _sample("CT", "/d/ct_a.nii.gz", 1, 5),
            _sample("PET", "/d/pet_p.nii.gz", 4, 6),
        ]
        self.iterations = [self.samples[i : i + 2] for i in range(0, len(self.samples), 2)]

    def test_slices_scans_and_summary_files(self):
        report = RestorationReport(SETTINGS, self.out, prefix="val", panels=False, log_table=False)
        _run(report, self.iterations)
        direct = [_direct(s) for s in self.samples]
        for v in direct:
            self.assertGreater(v["output_psnr"], v["input_psnr"] + 3)  # input and output are told apart

        # one CSV per task, one row per slice, sorted by scan then slice index, the metrics computed here
        ct = _read_csv(os.path.join(self.out, "val_slices_low_dose_ct.csv"))
        self.assertEqual(
            [(r["scan"], int(r["slice_index"])) for r in ct],
            [("/d/ct_a.nii.gz", i) for i in range(3)] + [("/d/ct_b.nii.gz", 0)],
        )
        self.assertEqual([r["degraded_file"] for r in ct], ["/d/ct_a_in.nii.gz"] * 3 + ["/d/ct_b_in.nii.gz"])
        self.assertEqual({(r["task"], r["modality"]) for r in ct}, {("low_dose_ct", "CT")})
        for row, i in zip(ct, (2, 4, 0, 1)):
            for key, value in direct[i].items():
                self.assertAlmostEqual(float(row[key]), value, delta=1e-5 * abs(value), msg=(row["slice_index"], key))
        pet = _read_csv(os.path.join(self.out, "val_slices_low_count_pet.csv"))
        self.assertEqual([int(r["slice_index"]) for r in pet], [3, 4])
        self.assertEqual({r["modality"] for r in pet}, {"PET"})

        # one row per scan, sorted by task then scan, the mean of its slices
        scans = _read_csv(os.path.join(self.out, "val_scans.csv"))
        self.assertEqual(
            [(r["task"], r["scan"], int(r["n_slices"])) for r in scans],
            [
                ("low_count_pet", "/d/pet_p.nii.gz", 2),
                ("low_dose_ct", "/d/ct_a.nii.gz", 3),
                ("low_dose_ct", "/d/ct_b.nii.gz", 1),
            ],
        )
        self.assertEqual(scans[1]["degraded_file"], "/d/ct_a_in.nii.gz")
        for row, members in zip(scans, ((3, 5), (0, 2, 4), (1,))):
            for key in direct[0]:
                mean = float(np.mean([direct[i][key] for i in members]))
                self.assertAlmostEqual(float(row[key]), mean, delta=1e-5 * abs(mean), msg=(row["scan"], key))

        # the task's headline figure is the mean over its slices, not over its scans
        with open(os.path.join(self.out, "val_summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        self.assertEqual(summary, json.loads(json.dumps(report.summary)))
        self.assertEqual(set(summary["tasks"]), {"low_dose_ct", "low_count_pet"})
        task = summary["tasks"]["low_dose_ct"]
        self.assertEqual((task["n_scans"], task["n_slices"]), (2, 4))
        for side in ("input", "output"):
            for m in METRICS:
                by_slice = float(np.mean([direct[i][f"{side}_{m}"] for i in (0, 1, 2, 4)]))
                a = np.mean([direct[i][f"{side}_{m}"] for i in (0, 2, 4)])
                by_scan = float(np.mean([a, direct[1][f"{side}_{m}"]]))
                self.assertAlmostEqual(task[side][m], by_slice, delta=1e-6 * abs(by_slice))
                self.assertAlmostEqual(task[f"{side}_scan_mean"][m], by_scan, delta=1e-6 * abs(by_scan))
        self.assertEqual(
            summary["files"],
            {
                "scans_csv": os.path.join(self.out, "val_scans.csv"),
                "slices_csv": {
                    t: os.path.join(self.out, f"val_slices_{t}.csv") for t in ("low_count_pet", "low_dose_ct")
                },
                "panels": {},
                "summary_json": os.path.join(self.out, "val_summary.json"),
            },
        )
        self.assertIn("task value = mean over its test slices", summary["protocol"])
        self.assertNotIn("reference_table", summary)
        self.assertEqual(
            sorted(os.listdir(self.out)),
            ["val_scans.csv", "val_slices_low_count_pet.csv", "val_slices_low_dose_ct.csv", "val_summary.json"],
        )

    def test_a_new_epoch_starts_afresh(self):
        report = RestorationReport(SETTINGS, self.out, panels=False, log_table=False)
        _run(report, self.iterations)
        _run(report, [self.samples[3:4]])
        self.assertEqual(set(report.summary["tasks"]), {"low_count_pet"})
        self.assertEqual(report.summary["tasks"]["low_count_pet"]["n_slices"], 1)
        self.assertEqual(len(_read_csv(os.path.join(self.out, "test_scans.csv"))), 1)

    def test_collated_batches_score_as_decollated_ones(self):
        decollated = RestorationReport(SETTINGS, os.path.join(self.out, "a"), panels=False, log_table=False)
        _run(decollated, self.iterations)
        collated = RestorationReport(SETTINGS, os.path.join(self.out, "b"), panels=False, log_table=False)
        for pair in self.iterations:
            batch = list_data_collate([dict(s) for s in pair])
            output = {k: batch[k] for k in ("image", "label", "pred")}
            self.assertEqual(tuple(batch["pred"].shape), (2, 1, H, W))
            collated.collect(SimpleNamespace(state=SimpleNamespace(output=output, batch=batch)))
        key = lambda r: (r["scan"], r["slice_index"])  # noqa: E731
        self.assertEqual(sorted(collated.slices, key=key), sorted(decollated.slices, key=key))

    def test_values_shared_by_a_batch_and_samples_without_a_batch(self):
        report = RestorationReport(SETTINGS, self.out, panels=False, log_table=False)
        pair = [s for s in self.samples if s["modality"] == "CT"][:2]
        batch = list_data_collate([{k: v for k, v in s.items() if k != "modality"} for s in pair])
        batch["modality"] = "CT"  # one value for the batch (a string as long as the batch)
        report.collect(SimpleNamespace(state=SimpleNamespace(output=batch, batch=batch)))
        self.assertEqual([r["modality"] for r in report.slices], ["CT", "CT"])
        # no batch: the modality comes from the output; a file name kept in a list is unwrapped, none gives a name
        sample = dict(self.samples[3])
        sample["label"] = MetaTensor(sample["label"].as_tensor(), meta={"filename_or_obj": ["/d/p.nii.gz"]})
        sample["image"] = sample["image"].as_tensor()
        del sample["slice_index"]
        plain = {**self.samples[4], "label": self.samples[4]["label"].as_tensor()}
        report.collect(SimpleNamespace(state=SimpleNamespace(output=[sample, plain], batch=None)))
        rows = report.slices[2:]
        self.assertEqual(
            [(r["scan"], r["degraded_file"], r["slice_index"]) for r in rows],
            [("/d/p.nii.gz", "", 0), ("item3", "/d/ct_a_in.nii.gz", 1)],
        )
        self.assertEqual([r["task"] for r in rows], ["low_count_pet", "low_dose_ct"])
        self.assertAlmostEqual(rows[0]["output_psnr"], _direct(self.samples[3])["output_psnr"], places=4)

    def test_bad_samples_and_empty_runs(self):
        with self.assertRaisesRegex(ValueError, "settings are empty"):
            RestorationReport({}, self.out)
        report = RestorationReport(SETTINGS, self.out, panels=False, log_table=False)
        for missing in ("image", "label", "pred", "modality"):
            sample = {k: v for k, v in self.samples[0].items() if k != missing}
            output = {k: v for k, v in sample.items() if k != "modality"}
            with self.assertRaisesRegex(ValueError, "needs 'modality' in the batch and image/label/pred", msg=missing):
                report.collect(SimpleNamespace(state=SimpleNamespace(output=[output], batch=[sample])))
        self.assertEqual(report.slices, [])
        with self.assertRaisesRegex(ValueError, "no test slice was evaluated"):
            report.write()
        self.assertEqual(os.listdir(self.out), [])

    def test_panels_show_the_first_scans_slice_with_the_most_structure(self):
        report = RestorationReport(SETTINGS, self.out, log_table=False)
        with mock.patch("custom.evaluation.report.plot_task_panel", wraps=plot_task_panel) as plot:
            _run(report, self.iterations)
        calls = {os.path.basename(c.args[0]): c for c in plot.call_args_list}
        self.assertEqual(set(calls), {"test_panel_low_dose_ct.png", "test_panel_low_count_pet.png"})
        for name, sample, title in (
            ("test_panel_low_dose_ct.png", self.samples[4], "low_dose_ct: ct_a.nii.gz slice 1 (window [-160, 240] HU)"),
            (
                "test_panel_low_count_pet.png",
                self.samples[5],
                "low_count_pet: pet_p.nii.gz slice 4 (window [0, 20] SUV)",
            ),
        ):
            call, s = calls[name], SETTINGS[sample["modality"]]
            self.assertEqual(call.kwargs["title"], title)
            self.assertEqual(call.kwargs["units"], s["units"])
            self.assertEqual(list(call.kwargs["window"]), list(s["eval_window"]))
            lo, hi = s["clip_range"]
            for array, key in zip(call.args[1:4], ("image", "pred", "label")):  # physical units, (H, W)
                np.testing.assert_allclose(array, sample[key][0].numpy() * (hi - lo) + lo, rtol=1e-5, atol=1e-3)
            values = _direct(sample)
            self.assertAlmostEqual(call.kwargs["input_psnr"], values["input_psnr"], places=4)
            self.assertAlmostEqual(call.kwargs["output_psnr"], values["output_psnr"], places=4)
            with open(os.path.join(self.out, name), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual(
            report.summary["files"]["panels"]["low_dose_ct"], os.path.join(self.out, "test_panel_low_dose_ct.png")
        )

    def test_the_panel_slice_has_the_most_target_structure_inside_the_window(self):
        yy, xx = np.mgrid[:H, :W]
        pattern = np.sin(yy / 3.0) * np.cos(xx / 4.0)
        bone = np.where((yy < 4) & (xx < 6), 3000.0, 0.0)  # far above the window: clipped to its top when shown
        targets = [40 + 180 * pattern, 40 + 20 * pattern + bone, 40 + 180 * pattern]  # slice 2 equals slice 0
        rng = np.random.default_rng(0)
        samples = []
        for index, target in enumerate(targets):
            noise = 150.0 if index == 1 else 5.0  # slice 1's restored slice (not its target) has the most spread
            pred = target + rng.normal(0, noise, target.shape)
            label = MetaTensor(_normalised(target, "CT"), meta={"filename_or_obj": "/d/ct.nii.gz"})
            samples.append({**_sample("CT", "/d/ct.nii.gz", index, index), "label": label})
            samples[-1]["pred"] = _normalised(pred, "CT")
        report = RestorationReport(SETTINGS, self.out, log_table=False)
        with mock.patch("custom.evaluation.report.plot_task_panel", wraps=plot_task_panel) as plot:
            _run(report, [samples])
        self.assertEqual(plot.call_args.kwargs["title"], "low_dose_ct: ct.nii.gz slice 0 (window [-160, 240] HU)")

    def test_log_and_reference_rows(self):
        report = RestorationReport(SETTINGS, self.out, panels=False, reference=REFERENCE)
        with self.assertLogs("custom.evaluation.report", "INFO") as logs:
            _run(report, self.iterations)
        text = "\n".join(logs.output)
        self.assertIn("test metrics (input = degraded, output = restored)", text)
        task = report.summary["tasks"]["low_dose_ct"]
        self.assertRegex(text, rf"low_dose_ct\s+4\s+{task['input']['psnr']:.2f}\s+{task['output']['psnr']:.2f}")
        self.assertIn("beside the published all-in-one results (Restore-RWKV (same authors", text)
        table = report.summary["reference_table"]
        self.assertIn(table, text)
        restored = [line for line in table.splitlines() if line.startswith("this model (restored)")]
        self.assertEqual(len(restored), 1)
        self.assertIn(f"{task['output']['psnr']:.4f} / {task['output']['ssim']:.4f}", restored[0])
        self.assertTrue(restored[0].endswith("*"))  # MRI was not evaluated
        with open(os.path.join(self.out, "test_summary.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f)["reference_table"], table)

        quiet = RestorationReport(SETTINGS, os.path.join(self.out, "q"), panels=False, log_table=False)
        with self.assertNoLogs("custom.evaluation.report", "INFO"):
            _run(quiet, self.iterations)
        logged = RestorationReport(SETTINGS, os.path.join(self.out, "l"), panels=False)  # no reference rows
        with self.assertLogs("custom.evaluation.report", "INFO") as logs:
            _run(logged, self.iterations)
        self.assertEqual(len(logs.output), 1)


if __name__ == "__main__":
    unittest.main()
