from __future__ import annotations

import os
import tempfile
import unittest

from custom.io import atomic_output, write_text_atomic


class TestAtomicOutput(unittest.TestCase):
    def test_success_renames_and_keeps_extension(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sub", "scan.nii.gz")
            with atomic_output(path) as tmp:
                self.assertTrue(tmp.endswith(".nii.gz"))
                self.assertNotEqual(tmp, path)
                with open(tmp, "w") as f:
                    f.write("x")
                self.assertFalse(os.path.exists(path))  # nothing under the final name until the block ends
            self.assertEqual(open(path).read(), "x")
            self.assertEqual(os.listdir(os.path.dirname(path)), ["scan.nii.gz"])

    def test_failure_leaves_previous_file_and_no_temp(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "report.json")
            write_text_atomic(path, "old")
            with self.assertRaises(RuntimeError):
                with atomic_output(path) as tmp:
                    with open(tmp, "w") as f:
                        f.write("half")
                    raise RuntimeError("writer failed")
            self.assertEqual(open(path).read(), "old")
            self.assertEqual(os.listdir(d), ["report.json"])


if __name__ == "__main__":
    unittest.main()
