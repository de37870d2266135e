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
        with open(os.path.join(folder, "README"), "w") as f:  # no suffix: the sniffing rejects it
            f.write("not an image")
        with open(os.path.join(folder, "volume"), "wb") as f:  # raw voxels beginning like an element
            f.write(np.array([8, 5, 3, 0, 7, 7] + [2] * 100, "<i2").tobytes())
        names = sorted(os.listdir(folder))
        self.assertEqual([n for n in names if is_series_candidate(os.path.join(folder, n))], names[:3])
        bare, part10 = load_image(folder), load_image(os.path.join(self.root, "part10"))
        np.testing.assert_array_equal(bare.numpy(), part10.numpy())
        self.assertEqual(float(bare.min()), -50 - 1024)  # rescaled: HU, not stored values
        syntaxes = [str(read_dicom_header(os.path.join(folder, n)).file_meta.TransferSyntaxUID) for n in names[:3]]
        self.assertEqual(syntaxes, [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        files = [os.path.join(folder, n) for n in names[:3]]
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

    def test_meta_group_without_preamble_reads(self) -> None:
        path = os.path.join(self.root, "no_preamble")
        with open(self.sources[0], "rb") as src, open(path, "wb") as f:
            f.write(src.read()[132:])  # the meta group first: no 128-byte preamble, no DICM
        np.testing.assert_array_equal(load_image(path).numpy(), load_image(self.sources[0]).numpy())

    def test_restoring_needs_the_source_uids(self) -> None:
        # an ACR-NEMA style file without SOP class / instance UIDs reads (training, evaluation) but is refused for
        # inference before restoring: the derived series references every source instance
        ds = pydicom.dcmread(self.sources[0])
        del ds.SOPInstanceUID
        path = os.path.join(self.root, "acr_nema")
        with open(path, "wb") as f:
            f.write(bare_bytes(ds, implicit=True))
        self.assertEqual(tuple(load_image(path, swap_ij=False).shape), (8, 6))
        with self.assertRaisesRegex(ValueError, r"acr_nema: no SOPInstanceUID \(0008,0018\) \(an ACR-NEMA file\?\)"):
            load_dicom_series([path], path)
        del ds.SOPClassUID
        with open(path + "2", "wb") as f:
            f.write(bare_bytes(ds, implicit=True))
        with self.assertRaisesRegex(ValueError, r"no SOPClassUID \(0008,0016\) or SOPInstanceUID \(0008,0018\)"):
            load_dicom_series([path + "2"], path + "2")

    def test_compressed_bare_data_set_refused(self) -> None:
        ds = pydicom.dcmread(self.sources[0])
        ds.compress(RLELossless, encoding_plugin="pydicom")
        path = os.path.join(self.root, "rle")
        with open(path, "wb") as f:
            f.write(bare_bytes(ds, implicit=False))
        with self.assertRaisesRegex(
            ValueError,
            r"rle: DICOM data set without a Transfer Syntax UID \(0002,0010\) .* compressed \(encapsulated\)",
        ):
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


def element(group: int, number: int, vr: bytes, value: bytes, explicit: bool = True) -> bytes:
    """One little-endian data element (explicit VR: 2- or 4-byte length by the VR; implicit: 4-byte length)."""
    if not explicit:
        return struct.pack("<HHI", group, number, len(value)) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, number) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, number) + vr + struct.pack("<H", len(value)) + value


