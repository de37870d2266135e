from __future__ import annotations

import gzip
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np
import pydicom
from custom.data import DicomReader, load_image
from custom.data import readers as readers_module
from custom.data.readers import (
    dicom_series,
    is_dicom,
    is_series_candidate,
    pet_reference_time,
    pet_suv_factor,
    read_dicom_header,
    verify_gzip,
)
from parameterized import parameterized
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.utils import dicom_dataset, dicom_series_folder, dicom_slice, pet_tags, save_nifti

CT_FILE = get_testdata_file("CT_small.dcm")
MR_FILE = get_testdata_file("MR_small.dcm")


def _pet_dataset(weight=70.0, dose=3.7e8, half_life=6586.2, start="100000", series="110000"):
    ds = pydicom.dcmread(CT_FILE)
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.PatientWeight = weight
    ds.SeriesDate = "20200101"
    ds.SeriesTime = series
    info = Dataset()
    info.RadionuclideTotalDose = dose
    info.RadionuclideHalfLife = half_life
    info.RadiopharmaceuticalStartTime = start
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])
    return ds


class TestReaders(unittest.TestCase):
    def test_ct_dicom_rescaled_to_hu_with_modality(self):
        ds = pydicom.dcmread(CT_FILE)
        img = load_image(CT_FILE)
        expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        self.assertEqual(tuple(img.shape), (128, 128))
        np.testing.assert_allclose(np.sort(img.numpy().ravel()), np.sort(expected.ravel()))
        self.assertLess(float(img.min()), -500)  # air in HU, not raw stored values
        self.assertEqual(img.meta["modality"], "CT")
        self.assertEqual(load_image(MR_FILE).meta["modality"], "MRI")

    def test_dicom_series_folder_is_stacked(self):
        with tempfile.TemporaryDirectory() as d:
            series = os.path.join(d, "series")
            os.makedirs(series)
            for i in range(3):
                ds = pydicom.dcmread(CT_FILE)
                ds.InstanceNumber = i + 1
                ds.ImagePositionPatient = [0.0, 0.0, float(i) * 2.5]
                ds.save_as(os.path.join(series, f"s{i}.dcm"))
            img = load_image(series)
            self.assertEqual(tuple(img.shape), (128, 128, 3))
            self.assertEqual(img.meta["modality"], "CT")

    def test_series_spacing_is_pixel_spacing_and_slice_step(self):
        vol = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
        with tempfile.TemporaryDirectory() as d:
            dicom_series_folder(d, vol, positions=[10.0, 12.5, 15.0], spacing=(0.7, 0.9))
            img = load_image(d)
        self.assertEqual(tuple(img.shape), (5, 4, 3))  # MONAI's order: columns (x), rows (y), slices
        # PixelSpacing is (row step, column step) = (0.7, 0.9): x steps 0.9, y 0.7, the slices 2.5
        np.testing.assert_allclose(np.asarray(img.meta["spacing"], dtype=float), [0.9, 0.7, 2.5], rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0), [0.9, 0.7, 2.5], rtol=1e-6)

    def test_pet_suv_from_tags(self):
        ds = _pet_dataset()
        decayed = 3.7e8 * 2 ** (-3600.0 / 6586.2)
        self.assertAlmostEqual(pet_suv_factor(ds, "pet.dcm"), 70.0 * 1000.0 / decayed, places=9)
        with self.assertRaisesRegex(ValueError, "pet.dcm"):
            pet_suv_factor(_pet_dataset(weight=0.0), "pet.dcm")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "pet.dcm")
            ds.save_as(path)
            raw = load_image(path, dicom_suv=False).numpy()
            suv = load_image(path)
            np.testing.assert_allclose(suv.numpy(), raw * pet_suv_factor(ds, path), rtol=1e-5)
            self.assertEqual(suv.meta["modality"], "PET")

    def test_modality_in_meta(self):
        self.assertEqual(load_image(CT_FILE).meta["modality"], "CT")
        with tempfile.TemporaryDirectory() as d:
            nii = load_image(save_nifti(os.path.join(d, "a.nii.gz"), np.zeros((4, 4))))
            self.assertFalse(nii.meta.get("modality"))  # NIfTI carries no modality: the data list gives it

    def test_unreadable_and_missing_files_are_named(self):
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "broken.nii.gz")
            with open(bad, "wb") as f:
                f.write(b"not an image")
            with self.assertRaisesRegex(ValueError, "broken.nii.gz: unreadable"):
                load_image(bad)
            with self.assertRaisesRegex(ValueError, "nope.nii: file not found"):
                load_image(os.path.join(d, "nope.nii"))

    def test_reader_usable_in_loadimaged(self):
        from monai.transforms import LoadImaged

        out = LoadImaged("image", reader=DicomReader)({"image": CT_FILE})
        self.assertEqual(out["image"].meta["modality"], "CT")
        with tempfile.TemporaryDirectory() as d:  # NIfTI items in the same list fall back to MONAI's readers
            nii = save_nifti(os.path.join(d, "a.nii.gz"), np.ones((5, 6, 2)))
            self.assertEqual(tuple(LoadImaged("image", reader=DicomReader)({"image": nii})["image"].shape), (5, 6, 2))


