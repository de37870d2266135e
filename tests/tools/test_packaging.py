"""custom.tools.packaging over a temporary bundle folder: what the zip holds, and --include_weights without weights."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

from custom.tools.packaging import BUNDLE_NAME, DESCRIPTION, build_archive, main
from parameterized import parameterized

from tests.utils import BUNDLE, ENV, META, REPO


class TestPackagingContent(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.d = Path(tmp.name)
        self.bundle = self.d / "bundle"
        files = {
            "configs/extra.json": "{}",
            "docs/README.md": "docs",
            "custom/stale.py": "STALE = True",  # a stale copy of the package inside the bundle
            "models/x.pt": "weights",
            "models/fold1/best.pth": "weights in a subfolder",
            "models/notes.txt": "kept",
            "docs/README.md.swp": "editor swap file",
            "configs/.DS_Store": "local state",
            "docs/page.tmp": "temporary",
            "eval/result.csv": "run output",
            "outputs/o.nii.gz": "run output",
        }
        for rel, text in files.items():
            (self.bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.bundle / rel).write_text(text)
        shutil.copy(META, self.bundle / "configs" / "metadata.json")
        shutil.copy(os.path.join(BUNDLE, "LICENSE"), self.bundle / "LICENSE")
        self.package = self.d / "pkg"
        package_files = (
            "__init__.py",
            "tools/__init__.py",
            "models/table.pt",  # package data under models/: the package is copied whole, "weights" or not
            "_bundle/configs/metadata.json",
            "__pycache__/x.pyc",
        )
        for rel in package_files:
            (self.package / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.package / rel).write_text("# package" if rel.endswith(".py") else "x")

    def names(self, include_weights: bool) -> list[str]:
        out = build_archive(self.d / "b.zip", self.bundle, self.package, name="top", include_weights=include_weights)
        with zipfile.ZipFile(out) as zf:
            return sorted(zf.namelist())

    @parameterized.expand([("without weights", False), ("with weights", True)])
    def test_zip_content(self, _, include_weights):
        expected = [
            "top/LICENSE",
            "top/configs/extra.json",
            "top/configs/metadata.json",
            "top/custom/__init__.py",
            "top/custom/models/table.pt",
            "top/custom/tools/__init__.py",
            "top/docs/README.md",
            "top/models/notes.txt",
        ]
        if include_weights:
            expected += ["top/models/fold1/best.pth", "top/models/x.pt"]
        self.assertEqual(self.names(include_weights), sorted(expected))

    def test_entries_unzip_as_readable_compressed_files_with_valid_dates(self):
        """Mode rw-r--r-- (what ``unzip`` restores), deflated, and a real calendar date (zip readers reject month 0)."""
        out = build_archive(self.d / "b.zip", self.bundle, self.package, name="top")
        with zipfile.ZipFile(out) as zf:
            infos = zf.infolist()
        self.assertTrue(infos)
        for info in infos:
            self.assertEqual(oct(info.external_attr >> 16), oct(0o644), info.filename)
            self.assertEqual(info.compress_type, zipfile.ZIP_DEFLATED, info.filename)
            datetime.datetime(*info.date_time)  # raises on month or day 0
            self.assertGreaterEqual(info.date_time[0], 1980)

    def test_metadata_without_changelog_is_a_clear_error(self):
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        del meta["changelog"]
        (self.bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
        with self.assertRaisesRegex(ValueError, "not a key of its changelog"):
            build_archive(self.d / "b.zip", self.bundle, self.package)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["--bundle_dir", str(self.bundle), "--output", str(self.d / "b.zip")])
        self.assertEqual(code, 1)
        self.assertIn("packaging failed: metadata version", err.getvalue())
        self.assertFalse((self.d / "b.zip").exists())

    def test_command_name_option_sets_the_top_folder(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["--bundle_dir", str(self.bundle), "--output", str(self.d / "b.zip"), "--name", "my_bundle"])
        self.assertEqual(code, 0)
        with zipfile.ZipFile(self.d / "b.zip") as zf:
            self.assertEqual({n.split("/")[0] for n in zf.namelist()}, {"my_bundle"})
        self.assertIn(str(self.d / "b.zip"), out.getvalue())

    def test_module_entry_point_writes_the_zip(self):
        out = self.d / "cli.zip"
        proc = subprocess.run(
            [sys.executable, "-m", "custom.tools.packaging", "--bundle_dir", str(self.bundle), "--output", str(out)],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn(f"{BUNDLE_NAME}/LICENSE", zipfile.ZipFile(out).namelist())

    def test_include_weights_without_weights_names_the_folder(self):
        (self.bundle / "models" / "x.pt").unlink()
        (self.bundle / "models" / "fold1" / "best.pth").unlink()
        with self.assertRaisesRegex(
            FileNotFoundError, rf"{re.escape(str(self.bundle / 'models'))}: no weights .*--bundle_dir"
        ):
            build_archive(self.d / "b.zip", self.bundle, self.package, include_weights=True)
        self.assertFalse((self.d / "b.zip").exists())
        self.names(include_weights=False)  # without the option the same bundle packs

    def test_command_reports_missing_weights(self):
        shutil.rmtree(self.bundle / "models")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["--bundle_dir", str(self.bundle), "--output", str(self.d / "b.zip"), "--include_weights"])
        self.assertEqual(code, 1)
        self.assertIn(f"packaging failed: {self.bundle / 'models'}: no weights", err.getvalue())
        self.assertFalse((self.d / "b.zip").exists())

    def test_help_is_one_complete_sentence(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            main(["--help"])
        self.assertIn(DESCRIPTION, " ".join(out.getvalue().split()))
        self.assertTrue(DESCRIPTION.endswith("."))


if __name__ == "__main__":
    unittest.main()
