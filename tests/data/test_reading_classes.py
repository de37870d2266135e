"""The reading layer's silent-corruption classes, each tested as a class through every entry point that reads:
``load_image`` (training / validation / evaluation, data-list validator), ``load_slice`` + ``num_slices`` (the
training path) and ``LoadScand`` (inference). Each input either reads back the right physical values or is refused
with a ``ValueError`` naming the file and the problem."""

from __future__ import annotations

import datetime
import gzip
import os
import tempfile
import unittest
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
from custom.data import load_image
from custom.data import readers as readers_module
from custom.data import validate_datalist
from custom.data.readers import DicomReader, NiftiReader, dicom_series, nifti_image, nifti_source_meta, pet_suv_factor
from custom.data.slicing import LoadSliced, load_slice, num_slices
from custom.inference.io import LoadScand, load_dicom_series, read_scan
from hypothesis import given, settings
from hypothesis import strategies as st
from parameterized import parameterized
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRBigEndian

from tests.utils import dicom_series_folder, dicom_slice, pet_tags, save_scaled_nifti

RNG = np.random.default_rng(0)


def _all_readers(path: str, item: dict | None = None, headers: bool = True) -> list:
    """Calls of every reading entry point on ``path`` (``headers``: also the header-only slice count)."""
    kind = "nifti" if path.endswith((".nii", ".nii.gz")) else "dicom"
    scan = {"image": path, "kind": kind, "modality": "CT", **(item or {})}
    calls = [lambda: load_image(path), lambda: load_slice(path, 0), lambda: LoadScand("image")(scan)]
    return calls + ([lambda: num_slices(path)] if headers else [])


