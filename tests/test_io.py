from __future__ import annotations

import io
import os
import stat
import tempfile
import unittest
from unittest import mock

from custom.io import atomic_output, atomic_output_dir, current_umask, default_mode, fsync_path, write_text_atomic
from parameterized import parameterized


class _Umask:
    """Set the process umask for a block, then restore it."""

    def __init__(self, mask: int) -> None:
        self.mask = mask

    def __enter__(self) -> None:
        self.old = os.umask(self.mask)

    def __exit__(self, *args) -> None:
        os.umask(self.old)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _fsync_refusing_folders(fd: int) -> None:
    """``os.fsync`` of a file system that refuses to flush folders."""
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        raise OSError(22, "Invalid argument")
    _REAL_FSYNC(fd)


_REAL_FSYNC = os.fsync


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

    @parameterized.expand(
        [("report.json", ".json"), ("scan.nii", ".nii"), ("SCAN.NII.GZ", ".nii.gz"), ("model.pt", ".pt")]
    )
    def test_temporary_file_beside_the_destination_with_its_extension(self, name, suffix):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "out", name)
            with atomic_output(path) as tmp:
                self.assertEqual(os.path.dirname(tmp), os.path.dirname(path))  # same folder: an atomic rename
                self.assertTrue(os.path.basename(tmp).startswith(".tmp_"), tmp)
                self.assertTrue(tmp.endswith(suffix), tmp)
                with open(tmp, "w") as f:
                    f.write("x")
            self.assertEqual(os.listdir(os.path.dirname(path)), [name])

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

    @unittest.skipUnless(os.path.isdir("/proc/self/fd"), "needs /proc/self/fd")
    def test_no_descriptor_left_open(self):
        """Each write leaves no open file descriptor behind (a long run writes thousands of outputs)."""
        with tempfile.TemporaryDirectory() as d:
            write_text_atomic(os.path.join(d, "warm.txt"), "x")
            before = len(os.listdir("/proc/self/fd"))
            for i in range(5):
                write_text_atomic(os.path.join(d, f"{i}.txt"), "x")
                with self.assertRaises(RuntimeError), atomic_output(os.path.join(d, "failed.txt")):
                    raise RuntimeError("writer failed")
            self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_folder_fsync_refused_still_writes(self):
        """A file system that refuses ``fsync`` on a folder (EINVAL, as some network file systems do) does not fail
        the write: the file is in place, no temporary left."""
        with tempfile.TemporaryDirectory() as d, mock.patch("os.fsync", _fsync_refusing_folders):
            path = write_text_atomic(os.path.join(d, "report.json"), "data")
            with open(path, encoding="utf-8") as f:
                self.assertEqual(f.read(), "data")
            self.assertEqual(os.listdir(d), ["report.json"])

    def test_text_is_utf8_whatever_the_locale(self):
        """Under a C/ASCII locale (servers, containers) non-ASCII text is still written, as UTF-8."""
        import subprocess
        import sys

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "report.md")
            code = (  # the text as escapes: the command line itself must be ASCII under this locale
                "import sys; from custom.io import write_text_atomic; "
                r"write_text_atomic(sys.argv[1], 'SUV \u00b5 \u2264 2')"
            )
            env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"}
            subprocess.run([sys.executable, "-X", "utf8=0", "-c", code, path], check=True, env=env)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), "SUV \u00b5 \u2264 2".encode("utf-8"))

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


