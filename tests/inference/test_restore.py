"""The one restore path (custom.inference.restore): checkpoint loading, normalise / infer / denormalise / clip,
the bundle-built Restorer the apps use, and the apps importing only what exists."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import torch
from custom.inference import SliceBatchInferer
from custom.inference import inferer as inferer_module
from custom.inference import load_nifti
from custom.inference.restore import Restorer, denormalise, normalise, restore
from custom.networks import TAT
from custom.networks.checkpoint import load_checkpoint
from custom.settings import load_modality_settings
from monai.data import MetaTensor
from parameterized import parameterized

from tests.utils import BUNDLE, REPO, TINY, ShiftNet, save_identity_checkpoint, tiny_net

SETTINGS = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))


class _Constant(torch.nn.Module):
    """Outputs ``value`` everywhere (network range), to see what denormalise and clip do."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value) + self.w


class TestRestore(unittest.TestCase):
    @parameterized.expand([("CT", (-1024.0, 3072.0)), ("PET", (0.0, 20.0)), ("MRI", (0.0, 4095.0))])
    def test_identity_network_gives_clipped_input(self, modality, clip):
        with tempfile.TemporaryDirectory() as d:
            net = save_identity_checkpoint(os.path.join(d, "m.pt"))
        lo, hi = clip
        image = torch.linspace(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo), 2 * 20 * 18).reshape(1, 20, 18, 2)
        before = image.clone()
        out = restore(image, modality, net, SliceBatchInferer(2), SETTINGS)
        self.assertEqual(tuple(out.shape), (1, 20, 18, 2))
        torch.testing.assert_close(out, image.clamp(lo, hi), rtol=0, atol=1e-6 * (hi - lo))
        torch.testing.assert_close(image, before)  # input not modified
        out2d, x = restore(image[..., 0], modality, net, SliceBatchInferer(2), SETTINGS, return_normalised=True)
        torch.testing.assert_close(out2d, out[..., 0])
        self.assertTrue(float(x.min()) >= 0 and float(x.max()) <= 1)

    def test_clip_applies_to_the_output(self):
        image = torch.zeros(1, 8, 8)
        above = restore(image, "CT", _Constant(1.5), SliceBatchInferer(1), SETTINGS)
        torch.testing.assert_close(above, torch.full_like(image, 3072.0))
        free = restore(image, "CT", _Constant(1.5), SliceBatchInferer(1), SETTINGS, clip=False)
        torch.testing.assert_close(free, torch.full_like(image, -1024.0 + 1.5 * 4096.0))
        with self.assertRaisesRegex(ValueError, "modality"):
            restore(image, "XR", _Constant(0.5), SliceBatchInferer(1), SETTINGS)


class TestRestoreAmp(unittest.TestCase):
    def test_amp_reaches_the_network_through_the_bundles_inferer_and_is_warned_when_emulated(self):
        """``amp=True`` autocasts the forward pass through a ``SliceBatchInferer`` with ``autocast_dtype`` null (the
        bundle's), so the output moves off the float32 one (bf16 products); on a CPU without native bf16 kernels
        it says so (once per process); ``amp=False`` is float32 and warns nothing."""
        torch.manual_seed(0)
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        image = torch.linspace(-1000, 1000, 32 * 32).reshape(1, 32, 32)
        inferer_module.warn_if_emulated.cache_clear()
        self.addCleanup(inferer_module.warn_if_emulated.cache_clear)
        with mock.patch.object(inferer_module, "cpu_has_fast", return_value=False):
            with self.assertLogs(inferer_module.logger, "WARNING") as logs:
                inferer_module.logger.warning("marker")
                plain = restore(image, "CT", net, SliceBatchInferer(2), SETTINGS)
                amp = restore(image, "CT", net, SliceBatchInferer(2), SETTINGS, amp=True)
        self.assertEqual(len(logs.output), 2)
        self.assertIn("bfloat16", logs.output[1])
        self.assertEqual(amp.dtype, torch.float32)
        diff = (amp - plain).abs().max().item()
        self.assertGreater(diff, 0.1)  # HU
        self.assertLess(diff, 50)


def _forward(x: torch.Tensor, network: torch.nn.Module) -> torch.Tensor:
    """The simplest inferer: the network on the whole ``(1, C, H, W)`` input, at the caller's precision."""
    return network(x)


