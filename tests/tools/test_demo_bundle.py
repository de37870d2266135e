"""custom.tools.demo finds its bundle when used (--bundle_root or the shipped one), never at import time."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from unittest import mock

from custom.tools import demo
from parameterized import parameterized

from tests.utils import BUNDLE, ENV, REPO


class TestDemoBundleRoot(unittest.TestCase):
    def test_default_is_the_shipped_bundle(self):
        self.assertEqual(demo.bundle_root(), os.path.realpath(BUNDLE))
        self.assertEqual(demo.bundle_root("relative/root"), os.path.abspath("relative/root"))

    @parameterized.expand(
        [
            ("training", lambda root: demo.bundle_command("training", ["train.json"], "/d", "/m", "/o", {}, root)),
            (
                "inference",
                lambda root: demo.inference_command("/m/overlay.json", "/d/datalist.json", "test", "/o", root),
            ),
        ]
    )
    def test_commands_use_the_given_root(self, _, command):
        root = os.path.join(tempfile.gettempdir(), "unzipped_bundle")
        cmd = command(root)
        self.assertEqual(cmd[cmd.index("--bundle_root") + 1], root)
        configs = cmd[cmd.index("--config_file") + 1]
        first = json.loads(configs)[0] if configs.startswith("[") else configs
        self.assertEqual(os.path.dirname(first), os.path.join(root, "configs"))
        self.assertEqual(cmd[cmd.index("--logging_file") + 1], os.path.join(root, "configs", "logging.conf"))
        default = command(None)
        self.assertEqual(default[default.index("--bundle_root") + 1], demo.bundle_root())

    def test_restore_command_uses_the_given_root(self):
        root = os.path.join(tempfile.gettempdir(), "unzipped_bundle")
        words = shlex.split(demo.restore_command("/m/overlay.json", root).split("#")[0])
        self.assertEqual(words[words.index("--bundle_root") + 1], root)
        self.assertEqual(json.loads(words[words.index("--config_file") + 1])[0], f"{root}/configs/inference.json")

    def test_command_line_passes_the_root(self):
        with mock.patch.object(demo, "run_demo") as run:
            self.assertEqual(demo.main(["--output_dir", "/o", "--bundle_root", "/b"]), 0)
        self.assertEqual(run.call_args.args[-1], "/b")
        with mock.patch.object(demo, "run_demo", side_effect=FileNotFoundError("no bundle")):
            self.assertEqual(demo.main(["--output_dir", "/o"]), 1)

    def test_import_without_a_shipped_bundle(self):
        """The copy of ``custom`` in an unzipped bundle zip has no ``_bundle``: the module imports, the default
        bundle is an error pointing to --bundle_root, and a given root is used."""
        with tempfile.TemporaryDirectory() as d:
            shutil.copytree(
                os.path.join(REPO, "custom"),
                os.path.join(d, "custom"),
                ignore=shutil.ignore_patterns("_bundle", "__pycache__"),
            )
            code = textwrap.dedent("""
                import custom, custom.tools.demo as demo
                assert custom.__file__.startswith(%r), custom.__file__
                print(demo.bundle_root(%r))
                try:
                    demo.bundle_root()
                except FileNotFoundError as e:
                    print("error:", e)
                """) % (d, d)
            proc = subprocess.run(
                [sys.executable, "-c", code], cwd=d, env=ENV, capture_output=True, text=True, timeout=300
            )
            self.assertEqual(proc.returncode, 0, proc.stderr)
            lines = proc.stdout.strip().splitlines()
            self.assertEqual(lines[0], d)
            self.assertRegex(lines[1], r"^error: .*_bundle.*--bundle_root")


if __name__ == "__main__":
    unittest.main()