class _Tmp(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def assert_refused_everywhere(
        self, path: str, words: str, item: dict | None = None, where: str | None = None, headers: bool = True
    ):
        for call in _all_readers(path, item, headers):
            with self.assertRaises(ValueError) as err:
                call()
            msg = str(err.exception)
            self.assertTrue(msg.startswith(where or path), msg)
            self.assertIn(words.lower(), msg.lower())


class TestScaledNifti(_Tmp):
    @parameterized.expand(
        [
            ("uint8_slope16", np.uint8, 16.0, -1024.0),
            ("int16_half", np.int16, 0.5, 10.0),
            ("int16_big_endian", np.dtype(">i2"), 2.0, -3.0),
            ("uint16_unscaled", np.uint16, 1.0, 0.0),
            ("float32", np.float32, 1.0, 0.0),
            ("int8_negative_slope", np.int8, -3.0, 7.0),
        ]
    )
    def test_physical_values_and_source_meta(self, _, dtype, slope, inter):
        dtype = np.dtype(dtype)
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        lo, hi = (info.min, info.max) if info else (-1000, 1000)
        raw = RNG.integers(lo, hi, (7, 5, 3), endpoint=True).astype(dtype)
        path = save_scaled_nifti(os.path.join(self.d, "s.nii.gz"), raw, slope, inter)
        expected = raw.astype(np.float64) * slope + inter
        img = load_image(path)
        np.testing.assert_array_equal(img.numpy(), expected.astype(np.float32))
        self.assertEqual(img.numpy().dtype, np.float32)  # float32 whatever the stored type (uint16 unscaled too)
        self.assertEqual(np.dtype(img.meta["source_dtype"]), dtype)
        self.assertEqual(img.meta["source_scl_slope"], slope)
        self.assertEqual(img.meta["source_scl_inter"], inter)
        for z in range(3):
            sl = load_slice(path, z)
            np.testing.assert_array_equal(sl.numpy(), expected[..., z].astype(np.float32))
            self.assertEqual(sl.meta["source_scl_slope"], slope)
        out = LoadScand("image")({"image": path, "kind": "nifti", "modality": "CT"})
        np.testing.assert_array_equal(out["image"][0].numpy(), expected.astype(np.float32))
        for key, value in (("source_scl_slope", slope), ("source_scl_inter", inter)):
            self.assertEqual(out["scan_info"][key], value)
            self.assertEqual(out["image"].meta[key], value)
        self.assertEqual(np.dtype(out["scan_info"]["source_dtype"]), dtype)

    def test_header_read_once(self):
        raw = RNG.integers(0, 255, (7, 5, 4)).astype(np.uint8)
        path = save_scaled_nifti(os.path.join(self.d, "s.nii.gz"), raw, 16.0, -1024.0)
        readers_module.clear_caches()
        with mock.patch.object(nib, "load", wraps=nib.load) as loads:
            for z in range(num_slices(path)):  # the training path: one slice per item
                load_slice(path, z)
            load_image(path)
            LoadScand("image")({"image": path, "kind": "nifti", "modality": "CT"})
            validate_datalist({"training": [{"image": path, "label": path, "modality": "CT"}]})
        self.assertEqual(loads.call_count, 1)
        os.utime(path, ns=(1, 1))  # a new file version is read again
        with mock.patch.object(nib, "load", wraps=nib.load) as loads:
            load_slice(path, 0)
        self.assertEqual(loads.call_count, 1)


class TestNonScalarNifti(_Tmp):
    @parameterized.expand([("complex64", np.complex64, "complex"), ("complex128", np.complex128, "complex")])
    def test_complex_refused(self, _, dtype, words):
        arr = (RNG.normal(size=(6, 5, 2)) + 1j * RNG.normal(size=(6, 5, 2))).astype(dtype)
        path = os.path.join(self.d, "c.nii.gz")
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
        self.assert_refused_everywhere(path, words)

    def test_rgb_refused(self):
        rgb = np.zeros((6, 5, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        path = os.path.join(self.d, "rgb.nii")
        nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
        self.assert_refused_everywhere(path, "RGB")


class TestGzipIntegrity(_Tmp):
    def _gz(self) -> tuple[str, bytes]:
        path = os.path.join(self.d, "v.nii.gz")
        nib.save(nib.Nifti1Image(RNG.normal(size=(9, 8, 4)).astype(np.float32), np.eye(4)), path)
        with open(path, "rb") as f:
            return path, f.read()

    def test_crc_mismatch_refused(self):
        path, data = self._gz()
        crc = bytearray(data)
        crc[-8] ^= 0xFF  # CRC32 of the trailer; nibabel alone would not read that far
        with open(path, "wb") as f:
            f.write(bytes(crc))
        self.assert_refused_everywhere(path, "crc")

    def test_length_mismatch_refused(self):
        path, data = self._gz()
        bad = bytearray(data)
        bad[-1] ^= 0x01  # ISIZE
        with open(path, "wb") as f:
            f.write(bytes(bad))
        self.assert_refused_everywhere(path, "corrupt compressed file")

    def test_truncated_stream_refused(self):
        path, data = self._gz()
        with open(path, "wb") as f:
            f.write(data[:-12])  # the voxels may decode, the end of the stream is missing
        self.assert_refused_everywhere(path, "truncated")

    def test_valid_file_read_and_checked_once(self):
        path, data = self._gz()
        readers_module.clear_caches()
        with mock.patch.object(readers_module.gzip, "open", wraps=gzip.open) as opened:
            for _ in range(3):
                load_slice(path, 1)
            self.assertEqual(opened.call_count, 1)  # the CRC check is cached per file version
        self.assertEqual(tuple(load_image(path).shape), (9, 8, 4))


class TestRescale(_Tmp):
    @parameterized.expand([("zero", 0.0, "RescaleSlope 0"), ("nan", float("nan"), "RescaleSlope nan")])
    def test_bad_slope_refused(self, _, slope, words):
        path = dicom_slice(os.path.join(self.d, "s", "a.dcm"), RNG.integers(0, 100, (6, 5)).astype(np.int16))
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = str(slope) if slope == slope else "NaN"
        ds.save_as(path)
        self.assert_refused_everywhere(path, words)
        self.assert_refused_everywhere(os.path.dirname(path), words, where=path)

    def test_modality_lut_refused(self):
        path = dicom_slice(os.path.join(self.d, "lut.dcm"), np.zeros((6, 5), np.uint16), slope=None, inter=None)
        ds = pydicom.dcmread(path)
        lut = Dataset()
        lut.LUTDescriptor = [4, 0, 16]
        lut.add_new(0x00283006, "US", [0, 10, 20, 30])  # LUTData
        ds.ModalityLUTSequence = [lut]
        ds.save_as(path)
        self.assert_refused_everywhere(path, "Modality LUT (0028,3000)")

    @parameterized.expand([("neither", None, None), ("no_slope", None, -1024.0), ("no_intercept", 2.0, None)])
    def test_absent_rescale_tags_are_identity(self, _, slope, inter):
        """MR and other images often carry no RescaleSlope / RescaleIntercept: slope 1 and intercept 0."""
        pixels = RNG.integers(-1000, 1000, (6, 5)).astype(np.int16)
        path = dicom_slice(os.path.join(self.d, "mr.dcm"), pixels, modality="MR", slope=slope, inter=inter)
        expected = pixels.astype(np.float32) * np.float32(slope or 1.0) + np.float32(inter or 0.0)
        img = load_image(path, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), expected)
        self.assertEqual((img.meta["rescale_slopes"], img.meta["rescale_intercepts"]), ([slope or 1.0], [inter or 0.0]))
        out = LoadScand("image")({"image": path, "kind": "dicom"})
        np.testing.assert_array_equal(out["image"][0].numpy(), expected)

    @parameterized.expand([("unit_intercept", 1.0, 1.0), ("slope_only", 2.0, 0.0), ("negative_slope", -1.0, 0.0)])
    def test_rescale_applied_whenever_not_identity(self, _, slope, inter):
        pixels = RNG.integers(-1000, 1000, (6, 5)).astype(np.int16)
        path = dicom_slice(os.path.join(self.d, "r.dcm"), pixels, slope=slope, inter=inter)
        expected = pixels.astype(np.float32) * np.float32(slope) + np.float32(inter)
        np.testing.assert_array_equal(load_image(path, swap_ij=False).numpy(), expected)

    def test_signed_unsigned_and_rescale_values(self):
        for dtype in (np.int16, np.uint16, np.uint8):
            info = np.iinfo(dtype)
            vol = RNG.integers(info.min, info.max, (6, 5, 3), endpoint=True).astype(dtype)
            folder = dicom_series_folder(os.path.join(self.d, np.dtype(dtype).name), vol, slope=0.25, inter=-100.0)
            img = load_image(folder, swap_ij=False)
            np.testing.assert_array_equal(img.numpy(), (vol.astype(np.float64) * 0.25 - 100).astype(np.float32))


class TestFunctionalGroups(_Tmp):
    def test_enhanced_single_frame_geometry_and_rescale(self):
        """Enhanced images keep rescale and geometry in functional groups: read there, not taken as 1 / identity."""
        vol = RNG.integers(0, 3000, (6, 5, 3)).astype(np.int16)
        iop = (1.0, 0.0, 0.0, 0.0, 0.6, 0.8)
        plain = dicom_series_folder(
            os.path.join(self.d, "plain"), vol, slope=2.0, inter=-1024.0, orientation=iop, spacing=(0.7, 0.8)
        )
        enhanced = os.path.join(self.d, "enhanced")
        os.makedirs(enhanced)
        for name in sorted(os.listdir(plain)):
            ds = pydicom.dcmread(os.path.join(plain, name))
            frame, shared = Dataset(), Dataset()
            for seq, tags, holder in (
                ("PlanePositionSequence", ["ImagePositionPatient"], frame),
                ("PixelValueTransformationSequence", ["RescaleSlope", "RescaleIntercept"], frame),
                ("PlaneOrientationSequence", ["ImageOrientationPatient"], shared),
                ("PixelMeasuresSequence", ["PixelSpacing"], shared),
            ):
                item = Dataset()
                for tag in tags:
                    setattr(item, tag, getattr(ds, tag))
                    delattr(ds, tag)
                setattr(holder, seq, [item])
            ds.PerFrameFunctionalGroupsSequence, ds.SharedFunctionalGroupsSequence = [frame], [shared]
            ds.save_as(os.path.join(enhanced, name))
        a, b = load_image(plain, swap_ij=False), load_image(enhanced, swap_ij=False)
        np.testing.assert_array_equal(b.numpy(), vol.astype(np.float32) * 2 - 1024)
        np.testing.assert_allclose(np.asarray(b.affine), np.asarray(a.affine))
        self.assertAlmostEqual(float(np.linalg.norm(np.asarray(b.affine)[:3, 2])), 1.0, places=6)
        np.testing.assert_array_equal(load_slice(enhanced, 2).numpy(), load_image(plain)[..., 2].numpy())
        for name in sorted(os.listdir(plain)):  # one slice alone: its affine from the functional groups too
            one, ref = load_image(os.path.join(enhanced, name)), load_image(os.path.join(plain, name))
            np.testing.assert_allclose(np.asarray(one.affine), np.asarray(ref.affine))
            np.testing.assert_allclose(np.linalg.norm(np.asarray(one.affine)[:3, :2], axis=0), [0.8, 0.7], rtol=1e-9)


class TestPixelFormat(_Tmp):
    def test_bits_allocated_mismatch_says_so(self):
        path = dicom_slice(os.path.join(self.d, "b.dcm"), RNG.integers(0, 100, (6, 5)).astype(np.int16))
        ds = pydicom.dcmread(path)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # the data are still 16-bit
        ds.save_as(path)
        self.assert_refused_everywhere(path, "BitsAllocated 8 does not match")

    def test_missing_rows_refused(self):
        path = dicom_slice(os.path.join(self.d, "r.dcm"), np.zeros((6, 5), np.int16))
        ds = pydicom.dcmread(path)
        del ds.Rows
        ds.save_as(path)
        self.assert_refused_everywhere(path, "without Rows / Columns")

    def test_colour_refused(self):
        path = dicom_slice(os.path.join(self.d, "rgb.dcm"), RNG.integers(0, 100, (6, 5)).astype(np.uint8))
        ds = pydicom.dcmread(path)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.PixelData = np.zeros((6, 5, 3), np.uint8).tobytes()
        ds.save_as(path)
        self.assert_refused_everywhere(path, "colour image (SamplesPerPixel 3, PhotometricInterpretation RGB)")

    def test_no_pixel_data_refused(self):
        """A DICOM file without an image (a report, a header-only file) is not a slice."""
        path = dicom_slice(os.path.join(self.d, "sr.dcm"), None, modality="SR")
        self.assert_refused_everywhere(path, "no pixel data in sr.dcm (Modality SR")

    def test_palette_colour_refused(self):
        """One sample per pixel, but palette indices, not grey levels."""
        pixels = RNG.integers(0, 100, (6, 5)).astype(np.uint8)
        path = dicom_slice(os.path.join(self.d, "pal.dcm"), pixels, PhotometricInterpretation="PALETTE COLOR")
        self.assert_refused_everywhere(
            path, "colour image (SamplesPerPixel 1, PhotometricInterpretation PALETTE COLOR)"
        )

    def test_multi_frame_refused_from_the_header(self):
        vol = RNG.integers(0, 100, (6, 5, 2)).astype(np.int16)
        path = dicom_slice(os.path.join(self.d, "mf.dcm"), vol[..., 0], NumberOfFrames=2)
        ds = pydicom.dcmread(path)
        ds.PixelData = np.moveaxis(vol, -1, 0).tobytes()
        ds.save_as(path)
        self.assert_refused_everywhere(path, "multi-frame DICOM (2 frames) is not supported")

    def test_odd_length_pixel_data_padding_accepted(self):
        """An odd number of 8-bit pixels is stored with one padding byte (DICOM values have an even length)."""
        pixels = np.arange(9, dtype=np.uint8).reshape(3, 3)
        path = dicom_slice(os.path.join(self.d, "odd.dcm"), pixels)
        self.assertEqual(readers_module.read_dicom_header(path).get_item("PixelData").length, 10)
        np.testing.assert_array_equal(load_image(path, swap_ij=False).numpy(), pixels.astype(np.float32))
        np.testing.assert_array_equal(load_slice(path, 0).numpy(), pixels.T.astype(np.float32))

    def test_one_bit_stored_reads(self):
        pixels = np.array([[0, 1, 1], [1, 0, 1]], np.uint8)
        path = dicom_slice(os.path.join(self.d, "b1.dcm"), pixels, bits_stored=1)
        np.testing.assert_array_equal(load_image(path, swap_ij=False).numpy(), pixels.astype(np.float32))

    def test_bits_stored_above_allocated_refused(self):
        path = dicom_slice(os.path.join(self.d, "bs.dcm"), RNG.integers(0, 100, (6, 5)).astype(np.int16))
        ds = pydicom.dcmread(path)
        ds.BitsStored = 17
        ds.save_as(path)
        self.assert_refused_everywhere(path, "BitsStored 17 does not fit BitsAllocated 16")

    def test_big_endian_reads_back(self):
        vol = RNG.integers(-2000, 2000, (6, 5, 2)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "be"), vol, syntax=ExplicitVRBigEndian, inter=-1024.0)
        np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol.astype(np.float32) - 1024)


