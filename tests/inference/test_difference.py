"""The difference output: paths, values, overwrite rules (unit level; the CLI test covers DICOM series)."""

from __future__ import annotations

import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pydicom
import torch
from custom.inference import load_dicom_series
from custom.inference.difference import SaveDifferenced, difference_path
from monai.data import MetaTensor
from parameterized import parameterized

from tests.utils import read_series, write_ct_series


def _item(folder: str, restored: np.ndarray, measured: np.ndarray) -> dict:
    src = os.path.join(folder, "in.nii.gz")
    ref = nib.Nifti1Image(measured.astype(np.int16), np.diag([0.7, 0.8, 2.5, 1.0]))
    nib.save(ref, src)
    return {
        "kind": "nifti",
        "source": src,
        "output": os.path.join(folder, "out", "in.nii.gz"),
        "scan_info": {"nifti": nib.load(src)},
        "pred": torch.as_tensor(restored, dtype=torch.float32)[None],
        "input": torch.as_tensor(measured, dtype=torch.float32)[None],
    }


class TestDifference(unittest.TestCase):
    @parameterized.expand(
        [
            ["out/a.nii.gz", "out/a_difference.nii.gz"],
            ["out/a.nii", "out/a_difference.nii"],
            ["out/series", "out/series_difference"],
            ["out/series/", "out/series_difference"],
            ["out/x.dcm", "out/x_difference.dcm"],
            ["out/IM0001", "out/IM0001_difference"],
            ["out/X.DCM", "out/X_difference.DCM"],
            ["out/a.ima", "out/a_difference.ima"],
            ["out/B.IMA", "out/B_difference.IMA"],
            ["out/1.2.840.10008", "out/1.2.840.10008_difference"],  # a series folder named by its UID
            ["out/scan.v2/", "out/scan.v2_difference"],
        ]
    )
    def test_path(self, output: str, expected: str) -> None:
        self.assertEqual(difference_path(output), expected)

    def test_values_dtype_and_geometry(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            measured = np.arange(24, dtype=np.float32).reshape(4, 6) * 10
            restored = measured - 25.5  # negative differences, non-integer: not the input's int16
            out = SaveDifferenced("pred")(_item(d, restored, measured))
            img = nib.load(out["difference_output"])
            self.assertEqual(out["difference_output"], os.path.join(d, "out", "in_difference.nii.gz"))
            self.assertEqual(img.get_data_dtype(), np.float32)
            np.testing.assert_allclose(img.get_fdata(), np.full((4, 6), -25.5), atol=1e-5)
            np.testing.assert_allclose(img.affine, np.diag([0.7, 0.8, 2.5, 1.0]))
            torch.testing.assert_close(out["difference"], torch.full((1, 4, 6), -25.5))

    def test_disabled_missing_input_and_shape(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            item = _item(d, np.zeros((4, 6)), np.ones((4, 6)))
            self.assertNotIn("difference_output", SaveDifferenced("pred", enabled="false")(item))
            self.assertFalse(os.path.exists(os.path.join(d, "out")))
            with self.assertRaisesRegex(ValueError, "in.nii.gz: the difference output needs the input scan"):
                SaveDifferenced("pred")({k: v for k, v in item.items() if k != "input"})
            with self.assertRaisesRegex(ValueError, "differ in shape"):
                SaveDifferenced("pred")({**item, "pred": torch.zeros(1, 4, 5)})
            # no "source" and a loaded image: the message names the image's file, not its values
            loaded = MetaTensor(torch.full((1, 4, 6), 7.0), meta={"filename_or_obj": "/scans/b.nii.gz"})
            bare = {k: v for k, v in item.items() if k not in ("input", "source")}
            with self.assertRaisesRegex(ValueError, r"^/scans/b.nii.gz: the difference output"):
                SaveDifferenced("pred")({**bare, "image": loaded})

    def test_nifti_difference_stored_unscaled(self) -> None:
        """The input's scl_slope / scl_inter are not reused: the float32 difference is stored as is (slope 1,
        intercept 0), so a viewer reading the raw voxels sees the difference too."""
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "in.nii.gz")
            ref = nib.Nifti1Image(np.zeros((4, 6), np.int16), np.eye(4))
            ref.header.set_slope_inter(2.0, -5.0)
            nib.save(ref, src)
            measured = np.full((1, 4, 6), 15.0, np.float32)
            restored = measured + np.linspace(-3.5, 4.25, 24, dtype=np.float32).reshape(1, 4, 6)
            item = {
                "kind": "nifti",
                "source": src,
                "output": os.path.join(d, "out", "in.nii.gz"),
                "scan_info": {"nifti": nib.load(src)},
                "pred": torch.from_numpy(restored),
                "input": torch.from_numpy(measured),
            }
            img = nib.load(SaveDifferenced("pred")(item)["difference_output"])
            self.assertEqual((float(img.dataobj.slope), float(img.dataobj.inter)), (1.0, 0.0))
            np.testing.assert_allclose(img.dataobj.get_unscaled(), (restored - measured)[0], atol=1e-6)

    def _dicom_item(self, d: str, files: list[str], source: str, output: str) -> tuple[dict, np.ndarray]:
        measured, info = load_dicom_series(files, source)
        change = np.where(np.arange(measured.size).reshape(measured.shape) % 3 == 0, -30.0, 12.0)
        restored = measured + change
        item = {
            "kind": "dicom",
            "source": source,
            "output": output,
            "scan_info": info,
            "pred": torch.from_numpy(restored)[None],
            "input": torch.from_numpy(measured)[None],
        }
        return item, change

    @staticmethod
    def _hu(ds: pydicom.Dataset) -> np.ndarray:
        return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))

    def test_dicom_series_difference(self) -> None:
        """A DICOM series gives a derived series folder: same file names, signed HU differences slice by slice,
        SeriesNumber + 2000, the description suffix; the input datasets are left as they were."""
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "in", "ct_series")
            files = write_ct_series(src, n=2, rows=6, cols=5)
            item, change = self._dicom_item(d, files, src, os.path.join(d, "out", "ct_series"))
            out = SaveDifferenced("pred")(item)
            self.assertEqual(out["difference_output"], os.path.join(d, "out", "ct_series_difference"))
            self.assertEqual(sorted(os.listdir(out["difference_output"])), sorted(os.path.basename(f) for f in files))
            diff = read_series(out["difference_output"])
            for k, ds in enumerate(diff):  # sorted along z: slice k of the volume
                np.testing.assert_allclose(self._hu(ds), change[..., k], atol=float(ds.get("RescaleSlope", 1)))
                self.assertEqual(int(ds.SeriesNumber), 3 + 2000)
                self.assertEqual(ds.SeriesDescription, "TAT difference (restored - input)")  # the source has none
            self.assertEqual([int(ds.SeriesNumber) for ds in item["scan_info"]["datasets"]], [3, 3])

    def test_dicom_single_file_difference(self) -> None:
        """A single DICOM file gives ``<name>_difference.dcm``; a file without SeriesNumber gets none."""
        with tempfile.TemporaryDirectory() as d:
            files = write_ct_series(os.path.join(d, "in"), n=1, rows=6, cols=5)
            ds = pydicom.dcmread(files[0])
            del ds.SeriesNumber
            ds.save_as(files[0], enforce_file_format=True)
            item, change = self._dicom_item(d, files, files[0], os.path.join(d, "out", "one.dcm"))
            path = SaveDifferenced("pred")(item)["difference_output"]
            self.assertEqual(path, os.path.join(d, "out", "one_difference.dcm"))
            self.assertEqual(os.listdir(os.path.join(d, "out")), ["one_difference.dcm"])
            written = pydicom.dcmread(path)
            self.assertNotIn("SeriesNumber", written)
            np.testing.assert_allclose(self._hu(written), change, atol=float(written.get("RescaleSlope", 1)))

    def test_integer_arrays_keep_negative_differences(self) -> None:
        """Array inputs of an unsigned type give signed differences (no wrap-around), and the inputs are kept."""
        with tempfile.TemporaryDirectory() as d:
            measured = np.full((1, 4, 6), 500, dtype=np.uint16)
            restored = np.full((1, 4, 6), 480, dtype=np.uint16)
            item = {**_item(d, restored[0], measured[0]), "pred": restored, "input": measured}
            out = SaveDifferenced("pred")(item)
            torch.testing.assert_close(out["difference"], torch.full((1, 4, 6), -20.0))
            np.testing.assert_allclose(nib.load(out["difference_output"]).get_fdata(), -20.0)
            self.assertTrue((item["pred"] == 480).all() and (item["input"] == 500).all())

    def test_switch_errors_name_the_option(self) -> None:
        with self.assertRaisesRegex(ValueError, "^difference_output must be true or false, got 'maybe'"):
            SaveDifferenced("pred", enabled="maybe")
        with self.assertRaisesRegex(ValueError, "^overwrite must be true or false, got 2"):
            SaveDifferenced("pred", overwrite=2)

    def test_overwrite_rules(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            item = _item(d, np.zeros((4, 6)), np.ones((4, 6)))
            SaveDifferenced("pred")(item)
            # an orphan difference (its restored scan missing: an interrupted run) is replaced
            item2 = {**item, "pred": torch.full((1, 4, 6), 3.0)}
            path = SaveDifferenced("pred")(item2)["difference_output"]
            np.testing.assert_allclose(nib.load(path).get_fdata(), 2.0)
            # with the restored scan present, an existing difference is kept unless overwrite
            os.makedirs(os.path.dirname(item["output"]), exist_ok=True)
            open(item["output"], "wb").close()
            with self.assertRaises(FileExistsError):
                SaveDifferenced("pred")(item)
            SaveDifferenced("pred", overwrite=True)(item)
            np.testing.assert_allclose(nib.load(path).get_fdata(), -1.0)


if __name__ == "__main__":
    unittest.main()
