"""The writing layer: derived DICOM from a clean dataset, rescale choices, multi-frame, NIfTI dtype and scaling."""

from __future__ import annotations

import datetime
import os
import tempfile
import unittest
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
from custom.inference.writers import clean_dataset, derived_dataset, nifti_scaling, write_dicom_series, write_nifti
from parameterized import parameterized
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from tests.utils import dicom_dataset

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0)


def _read_back(ds: Dataset, folder: str, name: str = "x.dcm") -> pydicom.Dataset:
    path = os.path.join(folder, name)
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _stored(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


class TestCleanDataset(unittest.TestCase):
    def test_command_set_and_file_meta_left_out_source_untouched(self):
        ds = dicom_dataset(np.zeros((4, 3), np.uint16), modality="MR", slope=None, inter=None)
        ds.add_new(0x00000100, "US", 1)
        ds.ReferencedImageSequence = [Dataset()]
        ds.ReferencedImageSequence[0].add_new(0x00000000, "UL", 4)
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
        out = clean_dataset(ds, drop=[0x7FE00010])
        self.assertFalse([e for e in out if e.tag.group in (0x0000, 0x0002)])
        self.assertNotIn("PixelData", out)
        self.assertFalse(hasattr(out, "file_meta") and out.file_meta)
        self.assertEqual([int(e.tag) for e in out.ReferencedImageSequence[0]], [0x00081155])
        self.assertEqual(out.PatientName, ds.PatientName)
        self.assertIn((0x0000, 0x0100), ds)  # the source keeps what it had
        self.assertIn("PixelData", ds)

    def test_big_endian_words_swapped(self):
        raw = np.arange(12, dtype=np.int16).reshape(4, 3)
        ds = dicom_dataset(raw, modality="MR", slope=None, inter=None, syntax=ExplicitVRBigEndian)
        ds.add_new(0x60003000, "OW", np.array([1, 2, 258], ">u2").tobytes())  # OverlayData
        with tempfile.TemporaryDirectory() as d:
            src = _read_back(ds, d, "be.dcm")
            self.assertEqual(src.file_meta.TransferSyntaxUID, ExplicitVRBigEndian)
            out = _read_back(derived_dataset(src, raw.astype(float), generate_uid(), NOW), d, "le.dcm")
        self.assertEqual(out.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian)
        np.testing.assert_array_equal(np.frombuffer(out[0x60003000].value, "<u2"), [1, 2, 258])
        np.testing.assert_array_equal(out.pixel_array, raw)


class TestDerivedDataset(unittest.TestCase):
    def _src(self, raw, **kw):
        return dicom_dataset(raw, **{"modality": "MR", "slope": None, "inter": None, **kw})

    def test_exact_with_source_rescale(self):
        raw = np.array([[0, 1, 4095], [17, 300, 2]], np.uint16)
        ds = self._src(raw, modality="CT", slope=0.5, inter=-1024)
        values = raw * 0.5 - 1024
        with tempfile.TemporaryDirectory() as d:
            out = _read_back(derived_dataset(ds, values, "1.2.3.9", NOW, where="a.dcm"), d)
        np.testing.assert_array_equal(out.pixel_array, raw)
        self.assertEqual((float(out.RescaleSlope), float(out.RescaleIntercept)), (0.5, -1024.0))
        self.assertEqual((out.BitsStored, out.PixelRepresentation, out.SeriesInstanceUID), (16, 0, "1.2.3.9"))
        self.assertEqual(out.SourceImageSequence[0].ReferencedSOPInstanceUID, ds.SOPInstanceUID)
        self.assertEqual((out.InstanceCreationDate, out.ImageType[0]), ("20261201", "DERIVED"))
        self.assertNotEqual(out.SOPInstanceUID, ds.SOPInstanceUID)

    def test_negative_on_unsigned_switches_representation(self):
        ds = self._src(np.zeros((2, 2), np.uint16))  # MR, no rescale
        values = np.array([[-5.0, 0.0], [7.0, 30000.0]])
        with tempfile.TemporaryDirectory() as d:
            out = _read_back(derived_dataset(ds, values, generate_uid(), NOW), d)
        self.assertEqual(int(out.PixelRepresentation), 1)
        self.assertNotIn("RescaleSlope", out)
        np.testing.assert_array_equal(out.pixel_array, values)

    def test_too_wide_enlarges_slope_keeps_values(self):
        ds = self._src(np.zeros((2, 2), np.int16), slope=1, inter=0)
        values = np.array([[-40000.0, 0.0], [10.0, 90000.0]])
        with tempfile.TemporaryDirectory() as d:
            with self.assertLogs("custom.inference.writers", "WARNING"):
                out = _read_back(derived_dataset(ds, values, generate_uid(), NOW), d)
        slope = float(out.RescaleSlope)
        self.assertGreater(slope, 1)
        np.testing.assert_allclose(_stored(out), values, atol=slope / 2 + 1e-3 * slope)

    def test_refusals(self):
        ds = self._src(np.zeros((2, 2), np.uint16), slope=0, inter=0)
        with self.assertRaisesRegex(ValueError, "a.dcm: RescaleSlope 0"):
            derived_dataset(ds, np.zeros((2, 2)), generate_uid(), NOW, where="a.dcm")
        ds = self._src(np.zeros((2, 2), np.uint16))
        with self.assertRaisesRegex(ValueError, "a.dcm: non-finite"):
            derived_dataset(ds, np.array([[0, np.nan], [0, 0]]), generate_uid(), NOW, where="a.dcm")
        with self.assertRaisesRegex(ValueError, "a.dcm: restored"):
            derived_dataset(ds, np.zeros((3, 2)), generate_uid(), NOW, where="a.dcm")


def _multiframe(raw: np.ndarray, slopes: list[float]) -> Dataset:
    """Enhanced-style multi-frame: (Rows, Columns, frames) stored, per-frame rescale in functional groups."""
    frames = np.moveaxis(raw, -1, 0)
    ds = dicom_dataset(frames[0], modality="MR", slope=None, inter=None)
    ds.NumberOfFrames = raw.shape[-1]
    ds.PixelData = frames.astype("<u2").tobytes()
    groups = []
    for s in slopes:
        item, pvt = Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = s, -10, "US"
        item.PixelValueTransformationSequence = [pvt]
        groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = groups
    return ds


class TestWriteSeries(unittest.TestCase):
    def test_multiframe_per_frame_rescale_exact(self):
        raw = np.random.default_rng(0).integers(0, 3000, (5, 4, 3)).astype(np.uint16)
        slopes = [1.0, 2.0, 0.5]
        ds = _multiframe(raw, slopes)
        values = np.stack([raw[..., k] * s - 10 for k, s in enumerate(slopes)], -1)
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "mf.dcm")
            ds.save_as(src, enforce_file_format=True)
            out = os.path.join(d, "out.dcm")
            write_dicom_series(values, [pydicom.dcmread(src)], [src], out, single_file=True)
            back = pydicom.dcmread(out)
        self.assertEqual(int(back.NumberOfFrames), 3)
        np.testing.assert_array_equal(np.moveaxis(back.pixel_array, 0, -1), raw)
        with tempfile.TemporaryDirectory() as d:  # does not fit: refused, not written with stale group rescale
            with self.assertRaisesRegex(ValueError, "mf.dcm: .*functional-group rescale"):
                write_dicom_series(values * 100, [ds], [os.path.join(d, "mf.dcm")], os.path.join(d, "o"))
            self.assertEqual(os.listdir(d), [])

    def test_series_folder_mismatch_and_factors(self):
        uid = generate_uid()
        raws = [np.full((3, 2), 100 * (k + 1), np.uint16) for k in range(2)]
        with tempfile.TemporaryDirectory() as d:
            files = []
            for k, raw in enumerate(raws):
                files.append(os.path.join(d, f"s{k}.dcm"))
                ds = dicom_dataset(raw, series=uid, modality="PT", slope=2.0, inter=0)
                ds.save_as(files[-1], enforce_file_format=True)
            datasets = [pydicom.dcmread(f) for f in files]
            values = np.stack([r * 2.0 * 0.01 for r in raws], -1)  # "SUV" with factor 0.01
            out = os.path.join(d, "out")
            with self.assertRaisesRegex(ValueError, "2 restored slices for 3"):
                write_dicom_series(values, datasets + datasets[:1], files + [files[0]], out)
            with self.assertRaisesRegex(ValueError, "one positive SUV factor per slice"):
                write_dicom_series(values, datasets, files, out, suv_factors=[0.01])
            self.assertFalse(os.path.exists(out))
            write_dicom_series(values, datasets, files, out, suv_factors=[0.01, 0.01])
            back = [pydicom.dcmread(os.path.join(out, f"s{k}.dcm")) for k in range(2)]
            self.assertEqual(len({b.SeriesInstanceUID for b in back}), 1)
            for b, raw in zip(back, raws):
                np.testing.assert_array_equal(b.pixel_array, raw)
            with self.assertRaises(FileExistsError):
                write_dicom_series(values, datasets, files, out)
            with mock.patch("pydicom.dcmread", side_effect=AssertionError("re-read")) as reread:
                write_dicom_series(values, datasets, files, out, suv_factors=[0.01, 0.01], overwrite=True)
            reread.assert_not_called()  # the writer works from the datasets in memory: no header read again
            self.assertEqual(sorted(os.listdir(out)), ["s0.dcm", "s1.dcm"])


