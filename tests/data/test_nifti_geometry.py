"""NIfTI geometry on reading: an affine that cannot place the voxels is refused naming the file and the header fields;
MONAI's header repair changes the loaded image's affine only, with a warning, never the cached (file's) header."""

from __future__ import annotations

import gzip
import logging
import os
import re
import unittest
from unittest import mock

import numpy as np
from custom.data import load_image
from custom.data.readers import check_nifti_affine, nifti_image
from parameterized import parameterized

from tests.utils import FreshReadersCase, nifti_with_header

NAN, INF = float("nan"), float("inf")
AFFINE = np.diag([0.7, 0.8, 2.5, 1.0])
ARR = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)


class _Files(FreshReadersCase):
    def write(self, name: str, affine: np.ndarray = AFFINE, **fields: object) -> str:
        return nifti_with_header(os.path.join(self.tmp, f"{name}.nii"), ARR, affine, **fields)


class TestRefusedGeometry(_Files):
    @parameterized.expand(
        [
            ("sform_nan", {"srow_x": [NAN, 0, 0, 0]}, r"sform \(srow_x/y/z\) has non-finite values"),
            ("sform_inf_offset", {"srow_y": [0, 0.8, 0, INF]}, r"sform \(srow_x/y/z\) has non-finite values"),
            ("sform_zero_axis", {"srow_z": [0, 0, 0, 0]}, r"sform \(srow_x/y/z\) has an axis of zero length"),
            (
                "sform_collinear",
                {"srow_x": [1, 1, 0, 0], "srow_y": [1, 1, 0, 0], "srow_z": [0, 0, 1, 0]},
                "sform .* has linearly dependent axes",
            ),
            ("qform_nan_offset", {"sform_code": 0, "qoffset_x": NAN}, r"qform \(quatern_b/c/d.*non-finite values"),
            ("qform_nan_quaternion", {"sform_code": 0, "quatern_c": NAN}, r"qform \(.*non-finite values"),
        ]
    )
    def test_refused_naming_the_file_and_the_fields(self, name: str, fields: dict, message: str) -> None:
        path = self.write(name, **fields)
        with self.assertRaisesRegex(ValueError, re.escape(path) + ": invalid NIfTI geometry: the affine from the "):
            load_image(path)
        with self.assertRaisesRegex(ValueError, message):
            nifti_image(path)  # the header check every workflow shares (training slices too)

    def test_unreadable_quaternion_is_a_named_value_error(self) -> None:
        class Broken:
            @property
            def affine(self) -> np.ndarray:
                raise ValueError("w2 should be positive")

        with self.assertRaisesRegex(ValueError, "scan.nii: unreadable NIfTI geometry .*w2 should be positive"):
            check_nifti_affine(Broken(), "scan.nii")


class TestScaleFactors(_Files):
    @parameterized.expand([("inf", INF), ("minus_inf", -INF)])
    def test_infinite_slope_refused(self, _, slope: float) -> None:
        # nibabel reads an infinite scl_slope as "unscaled" (the stored values as they are): refused instead
        path = self.write("inf_slope", scl_slope=slope, scl_inter=0)
        with self.assertRaisesRegex(ValueError, re.escape(path) + r": invalid NIfTI scale factor scl_slope -?inf"):
            load_image(path)

    def test_header_unreadable_on_the_second_read_is_a_named_value_error(self) -> None:
        # the raw factors are read again from the file: a file replaced meanwhile fails naming it, not with nibabel's
        # own exception type
        path = self.write("changed")
        with mock.patch("nibabel.openers.ImageOpener", side_effect=OSError("file vanished")):
            with self.assertRaisesRegex(
                ValueError, re.escape(path) + r": unreadable NIfTI header \(OSError: file vanished"
            ):
                nifti_image(path)

    @parameterized.expand([("nan_means_unscaled", NAN, 89.0), ("zero_means_unscaled", 0.0, 89.0), ("two", 2.0, 178.0)])
    def test_valid_slopes_read(self, _, slope: float, maximum: float) -> None:
        self.assertEqual(float(load_image(self.write("slope", scl_slope=slope, scl_inter=0)).max()), maximum)

    def test_gzip_file_checked_too(self) -> None:
        path = self.write("inf_slope", scl_slope=INF, scl_inter=0)
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
            g.write(f.read())
        with self.assertRaisesRegex(ValueError, "inf_slope.nii.gz: invalid NIfTI scale factor"):
            load_image(path + ".gz")


