"""``python -m monai.bundle run inference`` through the real CLI on tiny NIfTI and DICOM scans.

Three CLI runs shared between the assertions (module-scoped fixtures):

* folder mode, modality from the DICOM tag: a CT series written here with pydicom, pydicom's real
  ``CT_small.dcm`` and ``MR_small.dcm``, plus a NIfTI without any modality (must fail, the rest must be written,
  exit code non-zero);
* data-list mode: CT 3D int16 (odd slice size), PET 2D float32, MRI 3D scaled int16 NIfTI;
* the data-list run again with ``overwrite`` false: every scan skipped, outputs untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK
import torch
from parameterized import parameterized

from tests.utils import (
    BUNDLE,
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    read_series,
    run_cli,
    save_checkpoint,
    tree_hashes,
    write_ct_series,
)

pytestmark = pytest.mark.slow


def _affine() -> np.ndarray:
    affine = np.array([[0.0, -0.8, 0.0, 20.0], [0.7, 0.0, 0.0, -15.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
    return affine


def _run(tmp: str, *extra: str) -> tuple:
    args = [
        "run",
        "inference",
        "--config_file",
        INFERENCE_CONFIG,
        "--bundle_root",
        BUNDLE,
        "--checkpoint",
        os.path.join(tmp, "model.pt"),
        *TINY_OVERRIDES,
        *extra,
    ]
    return run_cli(*args, cwd=tmp)


def _workspace(tmp: str) -> dict:
    """Write the inputs under ``tmp`` and run the three CLI runs (folder mode, data list, data list again)."""
    net = save_checkpoint(os.path.join(tmp, "model.pt"))
    dicom_dir = os.path.join(tmp, "dicom_in")
    write_ct_series(os.path.join(dicom_dir, "ct_series"))
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), os.path.join(dicom_dir, "CT_small.dcm"))
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), os.path.join(dicom_dir, "MR_small.dcm"))
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((16, 16), dtype=np.float32), np.eye(4)), os.path.join(dicom_dir, "x.nii"))

    nifti_dir = os.path.join(tmp, "nifti_in")
    os.makedirs(os.path.join(nifti_dir, "sub"))
    ct = np.where(rng.random((37, 45, 3)) > 0.5, 40, -950) + rng.normal(0, 40, (37, 45, 3))
    nib.save(nib.Nifti1Image(ct.astype(np.int16), _affine()), os.path.join(nifti_dir, "ct3d.nii.gz"))
    pet = (rng.random((30, 26)) * 6).astype(np.float32)
    nib.save(nib.Nifti1Image(pet, _affine()), os.path.join(nifti_dir, "sub", "pet2d.nii"))
    mri_img = nib.Nifti1Image((rng.random((24, 20, 2)) * 3000).astype(np.float32), _affine())
    mri_img.set_data_dtype(np.int16)  # nibabel stores scaled int16 (scl_slope != 1)
    nib.save(mri_img, os.path.join(nifti_dir, "mri3d.nii.gz"))
    datalist = os.path.join(tmp, "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump(
            {
                "test": [
                    {"image": "ct3d.nii.gz", "modality": "CT"},
                    {"image": "sub/pet2d.nii", "modality": "PET"},
                    {"image": "mri3d.nii.gz", "modality": "MRI"},
                ]
            },
            f,
        )
    before = {"dicom": tree_hashes(dicom_dir), "nifti": tree_hashes(nifti_dir)}

    dicom_out, nifti_out = os.path.join(tmp, "dicom_out"), os.path.join(tmp, "nifti_out")
    run_dicom = _run(tmp, "--dataset_dir", dicom_dir, "--output_dir", dicom_out)
    run_nifti = _run(tmp, "--dataset_dir", nifti_dir, "--datalist", datalist, "--output_dir", nifti_out)
    out_hashes = tree_hashes(nifti_out)
    report_nifti = _report(nifti_out)
    run_again = _run(tmp, "--dataset_dir", nifti_dir, "--datalist", datalist, "--output_dir", nifti_out)
    return {
        "net": net,
        "tmp": tmp,
        "dicom_dir": dicom_dir,
        "nifti_dir": nifti_dir,
        "dicom_out": dicom_out,
        "nifti_out": nifti_out,
        "before": before,
        "run_dicom": run_dicom,
        "run_nifti": run_nifti,
        "run_again": run_again,
        "out_hashes": out_hashes,
        "report_nifti": report_nifti,
        "out_hashes_after": tree_hashes(nifti_out),
    }


def _report(folder: str) -> dict:
    with open(os.path.join(folder, "inference_report.json"), encoding="utf-8") as f:
        return json.load(f)


MODALITY = {"ct3d.nii.gz": "CT", "sub/pet2d.nii": "PET", "mri3d.nii.gz": "MRI"}
CLIP = {"CT": (-1024.0, 3072.0), "PET": (0.0, 20.0), "MRI": (0.0, 4095.0)}


def _in_process(net, values: np.ndarray, modality: str) -> np.ndarray:
    """clip(denormalise(net(normalise(clip(values))))) for a 2D slice or each axial slice of a volume."""
    lo, hi = CLIP[modality]
    x = ((np.clip(values, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    vol = x if x.ndim == 3 else x[..., None]
    with torch.no_grad():
        y = [
            net(torch.from_numpy(np.ascontiguousarray(vol[..., z]))[None, None])[0, 0].numpy()
            for z in range(vol.shape[-1])
        ]
    return np.clip(np.stack(y, -1) * (hi - lo) + lo, lo, hi).reshape(values.shape)


class TestInferenceCLI(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.ws = _workspace(tmp)

    def test_inputs_unchanged(self) -> None:
        self.assertEqual(tree_hashes(self.ws["dicom_dir"]), self.ws["before"]["dicom"])
        self.assertEqual(tree_hashes(self.ws["nifti_dir"]), self.ws["before"]["nifti"])

    def test_datalist_run_writes_all(self) -> None:
        run = self.ws["run_nifti"]
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertEqual(self.ws["report_nifti"]["counts"], {"written": 3, "skipped": 0, "failed": 0})

    @parameterized.expand([("ct3d.nii.gz",), ("sub/pet2d.nii",), ("mri3d.nii.gz",)])
    def test_nifti_geometry_and_dtype(self, name: str) -> None:
        src = nib.load(os.path.join(self.ws["nifti_dir"], name))
        out = nib.load(os.path.join(self.ws["nifti_out"], name))
        self.assertEqual(out.shape, src.shape)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        np.testing.assert_allclose(out.header.get_zooms(), src.header.get_zooms(), atol=1e-6)
        self.assertEqual(nib.aff2axcodes(out.affine), nib.aff2axcodes(src.affine))
        self.assertEqual(out.get_data_dtype(), src.get_data_dtype())
        # the network applied here, slice by slice, to the clipped and normalised input; stored to the file's
        # precision
        expected = _in_process(self.ws["net"], src.get_fdata(), MODALITY[name])
        slope = float(getattr(out.dataobj, "slope", 1.0) or 1.0)
        integer = np.issubdtype(out.get_data_dtype(), np.integer)
        atol = 0.5 * slope + 1e-3 if integer else 1e-4 * np.ptp(CLIP[MODALITY[name]])
        np.testing.assert_allclose(out.get_fdata(), expected, rtol=0, atol=atol)

    def test_int16_output_clipped_to_range(self) -> None:
        src = nib.load(os.path.join(self.ws["nifti_dir"], "ct3d.nii.gz"))
        out = nib.load(os.path.join(self.ws["nifti_out"], "ct3d.nii.gz"))
        stored = np.asanyarray(out.dataobj)
        self.assertEqual(stored.dtype, np.int16)
        self.assertLess(src.get_fdata().min(), -1024)  # the input goes below the CT range ...
        self.assertGreaterEqual(stored.min(), -1024)  # ... the restored scan does not (clip_output)
        self.assertLessEqual(stored.max(), 3072)
        expected = _in_process(self.ws["net"], src.get_fdata(), "CT")
        self.assertLessEqual(np.abs(stored - expected).max(), 0.5 + 1e-3)  # rounded, not truncated or wrapped

    def test_existing_outputs_skipped_not_overwritten(self) -> None:
        run = self.ws["run_again"]
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertEqual(_report(self.ws["nifti_out"])["counts"], {"written": 0, "skipped": 3, "failed": 0})
        after = {k: v for k, v in self.ws["out_hashes_after"].items() if k != "inference_report.json"}
        self.assertEqual(after, {k: v for k, v in self.ws["out_hashes"].items() if k != "inference_report.json"})
        self.assertIn("output exists", run.stdout + run.stderr)

    def test_folder_run_reports_failure_and_keeps_going(self) -> None:
        run = self.ws["run_dicom"]
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("x.nii", run.stdout + run.stderr)
        self.assertIn("modality", run.stdout + run.stderr)
        report = _report(self.ws["dicom_out"])
        self.assertEqual(report["counts"], {"written": 3, "skipped": 0, "failed": 1})
        (failed,) = [s for s in report["scans"] if s["status"] == "failed"]
        self.assertTrue(failed["image"].endswith("x.nii"), failed["image"])

    def test_dicom_series_derived(self) -> None:
        src = read_series(os.path.join(self.ws["dicom_dir"], "ct_series"))
        out_dir = os.path.join(self.ws["dicom_out"], "ct_series")
        self.assertEqual(
            sorted(os.listdir(out_dir)), sorted(os.listdir(os.path.join(self.ws["dicom_dir"], "ct_series")))
        )
        out = read_series(out_dir)
        self.assertEqual(len({d.SeriesInstanceUID for d in out}), 1)
        self.assertNotEqual(out[0].SeriesInstanceUID, src[0].SeriesInstanceUID)
        self.assertFalse({d.SOPInstanceUID for d in out} & {d.SOPInstanceUID for d in src})
        for s, o in zip(src, out):
            self.assertEqual(o.ImageType[0], "DERIVED")
            self.assertTrue(o.DerivationDescription)
            self.assertEqual(o.SourceImageSequence[0].ReferencedSOPInstanceUID, s.SOPInstanceUID)
            for tag in (
                "PatientID",
                "PatientName",
                "StudyInstanceUID",
                "FrameOfReferenceUID",
                "Modality",
                "Rows",
                "Columns",
                "ImagePositionPatient",
                "ImageOrientationPatient",
                "PixelSpacing",
                "SliceThickness",
                "RescaleIntercept",
            ):
                self.assertEqual(o.get(tag), s.get(tag), tag)
            hu_in = s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept)
            hu_out = o.pixel_array * float(o.RescaleSlope) + float(o.RescaleIntercept)
            self.assertGreater(np.corrcoef(hu_in.ravel(), hu_out.ravel())[0, 1], 0.5)

    def test_dicom_series_simpleitk_geometry(self) -> None:
        def read(folder: str) -> SimpleITK.Image:
            reader = SimpleITK.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
            return reader.Execute()

        src = read(os.path.join(self.ws["dicom_dir"], "ct_series"))
        out = read(os.path.join(self.ws["dicom_out"], "ct_series"))
        self.assertEqual(src.GetSize(), (24, 20, 4))
        self.assertEqual(out.GetSize(), src.GetSize())
        np.testing.assert_allclose(out.GetOrigin(), src.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(out.GetSpacing(), src.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(out.GetDirection(), src.GetDirection(), atol=1e-6)

    @parameterized.expand([("CT_small.dcm",), ("MR_small.dcm",)])
    def test_real_pydicom_files(self, name: str) -> None:
        src = pydicom.dcmread(os.path.join(self.ws["dicom_dir"], name))
        out = pydicom.dcmread(os.path.join(self.ws["dicom_out"], name))
        self.assertNotEqual(out.SeriesInstanceUID, src.SeriesInstanceUID)
        self.assertNotEqual(out.SOPInstanceUID, src.SOPInstanceUID)
        self.assertEqual(out.Modality, src.Modality)
        self.assertEqual(out.StudyInstanceUID, src.StudyInstanceUID)
        self.assertEqual(out.PatientID, src.PatientID)
        self.assertEqual(out.ImageType[0], "DERIVED")
        self.assertEqual(out.pixel_array.shape, src.pixel_array.shape)
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            self.assertEqual(out.get(tag), src.get(tag), tag)
        slope_in, slope_out = float(src.get("RescaleSlope", 1)), float(out.get("RescaleSlope", 1))
        v_in = src.pixel_array * slope_in + float(src.get("RescaleIntercept", 0))
        v_out = out.pixel_array * slope_out + float(out.get("RescaleIntercept", 0))
        self.assertGreater(np.corrcoef(v_in.ravel(), v_out.ravel())[0, 1], 0.5)
        image = SimpleITK.ReadImage(os.path.join(self.ws["dicom_out"], name))
        ref = SimpleITK.ReadImage(os.path.join(self.ws["dicom_dir"], name))
        np.testing.assert_allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-4)


if __name__ == "__main__":
    unittest.main()
