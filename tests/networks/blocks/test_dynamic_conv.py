from __future__ import annotations

import inspect
import unittest
import warnings
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks.blocks import DepthwiseConv, cpu_paths, dynamic_conv
from parameterized import parameterized


class TestDepthwiseConv(unittest.TestCase):
    @parameterized.expand([(1,), (2,), (3,)])
    def test_per_sample_kernel_matches_loop(self, spatial_dims):
        torch.manual_seed(0)
        conv = DepthwiseConv(4, 3, spatial_dims, dynamic=True)
        with torch.no_grad():
            conv.gate.uniform_(-1, 1)
        x = torch.randn(3, 4, *([7] * spatial_dims))
        gen = torch.randn(3, 4, *([3] * spatial_dims))
        out = conv(x, gen)
        fn = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]
        for b in range(3):
            g = conv.gate.reshape((-1,) + (1,) * (spatial_dims + 1))
            kernel = conv.weight + g * gen[b].unsqueeze(1)
            ref = fn(x[b : b + 1], kernel, padding=1, groups=4)
            torch.testing.assert_close(out[b : b + 1], ref, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(1,), (2,), (3,)])
    def test_shifted_taps_form_equals_grouped_conv(self, spatial_dims):
        conv = DepthwiseConv(5, 3, spatial_dims, dynamic=True)
        torch.nn.init.normal_(conv.gate)
        x = torch.randn(3, 5, *(7,) * spatial_dims)
        generated = torch.randn(3, 5, *(3,) * spatial_dims)
        torch.testing.assert_close(conv._shifted_taps(x, generated), conv(x, generated), atol=1e-5, rtol=1e-5)

    def test_traced_at_batch_1_is_exact_at_batch_3(self):
        conv = DepthwiseConv(4, 3, 2, dynamic=True)
        torch.nn.init.normal_(conv.gate)
        traced = torch.jit.trace(conv, (torch.randn(1, 4, 6, 6), torch.randn(1, 4, 3, 3)), check_trace=False)
        x, generated = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 3, 3)
        torch.testing.assert_close(traced(x, generated), conv(x, generated), atol=1e-5, rtol=1e-5)

    def test_gate_starts_at_zero_so_generated_kernel_has_no_effect(self):
        conv = DepthwiseConv(6, dynamic=True, init="kaiming")
        self.assertTrue(torch.all(conv.gate == 0))
        x = torch.randn(2, 6, 9, 9)
        torch.testing.assert_close(conv(x, torch.randn(2, 6, 3, 3)), conv(x))

    def test_gradients_reach_gate_and_generated_kernel(self):
        conv = DepthwiseConv(4, dynamic=True)
        gen = torch.randn(2, 4, 3, 3, requires_grad=True)
        conv(torch.randn(2, 4, 8, 8), gen).square().sum().backward()
        self.assertGreater(conv.gate.grad.abs().sum().item(), 0)  # gate learns from step 0
        self.assertEqual(gen.grad.abs().sum().item(), 0)  # zero gate: nothing flows to the generator yet
        with torch.no_grad():
            conv.gate.fill_(0.5)
        gen.grad = None
        conv(torch.randn(2, 4, 8, 8), gen).square().sum().backward()
        self.assertGreater(gen.grad.abs().sum().item(), 0)

    def test_errors(self):
        with self.assertRaises(ValueError):
            DepthwiseConv(4, kernel_size=2)
        with self.assertRaises(ValueError):
            DepthwiseConv(4, init="xavier")
        with self.assertRaises(ValueError):
            DepthwiseConv(4, dynamic=True, bias=True)
        with self.assertRaises(ValueError):
            DepthwiseConv(4)(torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 3, 3))  # static conv
        with self.assertRaises(ValueError):
            DepthwiseConv(4, dynamic=True)(torch.zeros(2, 4, 5, 5), torch.zeros(1, 4, 3, 3))

    def test_published_inits(self):
        torch.manual_seed(0)
        normal = DepthwiseConv(512, dynamic=True, init="normal").weight
        kaiming = DepthwiseConv(512, dynamic=True, init="kaiming").weight
        self.assertAlmostEqual(normal.std().item(), 1.0, delta=0.05)
        # fan_out of a depthwise (C, 1, 3, 3) kernel is 9: std sqrt(2 / 9)
        self.assertAlmostEqual(kaiming.std().item(), (2 / 9) ** 0.5, delta=0.02)


