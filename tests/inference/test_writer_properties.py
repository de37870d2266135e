"""Property tests of the writing layer (hypothesis): generated NIfTI headers and DICOM pixel modules round-trip.

NIfTI: any on-disk integer or float type, byte order, scl_slope / scl_inter, 2D or 3D, qform / sform codes: an
unchanged image written with :func:`write_nifti` stores exactly the input's stored values, type, scaling and
geometry. DICOM: pixel representation, BitsAllocated / BitsStored, rescale and transfer syntax (explicit and
implicit little endian, big endian, RLE): the derived instance holds exactly the input's values (physical units),
explicit VR little endian, with the input's rescale. Cost bounded by ``max_examples`` and no deadline (file I/O).
"""

from __future__ import annotations

import datetime
import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pydicom
from custom.inference.writers import derived_dataset, write_nifti
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from tests.utils import dicom_dataset

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime.datetime(2026, 12, 1)


@st.composite
def nifti_cases(draw):
    kind = draw(st.sampled_from(["u1", "i1", "i2", "u2", "i4", "f4", "f8"]))
    order = draw(st.sampled_from(["<", ">"]))
    dtype = np.dtype(order + kind) if kind not in ("u1", "i1") else np.dtype(kind)
    scaled = dtype.kind in "iu" and draw(st.booleans())
    slope = draw(st.sampled_from([0.25, 1.5, 16.0, -2.0])) if scaled else 1.0
    inter = draw(st.sampled_from([0.0, -1024.0, 7.5])) if scaled else 0.0
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=3)))
    codes = (draw(st.sampled_from([0, 1, 2, 4])), draw(st.sampled_from([0, 1, 2, 4])))
    zooms = draw(st.lists(st.sampled_from([0.5, 0.8, 1.0, 2.5]), min_size=3, max_size=3))
    seed = draw(st.integers(0, 2**16))
    return dtype, slope, inter, shape, codes, zooms, seed


@st.composite
def dicom_cases(draw):
    bits_allocated = draw(st.sampled_from([8, 16]))
    bits_stored = draw(st.sampled_from([8] if bits_allocated == 8 else [10, 12, 16]))
    signed = draw(st.booleans())
    slope = draw(st.sampled_from([None, 1.0, 0.5, 2.5]))
    inter = draw(st.sampled_from([0.0, -1024.0, 7.5]))
    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless]))
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    return bits_allocated, bits_stored, signed, slope, inter, syntax, (rows, cols), draw(st.integers(0, 2**16))


class TestNiftiProperties(unittest.TestCase):
    @SETTINGS
    @given(nifti_cases())
    def test_unchanged_image_round_trips(self, case):
        dtype, slope, inter, shape, (qcode, scode), zooms, seed = case
        rng = np.random.default_rng(seed)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            stored = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        else:
            stored = rng.normal(0, 1000, shape).astype(dtype)
        affine = np.diag([*zooms, 1.0])
        affine[:3, 3] = [3.0, -7.0, 11.0]
        header = nib.Nifti1Header(endianness=dtype.byteorder if dtype.byteorder in "<>" else "<")
        img = nib.Nifti1Image(stored, affine, header)
        img.set_data_dtype(dtype)
        img.set_qform(affine, int(qcode))
        img.set_sform(affine, int(scode))
        img.header.set_slope_inter(slope, inter)
        with tempfile.TemporaryDirectory() as d:
            nib.save(img, os.path.join(d, "in.nii"))
            src = nib.load(os.path.join(d, "in.nii"))
            write_nifti(src.get_fdata(), src, os.path.join(d, "out.nii"))
            out = nib.load(os.path.join(d, "out.nii"))
            self.assertEqual(out.get_data_dtype(), src.get_data_dtype())
            self.assertEqual(out.shape, src.shape)
            np.testing.assert_array_equal(out.affine, src.affine)
            self.assertEqual(int(out.header["qform_code"]), int(src.header["qform_code"]))
            self.assertEqual(int(out.header["sform_code"]), int(src.header["sform_code"]))
            if dtype.kind in "iu":
                self.assertEqual((out.dataobj.slope, out.dataobj.inter), (src.dataobj.slope, src.dataobj.inter))
                np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), stored)
            else:
                np.testing.assert_array_equal(out.get_fdata(), src.get_fdata())


class TestDicomProperties(unittest.TestCase):
    @SETTINGS
    @given(dicom_cases())
    def test_unchanged_slice_round_trips(self, case):
        bits_allocated, bits_stored, signed, slope, inter, syntax, shape, seed = case
        rng = np.random.default_rng(seed)
        lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        dtype = np.dtype(("i" if signed else "u") + str(bits_allocated // 8))
        raw = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
        ds = dicom_dataset(
            raw.astype(np.int16 if signed else np.uint16),
            modality="MR",
            slope=slope,
            inter=None if slope is None else inter,
        )
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == RLELossless:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(RLELossless, raw, encoding_plugin="pydicom")  # GDCM's RLE encoder aborts on some slices
        else:
            byteorder = ">" if syntax == ExplicitVRBigEndian else "<"
            ds.PixelData = raw.astype(raw.dtype.newbyteorder(byteorder)).tobytes()
            if len(ds.PixelData) % 2:
                ds.PixelData += b"\0"
            ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
        with tempfile.TemporaryDirectory() as d:
            ds.save_as(os.path.join(d, "in.dcm"), enforce_file_format=True)
            src = pydicom.dcmread(os.path.join(d, "in.dcm"))
            s, i = (1.0, 0.0) if slope is None else (float(src.RescaleSlope), float(src.RescaleIntercept))
            values = src.pixel_array.astype(np.float64) * s + i
            np.testing.assert_array_equal(src.pixel_array, raw)  # the generated input is what we meant
            derived_dataset(src, values, generate_uid(), NOW).save_as(
                os.path.join(d, "out.dcm"), enforce_file_format=True
            )
            out = pydicom.dcmread(os.path.join(d, "out.dcm"))
        self.assertEqual(out.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian)
        out_slope, out_inter = float(out.get("RescaleSlope", 1)), float(out.get("RescaleIntercept", 0))
        self.assertEqual((out_slope, out_inter), (s, i))
        np.testing.assert_array_equal(out.pixel_array * out_slope + out_inter, values)


if __name__ == "__main__":
    unittest.main()
