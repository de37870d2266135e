"""Data consistency, task check and difference output through ``python -m monai.bundle run inference``.

Two CLI runs with the tiny network and a checkpoint holding task statistics (module-scoped fixture):

* data-list mode, ``--data_consistency true --difference_output true``: a k-space truncated MRI volume of odd
  size, a CT slice, a PET slice declared as CT;
* folder mode on a DICOM CT series with ``--difference_output true``.
"""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from custom.handlers.task_statistics import compute_task_statistics, store_task_statistics
from custom.settings import load_modality_settings
from custom.transforms import kspace_truncate
from custom.transforms.data_consistency import kspace_block_error
from parameterized import parameterized

from tests.utils import (
    BUNDLE,
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    make_task_dataset,
    read_series,
    run_cli,
    task_slice,
    tiny_net,
    write_ct_series,
)

pytestmark = pytest.mark.slow


def _run(tmp: str, *extra: str):
    args = ["run", "inference", "--config_file", INFERENCE_CONFIG, "--bundle_root", BUNDLE]
    return run_cli(*args, "--checkpoint", os.path.join(tmp, "model.pt"), *TINY_OVERRIDES, *extra, cwd=tmp)


def _workspace(tmp: str) -> dict:
    """A checkpoint with task statistics under ``tmp``, the inputs, and the two CLI runs."""
    net = tiny_net()
    ckpt = os.path.join(tmp, "model.pt")
    torch.save({"model": net.state_dict()}, ckpt)
    settings = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))
    store_task_statistics(ckpt, compute_task_statistics(net, make_task_dataset(os.path.join(tmp, "train")), settings))

    rng = np.random.default_rng(0)
    scans = os.path.join(tmp, "scans")
    os.makedirs(scans)
    yy, xx = np.mgrid[:33, :27]
    phantom = np.where((yy - 16) ** 2 + (xx - 13) ** 2 < 120, 1200.0 + 400 * np.sin(xx / 2.0), 100.0)
    mri = np.stack([kspace_truncate(phantom[None] * (1 + 0.2 * k), 4)[0].numpy() for k in range(2)], -1)
    nib.save(nib.Nifti1Image(mri.astype(np.float32), np.eye(4)), os.path.join(scans, "mri.nii.gz"))
    nib.save(nib.Nifti1Image(task_slice("CT", rng), np.eye(4)), os.path.join(scans, "ct.nii.gz"))
    nib.save(nib.Nifti1Image(task_slice("PET", rng), np.eye(4)), os.path.join(scans, "pet_as_ct.nii.gz"))
    datalist = os.path.join(tmp, "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        names = [("mri.nii.gz", "MRI"), ("ct.nii.gz", "CT"), ("pet_as_ct.nii.gz", "CT")]
        json.dump({"test": [{"image": n, "modality": m} for n, m in names]}, f)
    out = os.path.join(tmp, "out")
    flags = ["--data_consistency", "true", "--difference_output", "true"]
    run = _run(tmp, "--dataset_dir", scans, "--datalist", datalist, "--output_dir", out, *flags)

    dicom_in, dicom_out = os.path.join(tmp, "dicom"), os.path.join(tmp, "dicom_out")
    write_ct_series(os.path.join(dicom_in, "ct_series"))
    run_dicom = _run(tmp, "--dataset_dir", dicom_in, "--output_dir", dicom_out, "--difference_output", "true")
    return {
        "tmp": tmp,
        "scans": scans,
        "out": out,
        "run": run,
        "dicom_in": dicom_in,
        "dicom_out": dicom_out,
        "run_dicom": run_dicom,
    }


def _report(folder: str) -> dict:
    with open(os.path.join(folder, "inference_report.json"), encoding="utf-8") as f:
        return {os.path.basename(s["image"]): s for s in json.load(f)["scans"]}


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


class TestRestoreChecksCLI(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.ws = _workspace(tmp)

    def test_runs(self) -> None:
        self.assertEqual(self.ws["run"].returncode, 0, self.ws["run"].stderr[-3000:])
        self.assertEqual(self.ws["run_dicom"].returncode, 0, self.ws["run_dicom"].stderr[-3000:])

    def test_mri_central_kspace_is_the_inputs(self) -> None:
        x = _load(os.path.join(self.ws["scans"], "mri.nii.gz"))[None]
        y = _load(os.path.join(self.ws["out"], "mri.nii.gz"))[None]
        self.assertFalse(np.allclose(x, y, atol=1.0))  # the network did change the scan
        self.assertLess(kspace_block_error(torch.from_numpy(y), torch.from_numpy(x), 4), 1e-3)

    def test_other_modalities_untouched_and_logged(self) -> None:
        log = self.ws["run"].stdout + self.ws["run"].stderr
        self.assertIn("ct.nii.gz is CT, not MRI: left unchanged", log)
        self.assertIn("mri.nii.gz central 8x7 k-space per slice replaced", log)
        x = _load(os.path.join(self.ws["scans"], "ct.nii.gz"))[None]
        y = _load(os.path.join(self.ws["out"], "ct.nii.gz"))[None]
        self.assertGreater(kspace_block_error(torch.from_numpy(y), torch.from_numpy(x), 4), 1e-3)  # not replaced

    def test_odd_size_not_divisible_is_reported(self) -> None:
        (warning,) = [w for w in _report(self.ws["out"])["mri.nii.gz"]["warnings"] if "kspace_factor" in w]
        self.assertIn("33x27 is not divisible by kspace_factor 4", warning)

    @parameterized.expand([("mri.nii.gz",), ("ct.nii.gz",)])
    def test_difference_nifti(self, name: str) -> None:
        stem = name[: -len(".nii.gz")]
        diff_path = os.path.join(self.ws["out"], f"{stem}_difference.nii.gz")
        self.assertEqual(_report(self.ws["out"])[name]["difference_output"], diff_path)
        diff = nib.load(diff_path)
        self.assertEqual(diff.get_data_dtype(), np.float32)
        expected = _load(os.path.join(self.ws["out"], name)) - _load(os.path.join(self.ws["scans"], name))
        np.testing.assert_allclose(diff.get_fdata(), expected, atol=1e-2 * max(1.0, np.abs(expected).max()))
        np.testing.assert_allclose(diff.affine, nib.load(os.path.join(self.ws["scans"], name)).affine)

    def test_report_has_task_check(self) -> None:
        report = _report(self.ws["out"])
        for name in ("mri.nii.gz", "ct.nii.gz", "pet_as_ct.nii.gz"):
            self.assertLessEqual({"predicted_task", "task_distance", "warnings"}, set(report[name]))
            self.assertIsInstance(report[name]["task_distance"], float)
        self.assertEqual(report["ct.nii.gz"]["predicted_task"], "CT")
        self.assertNotEqual(report["pet_as_ct.nii.gz"]["predicted_task"], "CT")  # the random tiny net need not say PET
        self.assertTrue(any("declared CT" in w for w in report["pet_as_ct.nii.gz"]["warnings"]))
        self.assertFalse(any("declared" in w for w in report["ct.nii.gz"]["warnings"]))

    def test_warnings_in_log_and_nifti_descrip(self) -> None:
        log = self.ws["run"].stdout + self.ws["run"].stderr
        self.assertIn("pet_as_ct.nii.gz: the network's task representation says", log)
        descrip = nib.load(os.path.join(self.ws["out"], "pet_as_ct.nii.gz")).header["descrip"].tobytes().decode()
        self.assertTrue(descrip.startswith("TAT warning: the network's task representation says"), descrip)
        ct_descrip = nib.load(os.path.join(self.ws["out"], "ct.nii.gz")).header["descrip"].tobytes()
        self.assertEqual(ct_descrip.strip(b"\x00"), b"")

    def test_dicom_difference_series(self) -> None:
        src = read_series(os.path.join(self.ws["dicom_in"], "ct_series"))
        restored = read_series(os.path.join(self.ws["dicom_out"], "ct_series"))
        diff = read_series(os.path.join(self.ws["dicom_out"], "ct_series_difference"))
        self.assertEqual(len(diff), len(src))
        self.assertEqual(len({d.SeriesInstanceUID for d in diff}), 1)
        self.assertNotIn(diff[0].SeriesInstanceUID, {restored[0].SeriesInstanceUID, src[0].SeriesInstanceUID})
        self.assertEqual(int(diff[0].SeriesNumber), int(src[0].SeriesNumber) + 2000)
        self.assertIn("difference", str(diff[0].SeriesDescription))

        def hu(d: pydicom.Dataset) -> np.ndarray:
            return d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))

        for s, r, d in zip(src, restored, diff):
            np.testing.assert_allclose(hu(d), hu(r) - hu(s), atol=1.0 + float(d.get("RescaleSlope", 1)))
        self.assertTrue(any((hu(d) < 0).any() for d in diff))  # signed differences are kept
        report = _report(self.ws["dicom_out"])["ct_series"]
        self.assertIn(report["predicted_task"], ("CT", "PET", "MRI"))
        comments = [str(r.get("ImageComments", "")) for r in restored]
        expected = "TAT warning: " + "; ".join(report["warnings"]) if report["warnings"] else ""
        self.assertEqual(comments, [expected] * len(restored))


if __name__ == "__main__":
    unittest.main()