def _ct_shifted(image: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """What :class:`ShiftNet` gives for a CT image: normalise (clipped to [0, 1]), + 0.5, denormalise, clip."""
    lo, hi = SETTINGS["CT"]["clip_range"]
    out = lo + ((image.clamp(lo, hi) - lo) / (hi - lo) + 0.5) * (hi - lo)
    return out.clamp(lo, hi) if clip else out


class TestRestoreSteps(unittest.TestCase):
    def test_eval_mode_float32_by_default(self):
        image = torch.linspace(-1500.0, 3500.0, 8 * 6 * 3).reshape(1, 8, 6, 3)
        net = ShiftNet().train()
        out = restore(image, "CT", net, SliceBatchInferer(2), SETTINGS)
        self.assertFalse(net.training)
        self.assertEqual((out.dtype, out.device.type), (torch.float32, "cpu"))
        torch.testing.assert_close(out, _ct_shifted(image), rtol=0, atol=0.01)
        free = restore(image, "CT", net, SliceBatchInferer(2), SETTINGS, clip=False, device="cpu")
        torch.testing.assert_close(free, _ct_shifted(image, clip=False), rtol=0, atol=0.01)
        self.assertGreater(float(free.max()), SETTINGS["CT"]["clip_range"][1])
        # an inferer that leaves the precision to restore(): float32, unless amp (bfloat16 autocast: close, not exact)
        image2d = torch.linspace(-1000.0, 1000.0, 8 * 6).reshape(1, 8, 6)
        plain = restore(image2d, "CT", net, _forward, SETTINGS)
        torch.testing.assert_close(plain, _ct_shifted(image2d), rtol=0, atol=0.01)
        amp = restore(image2d, "CT", net, _forward, SETTINGS, amp=True)
        torch.testing.assert_close(amp, _ct_shifted(image2d), rtol=0, atol=20.0)
        self.assertGreater(float((amp - _ct_shifted(image2d)).abs().max()), 0.1)

    def test_network_without_parameters_runs_on_the_cpu(self):
        image = torch.linspace(-1500.0, 3500.0, 6 * 5).reshape(1, 6, 5)
        out, x = restore(image, "CT", torch.nn.Identity(), SliceBatchInferer(1), SETTINGS, return_normalised=True)
        torch.testing.assert_close(out, image.clamp(*SETTINGS["CT"]["clip_range"]), rtol=0, atol=1e-3)
        lo, hi = SETTINGS["CT"]["clip_range"]
        torch.testing.assert_close(x, ((image - lo) / (hi - lo)).clamp(0, 1))

    def test_denormalise_clips_by_default(self):
        pred = torch.tensor([[[-0.5, 0.25], [1.0, 1.5]]])
        lo, hi = SETTINGS["PET"]["clip_range"]
        free = lo + pred * (hi - lo)
        torch.testing.assert_close(denormalise(pred, "PET", SETTINGS), free.clamp(lo, hi))
        torch.testing.assert_close(denormalise(pred, "PET", SETTINGS, clip=False), free)
        torch.testing.assert_close(normalise(free, "PET", SETTINGS), pred.clamp(0, 1))


class TestRestorerDirect(unittest.TestCase):
    """A Restorer built from a network (not from a bundle): restore() only, no steps."""

    def test_arrays_restored_and_clipped_by_default(self):
        restorer = Restorer(ShiftNet().train(), SETTINGS, SliceBatchInferer(2))
        self.assertEqual(
            (restorer.clip, restorer.device, restorer.network.training), (True, torch.device("cpu"), False)
        )
        self.assertIs(restorer.settings, SETTINGS)
        self.assertEqual(restorer.steps({"task_check": True}), [])
        values = np.linspace(-1500.0, 3500.0, 8 * 6 * 3, dtype=np.float32).reshape(8, 6, 3)
        before = values.copy()
        out = restorer(values, "CT")
        np.testing.assert_array_equal(values, before)
        self.assertEqual((out.shape, out.dtype), (values.shape, np.float32))
        expected = _ct_shifted(torch.from_numpy(values)[None])[0].numpy()
        np.testing.assert_allclose(out, expected, rtol=0, atol=0.01)
        np.testing.assert_allclose(restorer(values[..., 1], "CT"), expected[..., 1], rtol=0, atol=0.01)
        np.testing.assert_allclose(
            restorer(values.astype(np.int16), "CT"),
            _ct_shifted(torch.from_numpy(values.astype(np.int16).astype(np.float32))[None])[0].numpy(),
            rtol=0,
            atol=0.01,
        )
        unclipped = Restorer(ShiftNet(), SETTINGS, SliceBatchInferer(2), clip=False)(values, "CT")
        self.assertGreater(float(unclipped.max()), SETTINGS["CT"]["clip_range"][1])
        for shape in ((5,), (1, 8, 6, 3)):
            with self.assertRaisesRegex(
                ValueError, rf"2D \(H, W\) or 3D \(H, W, D\) array, got shape {re.escape(str(shape))}"
            ):
                restorer(np.zeros(shape, np.float32), "CT")

    def test_restore_item(self):
        restorer = Restorer(ShiftNet(), SETTINGS, SliceBatchInferer(2))
        image = torch.linspace(-1500.0, 3500.0, 8 * 6 * 2).reshape(1, 8, 6, 2)
        warnings = ["from the reader"]
        item = {"image": MetaTensor(image.double()), "modality": "CT", "warnings": warnings, "source": "a.nii"}
        d = restorer.restore_item(item)
        self.assertIs(item["warnings"], warnings)
        self.assertEqual(d["warnings"], warnings)
        self.assertIsNot(d["warnings"], warnings)  # a new list: the steps' notes do not reach the caller's item
        self.assertEqual((type(d["input"]), d["input"].dtype), (torch.Tensor, torch.float32))
        torch.testing.assert_close(d["input"], image)
        torch.testing.assert_close(d["pred"], _ct_shifted(image), rtol=0, atol=0.01)
        lo, hi = SETTINGS["CT"]["clip_range"]
        torch.testing.assert_close(d["image"], ((image - lo) / (hi - lo)).clamp(0, 1))
        self.assertEqual((d["source"], d["modality"]), ("a.nii", "CT"))
        self.assertEqual(restorer.restore_item({"image": image[..., 0], "modality": "CT"})["warnings"], [])
        for shape in ((2, 8, 6), (8, 6), (1, 8, 6, 2, 2)):
            with self.assertRaisesRegex(
                ValueError, rf"a.nii: expected \(1, H, W\[, D\]\), got shape {re.escape(str(shape))}"
            ):
                restorer.restore_item({"image": torch.zeros(shape), "modality": "CT", "source": "a.nii"})


class TestLoadCheckpoint(unittest.TestCase):
    def test_formats_and_errors(self):
        ref = tiny_net(3)
        with tempfile.TemporaryDirectory() as d:
            plain, wrapped = os.path.join(d, "plain.pt"), os.path.join(d, "wrapped.pt")
            torch.save(ref.state_dict(), plain)
            torch.save({"model": ref.state_dict(), "epoch": 3}, wrapped)
            for path in (plain, wrapped):
                net = load_checkpoint(TAT(**TINY), path)
                for (name, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
                    torch.testing.assert_close(a, b, msg=name)
            with self.assertRaisesRegex(ValueError, "plain.pt: does not match"):
                load_checkpoint(TAT(**{**TINY, "dim": 16}), plain)
            with self.assertRaisesRegex(ValueError, "missing.pt: checkpoint not found"):
                load_checkpoint(TAT(**TINY), os.path.join(d, "missing.pt"))
            unsafe = os.path.join(d, "unsafe.pt")
            torch.save({"model": _Constant(0.1)}, unsafe)  # a pickled module: needs code to load
            with self.assertRaisesRegex(ValueError, "unsafe.pt: cannot be loaded safely"):
                load_checkpoint(TAT(**TINY), unsafe)


def _layouts(raw: dict, ema: dict) -> dict[str, tuple[object, str, dict]]:
    """Every checkpoint layout the bundle writes: name -> (saved object, ``weights`` argument, expected weights)."""
    latest = {"network": raw, "ema": {"ema_model": ema, "num_updates": torch.tensor(7)}, "optimizer": {"state": {}}}
    published = {("patch_embed.proj.weight" if k == "patch_embed.weight" else k): v for k, v in raw.items()}
    return {
        "bare": (raw, "ema", raw),
        "model": ({"model": raw, "epoch": 3}, "ema", raw),
        "model_task_statistics": ({"model": raw, "task_statistics": {"tasks": ["CT"], "threshold": 1.5}}, "ema", raw),
        "latest_ema": (latest, "ema", ema),
        "latest_network": (latest, "network", raw),
        "latest_without_ema": ({"network": raw, "optimizer": {}}, "ema", raw),
        "ema_entry": ({"ema_model": ema, "num_updates": torch.tensor(7)}, "ema", ema),
        "published_names": (published, "ema", raw),
    }


class TestLoadCheckpointLayouts(unittest.TestCase):
    """The bundle's one checkpoint loader reads every layout training writes (the trainer's latest.pt included)."""

    @parameterized.expand([(name,) for name in _layouts({}, {})])
    def test_layout(self, name):
        raw, ema = tiny_net(1).state_dict(), tiny_net(2).state_dict()
        saved, weights, expected = _layouts(raw, ema)[name]
        other = ema if expected is raw else raw
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, f"{name}.pt")
            torch.save(saved, path)
            with (
                self.assertLogs("custom.networks.checkpoint", "INFO")
                if name.startswith(("latest", "pub"))
                else contextlib.nullcontext()
            ):
                net = load_checkpoint(TAT(**TINY), path, weights=weights)
        loaded = net.state_dict()
        self.assertEqual(set(loaded), set(expected))
        for key, value in expected.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
        self.assertFalse(all(torch.equal(loaded[k], other[k]) for k in loaded))

    def test_latest_logs_which_weights(self):
        raw, ema = tiny_net(1).state_dict(), tiny_net(2).state_dict()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "latest.pt")
            torch.save(_layouts(raw, ema)["latest_ema"][0], path)
            with self.assertLogs("custom.networks.checkpoint", "INFO") as logs:
                load_checkpoint(TAT(**TINY), path)
            self.assertIn("EMA weights", "\n".join(logs.output))
            torch.save({"network": raw}, path)
            with self.assertLogs("custom.networks.checkpoint", "WARNING") as logs:
                load_checkpoint(TAT(**TINY), path)
            self.assertIn("without EMA weights", "\n".join(logs.output))

    def test_layout_errors(self):
        raw = tiny_net(1).state_dict()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.pt")
            torch.save({"optimizer": {"lr": 1.0}, "epoch": 2}, path)
            with self.assertRaisesRegex(ValueError, r"c\.pt: expected a state dict.*keys \['epoch', 'optimizer'\]"):
                load_checkpoint(TAT(**TINY), path)
            torch.save({"network": raw, "ema": {"ema_model": tiny_net(1).state_dict()}}, path)
            with self.assertRaisesRegex(ValueError, "weights must be 'ema' or 'network'"):
                load_checkpoint(TAT(**TINY), path, weights="online")
            small = TAT(**{**TINY, "dim": 16}).state_dict()
            torch.save({"network": raw, "ema": {"ema_model": small}}, path)
            with self.assertRaisesRegex(ValueError, r"c\.pt: does not match the network"):
                load_checkpoint(TAT(**TINY), path)
            net = load_checkpoint(TAT(**TINY), path, weights="network")
            torch.testing.assert_close(net.state_dict()["output.weight"], raw["output.weight"])
            torch.save({"network": {"x": torch.zeros(1)}, "model": raw}, path)
            with self.assertRaisesRegex(ValueError, r"c\.pt: does not match the network"):
                load_checkpoint(TAT(**TINY), path)


