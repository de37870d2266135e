"""``torch.export`` of TAT (custom.export.export_program) and the README's export commands on checkpoints that a real
(tiny, 1-iteration) training wrote.

Every comparison against eager uses a batch of different images where the batch is larger than 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from custom.export import ServingNetwork, export_program, global_attention_limit, save_exported_program
from custom.networks import TAT
from custom.networks.blocks.attention import ChannelAttention
from parameterized import parameterized

from tests.utils import BUNDLE, ENV, REPO, TINY, make_dataset, tiny_net

# narrower still than the tests' tiny network (exports trace fastest at width 2), 16-pixel windows so that a 32 x 32
# image holds several of the published local windows
EXPORT_TINY = {**TINY, "dim": 2, "train_patch_size": 16}
README = os.path.join(BUNDLE, "docs", "README.md")


def _net(window_mode: str, seed: int = 0) -> TAT:
    return tiny_net(seed, **EXPORT_TINY, window_mode=window_mode)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.slow
class TestExportProgram(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.net = _net("global")
        cls.program = export_program(cls.net, (2, 1, 32, 40))
        cls.tmp = tempfile.mkdtemp()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_dynamic_batch_height_width_equal_eager(self):
        module = self.program.module()
        gen = torch.Generator().manual_seed(5)
        for shape in [(2, 1, 32, 40), (1, 1, 32, 40), (3, 1, 32, 40), (2, 1, 48, 64), (1, 1, 16, 16), (2, 1, 104, 24)]:
            x = torch.rand(*shape, generator=gen)
            with torch.no_grad():
                out, ref = module(x), self.net(x)
            self.assertEqual(tuple(out.shape), shape)
            self.assertLess(_diff(out, ref), 1e-4, shape)
        # each sample of a batch is restored as if alone (no batch mixing in the exported graph)
        x = torch.rand(3, 1, 24, 32, generator=gen)
        with torch.no_grad():
            self.assertLess(_diff(module(x)[1:2], self.net(x[1:2])), 1e-4)

    def test_range_and_refused_sizes(self):
        module = self.program.module()
        ranges = sorted((int(r.lower), int(r.upper)) for r in self.program.range_constraints.values())
        self.assertIn((1, 1024), ranges)  # batch
        self.assertIn((16, 8192), ranges)  # height and width, multiples of 8
        for shape in [(1, 1, 36, 40), (1, 1, 32, 44), (1, 1, 8, 8)]:
            with self.subTest(shape=shape), self.assertRaisesRegex(AssertionError, "Guard failed"):
                module(torch.rand(*shape))

    def test_saved_program_runs_without_custom(self):
        path = os.path.join(self.tmp, "model.pt2")
        self.assertEqual(save_exported_program(self.program, path), path)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["model.pt2"])  # no temporary left
        x = torch.rand(2, 1, 24, 48, generator=torch.Generator().manual_seed(7))
        torch.save(x, os.path.join(self.tmp, "x.pt"))
        with torch.no_grad():
            torch.save(self.net(x), os.path.join(self.tmp, "ref.pt"))
        code = (
            "import sys, torch; sys.modules['custom'] = None\n"  # importing custom raises ImportError from here on
            f"m = torch.export.load({path!r}).module()\n"
            f"x, ref = torch.load({os.path.join(self.tmp, 'x.pt')!r}), torch.load({os.path.join(self.tmp, 'ref.pt')!r})\n"
            "print(float((m(x) - ref).abs().max()))\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=self.tmp, env=ENV, capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertLess(float(proc.stdout.split()[-1]), 1e-4)


@pytest.mark.slow
class TestExportProgramLocalWindows(unittest.TestCase):
    def test_limit_is_where_windows_start(self):
        net = _net("published")
        # level-1 training size 16 -> window 24 at every level (train_patch_size // heads, x1.5, x2 per level)
        self.assertEqual(global_attention_limit(net), 24)
        self.assertIsNone(global_attention_limit(_net("global")))
        self.assertIsNone(global_attention_limit(TAT(**{**EXPORT_TINY, "train_patch_size": None})))

    def test_dynamic_size_refused_where_windows_fix_it(self):
        with self.assertRaisesRegex(ValueError, r"local windows.*24 x 24.*dynamic_size=False"):
            export_program(_net("published"), (1, 1, 32, 32))
        with self.assertRaisesRegex(ValueError, r"at 16 x 32 the attention uses local windows"):
            export_program(_net("published"), (1, 1, 16, 32))  # the larger side decides

    def test_bad_shapes(self):
        net = _net("global")
        with self.assertRaisesRegex(ValueError, "multiples of 8"):
            export_program(net, (1, 1, 36, 40))
        with self.assertRaisesRegex(ValueError, "at least 16"):
            export_program(net, (1, 1, 8, 16))
        with self.assertRaisesRegex(ValueError, r"\(B, C, H, W\)"):
            export_program(net, (1, 32, 32))

    def test_fixed_size_with_windows_dynamic_batch(self):
        net = _net("blended")
        program = export_program(net, (1, 1, 32, 32), dynamic_size=False)
        x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            self.assertLess(_diff(program.module()(x), net(x)), 1e-4)
        with self.assertRaisesRegex(AssertionError, "Guard failed"):
            program.module()(torch.rand(1, 1, 40, 32))


class _AttentionPyramid(torch.nn.Module):
    """Attention blocks at three scales, as TAT's levels (16 x 16 probe: 16, 8 and 4 pixels): windows of 105 at
    scale 1, 45 at scale 2 and 15 at scale 4 switch on above 104, 88 and 56 (rounded down to multiples of 8), so
    the limit is 56. A global-mode block (window 3: 8 were it counted) and a block without windows do not count.
    Two input channels; halving rounds up (an odd probe would give other scales)."""

    in_channels = 2

    def __init__(self) -> None:
        super().__init__()
        self.level1 = ChannelAttention(2, 1, train_size=70)
        self.level2 = ChannelAttention(2, 1, train_size=30)
        self.level3 = ChannelAttention(2, 1, train_size=10, window_mode="blended")
        self.global_mode = ChannelAttention(2, 1, train_size=2, window_mode="global")
        self.no_window = ChannelAttention(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.level2(F.avg_pool2d(self.level1(x), 2, ceil_mode=True))
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        return self.no_window(self.global_mode(self.level3(x)))


class TestGlobalAttentionLimit(unittest.TestCase):
    """Fast: stand-in networks instead of TAT."""

    def test_smallest_window_times_its_scale(self):
        net = _AttentionPyramid()
        limit = global_attention_limit(net)
        self.assertEqual(limit, 56)
        self.assertIs(type(limit), int)  # a Dim bound in export_program
        self.assertFalse([m for m in net.modules() if m._forward_pre_hooks])  # no probe hook left behind
        self.assertEqual(global_attention_limit(net), 56)
        # no in_channels attribute: probed with 1 channel
        self.assertEqual(global_attention_limit(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), net)), 56)

    def test_no_windows(self):
        self.assertIsNone(global_attention_limit(torch.nn.Sequential(ChannelAttention(1, 1), torch.nn.Identity())))
        self.assertIsNone(global_attention_limit(torch.nn.AvgPool2d(2)))  # no parameters, no attention


def _readme_commands() -> dict[str, str]:
    """The ``python -c`` commands of the README's Export section, keyed by what they write."""
    text = open(README, encoding="utf-8").read()
    section = text[text.index("\n## Export") :]
    block = section[section.index("```bash") : section.index("```\n", section.index("```bash") + 7)]
    commands = {}
    for m in re.finditer(r'python -c "(.*?)"', block.replace("\\\n", ""), re.S):
        code = m.group(1)
        commands["onnx" if "export_onnx" in code else "pt2" if "export_program" in code else "other"] = code
    return commands