class TestEpilogue(unittest.TestCase):
    """``gelu`` and ``multiply`` after the conv: the GELU fused into oneDNN's convolution without a graph on the CPU,
    the plain ops otherwise; the same values either way."""

    @staticmethod
    def _case(batch, dynamic, channels_last=True, spatial_dims=2):
        torch.manual_seed(batch + 2 * dynamic)
        conv = DepthwiseConv(20, spatial_dims=spatial_dims, dynamic=dynamic, bias=not dynamic)
        with torch.no_grad():
            conv.weight.uniform_(-1, 1)
            if dynamic:
                conv.gate.uniform_(-1, 1)
            else:
                conv.bias.uniform_(-1, 1)
        spatial = (9, 11, 5)[:spatial_dims]
        x = torch.randn(batch, 16, *spatial)  # channels 4:16 of the conv (part) and 4 zero-kernel channels (pad)
        other = torch.randn(batch, 16, *spatial)
        if channels_last and spatial_dims == 2:
            x, other = (t.contiguous(memory_format=torch.channels_last) for t in (x, other))
        gen = torch.randn(batch, 20, *(3,) * spatial_dims) if dynamic else None
        return conv, x, other, gen

    @unittest.skipIf(dynamic_conv._FUSED is None, "this torch build has no oneDNN fused convolution")
    @parameterized.expand([(b, d, cl) for b in (1, 3) for d in (False, True) for cl in (True, False)])
    def test_fused_equals_plain_ops(self, batch, dynamic, channels_last):
        conv, x, other, gen = self._case(batch, dynamic, channels_last)
        part = slice(4, 16)
        plain = conv(x, gen, part, 4).detach()  # with a graph: plain ops
        with torch.no_grad():
            for kwargs, expected in (
                ({"gelu": True}, F.gelu(plain)),
                ({"multiply": other}, plain * other),
                ({"gelu": True, "multiply": other}, F.gelu(plain) * other),
            ):
                with mock.patch.object(dynamic_conv, "_FUSED", wraps=dynamic_conv._FUSED) as fused:
                    got = conv(x, gen, part, 4, **kwargs)
                self.assertEqual(fused.called, "gelu" in kwargs, kwargs)  # the GELU runs inside the conv
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                self.assertEqual(got.stride(), plain.stride())  # the same layout
                self.assertTrue(torch.all(got[:, 12:] == 0))  # zero-kernel channels stay 0 (no bias, gelu(0) = 0)

    @parameterized.expand([(1, True), (3, True), (2, False)])
    def test_gradients_equal_the_plain_definition(self, batch, dynamic):
        conv, x, other, gen = self._case(batch, dynamic)
        leaves = [t.requires_grad_() for t in (x, other) + ((gen,) if dynamic else ())]
        params = list(conv.parameters())
        grads = []
        for fused_form in (True, False):
            if fused_form:
                out = conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other)
            else:
                out = F.gelu(conv(x, gen, slice(4, 16), 4)) * other
            grads.append(torch.autograd.grad(out.square().sum(), leaves + params))
        for got, expected in zip(*grads):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    def test_plain_ops_where_the_fused_op_does_not_apply(self):
        conv, x, other, gen = self._case(1, True)
        expected = (F.gelu(conv(x, gen, slice(4, 16), 4)) * other).detach()
        refuse = mock.MagicMock(side_effect=AssertionError("fused op called"))
        with mock.patch.object(dynamic_conv, "_FUSED", refuse):
            self.assertTrue(conv(x, gen, slice(4, 16), 4, gelu=True).requires_grad)  # with a graph
            with torch.no_grad():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    self.assertEqual(conv(x, gen, slice(4, 16), 4, gelu=True).dtype, torch.bfloat16)
                conv(x.double(), gen.double(), slice(4, 16), 4, gelu=True)  # float64
                conv(x[:, :, :, 1:], gen, slice(4, 16), 4, gelu=True)  # a strided view
                with torch.backends.mkldnn.flags(enabled=False):
                    got = conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        conv3d, x3, other3, gen3 = self._case(1, True, spatial_dims=3)
        with torch.no_grad(), mock.patch.object(dynamic_conv, "_FUSED", refuse):  # 3D: plain ops
            got = conv3d(x3, gen3, slice(4, 16), 4, gelu=True, multiply=other3)
        torch.testing.assert_close(got, F.gelu(conv3d(x3, gen3, slice(4, 16), 4)).detach() * other3)
        with torch.no_grad(), mock.patch.object(dynamic_conv, "_FUSED", None):  # no oneDNN in this build
            torch.testing.assert_close(conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other), expected)

    def test_fused_op_failure_falls_back_with_a_warning(self):
        conv, x, other, gen = self._case(1, True)
        expected = F.gelu(conv(x, gen, slice(4, 16), 4)).detach()
        broken = mock.MagicMock(side_effect=RuntimeError("no such overload"))
        with torch.no_grad(), mock.patch.object(dynamic_conv, "_FUSED", broken), self.assertWarns(UserWarning):
            got = conv(x, gen, slice(4, 16), 4, gelu=True)
        torch.testing.assert_close(got, expected)

    def test_traced_graph_holds_the_plain_ops(self):
        conv, _, _, _ = self._case(1, False)
        conv.requires_grad_(False)  # frozen weights: only the tracing check keeps the fused op out

        class WithGelu(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = conv

            def forward(self, t: torch.Tensor) -> torch.Tensor:
                return self.conv(t, gelu=True)

        x = torch.randn(1, 20, 9, 11).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # the export path traces without a graph
            traced = torch.jit.trace(WithGelu(), (x,), check_trace=False)
            self.assertIn("aten::gelu", str(traced.inlined_graph))
            self.assertNotIn("mkldnn", str(traced.inlined_graph))
            torch.testing.assert_close(traced(x), conv(x, gelu=True))

    def test_multiply_of_another_shape_is_refused(self):
        conv, x, other, gen = self._case(3, True)
        with torch.no_grad():
            for bad in (other[:1], other[:, :, :, :1], other[:, :8]):
                with self.assertRaises(ValueError):
                    conv(x, gen, slice(4, 16), 4, multiply=bad)


class TestInitAndRepr(unittest.TestCase):
    def test_inits_are_centred_with_published_scales(self):
        """``normal`` and ``kaiming`` are zero-mean normals; ``conv`` is PyTorch's depthwise conv default, uniform in
        ``+-1/sqrt(fan_in)`` with fan_in 9 (kernel and bias)."""
        torch.manual_seed(0)
        normal = DepthwiseConv(512, dynamic=True, init="normal").weight
        kaiming = DepthwiseConv(512, dynamic=True, init="kaiming").weight
        self.assertAlmostEqual(normal.mean().item(), 0.0, delta=0.05)
        self.assertAlmostEqual(kaiming.mean().item(), 0.0, delta=0.02)
        conv = DepthwiseConv(512, bias=True)
        for p in (conv.weight, conv.bias):
            self.assertLessEqual(p.abs().max().item(), 1 / 3)
            self.assertGreater(p.max().item(), 0.95 / 3)  # the whole range is used, both signs
            self.assertLess(p.min().item(), -0.95 / 3)
        default = torch.nn.Conv2d(512, 512, 3, groups=512)  # the same distribution
        self.assertAlmostEqual(conv.weight.std().item(), default.weight.std().item(), delta=0.01)

    def test_repr_names_the_configuration(self):
        self.assertTrue(DepthwiseConv(4, dynamic=True).dynamic)
        self.assertEqual(DepthwiseConv(4, 5).extra_repr(), "4, kernel_size=5, dynamic=False, init='conv'")
        self.assertEqual(
            DepthwiseConv(4, dynamic=True, init="kaiming").extra_repr(),
            "4, kernel_size=3, dynamic=True, init='kaiming'",
        )


class TestKernelSizes(unittest.TestCase):
    @parameterized.expand([(5, 1), (5, 3), (7, 2)])
    def test_any_odd_kernel_keeps_the_size(self, kernel_size, batch):
        """A ``k x k`` kernel is padded by ``k // 2``: static, per-sample (grouped conv) and shifted-taps forms equal
        ``F.conv2d`` with each sample's kernel."""
        torch.manual_seed(kernel_size)
        static = DepthwiseConv(4, kernel_size, bias=True)
        dynamic = DepthwiseConv(4, kernel_size, dynamic=True)
        with torch.no_grad():
            dynamic.gate.uniform_(-1, 1)
        x = torch.randn(batch, 4, 9, 8)
        gen = torch.randn(batch, 4, kernel_size, kernel_size)
        pad = kernel_size // 2
        torch.testing.assert_close(
            static(x), F.conv2d(x, static.weight, static.bias, padding=pad, groups=4), rtol=1e-5, atol=1e-5
        )
        kernels = dynamic.weight + dynamic.gate.reshape(-1, 1, 1, 1) * gen.unsqueeze(2)  # (B, C, 1, k, k)
        expected = torch.cat([F.conv2d(x[b : b + 1], kernels[b], padding=pad, groups=4) for b in range(batch)])
        torch.testing.assert_close(dynamic(x, gen), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dynamic._shifted_taps(x, gen), expected, rtol=1e-5, atol=1e-5)


class TestExportForm(unittest.TestCase):
    @parameterized.expand([("compiler", "is_exporting"), ("onnx", "is_in_onnx_export")])
    def test_exporting_uses_the_shifted_taps(self, module, flag):
        """While exporting (``torch.export`` or ONNX) a generated kernel goes through the shifted-taps form (no
        batch size in a shape), with channel parts and zero-padded channels as in eager mode."""
        conv, x, other, gen = TestEpilogue._case(3, True)
        expected = conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other).detach()
        exporting = mock.patch.object(getattr(torch, module), flag, return_value=True)
        with torch.no_grad(), exporting, mock.patch.object(conv, "_shifted_taps", wraps=conv._shifted_taps) as taps:
            got = conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other)
        taps.assert_called_once()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class _Missing:
    """A ``torch.ops`` namespace whose every op lookup raises ``error``."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def __getattr__(self, name: str) -> None:
        raise self.error(f"no {name}")


class TestFusedOp(unittest.TestCase):
    """The oneDNN convolution with a GELU post-op: looked up once, used without a graph on the CPU (its own result,
    no fallback), refused while exporting, and replaced by the plain ops with a warning if it fails."""

    def test_lookup_gives_none_without_the_op(self):
        if torch.backends.mkldnn.is_available():
            self.assertIs(cpu_paths.onednn_op("_convolution_pointwise"), dynamic_conv._FUSED)
        with mock.patch.object(torch.backends.mkldnn, "is_available", return_value=False):
            self.assertIsNone(cpu_paths.onednn_op("_convolution_pointwise"))  # a build without oneDNN
        for error in (AttributeError, RuntimeError):  # an op namespace without the op
            with mock.patch.object(torch.ops, "mkldnn", _Missing(error)):
                self.assertIsNone(cpu_paths.onednn_op("_convolution_pointwise"), error)
                self.assertIsNone(cpu_paths.onednn_op("_linear_pointwise"), error)

    @parameterized.expand([(b, d, cl) for b in (1, 3) for d in (False, True) for cl in (True, False)])
    def test_fused_op_result_is_returned_without_a_fallback(self, batch, dynamic, channels_last):
        """Without a graph the GELU conv is the fused op's own output (a working call: no fallback warning), equal to
        ``gelu(conv(x))`` of the plain ops; in a build without the op, the plain ops."""
        conv, x, other, gen = TestEpilogue._case(batch, dynamic, channels_last)
        expected = F.gelu(conv(x, gen, slice(4, 16), 4)).detach()
        outputs = []
        real = dynamic_conv._FUSED

        def recording(*args: object) -> torch.Tensor:
            outputs.append(real(*args))
            return outputs[-1]

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")  # a fallback warns
            with mock.patch.object(dynamic_conv, "_FUSED", None if real is None else recording):
                got = conv(x, gen, slice(4, 16), 4, gelu=True)
        self.assertEqual(len(outputs), int(real is not None))
        if outputs:  # the fused op's memory (a batch comes unfolded from the groups as a view)
            self.assertEqual(got.untyped_storage().data_ptr(), outputs[0].untyped_storage().data_ptr())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    def test_plain_ops_while_exporting(self):
        x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 1, 3, 3)
        with torch.no_grad():
            self.assertEqual(dynamic_conv._gelu_fusable(x, w), dynamic_conv._FUSED is not None)
            for flag in (
                mock.patch.object(torch.compiler, "is_exporting", return_value=True),
                mock.patch.object(torch.onnx, "is_in_onnx_export", return_value=True),
            ):
                with flag:
                    self.assertFalse(dynamic_conv._gelu_fusable(x, w))

    def test_fused_only_for_float32_maps_and_kernels(self):
        """The fused op takes float32 maps and kernels only; a bf16 map with float32 weights outside autocast raises
        without a graph as with one (the fused op would accept it and give bf16 values), and so does a float32 map
        with bf16 kernels (the fused op would give float32 values)."""
        x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 1, 3, 3)
        conv = DepthwiseConv(4)
        with torch.no_grad():
            for a, b in ((x.bfloat16(), w), (x, w.bfloat16()), (x.double(), w), (x, w.double())):
                self.assertFalse(dynamic_conv._gelu_fusable(a, b), (a.dtype, b.dtype))
            with self.assertRaises(RuntimeError):
                conv(x.bfloat16(), gelu=True)
            with self.assertRaises(RuntimeError):  # the reverse: a float32 map, bf16 kernels
                DepthwiseConv(4).bfloat16()(x, gelu=True)
        with self.assertRaises(RuntimeError):
            conv(x.bfloat16(), gelu=True)

    @parameterized.expand([(RuntimeError,), (TypeError,)])
    def test_failure_warns_at_the_conv_call(self, error):
        """A failing fused op (an error or a changed signature) gives the plain ops' values, with a warning that
        points at the depthwise conv's forward (the caller of the conv helper), not into PyTorch."""
        conv, x, _, gen = TestEpilogue._case(1, True)
        expected = F.gelu(conv(x, gen, slice(4, 16), 4)).detach()
        broken = mock.MagicMock(side_effect=error("no such overload"))
        with (
            torch.no_grad(),
            mock.patch.object(dynamic_conv, "_FUSED", broken),
            warnings.catch_warnings(record=True) as w,
        ):
            warnings.simplefilter("always")
            got = conv(x, gen, slice(4, 16), 4, gelu=True)
        broken.assert_called_once()
        torch.testing.assert_close(got, expected)
        self.assertEqual(len(w), 1)
        lines, first = inspect.getsourcelines(DepthwiseConv.forward)
        self.assertEqual(w[0].filename, inspect.getsourcefile(DepthwiseConv))
        self.assertTrue(first <= w[0].lineno < first + len(lines), w[0].lineno)


