"""Scan discovery (custom.inference.scans): what each scan found is (kind, files, name, output, modality) in folder
mode (DICOM files in the root, one-series and several-series folders, unreadable series) and in data-list mode
(relative and absolute paths, the split, the base folder), and the inputs that are refused."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import numpy as np
from custom.data import readers
from custom.inference import find_scans
from custom.inference.scans import NIFTI_SUFFIXES, read_dicom_headers

from tests.utils import dicom_series_folder, dicom_slice, save_nifti

UID_A, UID_B = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"


def _pixels(n: int) -> np.ndarray:
    return np.arange(6 * 5 * n, dtype=np.int16).reshape(6, 5, n)


class TestFolderScans(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self.tmp.name, "in")
        self.out = os.path.join(self.tmp.name, "out")
        os.makedirs(self.root)

    def tearDown(self):
        self.tmp.cleanup()

    def _by_name(self, modality: str | None = "CT") -> dict:
        return {item["name"]: item for item in find_scans(self.root, self.out, modality=modality)}

    def test_each_scan_kind_name_files_and_output(self):
        top = [dicom_slice(os.path.join(self.root, f"top{k}.dcm"), _pixels(1)[..., 0]) for k in (1, 2)]
        one = dicom_series_folder(os.path.join(self.root, "one"), _pixels(3), series=UID_A)
        two = os.path.join(self.root, "two")
        dicom_series_folder(two, _pixels(2), series=UID_B, names=["b0.dcm", "b1.dcm"])
        dicom_series_folder(two, _pixels(2), series=UID_A, names=["a0.dcm", "a1.dcm"])
        nested = save_nifti(os.path.join(self.root, "nested", "deeper", "v.nii.gz"), np.zeros((6, 5, 2)))
        save_nifti(os.path.join(self.root, ".cache", "hidden.nii.gz"), np.zeros((6, 5, 2)))
        with open(os.path.join(self.root, "DICOMDIR"), "wb") as f:
            f.write(b"\0" * 132)
        items = self._by_name()
        rel_nested = os.path.join("nested", "deeper", "v.nii.gz")
        expected = {"top1.dcm", "top2.dcm", "one", os.path.join("two", UID_A), os.path.join("two", UID_B)}
        self.assertEqual(set(items), expected | {rel_nested, ".cache", "DICOMDIR"})
        for k, path in zip((1, 2), top):  # DICOM files directly in the searched folder: one scan per file
            item = items[f"top{k}.dcm"]
            self.assertEqual((item["kind"], item["image"], item["files"]), ("dicom", path, [path]))
            self.assertEqual(item["output"], os.path.join(self.out, f"top{k}.dcm"))
        item = items["one"]  # the only series of its folder: named as the folder
        self.assertEqual((item["kind"], item["image"], item["series_uid"]), ("dicom", one, UID_A))
        self.assertEqual(item["files"], [os.path.join(one, f"slice{k:03d}.dcm") for k in range(3)])
        self.assertEqual(item["output"], os.path.join(self.out, "one"))
        for uid, prefix in ((UID_A, "a"), (UID_B, "b")):  # several series: one sub-folder per series
            item = items[os.path.join("two", uid)]
            self.assertEqual((item["image"], item["series_uid"]), (two, uid))
            self.assertEqual(item["files"], [os.path.join(two, f"{prefix}{k}.dcm") for k in range(2)])
            self.assertEqual(item["output"], os.path.join(self.out, "two", uid))
        item = items[rel_nested]
        self.assertEqual((item["kind"], item["image"]), ("nifti", nested))
        self.assertEqual(item["output"], os.path.join(self.out, rel_nested))
        self.assertNotIn("files", item)
        self.assertIn("hidden folder", items[".cache"]["skip"])
        self.assertIn("DICOMDIR index file", items["DICOMDIR"]["skip"])
        for name, item in items.items():
            self.assertEqual((item["source"], item["modality"]), (item["image"], "CT"), name)
            self.assertEqual("skip" in item, name in (".cache", "DICOMDIR"), name)
            self.assertNotIn("error", item, name)
        self.assertEqual(self._by_name(None)["one"]["modality"], None)  # the DICOM Modality tag decides later

    def test_file_linked_twice_is_one_scan_and_this_runs_report_is_not_an_input(self):
        store = os.path.join(self.tmp.name, "store")
        target = save_nifti(os.path.join(store, "v.nii.gz"), np.zeros((6, 5, 2)))
        os.symlink(target, os.path.join(self.root, "first.nii.gz"))
        os.symlink(target, os.path.join(self.root, "second.nii.gz"))
        os.makedirs(self.out)
        with open(os.path.join(self.out, "inference_report.json"), "w", encoding="utf-8") as f:
            f.write("{}")
        os.symlink(os.path.join(self.out, "inference_report.json"), os.path.join(self.root, "report.json"))
        items = self._by_name()
        self.assertEqual(set(items), {"first.nii.gz", "second.nii.gz"})
        self.assertEqual(items["first.nii.gz"]["kind"], "nifti")
        self.assertEqual(items["second.nii.gz"]["kind"], "other")
        self.assertIn(f"same file as {os.path.join(self.root, 'first.nii.gz')}", items["second.nii.gz"]["skip"])

    def test_no_dataset_dir_is_refused_and_the_nifti_suffixes_are_the_readers(self):
        for missing in (None, "", os.path.join(self.root, "missing")):
            with self.subTest(missing), self.assertRaisesRegex(ValueError, "dataset_dir is not a folder"):
                find_scans(missing, self.out)
        self.assertEqual(sorted(NIFTI_SUFFIXES), sorted(readers.NIFTI_SUFFIXES))

    def test_series_without_uid_is_named_unknown(self):
        folder = os.path.join(self.root, "mixed")
        dicom_series_folder(folder, _pixels(2), series=UID_A, names=["a0.dcm", "a1.dcm"])
        dicom_series_folder(folder, _pixels(1), names=["n0.dcm"], SeriesInstanceUID=None)
        self.assertEqual(
            read_dicom_headers([os.path.join(folder, n) for n in ("n0.dcm", "a1.dcm", "a0.dcm")]),
            {
                UID_A: [os.path.join(folder, "a0.dcm"), os.path.join(folder, "a1.dcm")],
                "": [os.path.join(folder, "n0.dcm")],
            },
        )
        items = self._by_name()
        self.assertEqual(set(items), {os.path.join("mixed", UID_A), os.path.join("mixed", "unknown_series")})
        unknown = items[os.path.join("mixed", "unknown_series")]
        self.assertEqual((unknown["series_uid"], unknown["files"]), ("", [os.path.join(folder, "n0.dcm")]))
        self.assertEqual(unknown["output"], os.path.join(self.out, "mixed", "unknown_series"))

    def test_unreadable_series_is_a_failed_scan_and_the_rest_still_found(self):
        good = save_nifti(os.path.join(self.root, "a.nii"), np.zeros((6, 5, 2)))
        broken = dicom_series_folder(os.path.join(self.root, "broken"), _pixels(1), names=["a.dcm"])
        with open(os.path.join(broken, "b.dcm"), "wb") as f:
            f.write(b"not a dicom file")
        items = self._by_name()
        self.assertEqual(items["a.nii"]["image"], good)
        item = items["broken"]
        self.assertEqual((item["kind"], item["image"]), ("dicom", broken))
        self.assertEqual(item["files"], [os.path.join(broken, "a.dcm"), os.path.join(broken, "b.dcm")])
        self.assertEqual(item["output"], os.path.join(self.out, "broken"))
        self.assertIn(os.path.join(broken, "b.dcm"), item["error"])
        self.assertIn("unreadable DICOM file", item["error"])
        self.assertNotIn("error", items["a.nii"])


class TestDatalistScans(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.data = os.path.join(self.tmp.name, "data")
        self.lists = os.path.join(self.tmp.name, "lists")
        self.out = os.path.join(self.tmp.name, "out")
        os.makedirs(self.lists)
        save_nifti(os.path.join(self.data, "a.nii.gz"), np.zeros((6, 5, 2)))
        save_nifti(os.path.join(self.data, "sub", "b.nii"), np.zeros((6, 5, 2)))
        dicom_series_folder(os.path.join(self.data, "series"), _pixels(2))
        self.single = dicom_slice(os.path.join(self.data, "single.dcm"), _pixels(1)[..., 0])

    def tearDown(self):
        self.tmp.cleanup()

    def _datalist(self, content: object, name: str = "list.json") -> str:
        path = os.path.join(self.lists, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f)
        return path

    def test_items_resolved_against_dataset_dir(self):
        entries = ["a.nii.gz", {"image": "sub/./b.nii", "modality": "PET"}, {"image": "series"}, {"image": self.single}]
        datalist = self._datalist({"test": entries, "training": [{"image": "sub/b.nii"}]})
        items = find_scans(self.data, self.out, datalist=datalist, modality="CT")
        self.assertEqual([i["name"] for i in items], ["a.nii.gz", os.path.join("sub", "b.nii"), "series", "single.dcm"])
        a, b, series, single = items
        self.assertEqual((a["kind"], a["image"], a["modality"]), ("nifti", os.path.join(self.data, "a.nii.gz"), "CT"))
        self.assertEqual(a["output"], os.path.join(self.out, "a.nii.gz"))
        self.assertEqual((b["kind"], b["modality"]), ("nifti", "PET"))  # the item's modality wins
        self.assertEqual(
            (b["image"], b["output"]), tuple(os.path.join(p, "sub", "b.nii") for p in (self.data, self.out))
        )
        self.assertEqual((series["kind"], series["image"]), ("dicom", os.path.join(self.data, "series")))
        self.assertEqual(series["output"], os.path.join(self.out, "series"))
        self.assertNotIn("files", series)  # a series folder is read as one
        self.assertEqual((single["kind"], single["image"], single["files"]), ("dicom", self.single, [self.single]))
        self.assertEqual(single["output"], os.path.join(self.out, "single.dcm"))  # an absolute path: its file name
        for item in items:
            self.assertEqual(item["source"], item["image"])
        self.assertNotIn("files", a)
        (training,) = find_scans(self.data, self.out, datalist=datalist, split="training")
        self.assertEqual((training["image"], training["modality"]), (os.path.join(self.data, "sub", "b.nii"), None))

    def test_base_is_the_datalist_folder_without_dataset_dir(self):
        save_nifti(os.path.join(self.lists, "c.nii"), np.zeros((6, 5, 2)))
        (item,) = find_scans("", self.out, datalist=self._datalist([{"image": "c.nii", "modality": "MRI"}]))
        self.assertEqual((item["image"], item["name"]), (os.path.join(self.lists, "c.nii"), "c.nii"))
        self.assertEqual((item["output"], item["modality"]), (os.path.join(self.out, "c.nii"), "MRI"))

    def test_refused_data_lists(self):
        bad = os.path.join(self.lists, "bad.json")
        with open(bad, "w", encoding="utf-8") as f:
            f.write("{not json")
        cases = [
            (bad, "bad.json: unreadable data list"),
            (os.path.join(self.lists, "missing.json"), "missing.json: unreadable data list"),
            (self._datalist({"training": ["a.nii.gz"]}, "split.json"), r"expected a list of items or a 'test' split"),
            (self._datalist(["a.nii.gz", {"modality": "CT"}], "noimage.json"), r"item 1 has no 'image'"),
            (self._datalist([], "empty.json"), "empty.json: no NIfTI file or DICOM series found"),
            (self._datalist(3, "number.json"), r"number.json: expected .* 'test' split, got a JSON int"),
            (self._datalist([{"image": "/"}], "root.json"), r"root.json: item 0 \('/'\) has no file or folder name"),
        ]
        for datalist, words in cases:
            with self.subTest(words), self.assertRaisesRegex(ValueError, words):
                find_scans(self.data, self.out, datalist=datalist)

    def test_outputs_stay_under_output_dir(self):
        """Items that climb out of the base ('..'), lie outside it or are the base itself keep only their own name
        under ``output_dir``; an absolute path inside the base mirrors its relative path; nothing is written outside
        ``output_dir``."""
        save_nifti(os.path.join(self.tmp.name, "other", "c.nii"), np.zeros((6, 5, 2)))
        entries = ["../other/c.nii", "sub/../../other/c.nii", os.path.join(self.data, "series", "..", "a.nii.gz")]
        for entry in entries:
            with self.subTest(entry):
                (item,) = find_scans(self.data, self.out, datalist=self._datalist([entry]))
                name = os.path.basename(entry)
                self.assertEqual((item["name"], item["output"]), (name, os.path.join(self.out, name)))
                self.assertTrue(os.path.exists(item["image"]), item["image"])
        (item,) = find_scans(os.path.join(self.data, "series"), self.out, datalist=self._datalist(["."]))
        self.assertEqual((item["kind"], item["output"]), ("dicom", os.path.join(self.out, "series")))
        (item,) = find_scans(self.data, self.out, datalist=self._datalist([os.path.join(self.data, "sub", "b.nii")]))
        self.assertEqual(
            (item["name"], item["output"]), (os.path.join("sub", "b.nii"), os.path.join(self.out, "sub", "b.nii"))
        )

    def test_two_scans_with_one_output_are_refused(self):
        """Two items whose outputs would be one path (an absolute and a relative path of one name, two '..' paths
        of one file name) are refused with both inputs named: one output would be lost."""
        save_nifti(os.path.join(self.tmp.name, "other", "a.nii.gz"), np.zeros((6, 5, 2)))
        other = os.path.join(self.tmp.name, "other", "a.nii.gz")
        in_base = os.path.join(self.data, "a.nii.gz")
        for entries in (
            ["a.nii.gz", other],
            ["a.nii.gz", "../other/a.nii.gz"],
            ["sub/b.nii", "sub/./b.nii"],
            ["a.nii.gz", in_base],
        ):
            with self.subTest(entries), self.assertRaisesRegex(ValueError, "two outputs would be written here"):
                find_scans(self.data, self.out, datalist=self._datalist(entries))

    def test_difference_output_meeting_another_output_is_refused(self):
        """With difference outputs on, scan ``a``'s difference ``a_difference.nii.gz`` would replace the restored scan
        of an input named so (and a series folder ``s``'s the one of ``s_difference``): refused before anything
        runs, naming both inputs; without difference outputs both scans are restored."""
        for first, second, make in (
            ("c.nii.gz", "c_difference.nii.gz", lambda p: save_nifti(p, np.zeros((6, 5, 2)))),
            ("s", "s_difference", lambda p: dicom_series_folder(p, _pixels(2))),
        ):
            with self.subTest(first), tempfile.TemporaryDirectory() as tmp:
                data, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
                make(os.path.join(data, first))
                make(os.path.join(data, second))
                for flag in (False, "false"):
                    self.assertEqual(len(find_scans(data, out, modality="CT", difference_output=flag)), 2)
                for flag in (True, "true"):
                    with self.assertRaisesRegex(ValueError, "two outputs would be written here") as raised:
                        find_scans(data, out, modality="CT", difference_output=flag)
                    for name in (first, second):
                        self.assertIn(os.path.join(data, name), str(raised.exception))
        # difference outputs of distinct names meet nothing
        items = find_scans(self.data, self.out, modality="CT", difference_output=True)
        self.assertEqual(items, find_scans(self.data, self.out, modality="CT"))
        # the same through a data list
        save_nifti(os.path.join(self.data, "a_difference.nii.gz"), np.zeros((6, 5, 2)))
        datalist = self._datalist(["a.nii.gz", "a_difference.nii.gz"])
        self.assertEqual(len(find_scans(self.data, self.out, datalist=datalist)), 2)
        with self.assertRaisesRegex(ValueError, "a_difference.nii.gz: two outputs would be written here"):
            find_scans(self.data, self.out, datalist=datalist, difference_output=True)

    def test_output_that_is_an_input_is_refused(self):
        for entries in (["a.nii.gz"], ["series"], [self.single]):  # written over itself
            with self.subTest(entries), self.assertRaisesRegex(ValueError, "output path is an input file"):
                find_scans(self.data, self.data, datalist=self._datalist(entries))
        # written over another scan of the list
        save_nifti(os.path.join(self.data, "sub", "a.nii.gz"), np.zeros((6, 5, 2)))
        datalist = self._datalist(["a.nii.gz", "sub/a.nii.gz"])
        with self.assertRaisesRegex(ValueError, "sub/a.nii.gz: output path is an input file"):
            find_scans(self.data, os.path.join(self.data, "sub"), datalist=datalist)
        self.assertEqual(len(find_scans(self.data, self.out, datalist=datalist)), 2)


if __name__ == "__main__":
    unittest.main()
