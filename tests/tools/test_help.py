"""Every command's ``--help`` starts with a complete description (not a docstring cut at its first line break)."""

from __future__ import annotations

import contextlib
import importlib
import io
import runpy
import sys
import unittest
import warnings
from unittest import mock

from parameterized import parameterized

COMMANDS = [
    "custom.tools.demo",
    "custom.tools.demo_data",
    "custom.tools.datalist",
    "custom.tools.interference",
    "custom.tools.packaging",
    "custom.tools.task_statistics",
    "custom.evaluation.consistency",
]


class TestHelp(unittest.TestCase):
    @parameterized.expand([(name,) for name in COMMANDS])
    def test_description_is_complete(self, name):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as stop:
            importlib.import_module(name).main(["--help"])
        self.assertEqual(stop.exception.code, 0)
        paragraphs = out.getvalue().split("\n\n")
        self.assertIn(f"usage: python -m {name}", paragraphs[0])
        description = " ".join(paragraphs[1].split())
        self.assertGreater(len(description), 20, description)
        self.assertTrue(description[0].isupper() and description.endswith("."), description)
        self.assertNotRegex(description, r"\(the command line of|::$")

    @parameterized.expand([(name,) for name in COMMANDS])
    def test_python_m_runs_main(self, name):
        # the module's `if __name__ == "__main__"` block calls main with the command line and exits with its status
        out = io.StringIO()
        with mock.patch.object(sys, "argv", [name, "--help"]), contextlib.redirect_stdout(out):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the module is already imported
                with self.assertRaises(SystemExit) as stop:
                    runpy.run_module(name, run_name="__main__")
        self.assertEqual(stop.exception.code, 0)
        self.assertIn(f"usage: python -m {name}", out.getvalue())


if __name__ == "__main__":
    unittest.main()
