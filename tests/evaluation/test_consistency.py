"""custom.evaluation.consistency: MRI data-consistency metrics, read through the bundle's reader stack."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import runpy
import shutil
import sys
import tempfile
import unittest
import warnings
from unittest import mock

import numpy as np
import torch
from custom.evaluation.consistency import DESCRIPTION, main, measure_scans, slice_metrics
from custom.metrics import PhysicalUnitMetrics
from custom.settings import get_modality_setting, load_modality_settings
from custom.transforms.data_consistency import DC_MODES, kspace_data_consistency
from custom.transforms.mri_resolution import kspace_truncate

from tests.utils import SETTINGS_DIR, save_nifti

MRI = get_modality_setting(load_modality_settings(SETTINGS_DIR), "MRI")


class TestConsistency(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.d = self.tmp.name
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:16, :16]
        label = np.stack([(((yy - 8) ** 2 + (xx - 7 - z) ** 2) < 30) * 900.0 + 100 for z in range(2)], -1)
        label = label.astype(np.float32)
        image = np.moveaxis(kspace_truncate(np.moveaxis(label, -1, 0), 4.0).numpy(), 0, -1).astype(np.float32)
        restored = (label + rng.normal(0, 20, label.shape)).astype(np.float32)
        self.arrays = {"image": image, "label": label, "restored": restored}
        self.scan = {k: save_nifti(os.path.join(self.d, f"{k}.nii.gz"), v) for k, v in self.arrays.items()}

    def test_metrics_of_every_version(self):
        result = measure_scans([self.scan], MRI, 4.0)
        self.assertEqual(set(result), {"input", "restored", *(f"dc_{m}" for m in DC_MODES)})
        for name, key in (("input", "image"), ("restored", "restored")):
            expected = slice_metrics(self.arrays[key], self.arrays["label"], MRI)
            self.assertEqual(result[name]["slices"], 2)
            self.assertAlmostEqual(result[name]["psnr"], float(np.mean(expected["psnr"])), places=4)
            self.assertAlmostEqual(result[name]["ssim"], float(np.mean(expected["ssim"])), places=4)
        self.assertGreater(result["restored"]["psnr"], result["input"]["psnr"])

    def test_reads_through_the_reader_stack(self):
        bad = self.arrays["restored"].copy()
        bad[0, 0, 0] = np.nan
        self.scan["restored"] = save_nifti(os.path.join(self.d, "nan.nii.gz"), bad)
        with self.assertRaisesRegex(ValueError, "nan.nii.gz: non-finite"):  # the readers' check, not NaN metrics
            measure_scans([self.scan], MRI, 4.0)
        self.scan["restored"] = os.path.join(self.d, "missing.nii.gz")
        with self.assertRaisesRegex(ValueError, "missing.nii.gz: file not found"):
            measure_scans([self.scan], MRI, 4.0)
        source = ast.parse(open(measure_scans.__code__.co_filename, encoding="utf-8").read())
        imported = {a.name for n in ast.walk(source) if isinstance(n, ast.Import) for a in n.names}
        self.assertNotIn("nibabel", imported)

    def test_slice_metrics_are_the_published_metrics_of_each_slice(self):
        ct = get_modality_setting(load_modality_settings(SETTINGS_DIR), "CT")  # a clip range that does not start at 0
        rng = np.random.default_rng(1)
        target = rng.uniform(-300, 400, (16, 12, 3)).astype(np.float32)  # (H, W, D), H != W
        image = target + rng.normal(0, 40, target.shape).astype(np.float32)
        lo, hi = ct["clip_range"]
        fn = PhysicalUnitMetrics(ct["clip_range"], ct["eval_window"])
        got = slice_metrics(image, target, ct)
        image64, target64 = image.astype(np.float64), target.astype(np.float64)
        for z in range(3):  # computed in double precision
            direct = fn(*(torch.from_numpy((a[None, None, ..., z] - lo) / (hi - lo)) for a in (image64, target64)))
            one = slice_metrics(image[..., z], target[..., z], ct)  # a 2D slice is one slice
            for m in ("psnr", "ssim", "rmse"):
                self.assertEqual(len(got[m]), 3)
                self.assertAlmostEqual(got[m][z], float(direct[m][0]), delta=1e-12 * abs(float(direct[m][0])))
                self.assertEqual(one[m], [got[m][z]])

    def test_each_mode_scores_the_data_consistent_restored_scan(self):
        result = measure_scans([self.scan], MRI, 4.0)
        x, r, y = (torch.from_numpy(self.arrays[k])[None] for k in ("image", "restored", "label"))
        for mode in DC_MODES:
            dc = kspace_data_consistency(r, x, 4.0, mode)[0].numpy()  # the input's k-space block in the restored scan
            expected = slice_metrics(dc, self.arrays["label"], MRI)
            self.assertEqual(result[f"dc_{mode}"]["slices"], 2)
            for m in ("psnr", "ssim", "rmse"):
                value = float(np.mean(expected[m]))
                self.assertAlmostEqual(result[f"dc_{mode}"][m], value, delta=1e-9 * abs(value), msg=(mode, m))
        self.assertEqual(len({round(result[f"dc_{mode}"]["rmse"], 6) for mode in DC_MODES}), len(DC_MODES))

    def test_the_default_truncation_factor_is_4(self):
        default, x2 = measure_scans([self.scan], MRI), measure_scans([self.scan], MRI, 2.0)
        self.assertEqual(default, measure_scans([self.scan], MRI, 4.0))
        self.assertNotEqual(default, x2)
        self.assertNotEqual(default, measure_scans([self.scan], MRI, 8.0))
        code, err = self.run_main("--factor", "2", "--output", os.path.join(self.d, "x2.json"))
        self.assertEqual(code, 0, err)
        with open(os.path.join(self.d, "x2.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f), json.loads(json.dumps(x2)))

    def test_shape_mismatch_names_the_scan(self):
        self.scan["restored"] = save_nifti(os.path.join(self.d, "small.nii.gz"), self.arrays["restored"][:8])
        with self.assertRaisesRegex(ValueError, "image.nii.gz: input, target and restored shapes differ"):
            measure_scans([self.scan], MRI, 4.0)

    def _inputs(self):
        datalist = os.path.join(self.d, "datalist.json")
        item = {"image": "image.nii.gz", "label": "label.nii.gz", "modality": "MRI"}
        with open(datalist, "w") as f:
            json.dump({"training": [], "validation": [], "test": [item]}, f)
        report = os.path.join(self.d, "report.json")
        with open(report, "w") as f:
            json.dump(
                {"scans": [{"image": self.scan["image"], "output": self.scan["restored"], "status": "written"}]}, f
            )
        return datalist, report

    def test_command_with_the_default_settings(self):
        datalist, report = self._inputs()
        out = os.path.join(self.d, "dc.json")
        cwd = os.getcwd()
        os.chdir(self.d)  # the default modality settings do not depend on the working directory
        try:
            self.assertEqual(main(["--report", report, "--datalist", datalist, "--output", out]), 0)
        finally:
            os.chdir(cwd)
        with open(out, encoding="utf-8") as f:
            written = json.load(f)
        self.assertEqual(written, json.loads(json.dumps(measure_scans([self.scan], MRI, 4.0))))

    def run_main(self, *argv: str) -> tuple[int, str]:
        datalist, report = self._inputs()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["--report", report, "--datalist", datalist, *argv])
        return code, err.getvalue()

    def test_command_reads_the_given_modality_dir(self):
        folder = os.path.join(self.d, "modality")
        shutil.copytree(SETTINGS_DIR, folder)
        with open(os.path.join(folder, "mri.json"), encoding="utf-8") as f:
            mri = json.load(f)
        mri["eval_window"] = [0.0, 500.0]
        with open(os.path.join(folder, "mri.json"), "w", encoding="utf-8") as f:
            json.dump(mri, f)
        out = os.path.join(self.d, "dc.json")
        code, err = self.run_main("--modality_dir", folder, "--output", out)
        self.assertEqual(code, 0, err)
        with open(out, encoding="utf-8") as f:
            written = json.load(f)
        setting = get_modality_setting(load_modality_settings(folder), "MRI")
        self.assertEqual(written, json.loads(json.dumps(measure_scans([self.scan], setting, 4.0))))
        self.assertNotAlmostEqual(written["restored"]["psnr"], measure_scans([self.scan], MRI, 4.0)["restored"]["psnr"])

    def test_command_names_an_unusable_modality_dir(self):
        empty = os.path.join(self.d, "empty")
        os.makedirs(empty)
        code, err = self.run_main("--modality_dir", empty)
        self.assertEqual(code, 1)
        self.assertIn(f"{empty}: no modality json file found", err)
        ct_only = os.path.join(self.d, "ct_only")
        os.makedirs(ct_only)
        shutil.copy(os.path.join(SETTINGS_DIR, "ct.json"), ct_only)
        code, err = self.run_main("--modality_dir", ct_only)
        self.assertEqual(code, 1)
        self.assertIn(f"{ct_only}: unknown modality 'MRI'", err)

    def test_help_is_one_complete_sentence(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            main(["--help"])
        self.assertIn(DESCRIPTION, " ".join(out.getvalue().split()))
        self.assertTrue(DESCRIPTION.endswith("."))
        self.assertIn("inference_report.json of a run over the split", " ".join(out.getvalue().split()))

    def test_command_refuses_an_unrestored_scan(self):
        datalist, report = self._inputs()
        with open(report, "w") as f:
            json.dump({"scans": []}, f)
        self.assertEqual(main(["--report", report, "--datalist", datalist]), 1)

    def test_command_picks_the_restored_mri_items(self):
        datalist, report = self._inputs()
        with open(datalist, encoding="utf-8") as f:
            data = json.load(f)
        data["test"][0]["modality"] = "mr"  # the MRI alias, any case
        data["test"].append({"image": "ct.nii.gz", "label": "ct_label.nii.gz", "modality": "CT"})  # not restored
        data["test"].append({"image": "other.nii.gz", "label": "other_label.nii.gz"})  # no modality: not MRI
        with open(datalist, "w") as f:
            json.dump(data, f)
        out = os.path.join(self.d, "dc.json")
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            self.assertEqual(main(["--report", report, "--datalist", datalist, "--output", out]), 0)
        with open(out, encoding="utf-8") as f:
            written = json.load(f)
        self.assertEqual(written, json.loads(json.dumps(measure_scans([self.scan], MRI, 4.0))))
        self.assertIn(f"restored         PSNR {written['restored']['psnr']:7.3f} dB", printed.getvalue())
        # a scan the report lists as not written is not restored
        with open(report, "w") as f:
            json.dump(
                {"scans": [{"image": self.scan["image"], "output": self.scan["restored"], "status": "failed"}]}, f
            )
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["--report", report, "--datalist", datalist]), 1)
        self.assertIn(f"image.nii.gz: not restored in {report}", err.getvalue())
        # no MRI item at all
        data["test"] = data["test"][1:]
        with open(datalist, "w") as f:
            json.dump(data, f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["--report", report, "--datalist", datalist]), 1)
        self.assertIn(f"{datalist}: no MRI item with a restored output in split 'test'", err.getvalue())

    def test_module_runs_as_the_documented_command(self):
        datalist, report = self._inputs()
        argv = ["python -m custom.evaluation.consistency", "--report", report, "--datalist", datalist]
        with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(io.StringIO()) as printed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
                with self.assertRaises(SystemExit) as stop:
                    runpy.run_module("custom.evaluation.consistency", run_name="__main__")
        self.assertEqual(stop.exception.code, 0)
        self.assertIn("input            PSNR", printed.getvalue())

    def test_command_needs_its_report_and_data_list(self):
        datalist, report = self._inputs()
        for argv, option in ((["--datalist", datalist], "--report"), (["--report", report], "--datalist")):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
                main(argv)
            self.assertEqual(raised.exception.code, 2)
            self.assertIn(f"the following arguments are required: {option}", err.getvalue())


if __name__ == "__main__":
    unittest.main()