class TestSniffing(unittest.TestCase):
    """Which files are DICOM: by suffix, else by the DICM preamble, never for other image suffixes; hidden files and
    DICOMDIR indexes are not part of a series."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.d = self.tmp.name

    def test_other_image_suffix_is_not_dicom_even_with_a_preamble(self):
        for name in ("scan.png", "scan.json", "scan.nii", "scan.nii.gz"):
            path = dicom_slice(os.path.join(self.d, name), np.zeros((4, 3), np.int16))
            self.assertFalse(is_dicom(path), name)
        with self.assertRaisesRegex(ValueError, "scan.png: unsupported file type"):
            load_image(os.path.join(self.d, "scan.png"))
        plain = dicom_slice(os.path.join(self.d, "IM0001"), np.zeros((4, 3), np.int16))  # no suffix: the preamble
        self.assertTrue(is_dicom(plain))
        self.assertTrue(is_dicom(pathlib.Path(plain)))  # path-like names too
        self.assertTrue(is_dicom(pathlib.Path(self.d, "x.DCM")))  # a suffix decides, the file need not exist

    def test_series_candidates_skip_hidden_files_index_and_folders(self):
        vol = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
        folder = dicom_series_folder(os.path.join(self.d, "s"), vol)
        dicom_slice(os.path.join(folder, "DICOMDIR"), None)  # a DICOM index: no pixels
        dicom_slice(os.path.join(folder, ".hidden.dcm"), None)
        os.makedirs(os.path.join(folder, "sub.dcm"))
        for name in ("DICOMDIR", ".hidden.dcm", "sub.dcm"):
            self.assertFalse(is_series_candidate(os.path.join(folder, name)), name)
        self.assertTrue(is_series_candidate(os.path.join(folder, "slice000.dcm")))
        self.assertEqual(len(dicom_series(folder).files), 2)
        np.testing.assert_array_equal(load_image(folder, swap_ij=False).numpy(), vol.astype(np.float32))


class TestGzipCheck(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = os.path.join(self.tmp.name, "v.nii.gz")

    def test_corrupt_deflate_data_is_a_named_value_error(self):
        body = gzip.compress(np.arange(4096, dtype=np.int16).tobytes(), mtime=0)
        bad = bytearray(body)
        bad[10] = 0x07  # the first deflate block: final, with the reserved (invalid) block type
        with open(self.path, "wb") as f:
            f.write(bytes(bad))
        with self.assertRaisesRegex(ValueError, "v.nii.gz: corrupt compressed file"):
            verify_gzip(self.path)

    def test_read_error_is_a_named_value_error(self):
        with open(self.path, "wb") as f:
            f.write(gzip.compress(b"x" * 100))

        class Failing:
            def __enter__(self):
                return self

            def __exit__(self, *args):
                return False

            def read(self, n):
                raise OSError(5, "Input/output error")

        with mock.patch.object(readers_module.gzip, "open", return_value=Failing()):
            with self.assertRaisesRegex(ValueError, "v.nii.gz: corrupt compressed file.*Input/output error"):
                verify_gzip(self.path)


class TestDicomHeaders(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.d = self.tmp.name

    def test_header_read_once_whatever_the_series_key(self):
        """A header is cached per file version, not only per series: the folder and a list of its files (another
        series key, as scan discovery gives it) read each file once."""
        folder = dicom_series_folder(os.path.join(self.d, "s"), np.zeros((4, 3, 3), np.int16))
        files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        readers_module.clear_caches()
        with mock.patch.object(readers_module.pydicom, "dcmread", wraps=pydicom.dcmread) as reads:
            dicom_series(folder)
            dicom_series(files, where="listed")
            read_dicom_header(pathlib.Path(files[0]))
        self.assertEqual(reads.call_count, 3)

    def test_series_of_a_one_file_list(self):
        path = dicom_slice(os.path.join(self.d, "one", "a.dcm"), np.arange(12, dtype=np.int16).reshape(4, 3))
        series = dicom_series([path])
        self.assertEqual((series.files, series.where, series.shape), ((path,), os.path.dirname(path), (4, 3)))
        img = load_image([path], swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), np.arange(12, dtype=np.float32).reshape(4, 3))
        self.assertEqual(img.meta["filename_or_obj"], os.path.dirname(path))

    def test_reader_api(self):
        """``verify_suffix`` accepts only all-DICOM lists; ``read_series`` of one index gives that slice's dataset."""
        folder = dicom_series_folder(os.path.join(self.d, "s"), np.arange(24, dtype=np.int16).reshape(4, 3, 2))
        nii = save_nifti(os.path.join(self.d, "a.nii.gz"), np.zeros((4, 3)))
        reader = DicomReader()
        self.assertTrue(reader.verify_suffix([folder, os.path.join(folder, "slice000.dcm")]))
        self.assertFalse(reader.verify_suffix([os.path.join(folder, "slice000.dcm"), nii]))
        ds = reader.read_series(dicom_series(folder), 1)
        self.assertIsInstance(ds, pydicom.Dataset)
        self.assertEqual(int(ds.InstanceNumber), 2)

    def test_pet_reference_time_computed_once_per_series(self):
        folder = dicom_series_folder(
            os.path.join(self.d, "pet"), np.full((4, 3, 3), 100, np.uint16), modality="PT", **pet_tags()
        )
        with mock.patch.object(readers_module, "pet_reference_time", wraps=pet_reference_time) as computed:
            img = load_image(folder)
        self.assertEqual(computed.call_count, 1)
        expected = 70.0 * 1000.0 / (3.5e8 * 2 ** (-3600.0 / 6586.2))
        np.testing.assert_allclose(img.numpy(), 100 * np.float32(expected), rtol=1e-6)
        np.testing.assert_allclose(img.meta["suv_factors"], [expected] * 3, rtol=1e-12)

    def test_meta_names_the_source_and_pet_units(self):
        folder = dicom_series_folder(
            os.path.join(self.d, "pet"), np.full((4, 3, 2), 100, np.uint16), modality="PT", **pet_tags()
        )
        files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        self.assertEqual(load_image(folder).meta["pet_units"], "BQML")
        self.assertEqual(load_image(folder, pet_units="SUV").meta["pet_units"], "SUV")
        self.assertEqual(load_image(files[0]).meta["filename_or_obj"], files[0])
        listed = load_image(files)
        self.assertEqual(listed.meta["filename_or_obj"], folder)  # a list of one series' files: their folder
        self.assertEqual(listed.meta["source_files"], files)
        self.assertEqual(
            (listed.meta["source_format"], listed.meta["transfer_syntax"]), ("dicom", ExplicitVRLittleEndian)
        )
        ct = load_image(dicom_slice(os.path.join(self.d, "ct.dcm"), np.zeros((4, 3), np.int16)))
        self.assertNotIn("pet_units", ct.meta)

    def test_unparseable_reference_time_is_named(self):
        ds = _pet_dataset(series="996000")  # hour 99, the acquisition time as well: tags present, values unusable
        ds.AcquisitionTime = "996000"
        self.assertEqual(pet_reference_time([ds]), (None, [mock.ANY]))
        with self.assertRaisesRegex(ValueError, r"pet.dcm: .*decay reference time: .*unparseable date / time values"):
            pet_suv_factor(ds, "pet.dcm")

    def test_acquisition_time_fallback_needs_every_slice(self):
        """Without SeriesDate / SeriesTime the reference is the earliest AcquisitionTime of ALL slices; a slice
        without one leaves the reference unknown (refused), not taken from the other slices."""
        slices = []
        for acq in ("110500", None, "110000"):
            ds = _pet_dataset()
            del ds.SeriesTime
            ds.AcquisitionDate = "20200101"
            ds.AcquisitionTime = acq
            slices.append(ds)
        ref, missing = pet_reference_time(slices)
        self.assertIsNone(ref)
        self.assertIn("decay reference time", missing[0])
        slices[1].AcquisitionTime = "111000"
        self.assertEqual(pet_reference_time(slices), (pet_reference_time([slices[2]])[0], []))
        self.assertEqual(pet_reference_time(slices)[0].strftime("%Y%m%d%H%M%S"), "20200101110000")


