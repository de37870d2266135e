"""Export of the tiny TAT: ``monai.bundle ckpt_export`` (one traced shape, or a dispatcher over serving sizes),
ONNX + onnxruntime, and ``monai.bundle verify_net_in_out`` with the metadata's ``network_data_format``.

Findings pinned here (see ``custom/export.py``): a traced model equals eager at the traced height and width, local
windows included, at any batch size, and is not valid at other heights and widths; the serving dispatcher equals
eager at every served size and any batch size and refuses other sizes; ONNX equals eager with local windows active,
at sizes that need padding, and with a dynamic batch axis.
Every comparison uses a batch of different images where the batch is larger than one.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from custom.export import (
    export_onnx,
    export_program,
    fix_negative_transpose_perms,
    save_torchscript,
    serving_module,
    trace_network,
)
from custom.inference import network_window_mode
from parameterized import parameterized

from tests.utils import BUNDLE, ENV, INFERENCE_CONFIG, META, TINY_OVERRIDES, run_cli, save_checkpoint, tiny_net

EXPORT_CONFIG = os.path.join(BUNDLE, "configs", "export.json")
TRACE_SIZE = 64  # > 1.5 * 32: the local-window branch is active in the tiny net at this size
SERVED = [[TRACE_SIZE, TRACE_SIZE], [36, 44]]  # local windows; padding to 40 x 48 (global attention)
TOL = 1e-4

torch.set_num_threads(1)


def _images(*shape: int, seed: int = 3) -> torch.Tensor:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    assert shape[0] == 1 or float((x[0] - x[1]).abs().max()) > 0.1  # different images per sample
    return x


def _windows_active(net: torch.nn.Module, size: int) -> bool:
    """True if level 1's attention runs in local windows at this input size."""
    window = net.encoder_level1[0].attn.window
    return window is not None and size > window


