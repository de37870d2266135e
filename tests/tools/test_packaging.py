"""custom.tools.packaging over a temporary bundle folder: what the zip holds, and --include_weights without weights."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import unittest
import zipfile
from pathlib import Path

from custom.tools.packaging import DESCRIPTION, build_archive, main
from parameterized import parameterized

from tests.utils import BUNDLE, META


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
            "models/notes.txt": "kept",
            "eval/result.csv": "run output",
            "outputs/o.nii.gz": "run output",
        }
        for rel, text in files.items():
            (self.bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.bundle / rel).write_text(text)
        shutil.copy(META, self.bundle / "configs" / "metadata.json")
        shutil.copy(os.path.join(BUNDLE, "LICENSE"), self.bundle / "LICENSE")
        self.package = self.d / "pkg"
        for rel in ("__init__.py", "tools/__init__.py", "_bundle/configs/metadata.json", "__pycache__/x.pyc"):
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
            "top/custom/tools/__init__.py",
            "top/docs/README.md",
            "top/models/notes.txt",
        ]
        if include_weights:
            expected.append("top/models/x.pt")
        self.assertEqual(self.names(include_weights), sorted(expected))

    def test_include_weights_without_weights_names_the_folder(self):
        (self.bundle / "models" / "x.pt").unlink()
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
