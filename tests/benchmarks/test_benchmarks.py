"""Smoke tests of benchmarks/inference_modes.py and benchmarks/gpu.py (their --quick paths, on the CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
import unittest

import torch

from tests.utils import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestInferenceModesBenchmark(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bench = _load("inference_modes")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls.tmp.name, "modes.json")
        threads = torch.get_num_threads()
        try:
            cls.rc = cls.bench.main(
                ["--quick", "--depth", "2", "--modes", "published", "blended", "--threads", "1", "--output", cls.out]
            )
        finally:
            torch.set_num_threads(threads)
        with open(cls.out, encoding="utf-8") as f:
            cls.results = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_rows(self):
        self.assertEqual(self.rc, 0)
        rows = self.results["rows"]
        self.assertEqual([(r["mode"], r["dtype"]) for r in rows], [("published", "float32"), ("blended", "float32")])
        for r in rows:
            for part in ("test", "ct512"):
                self.assertTrue(math.isfinite(r[part]["psnr"]))
                self.assertGreater(r[part]["s_per_slice"], 0)
                self.assertIsNotNone(r[part]["seam"])  # the quick slices are larger than the windows
            self.assertGreater(r["volume"]["slices_per_s"], 0)
        self.assertEqual(self.results["volume_shape"], [96, 96, 2])
        # the modes really differ (the window mode was applied)
        self.assertNotEqual(rows[0]["test"]["psnr"], rows[1]["test"]["psnr"])

    def test_markdown(self):
        table = self.bench.markdown(self.results)
        self.assertIn("| published | float32 |", table)
        self.assertIn("| blended | float32 |", table)
        self.assertEqual(len(table.splitlines()), 4)

    def test_bad_arguments(self):
        with self.assertRaises(SystemExit):
            self.bench.parse_args(["--slice_batch", "0"])
        with self.assertRaises(SystemExit):
            self.bench.parse_args(["--modes", "tlc"])


class TestGPUBenchmark(unittest.TestCase):
    def test_quick_cpu(self):
        bench = _load("gpu")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "gpu.json")
            threads = torch.get_num_threads()
            try:
                rc = bench.main(["--device", "cpu", "--quick", "--output", out])
            finally:
                torch.set_num_threads(threads)
            with open(out, encoding="utf-8") as f:
                results = json.load(f)
        self.assertEqual(rc, 0)
        inference = {(r["mode"], r["dtype"]): r for r in results["inference"]}
        self.assertEqual(len(inference), 12)  # 4 modes x 3 dtypes
        self.assertGreater(inference[("published", "float32")]["slices_per_s"], 0)
        self.assertGreater(inference[("blended", "bfloat16")]["slices_per_s"], 0)
        train = {r["amp"]: r for r in results["training"]}
        self.assertTrue(train["bfloat16"]["finite"])
        self.assertEqual(train["bfloat16"]["batch"], [2, 1, 32, 32])
        self.assertIn("skipped", train["float16"])
        self.assertEqual([r["mode"] for r in results["agreement"]], ["published", "global", "sliding", "blended"])
        self.assertTrue(all(r["ok"] and r["max_abs_diff"] == 0.0 for r in results["agreement"]))

    def test_no_cuda_message(self):
        bench = _load("gpu")
        if torch.cuda.is_available():
            self.skipTest("a CUDA device is present")
        self.assertEqual(bench.main(["--device", "cuda:0"]), 2)


if __name__ == "__main__":
    unittest.main()
