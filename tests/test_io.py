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

    def test_data_flushed_before_rename(self):
        """The temporary file is fsync'ed while still under its temporary name, then the folder after the rename
        (so the rename cannot reach the disk before the data)."""
        from unittest import mock

        events = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
            real_fsync(fd)

        def replace(a, b):
            events.append(("replace", os.path.realpath(a)))
            real_replace(a, b)

        with tempfile.TemporaryDirectory() as d, mock.patch("os.fsync", fsync), mock.patch("os.replace", replace):
            path = os.path.join(d, "out.json")
            write_text_atomic(path, "data")
            self.assertEqual(open(path).read(), "data")
        kinds = [k for k, _ in events]
        self.assertEqual(kinds, ["fsync", "replace", "fsync"])
        if os.path.exists("/proc/self/fd"):
            self.assertEqual(events[0][1], events[1][1])  # the temporary file itself was flushed
            self.assertEqual(events[2][1], os.path.realpath(d))

    def test_checkpoint_saver_goes_through_atomic_output(self):
        """ignite's DiskSaver path of the checkpoint handlers writes through atomic_output (fsync + rename)."""
        from unittest import mock

        import torch

        from custom.handlers import AtomicDiskSaver

        with tempfile.TemporaryDirectory() as d, mock.patch("os.fsync", wraps=os.fsync) as fsync:
            AtomicDiskSaver(d, filename="latest.pt")({"w": torch.ones(3)}, "ignored.pt")
            self.assertGreaterEqual(fsync.call_count, 1)
            self.assertEqual(os.listdir(d), ["latest.pt"])
            self.assertTrue(
                torch.equal(torch.load(os.path.join(d, "latest.pt"), weights_only=True)["w"], torch.ones(3))
            )


if __name__ == "__main__":
    unittest.main()
