"""The writing layer: derived DICOM from a clean dataset, rescale choices, multi-frame, NIfTI dtype and scaling."""

from __future__ import annotations

import datetime
import os
import tempfile
import unittest
import warnings
from types import SimpleNamespace
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
import torch
from custom.inference import writers as writers_module
from custom.inference.writers import (
    DERIVATION_DESCRIPTION,
    SaveRestoredd,
    clean_dataset,
    derived_dataset,
    nifti_scaling,
    write_dicom_series,
    write_nifti,
)
from parameterized import parameterized
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from tests.utils import dicom_dataset, dicom_slice

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0)
_PIXEL_KEYWORDS = [
    "FloatPixelData",
    "DoubleFloatPixelData",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PlanarConfiguration",
    "ICCProfile",
]


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

    def test_big_endian_every_swapped_width_also_nested(self):
        raw = np.arange(6, dtype=np.uint16).reshape(2, 3)
        ds = dicom_dataset(raw, modality="MR", slope=None, inter=None, syntax=ExplicitVRBigEndian)
        words = {  # tag: (VR, big-endian dtype, values): 3 values each, so no other width divides the length
            0x00660040: ("OL", ">u4", [1, 2, 0x01020304]),  # LongPrimitivePointIndexList
            0x00660016: ("OF", ">f4", [1.5, -2.0, 3.25]),  # PointCoordinatesData
            0x00660022: ("OD", ">f8", [0.1, -7.0, 1e300]),  # DoublePointCoordinatesData
            0x00720081: ("OV", ">u8", [1, 2**40 + 3, 5]),  # SelectorOVValue
        }
        item = Dataset()
        for tag, (vr, dtype, vals) in words.items():
            ds.add_new(tag, vr, np.array(vals, dtype).tobytes())
            item.add_new(tag, vr, np.array(vals, dtype).tobytes())
        ds.add_new(0x00089215, "SQ", [item])  # DerivationCodeSequence, here only as a nested container
        with tempfile.TemporaryDirectory() as d:
            src = _read_back(ds, d, "be.dcm")
            out = _read_back(derived_dataset(src, raw.astype(float), generate_uid(), NOW), d, "le.dcm")
        self.assertEqual(out.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian)
        for tag, (vr, dtype, vals) in words.items():
            for where in (out, out[0x00089215].value[0]):
                self.assertEqual(where[tag].VR, vr)
                np.testing.assert_array_equal(np.frombuffer(where[tag].value, "<" + dtype[1:]), vals)

    def test_byte_order_of_datasets_not_read_from_a_file(self):
        words, swapped = np.array([1, 2, 258], "<u2").tobytes(), np.array([256, 512, 513], "<u2").tobytes()
        ds = Dataset()  # no file meta, no original encoding: little endian
        ds.add_new(0x60003000, "OW", words)
        self.assertEqual(clean_dataset(ds)[0x60003000].value, words)
        ds = dicom_dataset(np.zeros((2, 2), np.uint16), modality="MR")
        item = Dataset()
        item.add_new(0x60003000, "OW", words)
        ds.add_new(0x60003000, "OW", words)
        ds.add_new(0x00089215, "SQ", [item])
        out = clean_dataset(ds)
        self.assertEqual((out[0x60003000].value, out[0x00089215].value[0][0x60003000].value), (words, words))
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian  # built for a big-endian file: bytes in that order
        out = clean_dataset(ds)
        self.assertEqual((out[0x60003000].value, out[0x00089215].value[0][0x60003000].value), (swapped, swapped))

    def test_byte_order_from_the_file_read_not_the_current_meta(self):
        ds = dicom_dataset(np.zeros((2, 2), np.uint16), modality="MR", syntax=ExplicitVRBigEndian)
        ds.add_new(0x60003000, "OW", np.array([1, 2, 258], ">u2").tobytes())
        with tempfile.TemporaryDirectory() as d:
            src = _read_back(ds, d, "be.dcm")
        src.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # e.g. changed when the pixel data was decoded
        np.testing.assert_array_equal(np.frombuffer(clean_dataset(src)[0x60003000].value, "<u2"), [1, 2, 258])

    def test_little_endian_words_not_swapped(self):
        raw = np.arange(6, dtype=np.uint16).reshape(2, 3)
        ds = dicom_dataset(raw, modality="MR", slope=None, inter=None)
        ds.add_new(0x60003000, "OW", np.array([1, 2, 258], "<u2").tobytes())
        ds.add_new(0x00660040, "OL", np.array([1, 2, 3], "<u4").tobytes())
        with tempfile.TemporaryDirectory() as d:
            src = _read_back(ds, d, "le_in.dcm")
            out = _read_back(derived_dataset(src, raw.astype(float), generate_uid(), NOW), d, "le.dcm")
            self.assertEqual(
                clean_dataset(src, big_endian=True)[0x60003000].value, np.array([1, 2, 258], ">u2").tobytes()
            )
        np.testing.assert_array_equal(np.frombuffer(out[0x60003000].value, "<u2"), [1, 2, 258])
        np.testing.assert_array_equal(np.frombuffer(out[0x00660040].value, "<u4"), [1, 2, 3])

    def test_pixel_module_elements_not_carried_over(self):
        raw = np.array([[0, 7], [300, 4000]], np.uint16)
        ds = dicom_dataset(raw, modality="MR", slope=None, inter=None)
        ds.SmallestImagePixelValue, ds.LargestImagePixelValue = 0, 4000
        ds.SmallestPixelValueInSeries, ds.LargestPixelValueInSeries = 0, 4000
        ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 0, 7
        ds.PlanarConfiguration = 0
        ds.ICCProfile = b"icc0"
        ds.ExtendedOffsetTable = np.array([0], "<u8").tobytes()
        ds.ExtendedOffsetTableLengths = np.array([8], "<u8").tobytes()
        ds.FloatPixelData = np.zeros(4, "<f4").tobytes()
        ds.DoubleFloatPixelData = np.zeros(4, "<f8").tobytes()
        values = raw - 5.0  # negative: written signed, the old (unsigned) pixel-module values would be wrong
        with tempfile.TemporaryDirectory() as d:
            out = _read_back(derived_dataset(ds, values, generate_uid(), NOW), d)
        dropped = [kw for kw in _PIXEL_KEYWORDS if kw in out]
        self.assertEqual(dropped, [])
        self.assertEqual(int(out.PixelRepresentation), 1)
        np.testing.assert_array_equal(out.pixel_array, values)
        self.assertIn("SmallestImagePixelValue", ds)  # the source keeps its elements


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

    @parameterized.expand(
        [
            ("intercept_only", None, "-1024", 1.0, -1024.0),
            ("slope_only", "2", None, 2.0, 0.0),
            ("empty_values", "", "", 1.0, 0.0),
            ("both", "0.5", "7.5", 0.5, 7.5),
        ]
    )
    def test_partial_or_empty_rescale_tags(self, _, slope, inter, s, i):
        raw = np.array([[0, 1, 4095], [17, 300, 2]], np.uint16)
        ds = self._src(raw)
        for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", inter)):
            if value is not None:
                ds.add_new(keyword, "DS", value)
        with tempfile.TemporaryDirectory() as d:
            out = _read_back(derived_dataset(ds, raw * s + i, generate_uid(), NOW), d)
        np.testing.assert_array_equal(out.pixel_array, raw)
        self.assertEqual(int(out.PixelRepresentation), 0)
        self.assertEqual(("RescaleSlope" in out, "RescaleIntercept" in out), (slope is not None, inter is not None))

    def test_enlarged_rescale_written_in_16_characters(self):
        ds = self._src(np.zeros((2, 2), np.uint16), slope=1, inter=0)
        values = np.array([[-1.234567891e-05, 0.0], [100.0, 70000.0]])  # 70000 fits neither 16-bit type
        with tempfile.TemporaryDirectory() as d:
            with self.assertLogs("custom.inference.writers", "WARNING"):
                out = _read_back(derived_dataset(ds, values, generate_uid(), NOW), d)
        self.assertEqual((str(out.RescaleSlope), str(out.RescaleIntercept)), ("1.068131533", "-1.234567891e-05"))
        self.assertEqual((int(out.PixelRepresentation), int(out.pixel_array.max())), (0, 65535))
        np.testing.assert_allclose(_stored(out), values, atol=0.55)

    def test_enlarged_rescale_with_three_digit_exponent_keeps_its_value(self):
        """A 3-digit exponent makes ``.10g`` 17 characters: fewer digits, never a cut exponent (e-100 -> e-10)."""
        ds = self._src(np.zeros((2, 2), np.uint16), slope=1, inter=0)
        for low in (-1.2345678912e-100, -9.87654321e-200):
            values = np.array([[low, 0.0], [100.0, 70000.0]])
            with self.subTest(low), tempfile.TemporaryDirectory() as d:
                with self.assertLogs("custom.inference.writers", "WARNING"):
                    out = _read_back(derived_dataset(ds, values, generate_uid(), NOW), d)
                self.assertLessEqual(len(str(out.RescaleIntercept)), 16)
                self.assertAlmostEqual(float(out.RescaleIntercept) / low, 1.0, delta=1e-7)

    @parameterized.expand(
        [
            ("unsigned_limits", np.uint16, [[0.0, 1.0], [7.0, 65535.0]], 0),
            ("signed_limits", np.int16, [[-32768.0, 0.0], [7.0, 32767.0]], 1),
        ]
    )
    def test_16_bit_limits_kept_without_new_rescale(self, _, dtype, values, representation):
        ds = self._src(np.zeros((2, 2), dtype))
        with tempfile.TemporaryDirectory() as d:
            with self.assertNoLogs("custom.inference.writers", "WARNING"):
                out = _read_back(derived_dataset(ds, np.array(values), generate_uid(), NOW), d)
        self.assertEqual((int(out.PixelRepresentation), "RescaleSlope" in out), (representation, False))
        np.testing.assert_array_equal(out.pixel_array, values)

    @parameterized.expand(
        [  # source type, rescale, values, written slope / intercept, stored extremes
            ("beyond_signed", np.int16, (1, 0), [[-32769.0, 0.0], [5.0, 100.0]], ("1", "-1"), (-32768, 101)),
            ("wide_signed", np.int16, (1, 0), [[-40000.0, 0.0], [10.0, 90000.0]], ("1.983672847", "25000.99184"), None),
            ("low_side", np.uint16, (2, 100), [[-10.0, 0.0], [500.0, 70000.0]], ("2", "-10"), (0, 35005)),
            ("high_side", np.int16, (0.5, 0), [[-2.5, 0.0], [100.0, 20000.0]], ("0.5", "16381.5"), (-32768, 7237)),
            ("above_signed", np.int16, (1, 0), [[-1.0, 0.0], [5.0, 32768.0]], ("1", "32767"), (-32768, 1)),
            ("above_unsigned", np.uint16, (1, 0), [[0.0, 1.0], [5.0, 65536.0]], ("1.000015259", "0"), (0, 65535)),
        ]
    )
    def test_new_rescale_holds_every_value(self, _, dtype, rescale, values, written, extremes):
        ds = self._src(np.zeros((2, 2), dtype), slope=rescale[0], inter=rescale[1])
        with tempfile.TemporaryDirectory() as d:
            with self.assertLogs("custom.inference.writers", "WARNING"):
                out = _read_back(derived_dataset(ds, np.array(values), generate_uid(), NOW), d)
        self.assertEqual((str(out.RescaleSlope), str(out.RescaleIntercept)), written)
        stored = (int(out.pixel_array.min()), int(out.pixel_array.max()))
        self.assertEqual(stored, extremes or (-32768, 32767))
        np.testing.assert_allclose(_stored(out), values, atol=float(written[0]) / 2 + 1e-6)

    def test_lookup_tables_dropped_only_with_a_new_rescale(self):
        def source():
            ds = self._src(np.zeros((2, 2), np.uint16), slope=1, inter=0)
            for keyword in ("VOILUTSequence", "ModalityLUTSequence"):
                lut = Dataset()
                lut.LUTDescriptor, lut.LUTData = [2, 0, 16], [0, 65535]
                setattr(ds, keyword, [lut])
            ds.WindowCenter, ds.WindowWidth = 40, 400
            return ds

        kept = derived_dataset(source(), np.array([[0.0, 1.0], [2.0, 3.0]]), generate_uid(), NOW)
        self.assertEqual([k in kept for k in ("VOILUTSequence", "ModalityLUTSequence")], [True, True])
        with self.assertLogs("custom.inference.writers", "WARNING"):
            new = derived_dataset(source(), np.array([[-40000.0, 1.0], [2.0, 90000.0]]), generate_uid(), NOW)
        self.assertEqual([k in new for k in ("VOILUTSequence", "ModalityLUTSequence")], [False, False])
        self.assertEqual((float(new.WindowCenter), float(new.WindowWidth)), (40.0, 400.0))  # in physical units

    def test_missing_pixel_representation_means_unsigned(self):
        raw = np.array([[0, 5], [100, 7]], np.uint16)
        ds = self._src(raw, PixelRepresentation=None)
        with tempfile.TemporaryDirectory() as d:
            out = _read_back(derived_dataset(ds, raw.astype(float), generate_uid(), NOW), d)
        self.assertEqual((int(out.PixelRepresentation), out.pixel_array.dtype), (0, np.uint16))
        np.testing.assert_array_equal(out.pixel_array, raw)

    def test_source_without_samples_per_pixel_gets_one(self):
        raw = np.array([[0, 5], [100, 7]], np.uint16)
        ds = self._src(raw, SamplesPerPixel=None)  # a grey-level source that leaves out the Type 1 tag
        with tempfile.TemporaryDirectory() as d:
            out = _read_back(derived_dataset(ds, raw.astype(float), generate_uid(), NOW), d)
        self.assertEqual(out.SamplesPerPixel, 1)  # the derived object is a valid grey-level image
        np.testing.assert_array_equal(out.pixel_array, raw)
        self.assertNotIn("SamplesPerPixel", ds)  # the source is not modified

    def test_derived_header(self):
        raw = np.array([[0, 1], [2, 3]], np.uint16)
        ds = self._src(raw, PhotometricInterpretation="MONOCHROME1", ImageType=["ORIGINAL", "PRIMARY", "AXIAL", "X"])
        ds.SeriesDescription, ds.SeriesNumber, ds.ImageComments = "T1 " + "s" * 59, 7, "input comment"
        now = datetime.datetime(2026, 3, 4, 5, 6, 7)
        with tempfile.TemporaryDirectory() as d:
            mem = derived_dataset(ds, raw.astype(float), "1.2.3.4", now, series_suffix=" RR")
            out = _read_back(mem, d)
            plain = _read_back(
                derived_dataset(
                    self._src(raw, SeriesNumber=None, PhotometricInterpretation=None),
                    raw.astype(float),
                    "1.2",
                    now,
                    description="m" * 1100,
                    comments="c" * 10300,
                ),
                d,
                "plain.dcm",
            )
        self.assertEqual((out.BitsAllocated, out.BitsStored, out.HighBit, out.SamplesPerPixel), (16, 16, 15, 1))
        self.assertEqual((out.PhotometricInterpretation, out["PixelData"].VR), ("MONOCHROME1", "OW"))
        self.assertEqual(list(out.ImageType), ["DERIVED", "SECONDARY", "AXIAL", "X"])
        self.assertEqual(out.DerivationDescription, DERIVATION_DESCRIPTION)
        self.assertEqual((out.SeriesDescription, out.SeriesNumber), ("T1 " + "s" * 59 + " R", 1007))
        self.assertEqual(
            (out.ImageComments, out.InstanceCreationDate, out.InstanceCreationTime),
            ("input comment", "20260304", "050607"),
        )
        source = out.SourceImageSequence[0]
        self.assertEqual(
            (source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID), (ds.SOPClassUID, ds.SOPInstanceUID)
        )
        self.assertEqual(
            (out.SOPClassUID, out.StudyInstanceUID, out.FrameOfReferenceUID),
            (ds.SOPClassUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID),
        )
        self.assertEqual((out.SeriesInstanceUID, out.PatientName), ("1.2.3.4", ds.PatientName))
        self.assertNotIn(out.SOPInstanceUID, (ds.SOPInstanceUID, plain.SOPInstanceUID))
        self.assertEqual(mem["PixelData"].VR, "OW")
        for meta in (mem.file_meta, out.file_meta):  # returned complete, not only completed by dcmwrite
            self.assertEqual(meta.MediaStorageSOPInstanceUID, out.SOPInstanceUID)
            self.assertEqual(meta.ImplementationClassUID, PYDICOM_IMPLEMENTATION_UID)
        meta = mem.file_meta
        self.assertEqual(
            (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID), (ds.SOPClassUID, out.SOPInstanceUID)
        )
        self.assertEqual(
            (meta.TransferSyntaxUID, meta.ImplementationClassUID), (ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID)
        )
        self.assertEqual((list(plain.ImageType), plain.DerivationDescription), (["DERIVED", "SECONDARY"], "m" * 1024))
        self.assertEqual((plain.ImageComments, plain.SeriesDescription), ("c" * 10240, "TAT restored"))
        self.assertEqual(("SeriesNumber" in plain, plain.PhotometricInterpretation), (False, "MONOCHROME2"))
        self.assertEqual(ds.SeriesDescription, "T1 " + "s" * 59)  # the source is not modified

    def test_single_valued_image_type(self):
        ds = self._src(np.zeros((2, 2), np.uint16), ImageType="ORIGINAL")  # VM 1 (against the standard): a str
        out = derived_dataset(ds, np.zeros((2, 2)), generate_uid(), NOW)
        self.assertEqual(list(out.ImageType), ["DERIVED", "SECONDARY"])

    def test_refusals(self):
        with warnings.catch_warnings():  # pydicom warns about "inf" / "nan" in a DS element
            warnings.simplefilter("ignore", UserWarning)
            ds = self._src(np.zeros((2, 2), np.uint16), RescaleSlope="inf", RescaleIntercept="0")
            nan = self._src(np.zeros((2, 2), np.uint16), RescaleSlope="1", RescaleIntercept="nan")
        with self.assertRaisesRegex(ValueError, "a.dcm: RescaleSlope inf"):
            derived_dataset(ds, np.zeros((2, 2)), generate_uid(), NOW, where="a.dcm")
        ds = nan
        with self.assertRaisesRegex(ValueError, "RescaleIntercept nan cannot be inverted"):
            derived_dataset(ds, np.zeros((2, 2)), generate_uid(), NOW, where="a.dcm")
        with tempfile.TemporaryDirectory() as d:  # no ``where``: the messages name the source file
            src = _read_back(self._src(np.zeros((2, 2), np.uint16)), d, "named.dcm")
            with self.assertRaisesRegex(ValueError, "^" + os.path.join(d, "named.dcm") + ": restored"):
                derived_dataset(src, np.zeros((2, 3)), generate_uid(), NOW)
        with self.assertRaisesRegex(ValueError, "^DICOM instance: restored"):
            derived_dataset(self._src(np.zeros((2, 2), np.uint16)), np.zeros((2, 3)), generate_uid(), NOW)
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
    def test_invalid_number_strings_of_the_input_are_kept_as_they_were(self):
        """A DS / IS value pydicom reads with a warning but cannot encode again ('x.y', '1\\ab', common in
        clinical files) does not stop the writer: the derived file carries its bytes unchanged (logged), and the
        pixels are the restored values."""
        from pydicom.dataelem import RawDataElement
        from pydicom.tag import Tag

        with tempfile.TemporaryDirectory() as d:
            src = dicom_slice(os.path.join(d, "in.dcm"), np.arange(20, dtype=np.uint16).reshape(4, 5), modality="CT")
            ds = pydicom.dcmread(src)
            ds[0x00181050] = RawDataElement(Tag(0x00181050), "DS", 4, b"x.y ", 0, False, True)
            ds[0x00281050] = RawDataElement(Tag(0x00281050), "DS", 6, b"40\\abc", 0, False, True)  # WindowCenter
            ds.save_as(src)
            values = np.arange(20, dtype=np.float64).reshape(4, 5) - 1000
            with warnings.catch_warnings(), self.assertLogs(writers_module.logger, "WARNING") as logs:
                warnings.simplefilter("ignore")  # pydicom's own warnings about the values
                write_dicom_series(values, [pydicom.dcmread(src)], [src], os.path.join(d, "out"))
            back = pydicom.dcmread(os.path.join(d, "out", "in.dcm"))
            self.assertEqual(back.get_item(0x00181050).value, b"x.y ")
            self.assertEqual(back.get_item(0x00281050).value, b"40\\abc")
            np.testing.assert_array_equal(
                back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept), values
            )
        self.assertEqual(len(logs.output), 2)
        self.assertIn("'x.y' kept as it was", logs.output[0])

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

    def test_unknown_suv_factor_refused_naming_the_output(self):
        raws = [np.full((2, 2), 10 * (k + 1), np.uint16) for k in range(2)]
        with tempfile.TemporaryDirectory() as d:
            datasets = [dicom_dataset(raw, modality="PT", slope=1.0, inter=0) for raw in raws]
            files = [os.path.join(d, f"s{k}.dcm") for k in range(2)]
            values = np.stack([r * 0.5 for r in raws], -1)
            out = os.path.join(d, "out")
            with self.assertRaisesRegex(ValueError, f"{out}: need one positive SUV factor per slice"):
                write_dicom_series(values, datasets, files, out, suv_factors=[0.5, None])  # a slice without one
            self.assertFalse(os.path.exists(out))

    def test_series_per_slice_factors_mixed_frames_and_refusals(self):
        uid = generate_uid()
        raws = [
            np.full((2, 3), 10 * (k + 1), np.uint16) + np.arange(6, dtype=np.uint16).reshape(2, 3) for k in range(4)
        ]
        with tempfile.TemporaryDirectory() as d:
            files = [os.path.join(d, "in", name) for name in ("a.dcm", "m.dcm", "z.dcm")]
            os.makedirs(os.path.join(d, "in"))
            datasets = [
                dicom_dataset(raws[0], series=uid, modality="PT", slope=2.0, inter=0),
                _multiframe(np.stack(raws[1:3], -1), [2.0, 2.0]),
                dicom_dataset(raws[3], series=uid, modality="PT", slope=2.0, inter=0, SeriesDescription="PET"),
            ]
            factors = [0.5, 0.25, 4.0, 0.125]
            values = np.stack([r * 2.0 * f for r, f in zip(raws, factors)], -1)  # the volume in "SUV"
            values[..., 1:3] -= 10 * np.asarray(factors[1:3])  # the multi-frame's intercept -10
            values_before = values.copy()
            out = os.path.join(d, "out")
            for bad in ([1.0] * 3, [1.0, 1.0, 0.0, 1.0], [1.0, np.inf, 1.0, 1.0], [-1.0] * 4):
                with self.assertRaisesRegex(ValueError, "one positive SUV factor per slice"):
                    write_dicom_series(values, datasets, files, out, suv_factors=bad)
            with self.assertRaisesRegex(ValueError, "one output file asked for 3 input files"):
                write_dicom_series(values, datasets, files, os.path.join(d, "one.dcm"), single_file=True)
            with self.assertRaisesRegex(ValueError, "same base name"):
                write_dicom_series(values, datasets, files[:2] + [os.path.join(d, "a.dcm")], out)
            with self.assertRaisesRegex(ValueError, "3 restored slices for 4"):
                write_dicom_series(values[..., :3], datasets, files, out)
            with self.assertRaisesRegex(ValueError, "restored slices"):
                write_dicom_series(values, datasets, files[:2], out)
            self.assertEqual(sorted(os.listdir(d)), ["in"])
            write_dicom_series(values, datasets, files, out, suv_factors=factors, comments="note", series_suffix=" X")
            np.testing.assert_array_equal(values, values_before)  # the caller's volume is not modified
            self.assertEqual(sorted(os.listdir(out)), ["a.dcm", "m.dcm", "z.dcm"])
            back = {name: pydicom.dcmread(os.path.join(out, name)) for name in ("a.dcm", "m.dcm", "z.dcm")}
        np.testing.assert_array_equal(back["a.dcm"].pixel_array, raws[0])
        np.testing.assert_array_equal(back["m.dcm"].pixel_array, np.stack(raws[1:3]))
        np.testing.assert_array_equal(back["z.dcm"].pixel_array, raws[3])
        series = {b.SeriesInstanceUID for b in back.values()}
        self.assertEqual((len(series), uid in series), (1, False))
        self.assertEqual(len({b.SOPInstanceUID for b in back.values()}), 3)
        self.assertEqual({b.ImageComments for b in back.values()}, {"note"})
        self.assertEqual(back["z.dcm"].SeriesDescription, "PET X")
        self.assertEqual(back["a.dcm"].SourceImageSequence[0].ReferencedSOPInstanceUID, datasets[0].SOPInstanceUID)

    def test_single_file_default_factors_and_overwrite(self):
        raw = np.array([[1, 2], [3, 4000]], np.uint16)
        ds = dicom_dataset(raw, modality="CT", slope=1, inter=-1024)
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "sub", "o.dcm")
            write_dicom_series(raw - 1024.0, [ds], [os.path.join(d, "in.dcm")], out, single_file=True)
            self.assertEqual(os.listdir(os.path.join(d, "sub")), ["o.dcm"])
            back = pydicom.dcmread(out)
            self.assertEqual(back.file_meta.MediaStorageSOPInstanceUID, back.SOPInstanceUID)
            np.testing.assert_array_equal(back.pixel_array, raw)
            with self.assertRaisesRegex(FileExistsError, "o.dcm"):
                write_dicom_series(raw * 0.0, [ds], [os.path.join(d, "in.dcm")], out, single_file=True)
            np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, raw)
            write_dicom_series(raw * 0.0 - 1024, [ds], ["in.dcm"], out, single_file=True, overwrite=True)
            np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, 0)
            self.assertEqual(os.listdir(os.path.join(d, "sub")), ["o.dcm"])
            folder = os.path.join(d, "folder")
            os.makedirs(folder)
            with self.assertRaises(FileExistsError):  # an existing folder is not replaced either
                write_dicom_series(raw - 1024.0, [ds], ["in.dcm"], folder)
            self.assertEqual(os.listdir(folder), [])

    def test_unreadable_number_of_frames_means_one_frame(self):
        raw = np.array([[3, 4], [5, 6]], np.uint16)
        ds = dicom_dataset(raw, modality="MR", slope=None, inter=None, NumberOfFrames=[1, 2])  # two values
        out = derived_dataset(ds, raw.astype(float), generate_uid(), NOW)
        np.testing.assert_array_equal(np.frombuffer(out.PixelData, "<u2"), raw.ravel())

    def test_multiframe_shared_rescale_used_for_every_frame(self):
        raw = np.random.default_rng(1).integers(0, 3000, (3, 2, 3)).astype(np.uint16)
        ds = _multiframe(raw, [])
        shared, pvt = Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept = 2.0, -10
        shared.PixelValueTransformationSequence = [pvt]
        ds.SharedFunctionalGroupsSequence = [shared]
        ds.PerFrameFunctionalGroupsSequence = [Dataset() for _ in range(3)]  # per-frame items without a rescale
        out = derived_dataset(ds, raw * 2.0 - 10, generate_uid(), NOW)
        np.testing.assert_array_equal(np.frombuffer(out.PixelData, "<u2").reshape(3, 3, 2), np.moveaxis(raw, -1, 0))

    def test_multiframe_per_frame_rescale_wins_over_top_level(self):
        raw = np.random.default_rng(2).integers(0, 3000, (2, 2, 2)).astype(np.uint16)
        ds = _multiframe(raw, [2.0, 0.5])
        ds.RescaleSlope, ds.RescaleIntercept = 7, 100
        values = np.stack([raw[..., 0] * 2.0 - 10, raw[..., 1] * 0.5 - 10], -1)
        out = derived_dataset(ds, values, generate_uid(), NOW)
        np.testing.assert_array_equal(np.frombuffer(out.PixelData, "<u2").reshape(2, 2, 2), np.moveaxis(raw, -1, 0))
        self.assertEqual((float(out.RescaleSlope), float(out.RescaleIntercept)), (7.0, 100.0))


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

    def test_scaling_rules_of_nifti(self):
        img = nib.Nifti1Image(np.zeros((2, 2), np.int16), np.eye(4))
        img.header.set_slope_inter(2.0, 5.0)  # in memory: the array is no proxy, the header holds them
        self.assertEqual(nifti_scaling(img), (2.0, 5.0))
        header = nib.Nifti1Header()
        for slope, inter, expected in [
            (float("nan"), float("nan"), (1.0, 0.0)),
            (0.0, float("inf"), (1.0, 0.0)),
            (float("inf"), 3.0, (1.0, 3.0)),
            (None, None, (1.0, 0.0)),
            (-2.0, 3.5, (-2.0, 3.5)),
        ]:
            ref = SimpleNamespace(dataobj=SimpleNamespace(slope=slope, inter=inter), header=header)
            self.assertEqual(nifti_scaling(ref), expected, (slope, inter))

    def test_any_non_finite_refused_lists_accepted(self):
        ref = nib.Nifti1Image(np.zeros((2, 2), np.int16), np.eye(4))
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, "non-finite"):
                write_nifti(np.array([[1.0, np.nan], [2.0, 3.0]]), ref, os.path.join(d, "nan.nii"))
            write_nifti([[1, 2], [3, -4]], ref, os.path.join(d, "list.nii"))
            np.testing.assert_array_equal(np.asarray(nib.load(os.path.join(d, "list.nii")).dataobj), [[1, 2], [3, -4]])
            self.assertEqual(os.listdir(d), ["list.nii"])

    def test_missing_trailing_axis_restored(self):
        ref = nib.Nifti1Image(np.zeros((3, 4, 1), np.int16), np.diag([0.5, 0.7, 3.0, 1.0]))
        values = np.arange(12, dtype=np.float32).reshape(3, 4)
        with tempfile.TemporaryDirectory() as d:
            write_nifti(values, ref, os.path.join(d, "o.nii"))
            out = nib.load(os.path.join(d, "o.nii"))
            self.assertEqual(out.shape, (3, 4, 1))
            self.assertEqual(out.header.get_zooms(), (0.5, 0.7, 3.0))
            np.testing.assert_array_equal(np.asarray(out.dataobj)[..., 0], values)

    def test_full_integer_range_keeps_input_scaling(self):
        stored = np.array([[-32768, -1], [0, 100]], np.int16)
        ref = nib.Nifti1Image(stored, np.eye(4))
        with tempfile.TemporaryDirectory() as d:
            write_nifti(stored.astype(np.float64), ref, os.path.join(d, "o.nii"), scaling=(1.0, 0.0))
            out = nib.load(os.path.join(d, "o.nii"))
            self.assertEqual((out.dataobj.slope, out.dataobj.inter), (1.0, 0.0))
            np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), stored)
            uint8 = nib.Nifti1Image(np.zeros((1, 2), np.uint8), np.eye(4))  # scaled: 0 and 255 are the limits
            for name, values, unscaled in [("lo", [[-10.0, 20.0]], [[0, 15]]), ("hi", [[100.0, 500.0]], [[55, 255]])]:
                write_nifti(np.array(values), uint8, os.path.join(d, name + ".nii"), scaling=(2.0, -10.0))
                out = nib.load(os.path.join(d, name + ".nii"))
                self.assertEqual((out.dataobj.slope, out.dataobj.inter), (2.0, -10.0))
                np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), unscaled)

    def test_int16_overflow_uses_the_whole_range(self):
        ref = nib.Nifti1Image(np.zeros((2, 3), np.int16), np.eye(4))
        values = np.array([[-1e5, 0.0, 12345.6], [2e5, 7.0, -3.0]])
        with tempfile.TemporaryDirectory() as d:
            with self.assertLogs("custom.inference.writers", "WARNING"):
                write_nifti(values, ref, os.path.join(d, "o.nii"))
            out = nib.load(os.path.join(d, "o.nii"))
            slope, inter = float(out.dataobj.slope), float(out.dataobj.inter)
            self.assertAlmostEqual(slope, 3e5 / 65535, delta=1e-6)
            self.assertAlmostEqual(inter, -1e5 + 32768 * 3e5 / 65535, delta=1e-2)
            unscaled = np.asarray(out.dataobj.get_unscaled())
            self.assertEqual((int(unscaled.min()), int(unscaled.max())), (-32768, 32767))
            np.testing.assert_allclose(out.get_fdata(), values, atol=slope / 2 + 1e-3)

    def test_overflow_on_one_side_or_constant_rescaled(self):
        ref = nib.Nifti1Image(np.zeros((2, 2), np.int16), np.eye(4))
        with tempfile.TemporaryDirectory() as d:
            for name, values in [
                ("hi", [[0.0, 1.0], [2.0, 40000.0]]),
                ("lo", [[-40000.0, 0.0], [2.0, 5.0]]),
                ("const", [[1e6, 1e6], [1e6, 1e6]]),
            ]:
                with self.assertLogs("custom.inference.writers", "WARNING"):
                    write_nifti(np.array(values), ref, os.path.join(d, name + ".nii"))
                out = nib.load(os.path.join(d, name + ".nii"))
                self.assertEqual(out.get_data_dtype(), np.int16)
                self.assertEqual(int(np.asarray(out.dataobj.get_unscaled()).min()), -32768)
                np.testing.assert_allclose(out.get_fdata(), values, atol=float(out.dataobj.slope) / 2 + 1e-9)

    def test_same_size_other_layout_refused(self):
        ref = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.eye(4))
        with tempfile.TemporaryDirectory() as d:
            for shape in [(3, 4, 2), (24,), (4, 6), (2, 3, 4)]:
                with self.assertRaisesRegex(ValueError, "does not match the input's"):
                    write_nifti(np.zeros(shape), ref, os.path.join(d, "o.nii"))
            self.assertEqual(os.listdir(d), [])
            write_nifti(np.ones((4, 3, 2, 1)), ref, os.path.join(d, "o.nii"))  # a trailing axis of size 1 is fine
            self.assertEqual(nib.load(os.path.join(d, "o.nii")).shape, (4, 3, 2))

    def test_description_cut_to_79_ascii_bytes_or_input_kept(self):
        ref = nib.Nifti1Image(np.zeros((2, 2), np.float32), np.eye(4))
        ref.header["descrip"] = b"input scan"
        note = "TAT warning: \u00e9 " + "x" * 100
        with tempfile.TemporaryDirectory() as d:
            write_nifti(np.ones((2, 2)), ref, os.path.join(d, "a.nii"), description=note)
            write_nifti(np.ones((2, 2)), ref, os.path.join(d, "b.nii"))
            descrip = nib.load(os.path.join(d, "a.nii")).header["descrip"].item()
            self.assertEqual(descrip, note.encode("ascii", "replace")[:79])
            self.assertEqual((len(descrip), descrip[:15]), (79, b"TAT warning: ? "))
            self.assertEqual(nib.load(os.path.join(d, "b.nii")).header["descrip"].item(), b"input scan")


