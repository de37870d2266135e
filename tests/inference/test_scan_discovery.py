"""Scan discovery: symbolic links to files and series folders are followed with a loop guard, and every entry
found is returned (a scan, or a ``skip`` / ``error`` entry for the report), never dropped."""

from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np
from custom.inference import find_scans

from tests.utils import dicom_series_folder, save_nifti


class TestScanDiscovery(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self.tmp.name, "in")
        self.store = os.path.join(self.tmp.name, "store")  # outside the searched folder
        os.makedirs(self.root)
        self.out = os.path.join(self.tmp.name, "out")

    def tearDown(self):
        self.tmp.cleanup()

    def _by_name(self) -> dict:
        return {item["name"]: item for item in find_scans(self.root, self.out, modality="CT")}

    def test_symlinked_series_folder_and_file_are_scans(self):
        series = dicom_series_folder(os.path.join(self.store, "series"), np.zeros((6, 5, 3), np.int16))
        nifti = save_nifti(os.path.join(self.store, "vol.nii.gz"), np.zeros((6, 5, 2)))
        os.symlink(series, os.path.join(self.root, "linked_series"))
        os.symlink(nifti, os.path.join(self.root, "linked.nii.gz"))
        items = self._by_name()
        self.assertEqual(items["linked_series"]["kind"], "dicom")
        self.assertEqual(len(items["linked_series"]["files"]), 3)
        self.assertEqual(items["linked_series"]["output"], os.path.join(self.out, "linked_series"))
        self.assertEqual(items["linked.nii.gz"]["kind"], "nifti")
        self.assertNotIn("skip", items["linked_series"])

    def test_loops_duplicates_broken_links_and_other_files_are_reported(self):
        real = os.path.join(self.root, "a")
        dicom_series_folder(os.path.join(real, "s"), np.zeros((6, 5, 2), np.int16))
        os.symlink(self.root, os.path.join(real, "loop"))  # a loop back to the root
        os.symlink(os.path.join(real, "s"), os.path.join(self.root, "second_link"))  # a second path to a series
        os.symlink(os.path.join(self.tmp.name, "nowhere.nii.gz"), os.path.join(self.root, "broken.nii.gz"))
        with open(os.path.join(self.root, "notes.txt"), "w") as f:
            f.write("not an image")
        with open(os.path.join(self.root, ".hidden"), "w") as f:
            f.write("x")
        items = self._by_name()
        scans = sorted(n for n, i in items.items() if i["kind"] != "other")
        self.assertEqual(len(scans), 1)  # the series once, through the first path the walk meets
        other = ({os.path.join("a", "s"), "second_link"} - set(scans)).pop()
        self.assertIn(scans[0], {os.path.join("a", "s"), "second_link"})
        self.assertIn(f"same folder as {items[scans[0]]['image']}", items[other]["skip"])
        self.assertIn("symbolic link", items[os.path.join("a", "loop")]["skip"])
        self.assertIn("broken symbolic link", items["broken.nii.gz"]["error"])
        self.assertIn("not a NIfTI file or a DICOM file", items["notes.txt"]["skip"])
        self.assertIn("hidden file", items[".hidden"]["skip"])
        for item in items.values():
            self.assertEqual(item["source"], item["image"])

    def test_only_other_files_is_an_error_naming_them(self):
        with open(os.path.join(self.root, "notes.txt"), "w") as f:
            f.write("x")
        with self.assertRaisesRegex(ValueError, "no NIfTI file or DICOM series found .1 other entries found"):
            find_scans(self.root, self.out)


if __name__ == "__main__":
    unittest.main()
