from __future__ import annotations

import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks.blocks import DepthwiseConv
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
    """``gelu`` and ``multiply`` after the conv: fused into oneDNN's convolution without a graph on the CPU, the
    plain ops otherwise; the same values either way."""

    @staticmethod
    def _case(batch, dynamic, channels_last):
        torch.manual_seed(batch + 2 * dynamic)
        conv = DepthwiseConv(20, dynamic=dynamic, bias=not dynamic)
        with torch.no_grad():
            conv.weight.uniform_(-1, 1)
            if dynamic:
                conv.gate.uniform_(-1, 1)
            else:
                conv.bias.uniform_(-1, 1)
        x = torch.randn(batch, 16, 9, 11)  # channels 4:16 of the conv (part) and 4 zero-kernel channels (pad)
        other = torch.randn(batch, 16, 9, 11)
        if channels_last:
            x, other = (t.contiguous(memory_format=torch.channels_last) for t in (x, other))
        gen = torch.randn(batch, 20, 3, 3) if dynamic else None
        return conv, x, other, gen

    @parameterized.expand([(b, d, cl) for b in (1, 3) for d in (False, True) for cl in (True, False)])
    def test_fused_equals_plain_ops(self, batch, dynamic, channels_last):
        from custom.networks.blocks import dynamic_conv

        conv, x, other, gen = self._case(batch, dynamic, channels_last)
        part = slice(4, 16)
        plain = conv(x, gen, part, 4).detach()  # with a graph: no fusion
        with torch.no_grad():
            for kwargs, expected in (
                ({"gelu": True}, F.gelu(plain)),
                ({"multiply": other}, plain * other),
                ({"gelu": True, "multiply": other}, F.gelu(plain) * other),
            ):
                with mock.patch.object(dynamic_conv, "_FUSED", wraps=dynamic_conv._FUSED) as fused:
                    got = conv(x, gen, part, 4, **kwargs)
                self.assertTrue(fused.called or fused.binary.called, kwargs)  # the fused op ran
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                self.assertEqual(got.stride(), plain.stride())  # the input's layout
                self.assertTrue(torch.all(got[:, 12:] == 0))  # zero-kernel channels stay 0 (no bias, gelu(0) = 0)

    def test_plain_ops_with_a_graph_or_autocast(self):
        from custom.networks.blocks import dynamic_conv

        conv, x, other, gen = self._case(1, True, True)
        fused = mock.MagicMock(side_effect=AssertionError("fused op called"))
        with mock.patch.object(dynamic_conv, "_FUSED", fused):
            out = conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other)  # with a graph
            self.assertTrue(out.requires_grad)
            out.sum().backward()
            self.assertGreater(conv.gate.grad.abs().sum().item(), 0)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                self.assertEqual(conv(x, gen, slice(4, 16), 4, gelu=True).dtype, torch.bfloat16)
            with torch.no_grad():
                conv(x.double(), gen.double(), slice(4, 16), 4, gelu=True)  # float64
                conv(x[:, :, :, 1:], gen, slice(4, 16), 4, gelu=True)  # a strided view
                conv(x, gen, slice(4, 16), 4, multiply=other[:1, :, :, :1])  # a broadcast operand
        with torch.no_grad(), mock.patch.object(dynamic_conv, "_FUSED", None):  # no oneDNN
            got = conv(x, gen, slice(4, 16), 4, gelu=True, multiply=other)
        torch.testing.assert_close(got, out.detach(), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