class TestRestorerFromBundle(unittest.TestCase):
    def test_bundle_restorer_is_identity_with_zero_residual(self):
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        with tempfile.TemporaryDirectory() as d:
            save_identity_checkpoint(os.path.join(d, "m.pt"))
            restorer = Restorer.from_bundle(
                BUNDLE, checkpoint=os.path.join(d, "m.pt"), overrides=overrides, device="cpu"
            )
        values = np.random.default_rng(0).uniform(-2000, 4000, (20, 18, 2)).astype(np.float32)
        out = restorer(values, "CT")
        self.assertEqual((out.shape, out.dtype), (values.shape, np.float32))
        np.testing.assert_allclose(out, np.clip(values, -1024, 3072), atol=1e-3)
        np.testing.assert_allclose(restorer(values[..., 0], "CT"), out[..., 0], atol=1e-6)
        with self.assertRaisesRegex(ValueError, "2D"):
            restorer(values[None], "CT")

    def test_clip_output_of_the_config_and_its_default(self):
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        with open(os.path.join(BUNDLE, "configs", "inference.json"), encoding="utf-8") as f:
            config = json.load(f)
        with tempfile.TemporaryDirectory() as d:
            save_identity_checkpoint(os.path.join(d, "m.pt"))
            for value, expected in (("absent", True), (False, False), (True, True)):
                path = os.path.join(d, f"{value}.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(
                        {k: v for k, v in config.items() if k != "clip_output"}
                        | ({} if value == "absent" else {"clip_output": value}),
                        f,
                    )
                restorer = Restorer.from_bundle(
                    BUNDLE, checkpoint=os.path.join(d, "m.pt"), config_file=path, overrides=overrides, device="cpu"
                )
                self.assertIs(restorer.clip, expected, value)

    def test_amp_of_the_config_reaches_the_forward_pass(self):
        """The apps' restorer honours inference.json's ``amp`` as the bundle does (false by default; "true" from a
        command line too): the forward pass autocasts, so the output moves off the float32 one; restore_item too."""
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        values = np.random.default_rng(0).uniform(-1000, 1000, (16, 16, 2)).astype(np.float32)
        outputs = {}
        with tempfile.TemporaryDirectory() as d, mock.patch.object(inferer_module, "cpu_has_fast", return_value=True):
            torch.manual_seed(0)
            torch.save(TAT(**TINY).state_dict(), os.path.join(d, "m.pt"))
            for amp in (None, False, "true"):
                extra = {} if amp is None else {"amp": amp}
                restorer = Restorer.from_bundle(
                    BUNDLE, checkpoint=os.path.join(d, "m.pt"), overrides=overrides | extra, device="cpu"
                )
                self.assertIs(restorer.amp, amp == "true", amp)
                outputs[amp] = restorer(values, "CT")
                item = {"image": torch.as_tensor(values)[None], "modality": "CT"}
                np.testing.assert_array_equal(restorer.restore_item(item)["pred"][0].numpy(), outputs[amp])
        np.testing.assert_array_equal(outputs[None], outputs[False])
        self.assertGreater(np.abs(outputs["true"] - outputs[False]).max(), 0)

    def test_missing_config_or_checkpoint(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, "inference config not found"):
                Restorer.from_bundle(d)
            with self.assertRaisesRegex(ValueError, "checkpoint not found"):
                Restorer.from_bundle(BUNDLE, checkpoint=os.path.join(d, "none.pt"), device="cpu")