class TestMultiplied(unittest.TestCase):
    def test_in_place_only_without_a_graph_and_in_the_same_dtype(self):
        """``out * multiply`` goes into ``out`` without a graph; a graph or another dtype (the product promotes, as
        ``out * multiply`` does) gives a new tensor."""
        torch.manual_seed(0)
        out, m = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
        expected = out * m
        with torch.no_grad():
            self.assertIs(dynamic_conv._multiplied(out, None), out)  # nothing to multiply
            self.assertIs(dynamic_conv._multiplied(out, m), out)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        low = torch.randn(2, 3, 4).bfloat16()
        with torch.no_grad():
            mixed = dynamic_conv._multiplied(low, m)
        self.assertEqual(mixed.dtype, torch.float32)
        torch.testing.assert_close(mixed, low.float() * m, rtol=0, atol=0)
        leaf = torch.randn(2, 3, 4, requires_grad=True)
        product = dynamic_conv._multiplied(torch.randn(2, 3, 4), leaf)
        self.assertTrue(product.requires_grad)


class TestZeroPadded(unittest.TestCase):
    @parameterized.expand([(0, 0), (1, 0), (3, 0), (1, 1), (2, 1)])
    def test_appends_zeros(self, pad, dim):
        t = torch.randn(3, 4, 2)
        got = dynamic_conv._zero_padded(t, pad, dim)
        shape = list(t.shape)
        shape[dim] += pad
        self.assertEqual(list(got.shape), shape)
        torch.testing.assert_close(got.narrow(dim, 0, t.shape[dim]), t, rtol=0, atol=0)
        self.assertTrue(torch.all(got.narrow(dim, t.shape[dim], pad) == 0))
        if pad == 0:
            self.assertIs(got, t)


if __name__ == "__main__":
    unittest.main()
