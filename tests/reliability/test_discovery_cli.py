"""Folder-mode inference through the real CLI: every entry found under ``dataset_dir`` reaches
``inference_report.json`` as written, skipped or failed (a symlinked series folder is restored, a link loop, a
second link, a README and a broken link are reported, nothing is dropped), and the inputs are untouched."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import numpy as np
import pytest

from tests.utils import (
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    dicom_series_folder,
    run_cli,
    save_checkpoint,
    save_nifti,
    tree_hashes,
)

pytestmark = pytest.mark.slow


class TestFolderDiscoveryCLI(unittest.TestCase):
    def test_every_entry_found_is_in_the_report(self):
        with tempfile.TemporaryDirectory() as tmp:
            self._check(tmp)

    def _check(self, tmp: str) -> None:
        root, store, out = os.path.join(tmp, "in"), os.path.join(tmp, "store"), os.path.join(tmp, "out")
        rng = np.random.default_rng(0)
        volume = rng.integers(0, 2000, (32, 32, 2)).astype(np.int16)
        series = dicom_series_folder(os.path.join(store, "series"), volume)
        save_nifti(os.path.join(root, "a", "scan.nii.gz"), rng.uniform(-1000, 1000, (32, 32, 2)))
        os.symlink(series, os.path.join(root, "linked_series"))  # a series folder reached through a link
        os.symlink(series, os.path.join(root, "a", "second_link"))  # the same series a second time
        os.symlink(root, os.path.join(root, "a", "loop"))  # a loop back to the root
        os.symlink(os.path.join(store, "gone.nii.gz"), os.path.join(root, "broken.nii.gz"))
        with open(os.path.join(root, "README.txt"), "w", encoding="utf-8") as f:
            f.write("scans of the week")
        save_checkpoint(os.path.join(tmp, "model.pt"))
        before = tree_hashes(store, metadata=True)
        proc = run_cli(
            "run",
            "inference",
            "--config_file",
            INFERENCE_CONFIG,
            "--bundle_root",
            os.path.dirname(os.path.dirname(INFERENCE_CONFIG)),
            "--checkpoint",
            os.path.join(tmp, "model.pt"),
            *TINY_OVERRIDES,
            "--dataset_dir",
            root,
            "--output_dir",
            out,
            "--modality",
            "CT",
            cwd=tmp,
        )
        with open(os.path.join(out, "inference_report.json"), encoding="utf-8") as f:
            report = json.load(f)
        status = {os.path.relpath(r["image"], root): (r["status"], r["message"]) for r in report["scans"]}
        self.assertEqual(status[os.path.join("a", "scan.nii.gz")][0], "written", status)
        restored = [k for k in ("linked_series", os.path.join("a", "second_link")) if status[k][0] == "written"]
        self.assertEqual(len(restored), 1, status)  # the series once, the other link reported as the same folder
        other = ({"linked_series", os.path.join("a", "second_link")} - set(restored)).pop()
        self.assertEqual(status[other][0], "skipped", status)
        self.assertIn("same folder as", status[other][1])
        self.assertTrue(os.path.isdir(os.path.join(out, restored[0])))
        self.assertEqual(len(os.listdir(os.path.join(out, restored[0]))), 2)
        self.assertEqual(status[os.path.join("a", "loop")][0], "skipped", status)
        self.assertEqual(status["README.txt"][0], "skipped", status)
        self.assertIn("not a NIfTI file", status["README.txt"][1])
        self.assertEqual(status["broken.nii.gz"][0], "failed", status)
        self.assertIn("broken symbolic link", status["broken.nii.gz"][1])
        self.assertEqual(len(status), 6, status)  # nothing found was dropped
        self.assertNotEqual(proc.returncode, 0)  # the broken link failed
        self.assertEqual(tree_hashes(store, metadata=True), before)


if __name__ == "__main__":
    unittest.main()