class TestSaveRestored(unittest.TestCase):
    def test_nifti_with_reader_scaling_and_warnings(self):
        stored = np.array([[[1], [2]], [[3], [-4]]], np.int16)
        img = nib.Nifti1Image(stored, np.diag([0.5, 0.6, 2.0, 1.0]))
        img.header.set_slope_inter(4.0, 1.0)
        with tempfile.TemporaryDirectory() as d:
            nib.save(img, os.path.join(d, "in.nii"))
            ref = nib.load(os.path.join(d, "in.nii"))
            values = torch.as_tensor(stored[None] * 2.0)  # (1, H, W, D)
            info = {"nifti": ref, "source_dtype": "<i2", "source_scl_slope": 2.0, "source_scl_inter": None}
            item = {"pred": values, "scan_info": info, "kind": "nifti", "output": os.path.join(d, "a.nii")}
            item["warnings"] = ["first", "second"]
            result = SaveRestoredd("pred")(item)
            self.assertIs(result["pred"], values)
            out = nib.load(os.path.join(d, "a.nii"))
            self.assertEqual((out.dataobj.slope, out.dataobj.inter), (2.0, 0.0))
            np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), stored)
            self.assertEqual(out.header["descrip"].item(), b"TAT warning: first; second")
            item = {"pred": stored[None] * 4.0 + 1, "scan_info": {"nifti": ref}, "kind": "nifti"}
            item["output"] = os.path.join(d, "b.nii")
            SaveRestoredd("pred")(item)  # numpy values, the image's own scaling, no warnings: descrip kept
            out = nib.load(os.path.join(d, "b.nii"))
            self.assertEqual((out.dataobj.slope, out.dataobj.inter), (4.0, 1.0))
            np.testing.assert_array_equal(np.asarray(out.dataobj.get_unscaled()), stored)
            self.assertEqual(out.header["descrip"].item(), ref.header["descrip"].item())
            with self.assertRaises(FileExistsError):
                SaveRestoredd("pred")(item)
            item["pred"] = stored[None] * 0.0 + 1
            SaveRestoredd("pred", overwrite=True)(item)
            np.testing.assert_array_equal(np.asarray(nib.load(os.path.join(d, "b.nii")).dataobj.get_unscaled()), 0)

    def test_dicom_file_or_folder(self):
        raw = np.array([[1, 2], [3, 4]], np.uint16)
        with tempfile.TemporaryDirectory() as d:
            src = dicom_slice(os.path.join(d, "in", "s.dcm"), raw, modality="CT", slope=1, inter=-1024)
            info = {"datasets": [pydicom.dcmread(src)], "files": [src], "suv_factors": [0.5]}
            item = {"pred": (raw[None] - 1024.0) * 0.5, "scan_info": info, "kind": "dicom", "source": src}
            item.update(output=os.path.join(d, "o.dcm"), warnings=["check"])
            SaveRestoredd("pred")(item)
            back = pydicom.dcmread(os.path.join(d, "o.dcm"))
            np.testing.assert_array_equal(back.pixel_array, raw)
            self.assertEqual(back.ImageComments, "TAT warning: check")
            item.update(source=os.path.join(d, "in"), output=os.path.join(d, "series"), warnings=[])
            SaveRestoredd("pred")(item)
            back = pydicom.dcmread(os.path.join(d, "series", "s.dcm"))
            np.testing.assert_array_equal(back.pixel_array, raw)
            self.assertNotIn("ImageComments", back)


if __name__ == "__main__":
    unittest.main()
