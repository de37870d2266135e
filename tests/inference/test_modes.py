"""Inference modes: one config key picks the network's window mode and the inferer; bad values fail clearly."""

from __future__ import annotations

import json
import unittest
from unittest import mock

import torch
from custom.inference import INFERENCE_MODES, SliceBatchInferer
from custom.inference import inferer as inferer_module
from custom.inference import mode_inferer, network_window_mode
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from parameterized import parameterized

from tests.utils import INFERENCE_CONFIG, tiny_net, tiny_overrides


class TestModeInferer(unittest.TestCase):
    def test_window_modes(self):
        self.assertEqual(
            [network_window_mode(m) for m in INFERENCE_MODES], ["published", "global", "global", "blended"]
        )

    @parameterized.expand(
        [
            ({"mode": "tlc"}, "published, global, sliding, blended"),
            ({"mode": "sliding", "roi_size": 4}, "roi_size"),
            ({"mode": "sliding", "roi_size": (128,)}, "roi_size"),
            ({"mode": "sliding", "overlap": 1.0}, r"overlap must be in \[0, 1\)"),
            ({"mode": "sliding", "overlap": -0.1}, "overlap"),
            ({"mode": "sliding", "sw_batch_size": 0}, "sw_batch_size"),
            ({"mode": "sliding", "sigma_scale": 0.0}, "sigma_scale"),
            ({"mode": "global", "slice_batch_size": 0}, "batch_size"),
            ({"mode": "global", "autocast_dtype": "int8"}, "bfloat16, float16"),
        ]
    )
    def test_bad_values(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            mode_inferer(**kwargs)

    @parameterized.expand(
        [
            ({"roi_size": 8}, "roi_size", [8, 8]),
            ({"roi_size": 4096}, "roi_size", [4096, 4096]),
            ({"roi_size": (8, 4096)}, "roi_size", [8, 4096]),
            ({"overlap": 0.0}, "overlap", 0.0),
            ({"sw_batch_size": 1}, "sw_batch_size", 1),
            ({"sigma_scale": 10.0}, "sigma_scale", 10.0),
        ]
    )
    def test_limits_accepted(self, kwargs, attribute, expected):
        inner = mode_inferer("sliding", **kwargs).inner
        self.assertEqual(getattr(inner, attribute), expected)

    @parameterized.expand(
        [
            ({"roi_size": 7}, "roi_size"),
            ({"roi_size": 4097}, "roi_size"),
            ({"roi_size": (128, 4)}, "roi_size"),  # every side checked
            ({"roi_size": (4, 128)}, "roi_size"),
            ({"sigma_scale": 10.5}, "sigma_scale"),
        ]
    )
    def test_limits_rejected(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            mode_inferer("sliding", **kwargs)

    def test_defaults_are_the_bundle_settings(self):
        with open(INFERENCE_CONFIG) as f:
            config = json.load(f)
        inferer = mode_inferer("sliding")
        self.assertEqual(inferer.batch_size, config["slice_batch_size"])
        self.assertEqual(SliceBatchInferer().batch_size, config["slice_batch_size"])
        self.assertEqual(list(inferer.inner.roi_size), [config["network_def"]["train_patch_size"]] * 2)
        self.assertEqual(inferer.inner.overlap, config["sliding_overlap"])
        self.assertEqual(inferer.inner.sw_batch_size, config["sw_batch_size"])
        self.assertIsNone(mode_inferer("global").inner)

    def test_network_window_mode_bad(self):
        with self.assertRaisesRegex(ValueError, "published, global, sliding, blended"):
            network_window_mode("windows")

    def test_sliding_is_monai_gaussian_at_roi(self):
        net = tiny_net().set_window_mode("global")
        torch.manual_seed(0)
        x = torch.rand(3, 1, 72, 60)
        inferer = mode_inferer("sliding", slice_batch_size=2, roi_size=32, overlap=0.5, sw_batch_size=3)
        with torch.no_grad():
            got = inferer(x, net)
            ref = sliding_window_inference(x, (32, 32), 4, net, overlap=0.5, mode="gaussian", padding_mode="reflect")
            whole = net(x)
            alone = inferer(x[1:2], net)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alone, got[1:2], rtol=1e-5, atol=1e-5)
        self.assertGreater((got - whole).abs().max().item(), 1e-4)  # really tiled

    @parameterized.expand([(m,) for m in INFERENCE_MODES])
    def test_volume_batch_of_slices_equals_each_alone(self, mode):
        net = tiny_net().set_window_mode(network_window_mode(mode))
        torch.manual_seed(1)
        vol = torch.rand(1, 1, 56, 64, 3)  # (B, C, H, W, D)
        with torch.no_grad():
            out = mode_inferer(mode, slice_batch_size=3, roi_size=32)(vol, net)
            self.assertEqual(tuple(out.shape), tuple(vol.shape))
            for d in range(3):
                alone = mode_inferer(mode, slice_batch_size=1, roi_size=32)(vol[..., d], net)
                torch.testing.assert_close(out[..., d], alone, rtol=1e-5, atol=1e-5)

    def test_bf16_autocast_close_not_equal(self):
        net = tiny_net()
        torch.manual_seed(2)
        x = torch.rand(2, 1, 48, 48)
        with torch.no_grad():
            ref = SliceBatchInferer(2)(x, net)
            bf = SliceBatchInferer(2, autocast_dtype="bfloat16")(x, net)
        self.assertEqual(bf.dtype, torch.float32)
        diff = (bf - ref).abs().max().item()
        self.assertGreater(diff, 0)
        self.assertLess(diff, 0.1)

    @parameterized.expand([(m, dtype) for m in ("global", "sliding") for dtype in (None, "bfloat16", "float16")])
    def test_autocast_dtype_reaches_the_network(self, mode, dtype):
        seen = []

        def net(x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return x * 2

        x = torch.rand(2, 1, 16, 16, 3)
        inferer_module.warn_if_emulated.cache_clear()
        self.addCleanup(inferer_module.warn_if_emulated.cache_clear)
        with mock.patch.object(inferer_module, "cpu_has_fast", return_value=True):
            out = mode_inferer(mode, slice_batch_size=4, roi_size=8, autocast_dtype=dtype)(x, net)
        self.assertTrue(seen)
        if dtype is None:
            self.assertEqual({enabled for enabled, _ in seen}, {False})  # float32: no autocast
        else:
            self.assertEqual(set(seen), {(True, getattr(torch, dtype))})
        self.assertEqual(out.dtype, x.dtype)
        torch.testing.assert_close(out, x * 2)

    @parameterized.expand([("global",), ("sliding",)])
    def test_null_autocast_dtype_keeps_the_callers_autocast(self, mode):
        """``autocast_dtype`` null leaves the caller's autocast (the ``amp`` switch of the evaluator and of
        ``restore()``) in force, and an explicit dtype replaces it; the output comes back in the input's dtype."""
        seen = []

        def net(x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return torch.mm(x.flatten(0, 2), torch.eye(x.shape[-1])).reshape(x.shape)  # an autocast op

        x = torch.rand(2, 1, 16, 16)
        with mock.patch.object(inferer_module, "cpu_has_fast", return_value=True):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = mode_inferer(mode, slice_batch_size=4, roi_size=8)(x, net)
                self.assertEqual(set(seen), {(True, torch.bfloat16)})
                seen.clear()
                mode_inferer(mode, slice_batch_size=4, roi_size=8, autocast_dtype="float16")(x, net)
                self.assertEqual(set(seen), {(True, torch.float16)})
        self.assertEqual(out.dtype, torch.float32)
        self.assertGreater((out - x).abs().max().item(), 0)  # bf16 products (blended in float32 by sliding)
        torch.testing.assert_close(out, x, rtol=0, atol=1e-2)

    @parameterized.expand([(m, shape) for m in ("global", "sliding") for shape in ((3, 1, 16, 16), (1, 1, 16, 16, 3))])
    def test_extra_arguments_reach_the_network(self, mode, shape):
        def net(x, scale, *, shift):
            return x * scale + shift

        x = torch.rand(shape)
        out = mode_inferer(mode, slice_batch_size=2, roi_size=8)(x, net, 3.0, shift=0.5)
        torch.testing.assert_close(out, x * 3.0 + 0.5)

    @parameterized.expand([("emulated", False, 1), ("native", True, 0)])
    def test_reduced_precision_on_a_cpu_without_kernels_is_warned_once(self, _, native, warnings):
        net = tiny_net()
        x = torch.rand(1, 1, 16, 16)
        inferer_module.warn_if_emulated.cache_clear()
        self.addCleanup(inferer_module.warn_if_emulated.cache_clear)
        with mock.patch.object(inferer_module, "cpu_has_fast", return_value=native) as has_fast:
            with self.assertLogs(inferer_module.logger, "WARNING") as logs, torch.no_grad():
                inferer_module.logger.warning("marker")
                SliceBatchInferer(1, autocast_dtype="bfloat16")(x, net)
                SliceBatchInferer(1, autocast_dtype="bfloat16")(x, net)  # once per process
                SliceBatchInferer(1)(x, net)  # float32: never checked
        has_fast.assert_called_once_with("bfloat16")
        emulated = [r for r in logs.output if "SLOWER than float32" in r]
        self.assertEqual(len(emulated), warnings)
        if warnings:
            self.assertIn("autocast_dtype null", emulated[0])

    @parameterized.expand(
        [
            ("avx512_bf16", "bfloat16", {"_is_avx512_bf16_supported": True, "_is_amx_tile_supported": False}, True),
            ("amx", "bfloat16", {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": True}, True),
            ("plain_avx512", "bfloat16", {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}, False),
            ("amx_fp16", "float16", {"_is_amx_fp16_supported": True}, True),
            ("no_fp16", "float16", {"_is_amx_fp16_supported": False}, False),
        ]
    )
    def test_cpu_has_fast_reads_the_cpu_features(self, _, dtype, features, expected):
        with mock.patch.multiple(torch.cpu, **{k: mock.Mock(return_value=v) for k, v in features.items()}):
            self.assertEqual(inferer_module.cpu_has_fast(dtype), expected)

    def test_cpu_has_fast_false_when_the_check_fails(self):
        features = {"_is_avx512_bf16_supported": mock.Mock(side_effect=RuntimeError("no cpuinfo"))}
        with mock.patch.multiple(torch.cpu, **features, create=True):
            self.assertFalse(inferer_module.cpu_has_fast("bfloat16"))


class TestConfigs(unittest.TestCase):
    @staticmethod
    def _parser(files, mode):
        p = ConfigParser()
        p.read_config(files)
        p["bundle_root"] = "bundle"
        for k, v in tiny_overrides(patch=False).items():
            p[k] = v
        if mode is not None:
            p["inference_mode"] = mode
        return p

    @parameterized.expand([(m,) for m in INFERENCE_MODES])
    def test_inference_json_one_key(self, mode):
        p = self._parser(INFERENCE_CONFIG, mode)
        self.assertEqual(p.get_parsed_content("network_def").window_mode, network_window_mode(mode))
        inferer = p.get_parsed_content("inferer")
        self.assertEqual(type(inferer.inner).__name__, "SlidingWindowInferer" if mode == "sliding" else "NoneType")

    def test_sliding_tiles_at_the_training_size(self):
        p = self._parser(INFERENCE_CONFIG, "sliding")
        p["network_def"]["train_patch_size"] = 64
        self.assertEqual(tuple(p.get_parsed_content("inferer").inner.roi_size), (64, 64))

    def test_defaults(self):
        self.assertEqual(self._parser(INFERENCE_CONFIG, None)["inference_mode"], "global")  # chosen by measurement
        train = INFERENCE_CONFIG.replace("inference.json", "train.json")
        evaluate = INFERENCE_CONFIG.replace("inference.json", "evaluate.json")
        p = self._parser([train, evaluate], None)
        self.assertEqual(p["inference_mode"], "published")  # the published test phase
        self.assertEqual(p.get_parsed_content("network_def").window_mode, "published")
        p = self._parser([train, evaluate], "blended")
        self.assertEqual(p.get_parsed_content("network_def").window_mode, "blended")
        self.assertEqual(self._parser(train, None).get_parsed_content("network_def").window_mode, "published")

    def test_bad_mode_in_config(self):
        p = self._parser(INFERENCE_CONFIG, "fast")
        with self.assertRaises(Exception) as ctx:
            p.get_parsed_content("inferer")
        cause = ctx.exception
        while cause.__cause__ is not None:  # MONAI wraps the instantiation error
            cause = cause.__cause__
        self.assertIsInstance(cause, ValueError)
        self.assertIn("inference_mode must be one of published, global, sliding, blended", str(cause))


if __name__ == "__main__":
    unittest.main()