class TestPet(_Tmp):
    @parameterized.expand(
        [
            ("counts", {"units": "CNTS"}, "Units CNTS"),
            ("no_units", {"units": ""}, "Units (0054,1001)"),
            ("no_weight", {"weight": None}, "PatientWeight (0010,1030)"),
            ("no_dose", {"dose": None}, "RadionuclideTotalDose (0018,1074)"),
            ("no_half_life", {"half_life": None}, "unusable: RadionuclideHalfLife (0018,1075). If"),
            ("zero_half_life", {"half_life": 0.0}, "unusable: RadionuclideHalfLife (0018,1075). If"),
            ("no_injection_time", {"start": None}, "RadiopharmaceuticalStartTime (0018,1072)"),
            ("no_reference_time", {"series_time": None}, "SeriesTime (0008,0031)"),
            ("not_decay_corrected", {"decay": "NONE"}, "DecayCorrection NONE"),
            ("no_decay_tag", {"decay": None}, "DecayCorrection (0054,1102)"),
        ]
    )
    def test_refused_naming_missing_tags(self, _, changes, words):
        pixels = RNG.integers(0, 2000, (6, 5)).astype(np.uint16)
        path = dicom_slice(os.path.join(self.d, "pet.dcm"), pixels, modality="PT", **pet_tags(**changes))
        self.assert_refused_everywhere(path, words, item={"modality": "PET"}, headers=False)  # not a header rule
        self.assertIn("cannot be converted to SUV", str(self._refusal(path)))
        declared = LoadScand("image", pet_units="SUV")({"image": path, "kind": "dicom", "modality": "PET"})
        np.testing.assert_array_equal(declared["image"][0].numpy(), pixels.astype(np.float32))
        self.assertEqual(declared["scan_info"]["suv_factors"], [1.0])
        sliced = LoadSliced("image", pet_units="SUV")({"image": path, "slice_index": 0})["image"]  # training path
        np.testing.assert_array_equal(sliced.numpy(), load_image(path, pet_units="SUV").numpy())
        self.assertTrue(
            validate_datalist({"training": [{"image": path, "label": path, "modality": "PET"}]}, pet_units="SUV")
        )

    @parameterized.expand([("absent", None), ("empty", DicomSequence([]))])
    def test_no_radiopharmaceutical_information_refused_naming_it(self, _, value):
        """Without the radiopharmaceutical item there is no dose: a named refusal (never a division by 0)."""
        tags = dict(pet_tags(), RadiopharmaceuticalInformationSequence=value)
        path = dicom_slice(os.path.join(self.d, "pet.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        words = "unusable: RadiopharmaceuticalInformationSequence (0054,0016). If"
        self.assert_refused_everywhere(path, words, item={"modality": "PET"}, headers=False)

    def test_inference_readers_convert_to_suv_by_default(self):
        pixels = RNG.integers(0, 2000, (6, 5)).astype(np.uint16)
        path = dicom_slice(os.path.join(self.d, "pet.dcm"), pixels, modality="PT", **pet_tags())
        factor = 70.0 * 1000.0 / (3.5e8 * 2 ** (-3600.0 / 6586.2))
        img, info = read_scan({"image": path, "kind": "dicom"})
        np.testing.assert_allclose(img.numpy(), pixels * np.float32(factor), rtol=1e-6)
        array, info = load_dicom_series([path], path)
        np.testing.assert_allclose(array, pixels * np.float32(factor), rtol=1e-6)
        self.assertAlmostEqual(info["suv_factors"][0], factor, places=9)
        np.testing.assert_array_equal(load_dicom_series([path], path, suv=False)[0], pixels.astype(np.float32))

    def _refusal(self, path):
        try:
            load_image(path)
        except ValueError as e:
            return e
        self.fail("not refused")

    def test_suv_factor_values(self):
        pixels = RNG.integers(0, 2000, (6, 5)).astype(np.uint16)
        path = dicom_slice(os.path.join(self.d, "ok.dcm"), pixels, modality="PT", **pet_tags())
        factor = 70.0 * 1000.0 / (3.5e8 * 2 ** (-3600.0 / 6586.2))
        out = LoadScand("image")({"image": path, "kind": "dicom"})
        self.assertEqual(out["modality"], "PET")
        self.assertAlmostEqual(out["scan_info"]["suv_factors"][0], factor, places=12)
        np.testing.assert_allclose(out["image"][0].numpy(), pixels * np.float32(factor), rtol=1e-6)
        admin = dicom_slice(os.path.join(self.d, "adm.dcm"), pixels, modality="PT", **pet_tags(decay="ADMIN"))
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(admin), "x"), 70.0 * 1000.0 / 3.5e8, places=12)
        gml = dicom_slice(os.path.join(self.d, "gml.dcm"), pixels, modality="PT", **pet_tags(units="GML"))
        self.assertEqual(pet_suv_factor(pydicom.dcmread(gml), "x"), 1.0)
        with self.assertRaisesRegex(ValueError, "x: pet_units 'CNTS' not understood"):
            pet_suv_factor(pydicom.dcmread(gml), "x", pet_units="CNTS")


class TestModalityMessages(_Tmp):
    def test_unsupported_tag_is_not_missing(self):
        path = dicom_slice(os.path.join(self.d, "ot.dcm"), RNG.integers(0, 100, (6, 5)).astype(np.int16), modality="OT")
        with self.assertRaisesRegex(ValueError, "ot.dcm: unsupported modality OT"):
            LoadScand("image")({"image": path, "kind": "dicom"})
        out = LoadScand("image")({"image": path, "kind": "dicom", "modality": "ct"})  # declared: accepted
        self.assertEqual(out["modality"], "CT")
        plain = dicom_slice(os.path.join(self.d, "none.dcm"), np.zeros((6, 5), np.int16), Modality=None)
        with self.assertRaisesRegex(ValueError, "none.dcm: no modality"):
            LoadScand("image")({"image": plain, "kind": "dicom"})
        with self.assertRaisesRegex(ValueError, "unknown modality 'XR'"):
            LoadScand("image")({"image": plain, "kind": "dicom", "modality": "XR"})
        mr = dicom_slice(os.path.join(self.d, "mr.dcm"), np.zeros((6, 5), np.int16), modality="MR")
        self.assertEqual(LoadScand("image")({"image": mr, "kind": "dicom"})["modality"], "MRI")


