"""The published reference rows: one file, read and printed beside this model's per-task means."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

from custom.evaluation import RestorationReport, format_reference_table, load_reference_results
from custom.settings import load_modality_settings

from tests.utils import CONFIGS, SETTINGS_DIR

REFERENCE = os.path.join(CONFIGS, "reference_results.json")
SETTINGS = load_modality_settings(SETTINGS_DIR)
MODALITIES = {"low_dose_ct": "CT", "low_count_pet": "PET", "mri_super_resolution": "MRI"}


def _summary(values: dict[str, tuple[float, float, float]]) -> dict:
    tasks = {}
    for task, (psnr, ssim, rmse) in values.items():
        tasks[task] = {
            "output": {"psnr": psnr, "ssim": ssim, "rmse": rmse},
            "input": {"psnr": psnr - 3, "ssim": ssim - 0.1, "rmse": rmse * 2},
        }
    return {"tasks": tasks}


class TestReferenceTable(unittest.TestCase):
    def test_published_rows_as_in_the_shared_facts(self):
        ref = load_reference_results(REFERENCE)
        self.assertEqual(ref["tasks"], ["MRI", "CT", "PET"])
        self.assertEqual(ref["metrics"], ["psnr", "ssim", "rmse"])
        self.assertEqual(
            ref["methods"]["Restore-RWKV"],
            {
                "MRI": [31.9404, 0.9386, 29.3562],
                "CT": [33.6935, 0.9188, 8.4609],
                "PET": [37.2091, 0.9475, 0.0865],
                "mean_psnr": 34.281,
            },
        )
        for name, row in ref["methods"].items():  # the table's mean PSNR is the mean of the three tasks' PSNR
            self.assertAlmostEqual(sum(row[t][0] for t in ref["tasks"]) / 3, row["mean_psnr"], places=4, msg=name)

    def test_table_rows_and_columns(self):
        ref = load_reference_results(REFERENCE)
        summary = _summary(
            {
                "low_dose_ct": (33.5, 0.91, 8.6),
                "mri_super_resolution": (31.5, 0.93, 30.6),
                "low_count_pet": (37.0, 0.94, 0.09),
            }
        )
        lines = format_reference_table(summary, ref, MODALITIES, name="mine").splitlines()
        self.assertEqual(len(lines), 2 + 4 + 1 + 2)
        self.assertEqual([line.split()[0] for line in lines[2:6]], ["AMIR", "Restore-RWKV", "Restormer", "AirNet"])
        ours = lines[7]
        self.assertTrue(ours.startswith("mine (restored)"))
        cells = [c.strip() for c in ours[len("mine (restored)") :].split("  ") if c.strip()]
        self.assertEqual(
            cells, ["31.5000 / 0.9300 / 30.6000", "33.5000 / 0.9100 / 8.6000", "37.0000 / 0.9400 / 0.0900", "34.0000"]
        )  # MRI, CT, PET columns, mean PSNR
        self.assertTrue(lines[8].startswith("degraded input") and lines[8].rstrip().endswith("31.0000"))

    def test_missing_task_is_shown_and_the_mean_marked(self):
        ref = load_reference_results(REFERENCE)
        line = format_reference_table(_summary({"low_dose_ct": (33.0, 0.9, 8.0)}), ref, MODALITIES).splitlines()[7]
        self.assertEqual(line.split()[-1], "33.0000*")
        self.assertEqual(line.count(" - "), 2)

    def test_bad_reference_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ref.json")
            with open(path, "w") as f:
                json.dump({"tasks": ["CT"], "metrics": ["psnr", "ssim"], "methods": {"X": {"CT": [30.0]}}}, f)
            with self.assertRaisesRegex(ValueError, r"ref\.json: method 'X' needs 2 values"):
                load_reference_results(path)
            with open(path, "w") as f:
                f.write("{")
            with self.assertRaisesRegex(ValueError, r"ref\.json: unreadable reference results"):
                load_reference_results(path)

    def test_every_flaw_is_reported_when_the_file_is_read(self):
        good = {"X": {"CT": [30.0, 0.9], "PET": [35.0, 0.95], "mean_psnr": 32.5}}
        cases = [
            ([], r"unreadable reference results \(TypeError"),  # not an object
            ({"tasks": ["CT"], "metrics": ["psnr"]}, r"unreadable reference results \(KeyError: 'methods'"),
            ({"tasks": ["CT"], "metrics": ["psnr"], "methods": "abc"}, r"unreadable reference results \(ValueError"),
            ({"tasks": ["CT"], "metrics": ["psnr", "mae"], "methods": good}, r"metrics \['mae'\] are not among"),
            (
                {"tasks": ["CT", "PET"], "metrics": ["psnr", "ssim"], "methods": {"X": [1]}},
                "method 'X' must map each task",
            ),
            (
                {"tasks": ["CT", "PET", "MRI"], "metrics": ["psnr", "ssim"], "methods": good},
                r"method 'X' needs 2 values \['psnr', 'ssim'\] for \['MRI'\]",
            ),
            (
                {"tasks": ["CT"], "metrics": ["psnr", "ssim"], "methods": {"X": {"CT": ["30", 0.9], "mean_psnr": 30}}},
                r"method 'X' needs 2 values \['psnr', 'ssim'\] for \['CT'\]",
            ),
            (
                {"tasks": ["CT"], "metrics": ["psnr", "ssim"], "methods": {"X": {"CT": [30.0, 0.9]}}},
                "method 'X' needs a number 'mean_psnr', got None",
            ),
        ]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ref.json")
            for data, message in cases:
                with open(path, "w") as f:
                    json.dump(data, f)
                with self.assertRaisesRegex(ValueError, r"ref\.json: " + message, msg=data):
                    load_reference_results(path)
                # the evaluation handler reads it when built, before any slice is scored
                with self.assertRaisesRegex(ValueError, r"ref\.json: ", msg=data):
                    RestorationReport(SETTINGS, d, reference=path)
                # rows given as a dict (e.g. inline in a config) are checked the same way when the handler is built
                with self.assertRaisesRegex(ValueError, "reference results: " + message, msg=data):
                    RestorationReport(SETTINGS, d, reference=data)

    def test_task_names_in_any_case(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ref.json")
            with open(path, "w") as f:
                json.dump(
                    {"tasks": ["ct"], "metrics": ["psnr"], "methods": {"X": {"ct": [30.5], "mean_psnr": 30.5}}}, f
                )
            table = format_reference_table(
                _summary({"low_dose_ct": (33.0, 0.9, 8.0)}), load_reference_results(path), MODALITIES
            )
        lines = table.splitlines()
        self.assertEqual(lines[0].split(), ["method", "CT", "PSNR", "mean", "PSNR"])
        self.assertEqual(lines[2].split(), ["X", "30.5000", "30.5000"])
        self.assertEqual(lines[4].split(), ["this", "model", "(restored)", "33.0000", "33.0000"])


if __name__ == "__main__":
    unittest.main()
