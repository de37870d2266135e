from __future__ import annotations

import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks.blocks import DepthwiseConv, dynamic_conv
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


if __name__ == "__main__":
    unittest.main()