class TestSeriesRule(_Tmp):
    def test_sorted_along_oblique_normal(self):
        vol = RNG.integers(-500, 500, (6, 5, 4)).astype(np.int16)
        c, s = np.cos(0.4), np.sin(0.4)
        iop = (1.0, 0.0, 0.0, 0.0, c, s)
        folder = os.path.join(self.d, "obl")
        series = pydicom.uid.generate_uid()
        for k, z in enumerate([2.0, 0.0, 3.0, 1.0]):  # files and InstanceNumbers in a shuffled order
            dicom_slice(
                os.path.join(folder, f"f{k}.dcm"),
                vol[..., int(z)],
                z=2.5 * z,
                series=series,
                orientation=iop,
                instance=9 - k,
            )
        img = load_image(folder, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), vol.astype(np.float32))
        for z in range(4):
            np.testing.assert_array_equal(load_slice(folder, z).numpy(), load_image(folder)[..., z].numpy())
        files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
        out = LoadScand("image")({"image": folder, "kind": "dicom", "files": files, "modality": "CT"})
        np.testing.assert_array_equal(out["image"][0].numpy(), vol.astype(np.float32))
        step = np.asarray(img.affine)[:3, 2]
        self.assertAlmostEqual(float(np.linalg.norm(step)), 2.5, places=5)  # slice step along the normal

    @parameterized.expand(
        [
            ("duplicate", [0.0, 1.0, 1.0, 2.0], "duplicate slice"),
            ("gap", [0.0, 1.0, 2.0, 4.0], "missing slice"),
            ("gap_of_three", [0.0, 1.0, 3.0], "missing slice"),
        ]
    )
    def test_duplicate_and_gap_refused(self, _, positions, words):
        vol = RNG.integers(0, 100, (6, 5, len(positions))).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, positions)
        self.assert_refused_everywhere(folder, words)

    def test_duplicate_tolerance_is_one_micrometre(self):
        """Positions closer than 1e-3 mm are one position (a duplicate, not a 0.8 um slice step; the message names
        the two files); exactly 1e-3 mm apart they are two slices."""
        vol = RNG.integers(0, 100, (6, 5, 4)).astype(np.int16)
        noisy = dicom_series_folder(os.path.join(self.d, "noisy"), vol, [0.0, 1.0, 1.0008, 2.0])
        self.assert_refused_everywhere(noisy, "duplicate slice, slice001.dcm and slice002.dcm have the same")
        thin = dicom_series_folder(os.path.join(self.d, "thin"), vol[..., :3], [0.0, 0.001, 0.002])
        np.testing.assert_array_equal(load_image(thin, swap_ij=False).numpy(), vol[..., :3].astype(np.float32))

    def test_gap_rule_bound(self):
        """A step of exactly 1.5 x the smallest one is not a missing slice; a larger one is."""
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        ok = dicom_series_folder(os.path.join(self.d, "ok"), vol, [0.0, 2.0, 5.0])
        np.testing.assert_array_equal(load_image(ok, swap_ij=False).numpy(), vol.astype(np.float32))
        gap = dicom_series_folder(os.path.join(self.d, "gap"), vol, [0.0, 2.0, 5.01])
        self.assert_refused_everywhere(gap, "missing slice")

    @parameterized.expand(
        [("rows_along_z", (0.0, 0.0, -1.0, 0.0, 1.0, 0.0)), ("oblique_rows", (0.0, 0.6, 0.8, 0.0, 0.8, -0.6))]
    )
    def test_sorted_along_the_normal_of_any_orientation(self, _, iop):
        """The normal is row x column with all three components of both vectors."""
        vol = RNG.integers(-500, 500, (6, 5, 3)).astype(np.int16)
        folder = os.path.join(self.d, "s")
        series = pydicom.uid.generate_uid()
        for k, z in enumerate([2, 0, 1]):
            dicom_slice(os.path.join(folder, f"f{k}.dcm"), vol[..., z], z=1.5 * z, series=series, orientation=iop)
        img = load_image(folder, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), vol.astype(np.float32))
        normal = np.cross(iop[:3], iop[3:])
        np.testing.assert_allclose(np.asarray(img.affine)[:3, 2], np.diag([-1.0, -1.0, 1.0]) @ normal * 1.5, atol=1e-6)

    def test_instance_number_order_without_geometry(self):
        """Without ImagePositionPatient / ImageOrientationPatient the slices follow InstanceNumber, with the same
        duplicate and gap rule; a slice without InstanceNumber leaves the order unknown."""
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        no_geometry = {"ImagePositionPatient": None, "ImageOrientationPatient": None}

        def write(name, instances):
            folder = os.path.join(self.d, name)
            series = pydicom.uid.generate_uid()
            for k, (z, number) in enumerate(zip([2, 0, 1], instances)):
                dicom_slice(
                    os.path.join(folder, f"f{k}.dcm"), vol[..., z], series=series, InstanceNumber=number, **no_geometry
                )
            return folder

        ordered = write("ordered", [7, 5, 6])
        np.testing.assert_array_equal(load_image(ordered, swap_ij=False).numpy(), vol.astype(np.float32))
        np.testing.assert_array_equal(load_slice(ordered, 2).numpy(), vol[..., 2].T.astype(np.float32))
        self.assert_refused_everywhere(write("gap", [8, 5, 6]), "missing slice(s): InstanceNumber jumps by 2")
        self.assert_refused_everywhere(write("dup", [6, 5, 6]), "duplicate slice")
        self.assert_refused_everywhere(write("unnumbered", [7, None, 6]), "neither ImagePositionPatient nor")

    @parameterized.expand(
        [
            ("orientation", "ImageOrientationPatient", "slice002.dcm"),
            ("position", "ImagePositionPatient", "slice002.dcm"),
            ("position_of_the_last", "ImagePositionPatient", "slice001.dcm"),
        ]
    )
    def test_partial_geometry_falls_back_to_instance_number(self, _, tag, name):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, positions=[0.0, 5.0, 1.0], instances=[1, 3, 2])
        ds = pydicom.dcmread(os.path.join(folder, name))
        delattr(ds, tag)
        ds.save_as(os.path.join(folder, name))
        np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol[..., [0, 2, 1]].astype(np.float32))

    def test_orientation_agreement_between_slices(self):
        """Slices of one series agree on ImageOrientationPatient to 1e-4 (plus numpy's relative 1e-5)."""
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        for name, tilt, ok in (("close", 7e-5, True), ("apart", 1.5e-4, False)):
            folder = dicom_series_folder(os.path.join(self.d, name), vol)
            ds = pydicom.dcmread(os.path.join(folder, "slice001.dcm"))
            ds.ImageOrientationPatient = [1.0, tilt, 0.0, 0.0, 1.0, 0.0]
            ds.save_as(os.path.join(folder, "slice001.dcm"))
            if ok:
                np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol.astype(np.float32))
            else:
                self.assert_refused_everywhere(folder, "slices with different ImageOrientationPatient (slice001.dcm)")

    def test_empty_file_in_a_series_named(self):
        folder = dicom_series_folder(os.path.join(self.d, "s"), RNG.integers(0, 100, (6, 5, 2)).astype(np.int16))
        open(os.path.join(folder, "slice002.dcm"), "wb").close()
        self.assert_refused_everywhere(folder, "slice002.dcm: empty file (0 bytes)", where=folder)

    def test_size_limit_is_inclusive(self):
        folder = dicom_series_folder(os.path.join(self.d, "s"), np.zeros((6, 5, 2), np.int16))
        with mock.patch.object(readers_module, "MAX_VOXELS", 60):
            readers_module.clear_caches()
            self.assertEqual(dicom_series(folder).shape, (6, 5, 2))
        readers_module.clear_caches()

    @parameterized.expand(
        [("different", [0.7, 0.8]), ("missing", None), ("beyond_tolerance", [0.700105, 0.7])]  # 1.5e-4 relative
    )
    def test_mixed_pixel_spacing_refused(self, _, spacing):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, spacing=(0.7, 0.7))
        ds = pydicom.dcmread(os.path.join(folder, "slice001.dcm"))
        if spacing is None:
            del ds.PixelSpacing
        else:
            ds.PixelSpacing = spacing
        ds.save_as(os.path.join(folder, "slice001.dcm"))
        self.assert_refused_everywhere(folder, "slices with different PixelSpacing in one series")

    def test_pixel_spacing_agreement_tolerance(self):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, spacing=(0.7, 0.7))
        ds = pydicom.dcmread(os.path.join(folder, "slice001.dcm"))
        ds.PixelSpacing = [0.700049, 0.7]  # 7e-5 relative: within 1e-4
        ds.save_as(os.path.join(folder, "slice001.dcm"))
        np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol.astype(np.float32))

    def test_series_without_pixel_spacing_has_unit_spacing(self):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, [0.0, 2.0, 4.0], PixelSpacing=None)
        img = load_image(folder, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), vol.astype(np.float32))
        np.testing.assert_allclose(np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0), [1.0, 1.0, 2.0])

    def test_two_series_in_one_folder_refused(self):
        folder = dicom_series_folder(os.path.join(self.d, "s"), RNG.integers(0, 100, (6, 5, 2)).astype(np.int16))
        dicom_slice(os.path.join(folder, "other.dcm"), np.zeros((6, 5), np.int16), z=2.0)  # its own series UID
        self.assert_refused_everywhere(folder, "mixed series, 2 SeriesInstanceUIDs in one folder")

    def test_slices_of_different_sizes_refused(self):
        folder = dicom_series_folder(os.path.join(self.d, "s"), RNG.integers(0, 100, (6, 5, 2)).astype(np.int16))
        dicom_slice(
            os.path.join(folder, "slice002.dcm"),
            np.zeros((6, 4), np.int16),
            z=2.0,
            series=pydicom.dcmread(os.path.join(folder, "slice000.dcm")).SeriesInstanceUID,
        )
        self.assert_refused_everywhere(folder, "slices of different sizes [(6, 4), (6, 5)] in one series")

    def test_no_dicom_file_message_counts_the_other_files(self):
        folder = os.path.join(self.d, "docs")
        os.makedirs(folder)
        for name in ("README.txt", "notes.json"):
            with open(os.path.join(folder, name), "w") as f:
                f.write("x")
        with self.assertRaisesRegex(ValueError, r"docs: no DICOM file in the series folder \(2 other files\)"):
            dicom_series(folder)
        with self.assertRaisesRegex(ValueError, r"^series: no DICOM file in the series folder \(empty folder\)"):
            dicom_series([])

    def test_inference_scan_keeps_the_geometry(self):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(
            os.path.join(self.d, "g"), vol, [0.0, 2.5, 5.0], spacing=(0.7, 0.8), origin=(-10.0, 20.0)
        )
        out = LoadScand("image")({"image": folder, "kind": "dicom", "modality": "CT"})["image"]
        # (Rows, Columns, slices) axes: column direction y x 0.7, row direction x x 0.8, normal z x 2.5; LPS to RAS
        expected = np.array([[0, -0.8, 0, 10.0], [-0.7, 0, 0, -20.0], [0, 0, 2.5, 0], [0, 0, 0, 1]])
        np.testing.assert_allclose(np.asarray(out.affine), expected, atol=1e-9)
        np.testing.assert_allclose(np.asarray(load_image(folder, swap_ij=False).affine), expected, atol=1e-9)
        np.testing.assert_allclose(np.asarray(out.meta["original_affine"]), np.asarray(out.affine))
        self.assertEqual(out.meta["modality"], "CT")

    def test_inference_series_errors_name_the_scan(self):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, [0.0, 1.0, 1.0])
        files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        with self.assertRaisesRegex(ValueError, "^scan 7: duplicate slice"):
            load_dicom_series(files, "scan 7")

    def test_mixed_orientation_refused(self):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol)
        ds = pydicom.dcmread(os.path.join(folder, "slice002.dcm"))
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        ds.save_as(os.path.join(folder, "slice002.dcm"))
        self.assert_refused_everywhere(folder, "different ImageOrientationPatient")

    def test_headers_read_once(self):
        vol = RNG.integers(0, 100, (6, 5, 5)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol)
        readers_module.clear_caches()
        real = pydicom.dcmread
        with mock.patch.object(readers_module.pydicom, "dcmread", side_effect=real) as reads:
            n = num_slices(folder)
            for z in range(n):  # the training path: one slice per item
                load_slice(folder, z)
            load_image(folder)
            LoadScand("image")({"image": folder, "kind": "dicom", "modality": "CT"})
            validate_datalist({"training": [{"image": folder, "label": folder, "modality": "CT"}]})
        self.assertEqual(n, 5)
        self.assertEqual(reads.call_count, 5)  # one header read per file, whatever reads it
        ds = pydicom.dcmread(os.path.join(folder, "slice001.dcm"))
        ds.RescaleIntercept = "7"
        ds.save_as(os.path.join(folder, "slice001.dcm"))
        os.utime(os.path.join(folder, "slice001.dcm"), ns=(1, 1))  # a new file version is read again
        self.assertEqual(float(load_slice(folder, 1)[0, 0]), float(vol[0, 0, 1]) + 7)

    def test_size_limit_from_headers(self):
        folder = dicom_series_folder(os.path.join(self.d, "s"), np.zeros((6, 5, 2), np.int16))
        with mock.patch.object(readers_module, "MAX_VOXELS", 59):
            readers_module.clear_caches()
            self.assert_refused_everywhere(folder, "larger than the limit of 59")
        readers_module.clear_caches()
        self.assertEqual(dicom_series(folder).shape, (6, 5, 2))