class TestRestorerOptions(unittest.TestCase):
    """Per-call option values are checked and converted before they reach the bundle's ConfigParser."""

    @classmethod
    def setUpClass(cls):
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        cls.tmp = tempfile.TemporaryDirectory()
        save_identity_checkpoint(os.path.join(cls.tmp.name, "m.pt"))
        cls.restorer = Restorer.from_bundle(
            BUNDLE, checkpoint=os.path.join(cls.tmp.name, "m.pt"), overrides=overrides, device="cpu"
        )

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def _by_name(self, options: dict) -> dict:
        return {type(t).__name__: t for t in self.restorer.steps(options)}

    @parameterized.expand(
        [(f"{key}_{kind}", key, kind) for key in Restorer.OPTIONS for kind in ("expression", "reference", "macro")]
    )
    def test_config_syntax_is_refused_and_never_run(self, _, key, kind):
        marker = os.path.join(self.tmp.name, f"pwned_{key}_{kind}")
        valid = "'nonnegative'" if key == "data_consistency_mode" else "4" if key == "kspace_factor" else "True"
        value = {
            "expression": f"$open({marker!r}, 'w').write('x') and {valid}",
            "reference": "@network_def",
            "macro": "%configs/inference.json#kspace_factor",
        }[kind]
        for call in (Restorer.check_options, self.restorer.steps):
            with self.assertRaisesRegex(ValueError, f"inference option {key} must"):
                call({key: value})
        self.assertFalse(os.path.exists(marker), "the option's expression was evaluated")
        self.assertEqual(self._by_name({})["DataConsistencyd"].mode, "nonnegative")  # the parser holds no leftover

    def test_valid_values_are_converted(self):
        options = {
            "data_consistency": "yes",
            "kspace_factor": "2",
            "data_consistency_mode": "real",
            "task_check": 0,
            "difference_output": np.bool_(True),
        }
        checked = Restorer.check_options(options)
        self.assertEqual(
            checked,
            {
                "data_consistency": True,
                "kspace_factor": 2.0,
                "data_consistency_mode": "real",
                "task_check": False,
                "difference_output": True,
            },
        )
        self.assertEqual([type(checked[k]) for k in Restorer.OPTIONS], [bool, float, str, bool, bool])
        self.assertEqual(options["kspace_factor"], "2")  # the input is not modified
        steps = self._by_name(options)
        self.assertTrue(steps["DataConsistencyd"].enabled)
        self.assertEqual((steps["DataConsistencyd"].factor, steps["DataConsistencyd"].mode), (2.0, "real"))
        self.assertFalse(steps["TaskCheckd"].enabled)
        self.assertTrue(steps["SaveDifferenced"].enabled)

    @parameterized.expand([("int", 1, 1.0), ("float", 2.5, 2.5), ("numpy", np.float32(3), 3.0), ("text", " 4e0 ", 4.0)])
    def test_kspace_factor_accepted(self, _, value, expected):
        self.assertEqual(Restorer.check_options({"kspace_factor": value}), {"kspace_factor": expected})

    @parameterized.expand(
        [
            ("bool", True),
            ("below_one", 0.5),
            ("text_below_one", "0.99"),
            ("inf", float("inf")),
            ("nan", float("nan")),
            ("text_inf", "inf"),
            ("not_a_number", "2x"),
            ("none", None),
            ("list", [4]),
        ]
    )
    def test_kspace_factor_refused(self, _, value):
        with self.assertRaisesRegex(ValueError, "kspace_factor must be >= 1 .*finite number"):
            Restorer.check_options({"kspace_factor": value})

    @parameterized.expand([("upper", "REAL"), ("none", None), ("number", 1), ("padded", " real")])
    def test_mode_refused_with_the_choices(self, _, value):
        with self.assertRaisesRegex(ValueError, r"data_consistency_mode must be one of \('nonnegative', 'magnitude'"):
            Restorer.check_options({"data_consistency_mode": value})

    def test_flags_refused_with_the_choices(self):
        for key in ("data_consistency", "task_check", "difference_output"):
            with self.assertRaisesRegex(ValueError, f"inference option {key} must be true or false, got 'maybe'"):
                Restorer.check_options({key: "maybe"})
        with self.assertRaisesRegex(ValueError, "unknown inference option"):
            Restorer.check_options({"network_def#dim": 16})

    def test_bad_override_default_is_refused(self):
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        with self.assertRaisesRegex(ValueError, "inference option task_check must be true or false"):
            Restorer.from_bundle(
                BUNDLE,
                checkpoint=os.path.join(self.tmp.name, "m.pt"),
                overrides={**overrides, "task_check": "sometimes"},
                device="cpu",
            )

    def test_a_transform_refusing_a_config_value(self):
        """The transform's ValueError under MONAI's RuntimeError wrappers (one or several) is raised; other errors
        keep MONAI's wrapper."""
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        checkpoint = os.path.join(self.tmp.name, "m.pt")
        dc = "custom.transforms.data_consistency.DataConsistencyd"
        broken = os.path.join(self.tmp.name, "broken.dcm")  # a ValueError with its own cause (pydicom's error)
        with open(broken, "wb") as f:
            f.write(b"not a dicom file")
        refusal = r"inference options \{'task_check': True\}: DataConsistencyd: kspace_factor must be >= 1, got 0.5"
        cases = [
            ("#factor", 0.5, ValueError, refusal),
            ("", f"$monai.utils.instantiate('{dc}', 'default', keys='pred', factor=0.5)", ValueError, refusal),
            ("", f"$custom.data.readers.read_dicom_header({broken!r})", ValueError, "broken.dcm: unreadable DICOM"),
            ("#unknown_argument", 2, RuntimeError, "Failed to instantiate component .*DataConsistencyd"),
        ]
        for key, value, error, words in cases:
            extra = {f"postprocessing#transforms#0{key}": value}
            restorer = Restorer.from_bundle(
                BUNDLE, checkpoint=checkpoint, overrides={**overrides, **extra}, device="cpu"
            )
            with self.subTest(extra), self.assertRaisesRegex(error, words):
                restorer.steps({"task_check": True})

    def test_postprocessing_as_a_list_and_statistics_read_once_when_built(self):
        overrides = {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
        with open(os.path.join(BUNDLE, "configs", "inference.json"), encoding="utf-8") as f:
            transforms = json.load(f)["postprocessing"]["transforms"]
        restorer = Restorer.from_bundle(
            BUNDLE,
            checkpoint=os.path.join(self.tmp.name, "m.pt"),
            overrides={**overrides, "postprocessing": transforms},
            device="cpu",
        )
        with self.assertLogs("custom.inference.task_check", "WARNING") as logs:
            steps = restorer.steps({})
        self.assertIn("m.pt: no task statistics in the checkpoint", "\n".join(logs.output))
        self.assertEqual([type(t).__name__ for t in steps], [t["_target_"].rsplit(".", 1)[-1] for t in transforms])
        with self.assertNoLogs("custom.inference.task_check", "WARNING"):
            other = restorer.steps({"kspace_factor": 2})
        self.assertIs(other[1], steps[1])  # one task check for every option set

    def test_restore_item_applies_the_steps_and_write_item_the_writers(self):
        values = np.linspace(-1500.0, 3500.0, 12 * 10 * 2, dtype=np.float32).reshape(12, 10, 2)
        with tempfile.TemporaryDirectory() as d:
            source = os.path.join(d, "in.nii.gz")
            nib.save(nib.Nifti1Image(values, np.eye(4)), source)
            image, info = load_nifti(source)
            item = {"image": torch.from_numpy(image)[None], "modality": "CT", "source": source, "kind": "nifti"}
            item.update(scan_info=info, output=os.path.join(d, "out.nii.gz"))
            options = {"difference_output": True, "task_check": True}
            restored = self.restorer.restore_item(item, options)
            self.assertEqual(os.listdir(d), ["in.nii.gz"])  # the writers wait for write_item
            self.assertEqual((restored["predicted_task"], restored["task_distance"]), (None, None))  # no statistics
            torch.testing.assert_close(restored["pred"][0].numpy(), np.clip(values, -1024, 3072), rtol=0, atol=1e-3)
            written = self.restorer.write_item(restored, options)
            self.assertEqual(
                sorted(os.listdir(d)),
                sorted(["in.nii.gz", "out.nii.gz", os.path.basename(written["difference_output"])]),
            )
            np.testing.assert_allclose(nib.load(item["output"]).get_fdata(), np.clip(values, -1024, 3072), atol=1e-2)
            self.assertEqual(written["predicted_task"], None)  # the steps are not run again

    def test_steps_cache_is_bounded_and_keyed_by_converted_values(self):
        restorer = self.restorer
        same = restorer.steps({"kspace_factor": 2})
        self.assertIs(restorer.steps({"kspace_factor": "2.0"}), same)
        self.assertIs(restorer.steps({"kspace_factor": np.int64(2), "task_check": "true"}), same)  # default: true
        for i in range(Restorer.STEPS_CACHE_SIZE + 5):
            restorer.steps({"kspace_factor": 10 + i})
            restorer.steps({"kspace_factor": 2})  # used again: kept
        self.assertEqual(len(restorer._steps), Restorer.STEPS_CACHE_SIZE)
        self.assertIs(restorer.steps({"kspace_factor": 2}), same)
        self.assertIsNot(restorer.steps({"kspace_factor": 10}), restorer.steps({"kspace_factor": 11}))


def _custom_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("custom")
        for alias in node.names
    ]


class TestAppsImportWhatExists(unittest.TestCase):
    """The apps run in their own environments (tests/apps skip here); their imports from custom must exist."""

    @parameterized.expand([("apps/deploy/app.py",), ("apps/monailabel/lib/tat_restore.py",)])
    def test_imports(self, rel):
        import importlib

        imports = _custom_imports(Path(REPO) / rel)
        self.assertIn(("custom.inference.restore", "Restorer"), imports)  # the one restore path
        for module, name in imports:
            self.assertTrue(hasattr(importlib.import_module(module), name), f"{rel}: {module}.{name}")
        source = (Path(REPO) / rel).read_text(encoding="utf-8")
        for copy in ("ModalityNormalized", "ModalityDenormalized", "load_state_dict", "torch.load"):
            self.assertNotIn(copy, source, f"{rel} repeats {copy}; use custom.inference.restore")


if __name__ == "__main__":
    unittest.main()
