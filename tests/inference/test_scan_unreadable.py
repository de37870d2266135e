"""Folder-mode scan discovery reports a folder it cannot list (as a failed entry naming it) instead of dropping it
from ``inference_report.json``. The session runs as root (permissions do not stop it), so listing is made to fail
with a mock of ``os.scandir`` (what ``os.walk`` uses)."""

from __future__ import annotations

import os
import tempfile
import unittest
from unittest import mock

import numpy as np
from custom.inference import find_scans
from parameterized import parameterized

from tests.utils import save_nifti


class TestUnreadableFolder(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = os.path.join(self.tmp.name, "in")
        self.out = os.path.join(self.tmp.name, "out")
        save_nifti(os.path.join(self.root, "ok", "a.nii.gz"), np.zeros((6, 5, 2)))
        save_nifti(os.path.join(self.root, "locked", "b.nii.gz"), np.zeros((6, 5, 2)))

    def tearDown(self):
        self.tmp.cleanup()

    @parameterized.expand([("permission", PermissionError, "Permission denied"), ("io", OSError, "I/O error")])
    def test_reported_as_failed_naming_the_folder(self, _, error, words):
        locked = os.path.join(self.root, "locked")
        real = os.scandir

        def scandir(path="."):
            if os.fspath(path) == locked:
                raise error(13 if error is PermissionError else 5, words, os.fspath(path))
            return real(path)

        with mock.patch("os.scandir", side_effect=scandir):
            items = {item["name"]: item for item in find_scans(self.root, self.out, modality="CT")}
        self.assertEqual(items[os.path.join("ok", "a.nii.gz")]["kind"], "nifti")  # the rest is still searched
        self.assertNotIn(os.path.join("locked", "b.nii.gz"), items)
        entry = items["locked"]
        self.assertEqual(entry["kind"], "other")
        self.assertNotIn("skip", entry)
        self.assertTrue(entry["error"].startswith(f"{locked}: unreadable folder"), entry["error"])
        self.assertIn(words, entry["error"])

    def test_readable_tree_has_no_error_entry(self):
        items = find_scans(self.root, self.out, modality="CT")
        self.assertEqual(
            sorted(i["name"] for i in items), [os.path.join("locked", "b.nii.gz"), os.path.join("ok", "a.nii.gz")]
        )
        self.assertFalse(any("error" in i for i in items))


if __name__ == "__main__":
    unittest.main()