UID = b"1.2.840.10008.5.1.4.1.1.2\0"  # CT Image Storage, padded to an even length
START = [(0x0008, 0x0005, b"CS", b"ISO_IR 100"), (0x0008, 0x0016, b"UI", UID), (0x0008, 0x0060, b"CS", b"CT")]
PIXELS = (0x7FE0, 0x0010, b"OW", bytes(32))


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

    def data(self, items: list, explicit: bool = True) -> bytes:
        return b"".join(element(*item, explicit=explicit) for item in items)

    def test_data_sets_in_either_encoding_and_with_a_meta_group(self) -> None:
        self.assertTrue(self.check("explicit", self.data(START + [PIXELS])))
        self.assertTrue(self.check("implicit", self.data(START + [PIXELS], explicit=False)))
        group_length = [(0x0008, 0x0000, b"UL", struct.pack("<I", 40))]
        self.assertTrue(self.check("group_length", self.data(group_length + START)))
        meta = self.data([(0x0002, 0x0001, b"OB", b"\0\1"), (0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2\0")])
        self.assertTrue(self.check("meta_then_implicit", meta + self.data(START, explicit=False)))
        self.assertTrue(self.check("ends_after_two", self.data(START[:2])))  # a short file that ends on an element

    def test_first_element(self) -> None:
        self.assertFalse(self.check("patient_group", self.data([(0x0010, 0x0010, b"PN", b"DOE^J ")] + START[1:])))
        self.assertFalse(
            self.check(
                "element_0100", self.data([(0x0008, 0x0100, b"SH", b"1234"), (0x0010, 0x0010, b"PN", b"DOE^J ")])
            )
        )
        self.assertTrue(
            self.check(
                "element_00ff", self.data([(0x0008, 0x00FF, b"SH", b"1234"), (0x0010, 0x0010, b"PN", b"DOE^J ")])
            )
        )
        self.assertFalse(self.check("undefined_first", struct.pack("<HH", 8, 5) + b"SQ\0\0" + b"\xff" * 4 + bytes(8)))
        self.assertFalse(self.check("big_endian", struct.pack(">HH", 8, 5) + b"CS" + struct.pack(">H", 2) + b"AB"))
        self.assertFalse(self.check("short", struct.pack("<HH", 8, 0x16) + b"UI"))
        self.assertFalse(bare_dicom(os.path.join(self._tmp.name, "missing")))

    def test_the_walk(self) -> None:
        self.assertTrue(
            self.check(
                "undefined_later",
                self.data(START) + struct.pack("<HH", 0x7FE0, 0x10) + b"OB\0\0" + b"\xff" * 4 + bytes(16),
            )
        )
        self.assertFalse(self.check("descending", self.data([START[1], START[0], START[2]])))
        self.assertFalse(self.check("repeated", self.data([START[0], START[0], START[2]])))
        self.assertFalse(self.check("odd_length", self.data([START[0], (0x0008, 0x0016, b"UI", UID[:-1]), START[2]])))
        self.assertFalse(self.check("unknown_vr", self.data([START[0], (0x0008, 0x0016, b"XY", UID), START[2]])))
        self.assertFalse(self.check("group_zero", self.data([(0x0000, 0x0000, b"UL", bytes(4))] + START)))
        self.assertFalse(
            self.check("odd_low_group", self.data([(0x0002, 0x0010, b"UI", b"1.2\0"), (0x0007, 0x0010, b"LO", b"AB")]))
        )
        self.assertFalse(
            self.check("item_tag", self.data(START[:1], explicit=False) + struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        )
        more = [(0x0010, 0x0010, b"PN", b"DOE^J "), (0x0020, 0x000D, b"UI", b"1.2\0")]
        truncated = self.data(START + more + [PIXELS])[:-2]  # the 6th element, the last walked, ends past the end
        self.assertFalse(self.check("truncated", truncated))
        # explicit first element, later ones implicit: not one encoding
        self.assertFalse(self.check("mixed", self.data(START[:1]) + self.data(START[1:], explicit=False)))

    def test_raw_voxels_starting_with_small_numbers_are_not_dicom(self) -> None:
        rng = np.random.default_rng(0)
        raw = np.array([8, 5, 3, 0, 7, 7] + [2] * 100, "<i2")  # MR background: passes the first-element test
        self.assertFalse(self.check("volume", raw.tobytes()))
        accepted = 0
        for i in range(300):  # int16 noise below 60 (about 4 % passed a first-element-only sniff)
            values = rng.integers(0, 60, 4096).astype("<i2")
            values[:2] = (8, rng.integers(0, 60))
            accepted += self.check(f"noise{i}", values.tobytes())
        self.assertEqual(accepted, 0)

    def test_junk_with_a_dicom_suffix_stays_unreadable(self) -> None:
        path = os.path.join(self._tmp.name, "junk.dcm")
        with open(path, "wb") as f:
            f.write(b"\x10\x00\x10\x00" + bytes(range(200)))  # not a bare data set: never force-read
        with self.assertRaisesRegex(ValueError, "junk.dcm: unreadable DICOM file .*InvalidDicomError"):
            read_dicom_header(path)

    def test_raw_voxel_suffixes_are_never_bare_dicom(self) -> None:
        data = self.data(START + [PIXELS])  # a bare data set's bytes under these names: not taken for DICOM
        part10 = b"\0" * 128 + b"DICM" + data  # with the DICM prefix: DICOM whatever the name
        for suffix in (".raw", ".img", ".hdr", ".REC", ".npy", ".IMG", ".zraw"):
            for name, content, expected in (("bare", data, False), ("part10", part10, True)):
                path = os.path.join(self._tmp.name, name + suffix)
                with open(path, "wb") as f:
                    f.write(content)
                self.assertEqual(is_dicom(path), expected, name + suffix)
                self.assertEqual(is_series_candidate(path), expected, name + suffix)


if __name__ == "__main__":
    unittest.main()