class TestWriteNifti(unittest.TestCase):
    @parameterized.expand([("<f8",), (">f4",), ("<u2",), (">i4",)])
    def test_dtype_and_byte_order_kept(self, dtype):
        data = (np.arange(24).reshape(4, 3, 2) * 3 + 1).astype(dtype)
        header = nib.Nifti1Header(endianness=np.dtype(dtype).byteorder)
        with tempfile.TemporaryDirectory() as d:
            ref_path = os.path.join(d, "ref.nii")
            img = nib.Nifti1Image(data, np.diag([0.5, 0.6, 2.0, 1.0]), header)
            img.set_data_dtype(dtype)
            nib.save(img, ref_path)
            ref = nib.load(ref_path)
            self.assertEqual(ref.get_data_dtype(), np.dtype(dtype))
            write_nifti(ref.get_fdata(), ref, os.path.join(d, "out.nii"))
            out = nib.load(os.path.join(d, "out.nii"))
            self.assertEqual(out.get_data_dtype(), np.dtype(dtype))
            np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), data)

    def test_scaled_uint8_exact_and_overflow_rescaled(self):
        raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
        img = nib.Nifti1Image(raw, np.eye(4))
        img.header.set_slope_inter(16, -1024)
        with tempfile.TemporaryDirectory() as d:
            nib.save(img, os.path.join(d, "ref.nii.gz"))
            ref = nib.load(os.path.join(d, "ref.nii.gz"))
            self.assertEqual(ref.header.get_slope_inter(), (None, None))  # nibabel moved them to the proxy
            self.assertEqual(nifti_scaling(ref), (16.0, -1024.0))
            write_nifti(ref.get_fdata(dtype=np.float32), ref, os.path.join(d, "same.nii.gz"))
            same = nib.load(os.path.join(d, "same.nii.gz"))
            self.assertEqual((same.dataobj.slope, same.dataobj.inter), (16.0, -1024.0))
            np.testing.assert_array_equal(np.asarray(same.dataobj.get_unscaled()), raw)
            wide = ref.get_fdata() * 2  # up to 6112: does not fit uint8 at slope 16
            with self.assertLogs("custom.inference.writers", "WARNING"):
                write_nifti(wide, ref, os.path.join(d, "wide.nii.gz"))
            out = nib.load(os.path.join(d, "wide.nii.gz"))
            self.assertEqual(out.get_data_dtype(), np.uint8)
            np.testing.assert_allclose(out.get_fdata(), wide, atol=out.dataobj.slope / 2 + 1e-6)

    def test_explicit_dtype_and_scaling_override(self):
        ref = nib.Nifti1Image(np.zeros((3, 3), np.float32), np.eye(4))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "o.nii")
            write_nifti(np.full((3, 3), 10.5), ref, path, dtype=np.int16, scaling=(0.5, 0.0))
            out = nib.load(path)
            self.assertEqual((out.get_data_dtype(), out.dataobj.slope), (np.int16, 0.5))
            np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), 21)
            with self.assertRaisesRegex(ValueError, "non-finite"):
                write_nifti(np.full((3, 3), np.inf), ref, os.path.join(d, "bad.nii"))
            self.assertFalse(os.path.exists(os.path.join(d, "bad.nii")))


if __name__ == "__main__":
    unittest.main()