class TestAcceptedGeometry(_Files):
    def test_shear_small_voxels_and_no_forms_read(self) -> None:
        shear = np.array([[0.7, 0.3, 0, 1], [0, 0.8, 0, 2], [0, 0.1, 2.5, 3], [0, 0, 0, 1.0]])
        img = load_image(self.write("shear", shear))
        np.testing.assert_allclose(np.asarray(img.meta["affine"]), shear, rtol=1e-6, atol=1e-6)
        small = np.diag([1e-3, 1e-3, 2e-3, 1.0])  # microscopy-sized voxels: not degenerate
        np.testing.assert_allclose(np.asarray(load_image(self.write("small", small)).meta["affine"]), small, atol=1e-9)
        # no sform and no qform: the affine comes from pixdim (nibabel's fallback)
        img = load_image(self.write("no_forms", sform_code=0, qform_code=0))
        np.testing.assert_allclose(np.abs(np.diag(np.asarray(img.meta["affine"]))[:3]), [0.7, 0.8, 2.5], rtol=1e-6)

    def test_left_handed_affines_read(self) -> None:
        # FSL's usual LAS storage: a negative determinant, from the sform and from the qform alone
        las = np.diag([-0.7, 0.8, 2.5, 1.0])
        for name, fields in (("las_sform", {}), ("las_qform", {"sform_code": 0})):
            img = load_image(self.write(name, las, **fields))
            np.testing.assert_allclose(np.asarray(img.meta["affine"]), las, rtol=1e-6, err_msg=name)

    def test_zero_column_of_a_one_voxel_axis_reads(self) -> None:
        # 2D files and single slices: the third axis moves no voxel, so a zero srow_z column places nothing wrongly
        flat = {"srow_z": [0, 0, 0, 5]}
        for name, arr in (("two_d", ARR[..., 0]), ("one_slice", ARR[..., :1])):
            path = nifti_with_header(os.path.join(self.tmp, f"{name}.nii"), arr, AFFINE, **flat)
            self.assertEqual(tuple(load_image(path).shape), arr.shape)
        # the same column on an axis of several voxels is refused (sform_zero_axis above), and so is a zero column of
        # an in-plane axis of a 2D file
        path = nifti_with_header(os.path.join(self.tmp, "two_d_bad.nii"), ARR[..., 0], AFFINE, srow_y=[0, 0, 0, 0])
        with self.assertRaisesRegex(ValueError, "an axis of zero length"):
            load_image(path)

    def test_fields_the_affine_does_not_come_from_are_not_checked(self) -> None:
        # sform_code 0: the sform is not the geometry (the qform is), so junk in srow does not refuse the file
        img = load_image(self.write("stale_sform", sform_code=0, srow_x=[NAN, 0, 0, 0]))
        np.testing.assert_allclose(np.diag(np.asarray(img.meta["affine"]))[:3], [0.7, 0.8, 2.5], rtol=1e-6)

    def test_degeneracy_threshold_is_scale_free(self) -> None:
        def skewed(eps: float, scale: float) -> np.ndarray:
            a = np.eye(4)
            a[:3, :3] = scale * np.array([[1.0, 1.0, 0.0], [0.0, eps, 0.0], [0.0, 0.0, 1.0]])
            return a

        for scale in (1e-3, 1.0, 1e3):  # voxel size does not matter, only the angle between the axes
            load_image(self.write(f"skew_ok_{scale}", skewed(1e-5, scale)))
            with self.assertRaisesRegex(ValueError, "linearly dependent axes"):
                load_image(self.write(f"skew_bad_{scale}", skewed(1e-7, scale)))


class TestMonaiRepair(_Files):
    def test_sform_disagreeing_with_pixdim_warns_and_leaves_the_cached_header(self) -> None:
        path = self.write("disagree", pixdim=[1, 2, 2, 2, 1, 1, 1, 1])
        with self.assertLogs("custom.data.readers", logging.WARNING) as logs:
            img = load_image(path)
        text = "\n".join(logs.output)
        self.assertIn(path, text)
        self.assertIn("voxel size [0.7, 0.8, 2.5]", text)  # the sform's
        self.assertIn("pixdim [2.0, 2.0, 2.0]", text)
        # MONAI's rule for the loaded image: the pixdim / qform
        np.testing.assert_allclose(np.diag(np.asarray(img.meta["affine"]))[:3], [2, 2, 2])
        # the file's header as cached for every other reader and for the writers: the sform untouched
        cached = nifti_image(path)
        np.testing.assert_allclose(cached.header.get_sform()[:3, :3], AFFINE[:3, :3], rtol=1e-6)
        self.assertEqual(int(cached.header["sform_code"]), 1)
        np.testing.assert_allclose(cached.affine, AFFINE, rtol=1e-6)
        # a second read sees the same file header and repairs (and warns) again
        with self.assertLogs("custom.data.readers", logging.WARNING):
            again = load_image(path)
        np.testing.assert_allclose(np.asarray(again.meta["affine"]), np.asarray(img.meta["affine"]))

    def test_consistent_header_no_warning(self) -> None:
        with self.assertNoLogs("custom.data.readers", logging.WARNING):
            img = load_image(self.write("clean"))
        np.testing.assert_allclose(np.asarray(img.meta["affine"]), AFFINE, rtol=1e-6)


if __name__ == "__main__":
    unittest.main()
