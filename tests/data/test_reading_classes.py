"""The reading layer's silent-corruption classes, each tested as a class through every entry point that reads:
``load_image`` (training / validation / evaluation, data-list validator), ``load_slice`` + ``num_slices`` (the
training path) and ``LoadScand`` (inference). Each input either reads back the right physical values or is refused
with a ``ValueError`` naming the file and the problem."""

from __future__ import annotations

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
from custom.data.readers import dicom_series, pet_suv_factor
from custom.data.slicing import LoadSliced, load_slice, num_slices
from custom.inference.io import LoadScand
from parameterized import parameterized
from pydicom.dataset import Dataset
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
        plain = dicom_series_folder(os.path.join(self.d, "plain"), vol, slope=2.0, inter=-1024.0, orientation=iop)
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

    def test_big_endian_reads_back(self):
        vol = RNG.integers(-2000, 2000, (6, 5, 2)).astype(np.int16)
        folder = dicom_series_folder(os.path.join(self.d, "be"), vol, syntax=ExplicitVRBigEndian, inter=-1024.0)
        np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol.astype(np.float32) - 1024)


class TestPet(_Tmp):
    @parameterized.expand(
        [
            ("counts", {"units": "CNTS"}, "Units CNTS"),
            ("no_weight", {"weight": None}, "PatientWeight (0010,1030)"),
            ("no_dose", {"dose": None}, "RadionuclideTotalDose (0018,1074)"),
            ("no_half_life", {"half_life": None}, "RadionuclideHalfLife (0018,1075)"),
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


if __name__ == "__main__":
    unittest.main()
