"""Smoke tests of the benchmarks (inference modes, GPU, published speed, task check) on tiny inputs, on the CPU."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import tempfile
import unittest
from unittest import mock

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

    def test_markdown_of_a_speed_only_row(self):
        # --network published: random weights, so only the whole-volume speed is measured
        results = {"rows": [{"mode": "global", "dtype": "float32", "volume": {"seconds": 16.0, "slices_per_s": 0.5}}]}
        line = self.bench.markdown(results).splitlines()[-1]
        self.assertTrue(line.startswith("| global | float32 | - | - | - | - | - |"), line)
        self.assertTrue(line.endswith("| 0.50 |"), line)
        self.assertEqual(self.bench.parse_args(["--network", "published"]).network, "published")
        dtypes = self.bench.compute_dtypes
        self.assertEqual(dtypes(self.bench.parse_args([])), [None])
        self.assertEqual(dtypes(self.bench.parse_args(["--fp16"])), [None, "float16"])
        self.assertEqual(dtypes(self.bench.parse_args(["--fp16", "--bf16"])), [None, "bfloat16", "float16"])
        net, info = self.bench.published_network()
        self.assertEqual(sum(p.numel() for p in net.parameters()), 41_687_424)
        self.assertTrue(net.transpose_hw)  # the bundle's orientation
        self.assertEqual(info["train_patch_size"], 128)

    def test_bad_arguments(self):
        for argv in (["--network", "published", "--quick"], ["--network", "published", "--depth", "0"]):
            with self.assertRaises(SystemExit):
                self.bench.parse_args(argv)  # random weights: the volume run is all it measures
        with self.assertRaises(SystemExit):
            self.bench.parse_args(["--network", "restormer"])
        with self.assertRaises(SystemExit):
            self.bench.parse_args(["--slice_batch", "0"])
        with self.assertRaises(SystemExit):
            self.bench.parse_args(["--modes", "tlc"])


class TestNetworkBenchmark(unittest.TestCase):
    def test_flops_of_the_no_graph_path_equal_the_graph_path(self):
        from custom.networks import TAT
        from custom.networks.blocks import pointwise
        from torch.utils.flop_counter import FlopCounterMode

        bench = _load("network")
        torch.manual_seed(0)
        net = TAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, tren_hidden_channels=8).eval()
        x = torch.rand(1, 1, 32, 32)
        with torch.enable_grad(), FlopCounterMode(display=False) as graph:
            net(x)
        for prefer in (False, True):  # MKL's in-place GEMMs, or oneDNN's products (as on CPUs not made by Intel)
            with mock.patch.object(pointwise, "PREFER_ONEDNN", prefer and pointwise._LINEAR is not None):
                with torch.no_grad(), FlopCounterMode(display=False) as plain:
                    net(x)  # the fused GELU convs, in-place GEMMs and oneDNN's products are unknown to the counter
                formulas = bench.no_graph_flop_formulas()
                with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=formulas) as ours:
                    net(x)
            self.assertEqual(ours.get_total_flops(), graph.get_total_flops())
            self.assertLess(plain.get_total_flops(), graph.get_total_flops())
        figures = bench.eval_figures(net, 32, 1, torch.device("cpu"))
        self.assertEqual(figures["gflop"], graph.get_total_flops() / 1e9)
        self.assertGreater(figures["gflops_per_s"], 0)


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
        self.assertTrue(all(r["finite"] for r in inference.values()))
        for (mode, dtype), row in inference.items():  # autocast outputs beside float32: close, not equal
            self.assertEqual("max_abs_diff_vs_float32" in row, dtype != "float32")
            if dtype != "float32":
                self.assertLess(row["max_abs_diff_vs_float32"], 0.05, (mode, dtype))
        self.assertGreater(inference[("global", "bfloat16")]["max_abs_diff_vs_float32"], 0)
        train = {r["amp"]: r for r in results["training"]}
        self.assertTrue(train["bfloat16"]["finite"])
        self.assertEqual(train["bfloat16"]["batch"], [2, 1, 32, 32])
        self.assertIn("skipped", train["float16"])
        self.assertEqual([r["mode"] for r in results["agreement"]], ["published", "global", "sliding", "blended"])
        self.assertTrue(all(r["ok"] and r["max_abs_diff"] == 0.0 for r in results["agreement"]))

    @staticmethod
    def _quick_global_run(bench, name: str, replacement) -> int:
        """``bench.main`` on the CPU smoke path, ``global`` mode only, with ``bench.<name>`` replaced."""
        threads = torch.get_num_threads()
        try:
            with mock.patch.object(bench, name, replacement), mock.patch.object(bench, "INFERENCE_MODES", ("global",)):
                return bench.main(["--device", "cpu", "--quick"])
        finally:
            torch.set_num_threads(threads)

    def test_non_finite_output_fails_the_run(self):
        bench = _load("gpu")
        real = bench.mode_inferer

        def overflowing(mode, **kwargs):  # float16 outputs that overflowed (a float32 sum beyond 65504, say)
            inner = real(mode, **kwargs)
            if kwargs.get("autocast_dtype") != "float16":
                return inner
            return lambda x, net: inner(x, net) * float("inf")

        self.assertEqual(self._quick_global_run(bench, "mode_inferer", overflowing), 1)

    def test_non_finite_training_loss_fails_the_run(self):
        bench = _load("gpu")
        loss = mock.Mock(return_value={"amp": "bfloat16", "finite": False})
        self.assertEqual(self._quick_global_run(bench, "_train", loss), 1)
        self.assertEqual(loss.call_count, 1)  # bf16 only: float16 AMP training is CUDA-only

    def test_no_cuda_message(self):
        bench = _load("gpu")
        if torch.cuda.is_available():
            self.skipTest("a CUDA device is present")
        self.assertEqual(bench.main(["--device", "cuda:0"]), 2)


class TestPublishedSpeedBenchmark(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bench = _load("published_speed")

    def test_ours_only_without_reference(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "speed.json")
            threads = torch.get_num_threads()
            try:
                rc = self.bench.main(["--sizes", "16", "24", "--rounds", "2", "--threads", "1", "--output", out])
            finally:
                torch.set_num_threads(threads)
            with open(out, encoding="utf-8") as f:
                results = json.load(f)
        self.assertEqual(rc, 0)
        self.assertEqual(results["threads"], 1)
        self.assertIsNone(results["reference"])
        self.assertEqual([r["size"] for r in results["rows"]], [16, 24])
        for r in results["rows"]:
            self.assertEqual(len(r["ours"]["seconds"]), 2)
            self.assertGreater(r["ours"]["median"], 0)
            self.assertIsNone(r["reference"])
            self.assertIsNone(r["speedup"])

    def test_products_forced_either_way_and_restored(self):
        from custom.networks.blocks import pointwise

        before = pointwise.PREFER_ONEDNN
        seen = []
        real_compare = self.bench.compare

        def compare(*args, **kwargs):
            seen.append(pointwise.PREFER_ONEDNN)
            return real_compare(*args, **kwargs)

        choices = ["mkl", "onednn"] if pointwise._LINEAR is not None else ["mkl"]
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(self.bench, "compare", compare):
            for choice in choices:
                out = os.path.join(tmp, f"{choice}.json")
                self.assertEqual(
                    self.bench.main(["--sizes", "16", "--rounds", "1", "--products", choice, "--output", out]), 0
                )
                with open(out, encoding="utf-8") as f:
                    self.assertEqual(json.load(f)["products"], "oneDNN" if choice == "onednn" else "F.linear (MKL)")
                self.assertEqual(pointwise.PREFER_ONEDNN, before)  # restored
        self.assertEqual(seen, [c == "onednn" for c in choices])
        with mock.patch.object(pointwise, "_LINEAR", None), contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(self.bench.main(["--sizes", "16", "--products", "onednn"]), 2)
        self.assertIn("no oneDNN product", err.getvalue())
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            self.bench.parse_args(["--products", "blas"])

    def test_alternates_and_compares(self):
        calls = []

        def ours(x):
            calls.append("ours")
            return x * 2

        def reference(x):
            calls.append("reference")
            return x * 2 + 0.25

        rows = self.bench.compare(ours, reference, [8], 3, lambda s: torch.ones(1, 1, s, s))
        self.assertEqual(calls, ["ours", "reference"] + ["reference", "ours"] * 3)  # warm-up, then alternating
        row = rows[0]
        self.assertAlmostEqual(row["max_abs_diff"], 0.25)
        self.assertEqual(len(row["reference"]["seconds"]), 3)
        self.assertAlmostEqual(row["speedup"], row["reference"]["median"] / row["ours"]["median"])
        self.assertLessEqual(row["speedup_min"], row["speedup_max"])

    def test_fill_is_deterministic_and_exercises_gates(self):
        state = {"a.lambda_dw": torch.zeros(1, 4, 1, 1, 1), "b.weight": torch.zeros(3), "c.weight": torch.zeros(2, 3)}
        first, second = self.bench.fill(state), self.bench.fill(state)
        for key in state:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
            self.assertEqual(first[key].shape, state[key].shape)
        self.assertTrue(torch.all(first["a.lambda_dw"] != 0))  # gates open: the generated kernels matter
        self.assertTrue(torch.all((first["b.weight"] - 1).abs() <= 0.1))  # layer-norm scales near 1
        self.assertLessEqual(first["c.weight"].abs().max().item(), 1.0)  # sqrt(3 / fan_in 3) = 1

    def test_bad_reference(self):
        self.assertEqual(self.bench.main(["--reference", os.path.join(REPO, "no_such_TAT.py")]), 2)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "TAT.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write("import torch\nclass Other(torch.nn.Module):\n    pass\n")
            with self.assertRaisesRegex(ValueError, "defines no TAT"):
                self.bench.load_reference(path)
        with self.assertRaises(SystemExit):
            self.bench.parse_args(["--rounds", "0"])


if __name__ == "__main__":
    unittest.main()


class TestTaskCheckBenchmark(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from custom.handlers.task_statistics import compute_task_statistics, store_task_statistics
        from custom.settings import load_modality_settings

        from tests.utils import BUNDLE, SETTINGS_DIR, make_task_dataset, save_checkpoint, tiny_overrides

        cls.bench = _load("task_check")
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.datalist = make_task_dataset(os.path.join(tmp, "data"), {"training": 3, "validation": 2, "test": 1})
        cls.ckpt = os.path.join(tmp, "model.pt")
        net = save_checkpoint(cls.ckpt)
        stats = compute_task_statistics(net, cls.datalist, load_modality_settings(SETTINGS_DIR))
        store_task_statistics(cls.ckpt, stats)
        cls.overrides = os.path.join(tmp, "overrides.json")
        with open(cls.overrides, "w") as f:
            json.dump(tiny_overrides(), f)
        with open(cls.datalist) as f:
            pet = next(it["image"] for it in json.load(f)["test"] if it["modality"] == "PET")
        cls.pet = os.path.join(os.path.dirname(cls.datalist), pet)
        cls.args = ["--checkpoint", cls.ckpt, "--datalist", cls.datalist, "--bundle_root", BUNDLE]
        cls.args += ["--overrides", cls.overrides, "--size", "32"]
        cls.no_stats = os.path.join(tmp, "bare.pt")
        save_checkpoint(cls.no_stats)

    def _run(self, *extra: str) -> tuple[int, str]:
        out = io.StringIO()
        threads = torch.get_num_threads()
        try:
            with contextlib.redirect_stdout(out):
                rc = self.bench.main([*self.args, *extra])
        finally:
            torch.set_num_threads(threads)
        return rc, out.getvalue()

    def test_every_slice_counted_once(self):
        rc, text = self._run("--pet_slice", self.pet)
        self.assertEqual(rc, 0, text)
        rows = {
            line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ")
        }
        for split, n in (("training", 9), ("validation", 6), ("test", 3)):
            slices, right, alarms, confused = (c.strip() for c in rows[split])
            self.assertEqual(int(slices), n)
            wrong = sum(int(part.split()[0]) for part in confused.split(", ")) if confused != "-" else 0
            self.assertEqual(int(right.split()[0]) + wrong, n, rows[split])
            self.assertGreaterEqual(int(alarms), wrong)  # every slice read as another task is a mismatch warning
        self.assertIn("PET slice", text)
        self.assertRegex(text, r"foreign inputs warned: \d of 7")

    def test_checkpoint_without_statistics(self):
        args = list(self.args)
        args[1] = self.no_stats
        out = io.StringIO()
        with contextlib.redirect_stderr(out):
            self.assertEqual(self.bench.main(args), 1)
        self.assertIn("no task statistics", out.getvalue())
