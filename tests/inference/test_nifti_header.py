"""A restored NIfTI lies where its input lies: the input's geometry fields (sform / qform and their codes, pixdim,
units, dimensions) are written back as read, whatever the reader did to the loaded image's affine."""

from __future__ import annotations

import os
import unittest

import nibabel as nib
import numpy as np
from custom.inference.io import read_scan
from custom.inference.writers import write_nifti
from parameterized import parameterized

from tests.utils import FreshReadersCase, nifti_with_header

NAN = float("nan")
GEOMETRY = (
    "dim",
    "pixdim",
    "xyzt_units",
    "sform_code",
    "qform_code",
    "srow_x",
    "srow_y",
    "srow_z",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
)
AFFINE = np.array([[0.7, 0, 0, -10], [0, 0.8, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1.0]])
ROTATED = np.array([[0, -0.8, 0, 5], [0.7, 0, 0, 6], [0, 0, 2.5, 7], [0, 0, 0, 1.0]])


def raw_header(path: str) -> nib.Nifti1Header:
    with open(path, "rb") as f:
        return nib.Nifti1Header.from_fileobj(f, check=False)


class TestRestoredHeader(FreshReadersCase):
    def assert_geometry_equal(self, source: str, output: str) -> None:
        a, b = raw_header(source), raw_header(output)
        for name in GEOMETRY:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)  # NaN == NaN here

    @parameterized.expand(
        [
            ("consistent", {}),
            ("pixdim_disagrees_with_sform", {"pixdim": [1, 2, 2, 2, 1, 1, 1, 1]}),  # MONAI repairs the loaded affine
            ("sform_and_qform_differ", {"srow_x": ROTATED[0], "srow_y": ROTATED[1], "srow_z": ROTATED[2]}),
            ("scanner_and_aligned_codes", {"sform_code": 2, "qform_code": 1}),
            ("no_forms", {"sform_code": 0, "qform_code": 0}),
            ("pixdim_nan_sform_valid", {"pixdim": [1, NAN, 0.8, 2.5, 1, 1, 1, 1]}),
            ("units_metres", {"xyzt_units": 1}),
        ]
    )
    def test_read_restore_write_keeps_the_input_geometry(self, name: str, fields: dict) -> None:
        source = nifti_with_header(
            os.path.join(self.tmp, f"{name}.nii"), np.arange(60, dtype=np.int16).reshape(5, 4, 3), AFFINE, **fields
        )
        img, info = read_scan({"image": source, "kind": "nifti"})
        output = write_nifti(np.asarray(img) + 1.0, info["nifti"], os.path.join(self.tmp, f"out_{name}.nii"))
        self.assert_geometry_equal(source, output)
        np.testing.assert_array_equal(np.asarray(nib.load(output).dataobj), np.asarray(img) + 1)

    def test_four_d_time_axis_kept(self) -> None:
        # (H, W, D, 1) with a time step of 3 s and an origin: MONAI's repair of the loaded image once spread the origin
        # into pixdim[4]; the restored file keeps the input's
        source = nifti_with_header(
            os.path.join(self.tmp, "four_d.nii"),
            np.arange(60, dtype=np.int16).reshape(5, 4, 3, 1),
            AFFINE,
            pixdim=[1, 0.7, 0.8, 2.5, 3.0, 1, 1, 1],
            xyzt_units=10,
        )
        img, info = read_scan({"image": source, "kind": "nifti"})
        self.assert_geometry_equal(source, write_nifti(np.asarray(img), info["nifti"], source + ".out.nii"))

    def test_reference_of_another_format_keeps_its_affine(self) -> None:
        # an MGH (or Analyze) header has no sform / qform to keep: its affine is what the output must carry
        for klass in (nib.MGHImage, nib.AnalyzeImage):
            reference = klass(np.zeros((5, 4, 3), np.float32), ROTATED)
            output = write_nifti(np.ones((5, 4, 3)), reference, os.path.join(self.tmp, f"{klass.__name__}.nii"))
            np.testing.assert_allclose(nib.load(output).affine, ROTATED, atol=1e-6, err_msg=klass.__name__)

    def test_writer_never_rewrites_the_reference_header_geometry(self) -> None:
        # a reference loaded by nibabel alone (not through the reader, which refuses it): NaN in the qform offset;
        # given the affine, nibabel would replace the qform by a new sform (code 2) holding the NaN
        source = nifti_with_header(
            os.path.join(self.tmp, "nan_offset.nii"),
            np.zeros((5, 4, 3), np.float32),
            AFFINE,
            sform_code=0,
            qoffset_x=NAN,
        )
        reference = nib.load(source)
        output = write_nifti(np.ones((5, 4, 3)), reference, os.path.join(self.tmp, "out.nii"))
        self.assert_geometry_equal(source, output)
        self.assertEqual((int(raw_header(output)["sform_code"]), int(raw_header(output)["qform_code"])), (0, 1))


if __name__ == "__main__":
    unittest.main()
