"""custom.inference.io: what inference reads (values, layout, the scan named in the meta data); the reading rules
themselves are tested in tests/data/test_reading_classes.py."""

from __future__ import annotations

import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
from custom.inference.io import LoadScand, load_dicom_series, load_nifti, read_scan

from tests.utils import write_ct_series


def _scaled_nifti(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """An int16 NIfTI with scl_slope 2, scl_inter -3; returns its values in physical units."""
    raw = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    img = nib.Nifti1Image(raw, np.diag([0.5, 0.6, 2.0, 1.0]))
    img.header.set_slope_inter(2.0, -3.0)
    nib.save(img, path)
    return raw.astype(np.float64) * 2.0 - 3.0


class TestInferenceReading(unittest.TestCase):
    def test_load_nifti_physical_units_float32(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ct.nii.gz")
            expected = _scaled_nifti(path, (5, 4, 3))
            array, info = load_nifti(path)
            self.assertIsInstance(array, np.ndarray)
            self.assertEqual(array.dtype, np.float32)
            np.testing.assert_array_equal(array, expected.astype(np.float32))
            self.assertEqual(info["dtype"], np.int16)
            self.assertEqual(tuple(info["shape"]), (5, 4, 3))
            self.assertEqual((info["source_scl_slope"], info["source_scl_inter"]), (2.0, -3.0))
            np.testing.assert_allclose(info["nifti"].affine, np.diag([0.5, 0.6, 2.0, 1.0]))

    def test_trailing_singleton_axes_dropped(self) -> None:
        """A 3D scan stored as 4D with one volume is read as the 3D scan (restored slice by slice along z)."""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "mr.nii.gz")
            expected = _scaled_nifti(path, (5, 4, 3, 1))[..., 0]
            img, _ = read_scan({"image": path, "kind": "nifti"})
            self.assertEqual(tuple(img.shape), (5, 4, 3))
            out = LoadScand("image")({"image": path, "kind": "nifti", "modality": "MRI"})
            self.assertEqual(tuple(out["image"].shape), (1, 5, 4, 3))
            np.testing.assert_array_equal(out["image"][0].numpy(), expected.astype(np.float32))

    def test_dicom_scan_named_in_the_meta_data(self) -> None:
        """A DICOM series is named by its folder, a single file by the file (writers and messages use the name);
        the item given is not modified."""
        with tempfile.TemporaryDirectory() as d:
            folder = os.path.join(d, "ct_series")
            files = write_ct_series(folder, n=2, rows=6, cols=5)
            item = {"image": folder, "kind": "dicom"}
            out = LoadScand("image")(item)
            self.assertEqual(item, {"image": folder, "kind": "dicom"})
            self.assertEqual(out["image"].meta["filename_or_obj"], folder)
            self.assertEqual((tuple(out["image"].shape), out["modality"]), ((1, 6, 5, 2), "CT"))
            self.assertEqual(out["scan_info"]["files"], files)  # sorted along z, as the volume
            volume, _ = load_dicom_series(files, folder)
            self.assertEqual(volume.dtype, np.float32)
            np.testing.assert_array_equal(out["image"][0].numpy(), volume)
            single = LoadScand("image")({"image": files[1], "kind": "dicom"})
            self.assertEqual(single["image"].meta["filename_or_obj"], files[1])
            np.testing.assert_array_equal(single["image"][0].numpy(), volume[..., 1])


if __name__ == "__main__":
    unittest.main()
