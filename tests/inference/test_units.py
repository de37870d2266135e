"""Unit tests of the inference pieces: writers (atomic, no silent overwrite, dtype range), PET SUV round trip,
slice-by-slice inferer, scan discovery."""

from __future__ import annotations

import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pydicom
import torch
from custom.inference import SliceBatchInferer, find_scans, load_dicom_series, write_dicom_series, write_nifti

from tests.utils import BUNDLE, INFERENCE_CONFIG, tiny_net, tiny_overrides, write_ct_series

torch.set_num_threads(1)


def _make_pet(folder: str) -> list[str]:
    paths = write_ct_series(folder, n=2)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality, ds.Units, ds.DecayCorrection = "PT", "BQML", "ADMIN"
        ds.PatientWeight = 70
        info = pydicom.Dataset()
        info.RadionuclideTotalDose = 3.5e8
        ds.RadiopharmaceuticalInformationSequence = [info]
        ds.RescaleSlope, ds.RescaleIntercept = 2.0, 0
        ds.save_as(path, enforce_file_format=True)
    return paths


def _zeros_nifti(path: str) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), path)


class TestWriters(unittest.TestCase):
    def test_write_nifti_atomic_and_no_silent_overwrite(self) -> None:
        ref = nib.Nifti1Image(np.zeros((4, 5, 2), np.int16), np.diag([0.5, 0.6, 2.0, 1.0]))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "out.nii.gz")
            write_nifti(np.full((4, 5, 2), 1e6, np.float32), ref, path)
            out = nib.load(path)
            # does not fit int16 unscaled: int16 kept with new scale factors, the value itself not clipped
            self.assertEqual(out.get_data_dtype(), np.int16)
            self.assertNotEqual((out.dataobj.slope, out.dataobj.inter), (1, 0))
            np.testing.assert_allclose(np.asanyarray(out.dataobj), 1e6, rtol=1e-6)
            np.testing.assert_allclose(out.affine, ref.affine)
            with self.assertRaisesRegex(FileExistsError, "out.nii.gz"):
                write_nifti(np.zeros((4, 5, 2), np.float32), ref, path)
            write_nifti(np.zeros((4, 5, 2), np.float32), ref, path, overwrite=True)
            self.assertEqual(int(np.asanyarray(nib.load(path).dataobj).max()), 0)
            self.assertEqual(sorted(os.listdir(d)), ["out.nii.gz"])  # no temporary file left
            with self.assertRaisesRegex(ValueError, "does not match"):
                write_nifti(np.zeros((3, 3), np.float32), ref, os.path.join(d, "bad.nii"))

    def test_pet_suv_round_trip_and_slope_enlarged(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            paths = _make_pet(os.path.join(d, "pet"))
            values, info = load_dicom_series(paths, "pet")
            self.assertEqual(info["modality"], "PET")
            self.assertAlmostEqual(info["suv_factors"][0] / (70 * 1000 / 3.5e8), 1.0, delta=1e-6)
            out = os.path.join(d, "out")
            write_dicom_series(values, info["datasets"], info["files"], out, info["suv_factors"])
            again, _ = load_dicom_series([os.path.join(out, os.path.basename(f)) for f in paths], "out")
            np.testing.assert_allclose(again, values, rtol=1e-5, atol=1e-6)
            # values beyond the stored range: the slope grows so the maximum is kept
            big = values.copy()
            big[0, 0, 0] = values.max() * 100
            write_dicom_series(big, info["datasets"], info["files"], os.path.join(d, "big"), info["suv_factors"])
            again, _ = load_dicom_series([os.path.join(d, "big", os.path.basename(f)) for f in info["files"]], "big")
            np.testing.assert_allclose(again.max(), big.max(), rtol=1e-3)
            with self.assertRaises(FileExistsError):
                write_dicom_series(values, info["datasets"], info["files"], out, info["suv_factors"])


class TestSliceInferer(unittest.TestCase):
    def test_slice_inferer_equals_per_slice(self) -> None:
        net = tiny_net()
        vol = torch.rand(1, 1, 20, 28, 3)
        with torch.no_grad():
            out = SliceBatchInferer(batch_size=2)(vol, net)
            ref = torch.stack([net(vol[..., k]) for k in range(3)], dim=-1)
            self.assertEqual(out.shape, vol.shape)
            self.assertLess(float((out - ref).abs().max()), 1e-5)
            self.assertEqual(SliceBatchInferer(batch_size=1)(vol[..., 0], net).shape, (1, 1, 20, 28))
        with self.assertRaises(ValueError):
            SliceBatchInferer(batch_size=0)


class TestFindScans(unittest.TestCase):
    def test_find_scans_refuses_output_equal_to_input(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            _zeros_nifti(os.path.join(d, "a.nii"))
            with self.assertRaisesRegex(ValueError, "output_dir must differ"):
                find_scans(d, d)
            with self.assertRaisesRegex(ValueError, "not a folder"):
                find_scans(os.path.join(d, "missing"), os.path.join(d, "out"))
            os.makedirs(os.path.join(d, "empty"))
            with self.assertRaisesRegex(ValueError, "no NIfTI file or DICOM series"):
                find_scans(os.path.join(d, "empty"), os.path.join(d, "out"))

    def test_find_scans_skips_output_inside_dataset(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            _zeros_nifti(os.path.join(d, "a.nii"))
            os.makedirs(os.path.join(d, "restored"))
            _zeros_nifti(os.path.join(d, "restored", "a.nii"))
            items = find_scans(d, os.path.join(d, "restored"), modality="CT")
        self.assertEqual([i["name"] for i in items], ["a.nii"])


class TestInferenceConfig(unittest.TestCase):
    def test_inference_config_has_monai_infer_properties(self) -> None:
        from monai.bundle import ConfigWorkflow

        with tempfile.TemporaryDirectory() as d:
            nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), os.path.join(d, "a.nii"))
            workflow = ConfigWorkflow(
                config_file=INFERENCE_CONFIG,
                workflow_type="infer",
                bundle_root=BUNDLE,
                dataset_dir=d,
                output_dir=os.path.join(d, "out"),
                **tiny_overrides(),
            )
            workflow.initialize()
            self.assertEqual(workflow.check_properties(), [])


if __name__ == "__main__":
    unittest.main()