class TestPetTiming(_Tmp):
    """Decay time: one reference per series, the injection date from the reference, midnight, implausible times."""

    def _pet(self, name, **changes):
        tags = pet_tags(**{k: v for k, v in changes.items() if k in ("start", "series_time", "decay")})
        tags.update({k: v for k, v in changes.items() if k not in ("start", "series_time", "decay")})
        return tags

    def test_injection_before_midnight(self):
        tags = self._pet("m", start="235000", series_time="001000", SeriesDate="20240102")
        path = dicom_slice(os.path.join(self.d, "m.dcm"), np.full((6, 5), 1000, np.uint16), modality="PT", **tags)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-1200.0 / 6586.2))  # 20 minutes, not -23 h 40 min
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(path), "x"), expected, places=12)
        out = LoadScand("image")({"image": path, "kind": "dicom"})
        np.testing.assert_allclose(out["image"][0].numpy(), 1000 * np.float32(expected), rtol=1e-6)
        dated = dict(tags, RadiopharmaceuticalStartTime=None)
        info = Dataset()
        info.RadionuclideTotalDose, info.RadionuclideHalfLife = 3.5e8, 6586.2
        info.RadiopharmaceuticalStartDateTime = "20240101235000.00+0100"  # a date given: used as such
        dated["RadiopharmaceuticalInformationSequence"] = pydicom.sequence.Sequence([info])
        p2 = dicom_slice(os.path.join(self.d, "dt.dcm"), np.ones((6, 5), np.uint16), modality="PT", **dated)
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(p2), "x"), expected, places=12)

    @parameterized.expand(
        [("dated_after_reference", "20240102003000", "-0.33 h"), ("dated_two_days_before", "20231231120000", "36.17 h")]
    )
    def test_implausible_elapsed_refused(self, _, start, words):
        tags = self._pet("i", series_time="001000", SeriesDate="20240102")
        tags["RadiopharmaceuticalInformationSequence"][0].RadiopharmaceuticalStartDateTime = start
        path = dicom_slice(os.path.join(self.d, "i.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        for call in _all_readers(path, {"modality": "PET"}, headers=False):
            with self.assertRaises(ValueError) as err:
                call()
            msg = str(err.exception)
            self.assertTrue(msg.startswith(path), msg)
            for part in ("implausible time from injection", "RadiopharmaceuticalStartDateTime (0018,1078)", words):
                self.assertIn(part, msg)

    def test_undated_injection_after_the_reference_time_is_ambiguous(self):
        # 12:00 injection, 11:00 reference: a midnight rollover would read 23 h (decay factor ~6000) and is refused
        tags = self._pet("u", start="120000", series_time="110000", SeriesDate="20240102")
        path = dicom_slice(os.path.join(self.d, "u.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        for call in _all_readers(path, {"modality": "PET"}, headers=False):
            with self.assertRaises(ValueError) as err:
                call()
            for part in ("implausible time from injection", "23.00 h", "expected 0 to 12 h", "day is ambiguous"):
                self.assertIn(part, str(err.exception))
        # 11 h 59 min before the reference, across midnight, is still read
        tags = self._pet("v", start="121000", series_time="000900", SeriesDate="20240102")
        ok = dicom_slice(os.path.join(self.d, "v.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-(11 * 3600.0 + 59 * 60) / 6586.2))
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(ok), "x"), expected, places=12)

    def test_elapsed_time_bounds(self):
        """0 h (injected at the reference time) and a date-time given to the hour (DT ``YYYYMMDDHH``) are read."""
        same = dicom_slice(
            os.path.join(self.d, "same.dcm"),
            np.ones((6, 5), np.uint16),
            modality="PT",
            **self._pet("s", start="110000"),
        )
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(same), "x"), 70.0 * 1000.0 / 3.5e8, places=12)
        tags = self._pet("h", SeriesDate="20240102")
        tags["RadiopharmaceuticalInformationSequence"][0].RadiopharmaceuticalStartDateTime = "2024010210"
        del tags["RadiopharmaceuticalInformationSequence"][0].RadiopharmaceuticalStartTime
        hour = dicom_slice(os.path.join(self.d, "hour.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-3600.0 / 6586.2))  # 10:00 to the 11:00 series time
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(hour), "x"), expected, places=12)

    def test_date_only_start_date_time_uses_the_start_time(self):
        """A RadiopharmaceuticalStartDateTime with a date only (DT ``YYYYMMDD``) gives no time: the
        RadiopharmaceuticalStartTime is used."""
        tags = self._pet("d", SeriesDate="20240102")
        tags["RadiopharmaceuticalInformationSequence"][0].RadiopharmaceuticalStartDateTime = "20240102"
        path = dicom_slice(os.path.join(self.d, "d.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-3600.0 / 6586.2))
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(path), "x"), expected, places=12)

    def test_elapsed_time_limits_are_inclusive(self):
        """Undated: up to 12 h exactly (23:00 injection, 11:00 reference next day); dated: up to 24 h (13 h read)."""
        tags = self._pet("u", start="230000", series_time="110000", SeriesDate="20240102")
        undated = dicom_slice(os.path.join(self.d, "u.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-12 * 3600.0 / 6586.2))
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(undated), "x"), expected, places=9)
        tags = self._pet("d", series_time="110000", SeriesDate="20240102")
        tags["RadiopharmaceuticalInformationSequence"][0].RadiopharmaceuticalStartDateTime = "20240101220000"
        dated = dicom_slice(os.path.join(self.d, "d.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-13 * 3600.0 / 6586.2))
        self.assertAlmostEqual(pet_suv_factor(pydicom.dcmread(dated), "x"), expected, places=9)

    def test_dose_decayed_to_zero_is_refused_not_divided_by(self):
        """A half-life so short that the decayed dose is 0.0 in floating point: a named refusal, no division by 0."""
        tags = self._pet("z")
        tags["RadiopharmaceuticalInformationSequence"][0].RadionuclideHalfLife = 1.0  # 1 h = 3600 half-lives
        path = dicom_slice(os.path.join(self.d, "z.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        self.assert_refused_everywhere(path, "RadionuclideHalfLife (0018,1075) 1 s", {"modality": "PET"}, headers=False)

    @parameterized.expand([("63", 3600 / 63.0, True), ("64", 3600 / 64.0, True), ("65", 3600 / 65.0, False)])
    def test_decay_over_64_half_lives_is_refused(self, _, half_life, accepted):
        """Up to 64 half-lives from the injection (1 h here) the factor is the decayed dose's; beyond, no activity
        is left to image: the half-life or the times are wrong, refused naming the tag (the factor of 1e-300 Bq
        left would overflow float32 SUV)."""
        tags = self._pet("h")
        tags["RadiopharmaceuticalInformationSequence"][0].RadionuclideHalfLife = half_life
        path = dicom_slice(os.path.join(self.d, "h.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        if accepted:
            ds = pydicom.dcmread(path)
            info = ds.RadiopharmaceuticalInformationSequence[0]
            expected = (
                float(ds.PatientWeight) * 1000.0 / (float(info.RadionuclideTotalDose) * 2.0 ** (-3600 / half_life))
            )
            self.assertAlmostEqual(pet_suv_factor(ds, path) / expected, 1.0, places=9)
        else:
            self.assert_refused_everywhere(
                path, "half-lives (3600 s) after the injection, more than 64", None, None, False
            )

    def test_dose_too_small_for_a_float32_factor_is_refused(self):
        """A total dose so small that weight * 1000 / dose exceeds float32: refused naming the dose tag (SUV values
        would be inf)."""
        tags = self._pet("d")
        tags["RadiopharmaceuticalInformationSequence"][0].RadionuclideTotalDose = 1e-300
        path = dicom_slice(os.path.join(self.d, "d.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        self.assert_refused_everywhere(
            path, "RadionuclideTotalDose (0018,1074) 1e-300 Bq", {"modality": "PET"}, None, False
        )

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        weight=st.floats(0.01, 300.0).map(lambda v: round(v, 3)),
        dose=st.floats(0.5, 1e10).map(lambda v: float(f"{v:.6g}")),
        half_life=st.floats(100.0, 1e6).map(lambda v: round(v, 2)),  # up to 864 half-lives: more than 64 refused
        elapsed=st.integers(0, 24 * 3600),
        dated=st.booleans(),
        decay=st.sampled_from(["START", "ADMIN"]),
    )
    def test_suv_factor_formula(self, weight, dose, half_life, elapsed, dated, decay):
        """SUV factor = weight [kg] * 1000 / dose [Bq], the dose decayed to the reference time for START, for any
        positive weight (a 25 g mouse too), dose and half-life and any injection within the accepted window."""
        if not dated:
            elapsed = min(elapsed, 12 * 3600)
        ref = datetime.datetime(2024, 1, 2, 12, 0, 0)
        start = ref - datetime.timedelta(seconds=elapsed)
        info = Dataset()
        info.RadionuclideTotalDose, info.RadionuclideHalfLife = dose, half_life
        if dated:
            info.RadiopharmaceuticalStartDateTime = start.strftime("%Y%m%d%H%M%S")
        else:
            info.RadiopharmaceuticalStartTime = start.strftime("%H%M%S")
        ds = Dataset()
        ds.Modality, ds.Units, ds.DecayCorrection, ds.PatientWeight = "PT", "BQML", decay, weight
        ds.SeriesDate, ds.SeriesTime = "20240102", "120000"
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([info])
        if decay == "START" and elapsed / half_life > 64:  # no activity left: a wrong half-life or wrong times
            with self.assertRaisesRegex(ValueError, r"x: .*RadionuclideHalfLife \(0018,1075\) .* half-lives"):
                pet_suv_factor(ds, "x")
            return
        decayed = dose * 2.0 ** (-elapsed / half_life) if decay == "START" else dose
        expected = weight * 1000.0 / decayed
        self.assertAlmostEqual(pet_suv_factor(ds, "x") / expected, 1.0, places=12)

    def test_acquisition_time_is_the_fallback_for_all_slices(self):
        folder = os.path.join(self.d, "acq")
        series = pydicom.uid.generate_uid()
        for k, acq in enumerate(["110000", "110500", "111000"]):  # each slice acquired later; no SeriesDate/Time
            tags = self._pet("a", series_time=None, SeriesDate=None, AcquisitionDate="20240102", AcquisitionTime=acq)
            dicom_slice(
                os.path.join(folder, f"s{k}.dcm"),
                np.full((6, 5), 100, np.uint16),
                z=k,
                series=series,
                modality="PT",
                instance=k + 1,
                **tags,
            )
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-3600.0 / 6586.2))  # injection 10:00 on the reference date
        out = LoadScand("image")({"image": folder, "kind": "dicom"})
        self.assertEqual(len(set(out["scan_info"]["suv_factors"])), 1)  # one reference for the series
        self.assertAlmostEqual(out["scan_info"]["suv_factors"][0], expected, places=12)
        np.testing.assert_allclose(load_image(folder).numpy(), 100 * np.float32(expected), rtol=1e-6)
        np.testing.assert_allclose(load_slice(folder, 2).numpy(), 100 * np.float32(expected), rtol=1e-6)

    def test_no_reference_time_names_the_tags(self):
        tags = self._pet("n", series_time=None, SeriesDate=None, AcquisitionTime="110000")
        path = dicom_slice(os.path.join(self.d, "n.dcm"), np.ones((6, 5), np.uint16), modality="PT", **tags)
        self.assert_refused_everywhere(path, "missing SeriesDate (0008,0021)", {"modality": "PET"}, headers=False)
        self.assert_refused_everywhere(path, "AcquisitionDate (0008,0022)", {"modality": "PET"}, headers=False)
        with self.assertRaises(ValueError) as err:
            load_image(path)
        self.assertNotIn("ZeroDivisionError", str(err.exception))


class TestFloatPixelData(_Tmp):
    @parameterized.expand(
        [
            ("float", "FloatPixelData", "OF", np.float32, "float pixel data (7FE0,0008) is not supported"),
            ("double", "DoubleFloatPixelData", "OD", np.float64, "float pixel data (7FE0,0009) is not supported"),
        ]
    )
    def test_refused_by_every_reader_and_the_validator(self, _, keyword, vr, dtype, words):
        path = dicom_slice(os.path.join(self.d, "f.dcm"), np.zeros((6, 5), np.int16))
        ds = pydicom.dcmread(path)
        del ds.PixelData
        for name in ("RescaleSlope", "RescaleIntercept", "PixelRepresentation", "BitsStored", "HighBit"):
            delattr(ds, name)
        ds.BitsAllocated = 32 if dtype == np.float32 else 64
        setattr(ds, keyword, (np.arange(30, dtype=dtype) + 0.37).tobytes())
        ds[keyword].VR = vr
        ds.save_as(path)
        self.assert_refused_everywhere(path, words, headers=False)
        with self.assertRaisesRegex(ValueError, "could not hold its values"):
            validate_datalist({"training": [{"image": path, "label": path, "modality": "CT"}]})


class TestGeometryTags(_Tmp):
    @parameterized.expand(
        [
            ("scaled_iop", {"orientation": (2.0, 0.0, 0.0, 0.0, 2.0, 0.0)}, "ImageOrientationPatient (0020,0037)"),
            ("parallel_iop", {"orientation": (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)}, "orthogonal (lengths 1, 1, dot"),
            ("skewed_iop", {"orientation": (1.0, 0.0, 0.0, 0.01, 1.0, 0.0)}, "ImageOrientationPatient (0020,0037)"),
            ("nan_iop", {"ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, float("nan"), 0.0]}, "6 finite numbers"),
            ("inf_ipp", {"ImagePositionPatient": [0.0, float("inf"), 0.0]}, "ImagePositionPatient (0020,0032)"),
            ("nan_spacing", {"PixelSpacing": [float("nan"), 0.7]}, "PixelSpacing (0028,0030)"),
            ("zero_spacing", {"spacing": (0.0, 0.7)}, "spacings must be positive"),
            ("negative_spacing", {"spacing": (0.7, -0.7)}, "spacings must be positive"),
        ]
    )
    def test_refused(self, _, changes, words):
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, spacing=(0.7, 0.7))
        name = os.path.join(folder, "slice001.dcm")
        geometry = {k: v for k, v in changes.items() if k in ("orientation", "spacing")}
        if geometry:  # the whole series written with the bad geometry
            for f in os.listdir(folder):
                os.remove(os.path.join(folder, f))
            dicom_series_folder(folder, vol, **{"spacing": (0.7, 0.7), **geometry})
        else:
            ds = pydicom.dcmread(name)
            for key, value in changes.items():
                setattr(ds, key, [str(v) for v in value])
            ds.save_as(name)
        self.assert_refused_everywhere(folder, words, where=folder if not geometry else None)

    def test_orientation_tolerance_is_one_thousandth(self):
        """Direction cosines within 1e-3 of unit length / orthogonality read (rounded scanner values); beyond, not."""
        vol = RNG.integers(0, 100, (6, 5, 2)).astype(np.int16)
        for k, iop in enumerate([(0.9993, 0.0, 0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0007, 1.0, 0.0)]):
            folder = dicom_series_folder(os.path.join(self.d, f"ok{k}"), vol, orientation=iop)
            np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol.astype(np.float32))
        for k, iop in enumerate([(0.9985, 0.0, 0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.0015, 1.0, 0.0)]):
            folder = dicom_series_folder(os.path.join(self.d, f"bad{k}"), vol, orientation=iop)
            self.assert_refused_everywhere(folder, "must be unit vectors and orthogonal", where=folder)

    @parameterized.expand(
        [
            ("one_value", b"0.7 ", "PixelSpacing (0028,0030) [0.7]: expected 2 finite numbers"),
            ("not_a_number", b"abc\\0.7 ", "unreadable PixelSpacing (0028,0030) ['abc', '0.7']"),
        ]
    )
    def test_malformed_spacing_value_refused(self, _, value, words):
        folder = dicom_series_folder(os.path.join(self.d, "s"), RNG.integers(0, 100, (6, 5, 2)).astype(np.int16))
        name = os.path.join(folder, "slice001.dcm")
        tag = b"\x28\x00\x30\x00DS"  # (0028,0030) PixelSpacing, explicit VR little endian
        with open(name, "rb") as f:
            raw = f.read()
        old = tag + (8).to_bytes(2, "little") + b"1.0\\1.0 "
        self.assertEqual(raw.count(old), 1)
        with open(name, "wb") as f:
            f.write(raw.replace(old, tag + len(value).to_bytes(2, "little") + value))
        self.assert_refused_everywhere(folder, words, where=folder)

    def test_overlong_spacing_value_keeps_its_spacing(self):
        """A PixelSpacing value longer than the 16 characters DICOM allows (as some exporters write it) still gives
        the affine its spacing, not MONAI's default of 1 mm."""
        vol = RNG.integers(0, 100, (6, 5, 2)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol)
        tag, value = b"\x28\x00\x30\x00DS", b"0.7000000000000001\\0.8"
        for name in os.listdir(folder):
            with open(os.path.join(folder, name), "rb") as f:
                raw = f.read()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(
                    raw.replace(
                        tag + (8).to_bytes(2, "little") + b"1.0\\1.0 ", tag + (22).to_bytes(2, "little") + value
                    )
                )
        for path in (folder, os.path.join(folder, "slice001.dcm")):  # a series and a single slice
            img = load_image(path, swap_ij=False)
            np.testing.assert_array_equal(img.numpy(), np.squeeze(vol[..., 1:] if path != folder else vol))
            np.testing.assert_allclose(np.linalg.norm(np.asarray(img.affine)[:3, :2], axis=0), [0.7, 0.8], rtol=1e-9)

    def test_near_unit_orientation_reads_with_its_spacing(self):
        c, s = np.cos(0.3), np.sin(0.3)
        iop = (round(c, 6), round(s, 6), 0.0, round(-s, 6), round(c, 6), 0.0)  # rounded cosines, well within 1e-3
        vol = RNG.integers(0, 100, (6, 5, 3)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol, orientation=iop, spacing=(0.7, 0.7))
        img = load_image(folder, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), vol.astype(np.float32))
        np.testing.assert_allclose(np.linalg.norm(np.asarray(img.affine)[:3, :2], axis=0), [0.7, 0.7], rtol=1e-5)


class TestIntegersBeyondFloat32(_Tmp):
    @parameterized.expand([("int32", np.int32), ("int64", np.int64), ("uint32", np.uint32)])
    def test_nifti_refused_unless_exact(self, _, dtype):
        big = np.zeros((4, 3, 2), dtype)
        big[1, 2, 0] = 2**31 - 1  # float32 holds 2**31: would come back +1
        path = save_scaled_nifti(os.path.join(self.d, "big.nii"), big)
        self.assert_refused_everywhere(
            path, "values a float32 image cannot hold exactly (e.g. 2147483647", headers=False
        )
        exact = np.zeros((4, 3, 2), dtype)
        exact[0, 0, 0], exact[1, 1, 1], exact[2, 2, 0] = 2**24, 2**30, 3 * 2**26  # big but float32 values
        exact[3, 0, 1] = 2**24 + 2 if dtype == np.uint32 else -(2**31)
        exact[3, 2, 0] = (2**24 - 1) * 2  # 24 significant bits exactly: the widest float32 mantissa, still exact
        out = load_image(save_scaled_nifti(os.path.join(self.d, "ok.nii"), exact))
        np.testing.assert_array_equal(out.numpy().astype(np.float64), exact.astype(np.float64))
        ct = RNG.integers(-1024, 3000, (4, 3, 2)).astype(dtype if dtype != np.uint32 else np.int32)
        np.testing.assert_array_equal(load_image(save_scaled_nifti(os.path.join(self.d, "ct.nii"), ct)).numpy(), ct)

    def test_just_above_two_to_24(self):
        data = np.zeros((4, 3, 2), np.int32)
        data[0, 0, 0] = 2**24 + 1  # the first integer a float32 cannot hold
        path = save_scaled_nifti(os.path.join(self.d, "odd.nii"), data)
        self.assert_refused_everywhere(path, "16777217", headers=False)  # a values rule, not a header rule

    def test_dicom_32_bit_refused_unless_exact(self):
        pixels = np.zeros((6, 5), np.int32)
        pixels[2, 3] = 2**31 - 1
        path = dicom_slice(os.path.join(self.d, "d.dcm"), pixels)
        self.assert_refused_everywhere(path, "float32 image cannot hold exactly (e.g. 2147483647", headers=False)
        pixels[2, 3] = -(2**30)
        ok = dicom_slice(os.path.join(self.d, "ok.dcm"), pixels)
        np.testing.assert_array_equal(load_image(ok, swap_ij=False).numpy(), pixels.astype(np.float32))


class TestNiftiHeaderRules(_Tmp):
    """The header rules of ``nifti_image`` at their bounds: they refuse before any voxel is read (the training
    path's slice count reads the header only), so a weaker rule would let a damaged file through unnoticed."""

    def _nii(self, shape=(4, 3, 2), dtype=np.int16, name="h.nii") -> str:
        path = os.path.join(self.d, name)
        data = np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        return path

    def test_uncompressed_length_checked_from_the_header(self):
        path = self._nii()
        with open(path, "rb") as f:
            data = f.read()
        declared = 352 + 4 * 3 * 2 * 2  # NIfTI-1 single file: 348-byte header, 4 bytes of extension flag, voxels
        self.assertEqual(len(data), declared)
        self.assertEqual(num_slices(path), 2)  # exactly the declared length: accepted
        with open(path, "wb") as f:
            f.write(data[:-1])  # one byte short: refused from the header, no voxel read
        with self.assertRaises(ValueError) as err:
            num_slices(path)
        self.assertIn(
            f"truncated NIfTI file ({declared - 1} bytes, the header declares {declared})", str(err.exception)
        )
        self.assert_refused_everywhere(path, "truncated NIfTI file")

    def test_voxel_limit_is_inclusive(self):
        path = self._nii()  # 24 voxels
        self.assertEqual(tuple(nifti_image(path, max_voxels=24).shape), (4, 3, 2))
        with self.assertRaisesRegex(ValueError, "larger than the limit of 23"):
            nifti_image(path, max_voxels=23)

    def test_voxel_count_does_not_overflow(self):
        """A hostile 5D header whose voxel count is 2**64 (0 in int64 arithmetic) is refused, not read as empty."""
        header = nib.Nifti1Header()
        header.set_data_dtype(np.int16)
        header.set_data_shape((16384, 16384, 16384, 16384, 256))
        header["vox_offset"] = 352
        path = os.path.join(self.d, "overflow.nii")
        with open(path, "wb") as f:
            f.write(header.binaryblock + b"\0" * 4)
        with self.assertRaisesRegex(ValueError, r"overflow.nii: header declares shape .* larger than the limit"):
            nifti_image(path)

    def test_zero_length_axis_refused(self):
        path = self._nii(shape=(4, 0, 2))
        with self.assertRaisesRegex(ValueError, r"invalid image dimensions \(4, 0, 2\)"):
            nifti_image(path)
        self.assert_refused_everywhere(path, "invalid image dimensions")

    def test_empty_file_named_as_such(self):
        path = os.path.join(self.d, "empty.nii")
        open(path, "wb").close()
        with self.assertRaisesRegex(ValueError, r"empty.nii: empty file \(0 bytes\), not a NIfTI image"):
            nifti_image(path)

    def test_source_meta_of_an_unscaled_image(self):
        """An image without scaling (no array proxy: built in memory) reports slope 1 and intercept 0."""
        img = nib.Nifti1Image(np.zeros((3, 2, 2), np.int16), np.eye(4))
        meta = nifti_source_meta(img)
        self.assertEqual((meta["source_scl_slope"], meta["source_scl_inter"]), (1.0, 0.0))
        self.assertEqual((meta["source_format"], np.dtype(meta["source_dtype"])), ("nifti", np.dtype(np.int16)))

    def test_reader_returns_one_image_for_one_file(self):
        path = self._nii()
        self.assertIsInstance(NiftiReader().read(path), nib.Nifti1Image)
        dicom = dicom_slice(os.path.join(self.d, "one.dcm"), np.ones((6, 5), np.int16))
        self.assertIsInstance(DicomReader().read(dicom), pydicom.Dataset)  # one file given alone, not in a list
        self.assertTrue(DicomReader().verify_suffix(dicom))
        self.assertEqual(len(NiftiReader().read([path, path])), 2)


class TestCaches(_Tmp):
    """The header / gzip / series caches: bounded (least recently used goes first) and emptied by clear_caches."""

    def test_bounded_least_recently_used(self):
        cache = readers_module._Cache(2)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertEqual(cache.get("a"), 1)  # a used: b is now the oldest
        cache.put("c", 3)
        self.assertEqual((cache.get("b"), cache.get("a"), cache.get("c")), (None, 1, 3))
        cache.put("a", 10)  # a stored again: c is now the oldest
        cache.put("d", 4)
        self.assertEqual((cache.get("c"), cache.get("a"), cache.get("d")), (None, 10, 4))
        self.assertEqual(len(cache.data), 2)

    def test_clear_caches_forgets_every_check(self):
        nii = save_scaled_nifti(os.path.join(self.d, "s.nii.gz"), RNG.integers(0, 9, (4, 3, 2)).astype(np.uint8))
        folder = dicom_series_folder(os.path.join(self.d, "s"), RNG.integers(0, 9, (6, 5, 3)).astype(np.int16))
        for _ in range(2):  # the second round after the caches were filled
            readers_module.clear_caches()
            with (
                mock.patch.object(nib, "load", wraps=nib.load) as headers,
                mock.patch.object(readers_module.gzip, "open", wraps=gzip.open) as streams,
                mock.patch.object(readers_module.pydicom, "dcmread", wraps=pydicom.dcmread) as slices,
            ):
                load_image(nii)
                load_image(folder)
            self.assertEqual((headers.call_count, streams.call_count, slices.call_count), (1, 1, 3))


if __name__ == "__main__":
    unittest.main()