class TestUmaskPermissions(unittest.TestCase):
    """Outputs get what a plain open()/mkdir would give under the user's umask, not tempfile's 0600/0700."""

    @parameterized.expand([(0o022,), (0o027,), (0o002,)])
    def test_current_umask_reads_without_changing(self, mask):
        with _Umask(mask):
            self.assertEqual(current_umask(), mask)
            self.assertEqual(current_umask(), mask)  # reading did not change it
            self.assertEqual(default_mode(), 0o666 & ~mask)
            self.assertEqual(default_mode(directory=True), 0o777 & ~mask)

    def test_umask_read_from_proc_without_setting_it(self):
        """The ``Umask:`` line of ``/proc/self/status`` (given here, so that a kernel or sandbox without it does
        not matter) is the umask, read without setting it."""
        status = io.StringIO("Name:\tpython\nUmask:\t0027\nState:\tR (running)\n")
        with _Umask(0o022), mock.patch("custom.io.open", return_value=status, create=True) as opened:
            with mock.patch("os.umask", side_effect=AssertionError("umask set")):
                self.assertEqual(current_umask(), 0o027)
        self.assertEqual(opened.call_args.args[0], "/proc/self/status")

    def test_umask_fallback_without_proc(self):
        with _Umask(0o026), mock.patch("custom.io.open", side_effect=OSError("no /proc"), create=True):
            self.assertEqual(current_umask(), 0o026)
            self.assertEqual(current_umask(), 0o026)  # set back after reading
        with _Umask(0o026), mock.patch("custom.io.open", side_effect=OSError("no /proc"), create=True):
            self.assertEqual(default_mode(), 0o640)

    @parameterized.expand([("no_value", "Umask:\n"), ("not_octal", "Umask:\t0x9z\n")])
    def test_umask_fallback_on_unreadable_proc_line(self, _, line):
        """A ``Umask:`` line without a value or with a value that is not octal falls back to setting and restoring
        the umask (no IndexError / ValueError escapes to the writer)."""
        with (
            _Umask(0o026),
            mock.patch("custom.io.open", return_value=io.StringIO(f"Name:\tpython\n{line}"), create=True),
        ):
            self.assertEqual(current_umask(), 0o026)
        with _Umask(0o026):
            self.assertEqual(current_umask(), 0o026)  # set back after reading

    @parameterized.expand([(0o022, 0o644), (0o027, 0o640)])
    def test_atomic_file_mode_follows_umask(self, mask, expected):
        with tempfile.TemporaryDirectory() as d, _Umask(mask):
            path = write_text_atomic(os.path.join(d, "report.json"), "{}")
            self.assertEqual(_mode(path), expected)
            with open(os.path.join(d, "plain.txt"), "w") as f:  # what the user expects: like a plain open()
                f.write("x")
            self.assertEqual(_mode(path), _mode(os.path.join(d, "plain.txt")))

    @parameterized.expand([(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
    def test_atomic_dir_modes_follow_umask(self, mask, dir_mode, file_mode):
        with tempfile.TemporaryDirectory() as d, _Umask(mask):
            out = os.path.join(d, "series")
            with atomic_output_dir(out) as tmp:
                os.makedirs(os.path.join(tmp, "sub"))
                for name in ("a.dcm", os.path.join("sub", "b.dcm")):
                    with open(os.path.join(tmp, name), "wb") as f:
                        f.write(b"x")
                    os.chmod(os.path.join(tmp, name), 0o600)  # as a writer using mkstemp would leave it
                self.assertFalse(os.path.exists(out))
            self.assertEqual(_mode(out), dir_mode)
            self.assertEqual(_mode(os.path.join(out, "sub")), dir_mode)
            self.assertEqual(_mode(os.path.join(out, "a.dcm")), file_mode)
            self.assertEqual(_mode(os.path.join(out, "sub", "b.dcm")), file_mode)
            self.assertEqual(os.listdir(d), ["series"])

    @parameterized.expand([(0o022, 0o644), (0o007, 0o660)])
    def test_checkpoint_mode_follows_umask(self, mask, expected):
        import torch
        from custom.handlers import AtomicDiskSaver

        with tempfile.TemporaryDirectory() as d, _Umask(mask):
            AtomicDiskSaver(d, filename="model.pt")({"w": torch.ones(2)}, "ignored.pt")
            self.assertEqual(_mode(os.path.join(d, "model.pt")), expected)


class TestFsyncPath(unittest.TestCase):
    def test_file_errors_raise_folder_errors_do_not(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.txt")
            with self.assertRaises(FileNotFoundError):
                fsync_path(path)  # a file that cannot be opened
            fsync_path(os.path.join(d, "missing"), directory=True)  # best effort for folders
            with open(path, "w") as f:
                f.write("x")
            with mock.patch("os.fsync", side_effect=OSError(5, "Input/output error")):
                with self.assertRaises(OSError):
                    fsync_path(path)
                fsync_path(d, directory=True)

    def test_descriptor_closed(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.txt")
            with open(path, "w") as f:
                f.write("x")
            for target, directory in ((path, False), (d, True)):
                with mock.patch("os.close", wraps=os.close) as closed:
                    fsync_path(target, directory=directory)
                self.assertEqual(closed.call_count, 1)


class TestAtomicOutputDir(unittest.TestCase):
    def test_files_and_folder_flushed_before_the_move(self):
        """Every file and the new folder are fsync'ed under their temporary names, the parent after the move."""
        events = []
        real_fsync = os.fsync

        def fsync(fd):
            events.append(os.path.realpath(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        with tempfile.TemporaryDirectory() as d, mock.patch("os.fsync", fsync):
            out = os.path.join(d, "series")
            with atomic_output_dir(out) as tmp:
                self.assertEqual(os.path.dirname(tmp), d)  # beside the destination: an atomic rename
                os.makedirs(os.path.join(tmp, "sub"))
                for name in ("a.dcm", os.path.join("sub", "b.dcm")):
                    with open(os.path.join(tmp, name), "wb") as f:
                        f.write(b"x")
            tmp = os.path.realpath(tmp)
            expected = [os.path.join(tmp, "a.dcm"), os.path.join(tmp, "sub", "b.dcm"), tmp, os.path.realpath(d)]
            self.assertEqual(events, expected)

    def test_failed_move_puts_the_previous_output_back(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "series")
            with atomic_output_dir(out) as tmp:
                open(os.path.join(tmp, "old.dcm"), "w").close()
            real = os.replace

            def replace(src, dst):
                if os.path.basename(src).startswith(".tmp_"):
                    raise OSError(28, "No space left on device")
                real(src, dst)

            with mock.patch("os.replace", replace), self.assertRaises(OSError):
                with atomic_output_dir(out, overwrite=True) as tmp:
                    open(os.path.join(tmp, "new.dcm"), "w").close()
            self.assertEqual(os.listdir(out), ["old.dcm"])
            self.assertEqual(os.listdir(d), ["series"])

    def test_refuses_existing_without_overwrite(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "series")
            os.makedirs(out)
            with self.assertRaises(FileExistsError):
                with atomic_output_dir(out):
                    pass
            self.assertEqual(os.listdir(d), ["series"])

    def test_overwrite_replaces_and_failure_keeps_previous(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "series")
            with atomic_output_dir(out) as tmp:
                open(os.path.join(tmp, "old.dcm"), "w").close()
            with self.assertRaises(RuntimeError):
                with atomic_output_dir(out, overwrite=True) as tmp:
                    open(os.path.join(tmp, "half.dcm"), "w").close()
                    raise RuntimeError("writer failed")
            self.assertEqual(os.listdir(out), ["old.dcm"])
            self.assertEqual(os.listdir(d), ["series"])  # no temporary folder left
            with atomic_output_dir(out, overwrite=True) as tmp:
                open(os.path.join(tmp, "new.dcm"), "w").close()
            self.assertEqual(os.listdir(out), ["new.dcm"])
            self.assertEqual(os.listdir(d), ["series"])  # the previous output removed

    def test_creates_missing_parent_folders(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "a", "b", "series")
            with atomic_output_dir(out) as tmp:
                open(os.path.join(tmp, "x.dcm"), "w").close()
            self.assertEqual(os.listdir(out), ["x.dcm"])
            self.assertEqual(os.listdir(os.path.join(d, "a", "b")), ["series"])

    def test_folder_fsync_refused_still_moves(self):
        """A file system that refuses ``fsync`` on folders does not fail the output (folder flushes are best
        effort); the files themselves are still flushed."""
        with tempfile.TemporaryDirectory() as d, mock.patch("os.fsync", _fsync_refusing_folders):
            out = os.path.join(d, "series")
            for overwrite in (False, True):
                with atomic_output_dir(out, overwrite=overwrite) as tmp:
                    with open(os.path.join(tmp, "x.dcm"), "w") as f:
                        f.write(str(overwrite))
            with open(os.path.join(out, "x.dcm")) as f:
                self.assertEqual(f.read(), "True")
            self.assertEqual(os.listdir(d), ["series"])

    def test_overwrite_moves_stay_in_the_parent_folder(self):
        """The previous output is moved aside within the destination's folder (a rename on one file system), never
        into the system temporary folder (another file system: the move would fail or copy)."""
        moves = []
        real = os.replace

        def replace(src, dst):
            moves.append((os.path.dirname(os.path.dirname(os.path.abspath(dst))), os.path.abspath(dst)))
            real(src, dst)

        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as elsewhere:
            out = os.path.join(d, "series")
            with atomic_output_dir(out) as tmp:
                open(os.path.join(tmp, "old.dcm"), "w").close()
            with mock.patch("os.replace", replace), mock.patch("tempfile.tempdir", elsewhere):
                with atomic_output_dir(out, overwrite=True) as tmp:
                    open(os.path.join(tmp, "new.dcm"), "w").close()
            self.assertEqual(len(moves), 2)
            for _, dst in moves:
                self.assertTrue(dst.startswith(os.path.realpath(d) + os.sep) or dst.startswith(d + os.sep), dst)
            self.assertEqual(os.listdir(out), ["new.dcm"])
            self.assertEqual(os.listdir(d), ["series"])

    def test_cleanup_errors_do_not_hide_the_outcome(self):
        """A temporary or previous folder that cannot be removed does not replace the writer's own error, nor
        turn a completed output into a failure."""
        real_unlink = os.unlink

        def unlink(name, *args, **kwargs):
            if os.path.basename(name) in ("half.dcm", "old.dcm"):
                raise PermissionError(13, "Permission denied", name)
            return real_unlink(name, *args, **kwargs)

        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "series")
            with atomic_output_dir(out) as tmp:
                open(os.path.join(tmp, "old.dcm"), "w").close()
            with mock.patch("os.unlink", unlink):
                with self.assertRaisesRegex(RuntimeError, "writer failed"):
                    with atomic_output_dir(out, overwrite=True) as tmp:
                        open(os.path.join(tmp, "half.dcm"), "w").close()
                        raise RuntimeError("writer failed")
                self.assertEqual(os.listdir(out), ["old.dcm"])
                with atomic_output_dir(out, overwrite=True) as tmp:  # completes although old.dcm stays behind
                    open(os.path.join(tmp, "new.dcm"), "w").close()
            self.assertEqual(os.listdir(out), ["new.dcm"])


if __name__ == "__main__":
    unittest.main()