@pytest.mark.slow
class TestReadmeExportCommands(unittest.TestCase):
    """The README's export commands, run as written (tiny network, small size) on what training wrote."""

    @classmethod
    def setUpClass(cls):
        from monai.bundle import ConfigWorkflow

        cls.tmp = tempfile.mkdtemp()
        data = os.path.join(cls.tmp, "data")
        make_dataset(data, n_train=1, n_val=1, shape=(24, 24, 2))
        cls.checkpoints = {}
        for stats in (True, False):  # the best saver writes {"model", "task_statistics"} or a bare state dict
            ckpt_dir = os.path.join(cls.tmp, f"models_{stats}")
            wf = ConfigWorkflow(
                workflow_type="train",
                config_file=os.path.join(BUNDLE, "configs", "train.json"),
                meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
                bundle_root=BUNDLE,
                dataset_dir=data,
                ckpt_dir=ckpt_dir,
                output_dir=os.path.join(cls.tmp, "eval"),
                num_iterations=1,
                val_interval=1,
                log_interval=1,
                patch_size=16,
                samples_per_task=1,
                num_workers=0,
                task_statistics=stats,
                **{f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in EXPORT_TINY.items()},
                **{"train#dataset#cache_rate": 0.0, "validate#dataset#cache_rate": 0.0},
            )
            wf.initialize()
            wf.run()
            wf.finalize()
            cls.checkpoints[stats] = os.path.join(ckpt_dir, "model.pt")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _run(self, code: str, checkpoint: str, out: str) -> None:
        tiny = "".join(f"{k}={v!r}, " for k, v in EXPORT_TINY.items() if k != "transpose_hw")  # the README sets it
        code = code.replace("TAT(", f"TAT({tiny}").replace(", )", ")").replace("512, 512", "32, 32")
        self.assertIn("'bundle/models/model.pt'", code)
        code = code.replace("'bundle/models/model.pt'", repr(checkpoint))
        code = re.sub(r"'bundle/models/[^']+\.(onnx|pt2)'", repr(out), code)
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, f"{code}\n{proc.stderr[-3000:]}")
        self.assertTrue(os.path.isfile(out))

    def test_both_checkpoint_formats_written(self):
        first = torch.load(self.checkpoints[True], weights_only=True)
        second = torch.load(self.checkpoints[False], weights_only=True)
        self.assertIn("model", first)
        self.assertNotIn("model", second)

    @parameterized.expand([(True,), (False,)])
    def test_readme_onnx_command(self, stats):
        import onnxruntime as ort

        out = os.path.join(self.tmp, f"model_{stats}.onnx")
        self._run(_readme_commands()["onnx"], self.checkpoints[stats], out)
        from custom.networks.checkpoint import load_checkpoint

        net = load_checkpoint(TAT(**EXPORT_TINY), self.checkpoints[stats]).eval()
        x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
        got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        with torch.no_grad():
            self.assertLess(float(np.abs(got - net(torch.from_numpy(x)).numpy()).max()), 1e-4)

    def test_readme_export_program_command(self):
        out = os.path.join(self.tmp, "model.pt2")
        self._run(_readme_commands()["pt2"], self.checkpoints[True], out)
        from custom.networks.checkpoint import load_checkpoint

        net = load_checkpoint(TAT(**EXPORT_TINY, window_mode="global"), self.checkpoints[True]).eval()
        x = torch.rand(3, 1, 40, 24, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            self.assertLess(_diff(torch.export.load(out).module()(x), net(x)), 1e-4)


class TestServingNetworkLoadsEveryLayout(unittest.TestCase):
    """``ckpt_export serving_network`` hands the checkpoint (or its ``--key_in_ckpt`` entry) to load_state_dict."""

    def test_layouts(self):
        raw, ema = tiny_net(1).state_dict(), tiny_net(2).state_dict()
        layouts = [
            (ema, ema),
            ({"model": ema, "task_statistics": {"threshold": 1.0}}, ema),
            ({"network": raw, "ema": {"ema_model": ema, "num_updates": torch.tensor(2)}}, ema),
            ({"ema_model": ema, "num_updates": torch.tensor(2)}, ema),
            (raw, raw),
        ]
        for saved, expected in layouts:
            serving = ServingNetwork(TAT(**TINY), [[32, 32]])
            serving.load_state_dict(saved)
            for key, value in expected.items():
                torch.testing.assert_close(serving.network.state_dict()[key], value, rtol=0, atol=0, msg=key)
        with self.assertRaisesRegex(ValueError, "expected a state dict"):
            ServingNetwork(TAT(**TINY), [[32, 32]]).load_state_dict({"optimizer": {}})


if __name__ == "__main__":
    unittest.main()