def _config_mode(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` in inference.json's window mode (ckpt_export builds network_def from that config)."""
    with open(INFERENCE_CONFIG, encoding="utf-8") as f:
        return net.set_window_mode(network_window_mode(json.load(f)["inference_mode"]))


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# ---- TorchScript: one traced shape through ckpt_export (the raw MONAI path) ----


@pytest.mark.slow
class TestCkptExportTraced(unittest.TestCase):
    """One ``ckpt_export network_def --use_trace`` run at TRACE_SIZE, shared by the checks below."""

    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        tmp = tmp
        cls.net = _config_mode(save_checkpoint(os.path.join(tmp, "model.pt"), seed=1))
        cls.ts_path = os.path.join(tmp, "model.ts")
        cls.proc = run_cli(
            "ckpt_export",
            "network_def",
            "--filepath",
            cls.ts_path,
            "--ckpt_file",
            os.path.join(tmp, "model.pt"),
            "--key_in_ckpt",
            "model",
            "--meta_file",
            META,
            "--config_file",
            INFERENCE_CONFIG,
            "--bundle_root",
            BUNDLE,
            "--use_trace",
            "True",
            "--input_shape",
            f"[1,1,{TRACE_SIZE},{TRACE_SIZE}]",
            *TINY_OVERRIDES,
            cwd=tmp,
        )

    def _traced(self) -> torch.jit.ScriptModule:
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
        return torch.jit.load(self.ts_path)

    def test_ckpt_export_traced_equals_eager_at_export_size(self) -> None:
        ts = self._traced()
        self.assertTrue(_windows_active(self.net, TRACE_SIZE))
        x = _images(1, 1, TRACE_SIZE, TRACE_SIZE)
        with torch.no_grad():
            self.assertLess(_max_diff(ts(x), self.net(x)), TOL)

    def test_traced_model_any_batch_size(self) -> None:
        """No shape holds the batch size while tracing (the dynamic conv's shifted-taps form): batch 3 is exact."""
        ts = self._traced()
        x = _images(3, 1, TRACE_SIZE, TRACE_SIZE)
        with torch.no_grad():
            self.assertLess(_max_diff(ts(x), self.net(x)), TOL)

    @parameterized.expand([((1, 1, 40, 40),), ((1, 1, 56, 64),)])
    def test_traced_model_at_other_multiples_of_8(self, shape: tuple) -> None:
        """With global attention (inference.json's mode) the traced ops keep the sizes, so another height and
        width that need no padding are exact; with local windows (other modes) the window grid is frozen: raises
        or differs."""
        ts = self._traced()
        x = _images(*shape)
        with torch.no_grad():
            ref = self.net(x)
            if self.net.window_mode == "global":
                self.assertLess(_max_diff(ts(x), ref), TOL)
                return
            try:
                out = ts(x)
            except RuntimeError:
                return
        self.assertTrue(out.shape != ref.shape or _max_diff(out, ref) > TOL)

    def test_traced_model_padding_is_frozen(self) -> None:
        """Documented limit: a size that needs padding (traced at a multiple of 8) raises or differs from eager."""
        ts = self._traced()
        x = _images(1, 1, 36, 44)
        with torch.no_grad():
            ref = self.net(x)
            try:
                out = ts(x)
            except RuntimeError:
                return
        self.assertTrue(out.shape != ref.shape or _max_diff(out, ref) > TOL)


# ---- TorchScript: one file serving several sizes (custom.export.serving_module / ServingNetwork) ----


class TestServingModule(unittest.TestCase):
    def test_serving_module_matches_eager_at_served_sizes_any_batch(self) -> None:
        net = tiny_net(2)
        module = serving_module(net, SERVED)
        self.assertEqual(module.served_sizes(), SERVED)
        self.assertTrue(_windows_active(net, SERVED[0][0]) and SERVED[1][0] % 8 and not _windows_active(net, 48))
        with tempfile.TemporaryDirectory() as d:
            path = save_torchscript(module, os.path.join(d, "serve.ts"))
            self.assertEqual(sorted(os.listdir(d)), ["serve.ts"])  # no temporary file left
            loaded = torch.jit.load(path)
        for i, (h, w) in enumerate(SERVED):
            x = _images(2, 1, h, w, seed=10 + i)
            with torch.no_grad():
                ref = net(x)
                self.assertEqual(ref.shape, (2, 1, h, w))
                self.assertLess(_max_diff(module(x), ref), TOL)
                self.assertLess(_max_diff(loaded(x), ref), TOL)
                self.assertLess(_max_diff(loaded(x[1:]), ref[1:]), TOL)

    def test_serving_module_refuses_other_sizes(self) -> None:
        module = serving_module(tiny_net(2), [[40, 48]])
        with self.assertRaisesRegex(Exception, r"48x40: this TorchScript file serves 40x48 only"):
            module(torch.rand(1, 1, 48, 40))
        with self.assertRaisesRegex(Exception, "expects a non-empty"):
            module(torch.rand(1, 2, 40, 48))
        with self.assertRaisesRegex(Exception, "expects a non-empty"):
            module(torch.rand(0, 1, 40, 48))
        x = torch.rand(1, 1, 40, 48)
        x[0, 0, 3, 5] = float("nan")  # one pixel is enough
        with self.assertRaisesRegex(Exception, "NaN or Inf"):
            module(x)
        for bad in ([[40]], [[0, 40]], [[40, -8]]):
            with self.assertRaisesRegex(ValueError, r"serving size must be \[H, W\] with positive values"):
                serving_module(tiny_net(2), bad)

    @pytest.mark.slow
    def test_ckpt_export_serving_sizes_loads_without_custom(self) -> None:
        """``ckpt_export serving_network`` with export.json: one .ts for two sizes, loaded where ``custom`` cannot
        be imported, equal to eager at both sizes for a batch of 2 different images."""
        with tempfile.TemporaryDirectory() as tmp:
            net = _config_mode(save_checkpoint(os.path.join(tmp, "model.pt"), seed=4))
            ts_path = os.path.join(tmp, "serve.ts")
            run = run_cli(
                "ckpt_export",
                "serving_network",
                "--filepath",
                ts_path,
                "--ckpt_file",
                os.path.join(tmp, "model.pt"),
                "--key_in_ckpt",
                "model",
                "--meta_file",
                META,
                "--config_file",
                str([INFERENCE_CONFIG, EXPORT_CONFIG]),
                "--bundle_root",
                BUNDLE,
                "--serving_sizes",
                str(SERVED).replace(" ", ""),
                *TINY_OVERRIDES,
                cwd=tmp,
            )
            self.assertEqual(run.returncode, 0, run.stderr[-3000:])
            inputs = {f"{h}x{w}": _images(2, 1, h, w, seed=20 + h) for h, w in SERVED}
            torch.save(inputs, os.path.join(tmp, "inputs.pt"))
            script = (
                "import sys; sys.modules['custom'] = None  # any import of custom now fails\n"
                "import torch\n"
                "torch.set_num_threads(1)\n"
                "m = torch.jit.load(sys.argv[1])\n"
                "x = torch.load(sys.argv[2], weights_only=True)\n"
                "with torch.no_grad():\n"
                "    torch.save({k: m(v) for k, v in x.items()}, sys.argv[3])\n"
                "try:\n"
                "    m(torch.rand(1, 1, 32, 32))\n"
                "except Exception as e:\n"
                "    print('refused:', str(e).splitlines()[-1])\n"
            )
            child = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    script,
                    ts_path,
                    os.path.join(tmp, "inputs.pt"),
                    os.path.join(tmp, "outputs.pt"),
                ],
                cwd=tmp,
                env=ENV,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(child.returncode, 0, child.stderr[-3000:])
            self.assertIn("refused:", child.stdout)
            self.assertIn("serves 64x64, 36x44 only", child.stdout)
            outputs = torch.load(os.path.join(tmp, "outputs.pt"), weights_only=True)
        with torch.no_grad():
            for key, x in inputs.items():
                self.assertLess(_max_diff(outputs[key], net(x)), TOL, key)


# ---- ONNX ----


class TestOnnx(unittest.TestCase):
    @parameterized.expand(
        [
            ("global", (1, 1, 40, 48)),
            ("local_windows", (1, 1, TRACE_SIZE, TRACE_SIZE)),
            ("padding_windows_batch3", (3, 1, 60, 52)),
        ]
    )
    def test_onnx_matches_eager(self, _, shape: tuple) -> None:
        net = tiny_net(3)
        self.assertEqual(_windows_active(net, shape[2]), shape[2] > 48)
        x = _images(*shape)
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(net, os.path.join(d, "model.onnx"), (1, *shape[1:]))  # dynamic batch: exported at 1
            self.assertEqual(sorted(os.listdir(d)), ["model.onnx"])  # no temporary file left
            model = onnx.load(path)
            self.assertFalse(
                [
                    n
                    for n in model.graph.node
                    if n.op_type == "Transpose" and any(p < 0 for a in n.attribute for p in a.ints)
                ]
            )
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = net(x).numpy()
        (out,) = session.run(None, {"image": x.numpy()})
        self.assertEqual(out.shape, ref.shape)
        self.assertLess(_max_diff(out, ref), TOL)

    def test_onnx_static_batch(self) -> None:
        net = tiny_net(4)
        x = _images(2, 1, 40, 40)
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(net, os.path.join(d, "model.onnx"), (2, 1, 40, 40), dynamic_batch=False)
            dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
            self.assertEqual([d.dim_value for d in dims], [2, 1, 40, 40])
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            self.assertLess(_max_diff(session.run(None, {"image": x.numpy()})[0], net(x)), TOL)

    def test_onnx_export_failure_is_a_clear_error_and_leaves_no_file(self) -> None:
        class Broken(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                raise RuntimeError("cannot run")

        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, r"ONNX export at \(1, 1, 8, 8\) failed \(RuntimeError: cannot run"):
                export_onnx(Broken(), os.path.join(d, "model.onnx"), (1, 1, 8, 8))
            self.assertFalse(os.listdir(d))
            with self.assertRaisesRegex(ValueError, "input_shape"):
                export_onnx(tiny_net(), os.path.join(d, "model.onnx"), (1, 8, 8))


class _PadConvNet(torch.nn.Module):
    """A network as small as it gets that pads as TAT does (bottom/right to multiples of 8; reflect, replicate where
    the image is not larger than the padding) and crops back; its output depends on every padded value (a 7 x 7
    conv plus the padded image's mean), so any other padding differs."""

    size_multiple = 8
    in_channels = 1

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 8, (-w) % 8
        if torch.onnx.is_in_onnx_export() and (pad_h or pad_w):
            # as TAT's own reflect padding, which the exporter cannot size: the export must pad first
            raise RuntimeError(f"{h} x {w} reached the network's own padding during the export")
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        p = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return (self.conv(p) + p.mean(dim=(2, 3), keepdim=True))[..., :h, :w]


class TestOnnxPadding(unittest.TestCase):
    """ONNX pads in a wrapper with constant indices: equal to the network's own padding at every kind of size."""

    @parameterized.expand(
        [
            ("reflect", (1, 1, 12, 21)),
            ("replicate_small_height", (1, 1, 3, 13)),
            ("replicate_padding_equals_width", (1, 1, 10, 4)),
            ("replicate_padding_equals_height", (1, 1, 4, 10)),
            ("no_padding", (1, 1, 8, 16)),
            ("height_only", (1, 1, 12, 16)),
            ("width_only", (1, 1, 16, 13)),
            ("replicate_height_only", (1, 1, 5, 16)),
        ]
    )
    def test_onnx_equals_eager(self, _, shape: tuple) -> None:
        net = _PadConvNet()
        x = _images(3, *shape[1:])
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(net, os.path.join(d, "model.onnx"), shape)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
            self.assertEqual(names, (["image"], ["pred"]))
            self.assertEqual(session.get_inputs()[0].shape, ["batch", *shape[1:]])
            self.assertEqual(session.get_outputs()[0].shape[0], "batch")
        with torch.no_grad():
            ref = net(x).numpy()
        (out,) = session.run(None, {"image": x.numpy()})
        self.assertEqual(out.shape, ref.shape)
        self.assertLess(_max_diff(out, ref), TOL)


class _MoveNet(torch.nn.Module):
    """No parameters (a buffer only) and no ``size_multiple``: ``movedim`` with negative and multi-axis arguments,
    an axis moved onto position 0, a scale per channel and a cumulative sum over the flattened image, so any other
    axis order, any padding and any batch mixing change the output. Its shapes are read back while tracing, which
    torch's own ``movedim`` export (negative ``Transpose`` perms) declares wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([1.0, 2.0, -3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.movedim(1, -1) * self.scale  # (B, H, W, C)
        y = y.movedim((-1, 0), (0, -1))  # (C, H, W, B)
        z = y.reshape(y.shape[0], -1, y.shape[-1]).cumsum(1)
        return z.reshape(y.shape).movedim((0, -1), (1, 0))  # (B, C, H, W)


def _plain_onnx_perms(net: torch.nn.Module, shape: tuple) -> list[list[int]]:
    """``Transpose`` perms of ``torch.onnx.export`` as torch does it (no ``custom`` wrapper or fix)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(*shape),), buf, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    return [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]


class TestOnnxMovedim(unittest.TestCase):
    """``export_onnx`` of ``movedim``: non-negative perms, the right declared output shape, eager's values; and
    torch's exporter is left as it was found."""

    def test_movedim_network(self) -> None:
        net = _MoveNet()
        x = _images(3, 3, 4, 5)
        with warnings.catch_warnings():  # torch's own symbolic, even if an earlier export left another registered
            warnings.simplefilter("ignore")  # (warns when there is none to remove)
            torch.onnx.unregister_custom_op_symbolic("aten::movedim", 17)
        plain_before = _plain_onnx_perms(net, (1, 3, 4, 5))
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(net, os.path.join(d, "model.onnx"), (1, 3, 4, 5))  # odd width, no size_multiple
            model = onnx.load(path)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        perms = [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
        self.assertEqual(perms, [[0, 2, 3, 1], [3, 1, 2, 0], [3, 0, 1, 2]])
        self.assertEqual([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")], [17])  # default
        self.assertEqual(session.get_outputs()[0].shape, ["batch", 3, 4, 5])
        with torch.no_grad():
            ref = net(x).numpy()
        (out,) = session.run(None, {"image": x.numpy()})
        self.assertEqual(out.shape, ref.shape)
        self.assertLess(_max_diff(out, ref), TOL)
        self.assertEqual(_plain_onnx_perms(net, (1, 3, 4, 5)), plain_before)  # torch's own symbolic is back

    def test_negative_permute_fixed_in_the_written_file(self) -> None:
        """torch's exporter keeps ``permute``'s negative dims in the ``Transpose`` perm, which onnxruntime refuses:
        the written file holds the rewritten perm. The exporter's warnings are not shown."""

        class _Permute(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x.permute(0, -1, -3, -2) * 2.0

        x = _images(2, 3, 4, 5)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export_onnx(_Permute(), os.path.join(d, "model.onnx"), (1, 3, 4, 5))
            perms = [list(a.ints) for n in onnx.load(path).graph.node if n.op_type == "Transpose" for a in n.attribute]
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.assertEqual([str(w.message) for w in caught], [])
        self.assertEqual(perms, [[0, 3, 1, 2]])
        (out,) = session.run(None, {"image": x.numpy()})
        np.testing.assert_array_equal(out, (x.permute(0, 3, 1, 2) * 2.0).numpy())

    def test_bad_input_shape(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            for bad in [(1, 3, 4), (1, 3, 4, 5, 1), (0, 3, 4, 5), (1, 3, 0, 5), (1, 3, 4, -5)]:
                with (
                    self.subTest(bad=bad),
                    self.assertRaisesRegex(
                        ValueError,
                        r"input_shape must be \(B, C, H, W\) with positive sizes, got " + re.escape(str(bad)),
                    ),
                ):
                    export_onnx(_MoveNet(), os.path.join(d, "model.onnx"), bad)
            self.assertFalse(os.listdir(d))
            export_onnx(_MoveNet(), os.path.join(d, "model.onnx"), (1, 3, 1, 1))  # 1 is a positive size


def _transpose_chain(perms: list[list[int] | None]) -> onnx.ModelProto:
    """A hand-built graph: ``Transpose`` nodes in a row (``None``: no perm, which reverses the axes) on a
    (2, 3, 4, 5) input ``x``, then an ``Identity`` to ``y``."""
    from onnx import TensorProto, helper

    nodes, name, out = [], "x", np.zeros((2, 3, 4, 5))
    for i, perm in enumerate(perms):
        out = np.transpose(out, perm)  # numpy takes negative axes
        nodes.append(helper.make_node("Transpose", [name], [f"t{i}"], **({} if perm is None else {"perm": perm})))
        name = f"t{i}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(
        nodes,
        "transposes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out.shape))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class TestFixNegativeTransposePerms(unittest.TestCase):
    def test_negative_perms_rewritten_others_untouched(self) -> None:
        perms = [[0, -1, 1, -2], [3, 2, 1, 0], None, [-4, -3, -2, -1], [1, 0, 2, 3], [2, -1, 0, 1]]
        model = _transpose_chain(perms)
        self.assertEqual(fix_negative_transpose_perms(model), 3)  # the nodes with a negative entry
        got = [[list(a.ints) for a in n.attribute if a.name == "perm"] for n in model.graph.node]
        self.assertEqual(got, [[[0, 3, 1, 2]], [[3, 2, 1, 0]], [], [[0, 1, 2, 3]], [[1, 0, 2, 3]], [[2, 3, 0, 1]], []])
        onnx.checker.check_model(model)
        x = np.random.default_rng(0).random((2, 3, 4, 5), dtype=np.float32)
        ref = x
        for perm in [[0, 3, 1, 2], [3, 2, 1, 0], None, [0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 0, 1]]:
            ref = np.transpose(ref, perm)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], ref)
        self.assertEqual(fix_negative_transpose_perms(model), 0)  # nothing left to fix

    def test_no_transpose(self) -> None:
        model = _transpose_chain([])
        self.assertEqual(fix_negative_transpose_perms(model), 0)
        self.assertEqual([n.op_type for n in model.graph.node], ["Identity"])


class _DriftingNet(torch.nn.Module):
    """Adds ``offset`` to one pixel when run eagerly but not while traced or exported: the exported model differs
    from eager by ``offset`` there (what verification exists to catch)."""

    in_channels = 1

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recording = torch.jit.is_tracing() or torch.compiler.is_exporting()
        bump = torch.zeros_like(x)
        bump[..., 0, 0] = 0.0 if recording else self.offset  # one pixel: the largest difference, not the smallest
        return self.conv(x) + bump


class _DriftsAtNet(torch.nn.Module):
    """Differs from its export only at one batch size or one height (eager adds 1e-3 there): what verifying at
    another batch size and another size than the example's exists to catch."""

    in_channels = 1

    def __init__(self, batch: int = 0, height: int = 0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        self.batch, self.height = batch, height

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recording = torch.jit.is_tracing() or torch.compiler.is_exporting()
        drifts = not recording and (x.shape[0] == self.batch or x.shape[2] == self.height)
        return self.conv(x) + (1e-3 if drifts else 0.0)


class TestVerification(unittest.TestCase):
    """A traced model that differs from eager by more than 1e-4 is refused; within 1e-4 it is accepted."""

    def test_trace_refuses_a_model_that_differs(self) -> None:
        with self.assertRaisesRegex(ValueError, r"traced at \(1, 1, 8, 8\) differs from eager by 0.001"):
            trace_network(_DriftingNet(1e-3), (1, 1, 8, 8))
        with self.assertRaisesRegex(ValueError, "differs from eager"):
            serving_module(_DriftingNet(1e-3), [[8, 8]])
        self.assertIsNotNone(trace_network(_DriftingNet(1e-3), (1, 1, 8, 8), verify=False))
        self.assertIsNotNone(trace_network(_DriftingNet(4e-5), (1, 1, 8, 8)))

    def test_exports_run_the_network_in_eval_mode(self) -> None:
        """A network handed over in training mode (dropout active) is exported as its eval-mode self, by each
        format, with a dynamic batch where asked."""
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Dropout(0.5))
        x = _images(3, 1, 16, 24)
        with torch.no_grad():
            ref = net.eval()(x)
            exported = export_program(net.train(), (1, 1, 16, 24))
            ranges = sorted((int(r.lower), int(r.upper)) for r in exported.range_constraints.values())
            # batch 1-1024; height and width 16-8192 (2-1024 blocks of 8)
            self.assertEqual(ranges, [(1, 1024), (2, 1024), (2, 1024), (16, 8192), (16, 8192)])
            program = exported.module()
            self.assertLess(_max_diff(program(x), ref), TOL)
            self.assertLess(_max_diff(program(x[..., :16]), net.eval()(x[..., :16])), TOL)  # another width
            fixed = export_program(net.train(), (1, 1, 16, 24), dynamic_size=False).module()
            self.assertLess(_max_diff(fixed(x), ref), TOL)
            self.assertLess(_max_diff(trace_network(net.train(), (3, 1, 16, 24))(x), ref), TOL)
            with tempfile.TemporaryDirectory() as d:
                path = export_onnx(net.train(), os.path.join(d, "model.onnx"), (1, 1, 16, 24))
                self.assertFalse(net.training)  # documented: put in eval mode
                session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.assertLess(_max_diff(session.run(None, {"image": x.numpy()})[0], ref), TOL)

    def test_export_program_refuses_a_program_that_differs(self) -> None:
        with self.assertRaisesRegex(ValueError, r"ExportedProgram differs from eager by .* at \(2, 1, 16, 16\)"):
            export_program(_DriftingNet(1e-3), (2, 1, 16, 16), dynamic_batch=False, dynamic_size=False)
        export_program(_DriftingNet(1e-3), (2, 1, 16, 16), dynamic_batch=False, dynamic_size=False, verify=False)
        # dynamic axes are verified beyond the example: batch 3 (one more than the traced 2), height 16 + 8
        with self.assertRaisesRegex(ValueError, r"differs from eager by .* at \(3, 1, 16, 16\)"):
            export_program(_DriftsAtNet(batch=3), (1, 1, 16, 16), dynamic_size=False)
        with self.assertRaisesRegex(ValueError, r"differs from eager by .* at \(1, 1, 24, 16\)"):
            export_program(_DriftsAtNet(height=24), (1, 1, 16, 16), dynamic_batch=False)


@pytest.mark.slow
class TestVerifyNetInOut(unittest.TestCase):
    def test_verify_net_in_out(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            run = run_cli(
                "verify_net_in_out",
                "network_def",
                "--meta_file",
                META,
                "--config_file",
                INFERENCE_CONFIG,
                "--bundle_root",
                BUNDLE,
                "-n",
                "4",
                "--any",
                "8",
                *TINY_OVERRIDES,
                cwd=d,
            )
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertIn("verified with no error", run.stdout + run.stderr)


if __name__ == "__main__":
    unittest.main()
