"""DICOM data sets written without the 128-byte preamble and ``DICM`` prefix (older archives, some exports) are read as
DICOM, with the transfer syntax they were written in; everything else that merely starts like one is not."""

from __future__ import annotations

import glob
import os
import struct
import tempfile
import unittest

import numpy as np
import pydicom
from custom.data import load_image
from custom.data.readers import bare_dicom, is_dicom, is_series_candidate, read_dicom_header
from custom.inference import load_dicom_series, write_dicom_series
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.utils import FreshReadersCase, dicom_dataset, dicom_series_folder

VOLUME = np.arange(8 * 6 * 3, dtype=np.int16).reshape(8, 6, 3) - 50


def bare_bytes(ds: pydicom.Dataset, implicit: bool) -> bytes:
    """``ds``'s data elements alone, little endian: no preamble, no DICM, no file meta group."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, pydicom.Dataset(ds))
    return buf.getvalue()


class TestBareDicom(FreshReadersCase):
    def setUp(self) -> None:
        super().setUp()
        self.root = self.tmp
        dicom_series_folder(os.path.join(self.root, "part10"), VOLUME, Modality="CT", RescaleIntercept=-1024)
        self.sources = sorted(glob.glob(os.path.join(self.root, "part10", "*")))

    def bare_series(self) -> str:
        folder = os.path.join(self.root, "bare")
        os.makedirs(folder)
        for k, src in enumerate(self.sources):  # implicit and explicit VR mixed, no suffix (IM0000, ...)
            with open(os.path.join(folder, f"IM{k:04d}"), "wb") as f:
                f.write(bare_bytes(pydicom.dcmread(src), implicit=k % 2 == 0))
        return folder

    def test_series_reads_as_its_part10_twin_and_restores_to_part10(self) -> None:
        folder = self.bare_series()
        with open(os.path.join(folder, "README.txt"), "w") as f:
            f.write("not an image")
        names = sorted(os.listdir(folder))
        self.assertEqual([n for n in names if is_series_candidate(os.path.join(folder, n))], names[:-1])
        bare, part10 = load_image(folder), load_image(os.path.join(self.root, "part10"))
        np.testing.assert_array_equal(bare.numpy(), part10.numpy())
        self.assertEqual(float(bare.min()), -50 - 1024)  # rescaled: HU, not stored values
        syntaxes = [str(read_dicom_header(os.path.join(folder, n)).file_meta.TransferSyntaxUID) for n in names[:-1]]
        self.assertEqual(syntaxes, [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        files = [os.path.join(folder, n) for n in names[:-1]]
        values, info = load_dicom_series(files, folder)
        out = write_dicom_series(values + 1, info["datasets"], info["files"], os.path.join(self.root, "out"))
        for name in os.listdir(out):
            self.assertTrue(pydicom.misc.is_dicom(os.path.join(out, name)), name)  # written as Part 10
        np.testing.assert_array_equal(load_image(out).numpy(), part10.numpy() + 1)

    def test_single_file_with_dcm_suffix(self) -> None:
        path = os.path.join(self.root, "slice.dcm")
        with open(path, "wb") as f:
            f.write(bare_bytes(pydicom.dcmread(self.sources[1]), implicit=False))
        np.testing.assert_array_equal(load_image(path).numpy(), load_image(self.sources[1]).numpy())

    def test_compressed_bare_data_set_refused(self) -> None:
        ds = pydicom.dcmread(self.sources[0])
        ds.compress(RLELossless, encoding_plugin="pydicom")
        path = os.path.join(self.root, "rle")
        with open(path, "wb") as f:
            f.write(bare_bytes(ds, implicit=False))
        with self.assertRaisesRegex(ValueError, "rle: DICOM data set without a file meta header and with compressed"):
            load_image(path)

    def test_part10_file_without_transfer_syntax_big_endian(self) -> None:
        # preamble and meta group present, Transfer Syntax UID missing: the encoding pydicom found decides
        ds = dicom_dataset(VOLUME[..., 0], Modality="CT")
        path = os.path.join(self.root, "be.dcm")
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        body = pydicom.Dataset(ds)
        body.PixelData = np.asarray(ds.pixel_array).astype(">i2").tobytes()
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = False, False
        write_dataset(buf, body)
        with open(path, "wb") as f:
            f.write(b"\0" * 128 + b"DICM")
            write_file_meta_info(DicomFileLike(f), meta, enforce_standard=False)
            f.write(buf.getvalue())
        self.assertEqual(read_dicom_header(path).file_meta.TransferSyntaxUID, ExplicitVRBigEndian)
        np.testing.assert_array_equal(load_image(path, swap_ij=False).numpy(), VOLUME[..., 0])


class TestSniffing(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)

    def check(self, name: str, data: bytes) -> bool:
        path = os.path.join(self._tmp.name, name)
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(is_dicom(path), bare_dicom(path), name)  # no suffix: the sniffing decides
        return bare_dicom(path)

    def test_first_element(self) -> None:
        pad = b"\0" * 64
        self.assertTrue(self.check("explicit", struct.pack("<HH", 0x0008, 0x0016) + b"UI" + b"\x04\x00" + pad))
        self.assertTrue(self.check("implicit", struct.pack("<HHI", 0x0008, 0x0005, 10) + pad))
        self.assertTrue(self.check("meta_group", struct.pack("<HH", 0x0002, 0x0000) + b"UL" + pad))
        # implicit VR: the length must fit in the file
        self.assertTrue(self.check("fits", struct.pack("<HHI", 0x0008, 0x0005, 64) + pad))
        self.assertFalse(self.check("too_long", struct.pack("<HHI", 0x0008, 0x0005, 65) + pad))
        self.assertFalse(self.check("lower_vr", struct.pack("<HH", 0x0008, 0x0016) + b"ui" + b"\xff\xff" + pad))
        self.assertFalse(self.check("patient_group", struct.pack("<HH", 0x0010, 0x0010) + b"PN" + pad))
        self.assertFalse(self.check("element_0100", struct.pack("<HH", 0x0008, 0x0100) + b"SH" + pad))
        self.assertTrue(self.check("element_00ff", struct.pack("<HH", 0x0008, 0x00FF) + b"SH" + pad))
        self.assertFalse(self.check("big_endian", struct.pack(">HH", 0x0008, 0x0016) + b"UI" + pad))
        self.assertFalse(self.check("short", struct.pack("<HH", 0x0008, 0x0016) + b"UI"))
        self.assertFalse(self.check("gzip", b"\x1f\x8b\x08\x00" + pad))
        self.assertFalse(bare_dicom(os.path.join(self._tmp.name, "missing")))

    def test_junk_with_a_dicom_suffix_stays_unreadable(self) -> None:
        path = os.path.join(self._tmp.name, "junk.dcm")
        with open(path, "wb") as f:
            f.write(b"\x10\x00\x10\x00" + bytes(range(200)))  # not a bare data set: never force-read
        with self.assertRaisesRegex(ValueError, "junk.dcm: unreadable DICOM file .*InvalidDicomError"):
            read_dicom_header(path)


if __name__ == "__main__":
    unittest.main()