class TestCompressedDicom(unittest.TestCase):
    """The lossless transfer syntaxes PACS exports use read back to the stored values exactly (rescale applied):
    JPEG Lossless (Process 14 and its SV1 form, the most common in CT archives) and JPEG-LS through GDCM, JPEG 2000
    and RLE; signed, unsigned, 12 of 16 bits stored and 8-bit slices."""

    @parameterized.expand(
        [
            (syntax.name, syntax, kind, bits)
            for syntax in (JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless)
            for kind, bits in (("i2", 16), ("i2", 12), ("u2", 16), ("u2", 12), ("u1", 8))
        ]
    )
    def test_series_reads_the_stored_values(self, _, syntax, kind, bits):
        dtype = np.dtype(kind)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if kind[0] == "i" else (0, 2**bits - 1)
        rng = np.random.default_rng(bits)
        vol = rng.integers(lo, hi, (16, 12, 3), endpoint=True).astype(dtype)
        vol[0, 0, 0], vol[1, 0, 0] = lo, hi  # the extremes of the stored range
        with tempfile.TemporaryDirectory() as d:
            dicom_series_folder(d, vol, syntax=syntax, bits_stored=bits, slope=0.5, inter=-1024.0)
            self.assertEqual(pydicom.dcmread(os.path.join(d, "slice000.dcm")).file_meta.TransferSyntaxUID, syntax)
            img = load_image(d, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), vol.astype(np.float64) * 0.5 - 1024.0)

    def test_an_undecodable_syntax_is_refused_naming_the_file(self):
        path = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG extended: no installed decoder handles it
        with self.assertRaisesRegex(
            ValueError, rf"(?s)^{re.escape(path)}: unreadable DICOM pixel data .*JPEG Extended"
        ):
            load_image(path)

    @parameterized.expand(
        [
            # JPEG 2000 (pydicom's OpenJPEG encoder): junk after the start-of-codestream and SIZ markers
            ("jpeg2000", b"\xff\x4f\xff\x51", (37, 38, 47, 48)),
            # JPEG baseline, 8-bit lossy (GDCM's encoder): junk after the start-of-image marker
            ("jpeg_baseline", b"\xff\xd8\xff", (7, 13, 15, 18)),
        ]
    )
    def test_corrupt_headers_are_refused_not_fatal(self, kind, marker, seeds):
        # junk in the first bytes of the compressed data: GDCM's decoders for these (pydicom's first choice once
        # python-gdcm is installed) abort the process on each of these files (uncaught C++ exception, measured); the
        # reader must name the file. Read in a child process, so a regression fails this test instead of killing
        # the test run.
        if kind == "jpeg2000":
            ds = dicom_dataset(np.random.default_rng(0).integers(-1024, 3000, (64, 64)).astype(np.int16))
            ds.compress(JPEG2000Lossless)
        else:
            pixels = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
            ds = dicom_dataset(pixels, syntax=JPEGBaseline8Bit, slope=None, inter=None)
        with tempfile.TemporaryDirectory() as d:
            clean = os.path.join(d, "clean.dcm")
            ds.save_as(clean, enforce_file_format=True)
            raw = open(clean, "rb").read()
            head = raw.find(marker)
            self.assertGreater(head, 0)
            paths = [clean]  # the control: the same file uncorrupted is read (a decoder refusing everything fails)
            for seed in seeds:
                rng = np.random.default_rng(seed)
                start, n = head + int(rng.integers(0, 120)), int(rng.integers(4, 200))
                data = bytearray(raw)
                data[start : start + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                paths.append(os.path.join(d, f"junk{seed}.dcm"))
                with open(paths[-1], "wb") as f:
                    f.write(bytes(data))
            code = (
                "import sys\nfrom custom.data import load_image\n"
                "for p in sys.argv[1:]:\n"
                "    try:\n        load_image(p)\n        print('read', p)\n"
                "    except ValueError as e:\n        print('refused', str(e).splitlines()[0])\n"
            )
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            run = subprocess.run(
                [sys.executable, "-c", code, *paths], capture_output=True, text=True, env=env, timeout=300
            )
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        lines = run.stdout.splitlines()
        self.assertEqual([line.split(" ", 1)[0] for line in lines], ["read"] + ["refused"] * len(seeds), run.stdout)
        for path, line in zip(paths[1:], lines[1:]):
            self.assertIn(f"{path}: unreadable DICOM pixel data", line)

    def test_lossy_jpeg_baseline_and_jpeg2000_read_close_to_the_source(self):
        # the lossy syntaxes whose decoder the reader pins (Pillow, pylibjpeg-openjpeg): read, and near the pixels
        rng = np.random.default_rng(1)
        smooth = np.add.outer(np.arange(64), np.arange(64)).astype(np.float64)
        pixels = np.clip(smooth * 2 + rng.normal(0, 2, (64, 64)), 0, 255).astype(np.uint8)
        with tempfile.TemporaryDirectory() as d:
            base = os.path.join(d, "baseline.dcm")
            dicom_dataset(pixels, syntax=JPEGBaseline8Bit, slope=None, inter=None).save_as(
                base, enforce_file_format=True
            )
            j2k = os.path.join(d, "j2k.dcm")
            ds = dicom_dataset(pixels.astype(np.uint16) * 16, bits_stored=12, slope=None, inter=None)
            ds.compress(JPEG2000, j2k_cr=[10])
            ds.save_as(j2k, enforce_file_format=True)
            read_base, read_j2k = load_image(base, swap_ij=False).numpy(), load_image(j2k, swap_ij=False).numpy()
            self.assertEqual(pydicom.dcmread(base).file_meta.TransferSyntaxUID, JPEGBaseline8Bit)
            self.assertEqual(pydicom.dcmread(j2k).file_meta.TransferSyntaxUID, JPEG2000)
        self.assertLess(np.abs(read_base - pixels).mean(), 4.0)
        self.assertLess(np.abs(read_j2k - pixels.astype(np.float64) * 16).mean(), 4.0 * 16)
        self.assertGreater(np.abs(read_j2k - pixels.astype(np.float64) * 16).max(), 0)  # lossy indeed

    def test_jpeg2000_from_another_encoder(self):
        # pydicom's own JPEG 2000 encoder (OpenJPEG), signed 12 of 16 bits: read back exactly whatever decodes it
        vol = np.random.default_rng(0).integers(-2048, 2047, (64, 64), endpoint=True).astype(np.int16)
        with tempfile.TemporaryDirectory() as d:
            ds = dicom_dataset(vol, bits_stored=12)
            ds.compress(JPEG2000Lossless)
            path = os.path.join(d, "j2k.dcm")
            ds.save_as(path, enforce_file_format=True)
            img = load_image(path, swap_ij=False)
        np.testing.assert_array_equal(img.numpy(), vol.astype(np.float64))


if __name__ == "__main__":
    unittest.main()
