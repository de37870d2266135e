"""custom.io.write_json_atomic: the bundle's one JSON writer (argument order (path, data))."""

from __future__ import annotations

import json
import math
import os
import tempfile
import unittest

from custom.io import write_json_atomic
from parameterized import parameterized


class TestWriteJsonAtomic(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.path = os.path.join(self.tmp.name, "out.json")

    def test_format_indent_order_newline(self):
        data = {"b": [1, 2.5], "a": {"z": "x", "y": None}}
        self.assertEqual(write_json_atomic(self.path, data), self.path)
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(text, json.dumps(data, indent=2) + "\n")  # indent 2, given key order, one trailing newline
        self.assertTrue(text.startswith('{\n  "b"'))
        self.assertEqual(list(json.loads(text)), ["b", "a"])

    @parameterized.expand([("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)])
    def test_non_finite_becomes_null_and_input_is_kept(self, _, value):
        data = {"v": value, "rows": [{"psnr": value}, (1.0, value)], 3: "int key"}
        write_json_atomic(self.path, data)
        with open(self.path, encoding="utf-8") as f:
            self.assertEqual(json.load(f), {"v": None, "rows": [{"psnr": None}, [1.0, None]], "3": "int key"})
        self.assertTrue(math.isinf(data["v"]) or math.isnan(data["v"]))  # the caller's data is not modified

    def test_path_like_and_failure_leaves_old_file(self):
        from pathlib import Path

        write_json_atomic(Path(self.path), {"training": [1]})
        with self.assertRaises(TypeError):
            write_json_atomic(self.path, {"training": [object()]})
        with open(self.path, encoding="utf-8") as f:
            self.assertEqual(json.load(f), {"training": [1]})
        self.assertEqual(os.listdir(self.tmp.name), ["out.json"])


if __name__ == "__main__":
    unittest.main()
