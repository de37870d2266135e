"""python -m custom.tools.task_statistics: where it finds its config and modality settings (--bundle_root)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import unittest

from custom.tools.task_statistics import _config_files, main
from parameterized import parameterized

from tests.utils import BUNDLE


class TestTaskStatisticsCommand(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def run_main(self, *argv: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["--checkpoint", os.path.join(self.tmp.name, "missing.pt"), "--datalist", "d.json", *argv])
        return code, err.getvalue()

    def test_bundle_root_is_where_the_config_is_read(self):
        code, err = self.run_main("--bundle_root", os.path.join(self.tmp.name, "nowhere"))
        self.assertEqual(code, 1)
        self.assertIn(os.path.join(self.tmp.name, "nowhere", "configs", "inference.json"), err)

    def test_a_bundle_copy_is_used_as_given(self):
        root = os.path.join(self.tmp.name, "unzipped")
        shutil.copytree(os.path.join(BUNDLE, "configs"), os.path.join(root, "configs"))
        code, err = self.run_main("--bundle_root", root)
        self.assertEqual(code, 1)  # config and network found; the (missing) checkpoint is the first problem
        self.assertIn("missing.pt: checkpoint not found", err)

    @parameterized.expand(
        [
            ("one", "a.json", ["a.json"]),
            ("list", "['a.json', 'b.json']", ["a.json", "b.json"]),
            ("json list", ' ["a.json"] ', ["a.json"]),
        ]
    )
    def test_config_files(self, _, text, expected):
        self.assertEqual(_config_files(text), expected)


if __name__ == "__main__":
    unittest.main()
