"""Layer norm, attention, feed-forward, sampling and TREN."""

from __future__ import annotations

import unittest

import torch
import torch.nn as nn
from custom.networks.blocks import (
    ChannelAttention,
    ChannelLayerNorm,
    Downsample,
    GatedFeedForward,
    TaskRepresentationNetwork,
    TransformerBlock,
    Upsample,
)
from monai.networks.utils import pixelshuffle, pixelunshuffle
from parameterized import parameterized


def reference_layer_norm(x: torch.Tensor, weight, bias, eps=1e-5) -> torch.Tensor:
    """Restormer's LayerNorm: to (B, HW, C), normalise the last axis, back."""
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    mu = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    y = (t - mu) / torch.sqrt(var + eps) * weight if bias is not None else t / torch.sqrt(var + eps) * weight
    if bias is not None:
        y = y + bias
    return y.transpose(1, 2).reshape(b, c, h, w)


class TestLayerNorm(unittest.TestCase):
    @parameterized.expand([(True,), (False,)])
    def test_matches_reference(self, with_bias):
        ln = ChannelLayerNorm(6, bias=with_bias)
        with torch.no_grad():
            ln.weight.uniform_(0.5, 1.5)
            if with_bias:
                ln.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 6, 5, 7) * 3 + 1
        torch.testing.assert_close(ln(x), reference_layer_norm(x, ln.weight, ln.bias), rtol=1e-5, atol=1e-5)

    def test_3d(self):
        ln = ChannelLayerNorm(4)
        y = ln(torch.randn(2, 4, 3, 5, 6))
        torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 5, 6), atol=1e-5, rtol=0)


class TestAttention(unittest.TestCase):
    def test_windows_off_below_window_size(self):
        torch.manual_seed(0)
        a = ChannelAttention(8, 2, train_size=16)  # window 24
        g = ChannelAttention(8, 2, train_size=None)
        g.load_state_dict(a.state_dict())
        x = torch.randn(2, 8, 24, 20)
        torch.testing.assert_close(a(x), g(x))
        x = torch.randn(2, 8, 30, 20)  # 30 > 24: local windows change the result
        self.assertGreater((a(x) - g(x)).abs().max().item(), 1e-4)

    def test_temperature_and_heads(self):
        a = ChannelAttention(12, 3)
        self.assertEqual(tuple(a.temperature.shape), (3, 1, 1))
        self.assertTrue(torch.all(a.temperature == 1))
        with self.assertRaises(ValueError):
            ChannelAttention(10, 3)
        with self.assertRaises(ValueError):
            ChannelAttention(12, 3, train_size=0)

    def test_decoder_variant_takes_kernel(self):
        a = ChannelAttention(8, 2, dynamic=True)
        x = torch.randn(2, 8, 6, 6)
        self.assertEqual(tuple(a(x, torch.randn(2, 24, 3, 3)).shape), (2, 8, 6, 6))


class TestFeedForwardAndBlock(unittest.TestCase):
    def test_hidden_width_published(self):
        f = GatedFeedForward(48, 2.66)
        self.assertEqual(tuple(f.project_in.weight.shape), (254, 48, 1, 1))
        self.assertEqual(tuple(f.project_out.weight.shape), (48, 127, 1, 1))

    def test_block_shapes_and_errors(self):
        blk = TransformerBlock(16, 2, dynamic=True)
        self.assertEqual(tuple(blk(torch.randn(1, 16, 8, 8)).shape), (1, 16, 8, 8))
        with self.assertRaises(ValueError):
            TransformerBlock(16, 2, layer_norm_type="Instance")


class TestSampling(unittest.TestCase):
    def test_monai_pixel_shuffle_matches_torch_in_2d(self):
        x = torch.randn(2, 16, 5, 6)
        torch.testing.assert_close(pixelshuffle(x, 2, 2), nn.PixelShuffle(2)(x))
        torch.testing.assert_close(pixelshuffle(x, 2, 4), nn.PixelShuffle(4)(x))
        torch.testing.assert_close(pixelunshuffle(x, 2, 1), x)
        y = torch.randn(2, 3, 8, 12)
        torch.testing.assert_close(pixelunshuffle(y, 2, 2), nn.PixelUnshuffle(2)(y))

    def test_down_up_shapes(self):
        x = torch.randn(1, 8, 16, 12)
        d = Downsample(8)(x)
        self.assertEqual(tuple(d.shape), (1, 16, 8, 6))
        self.assertEqual(tuple(Upsample(16)(d).shape), (1, 8, 16, 12))


class TestTaskRepresentationNetwork(unittest.TestCase):
    def test_kernel_structure_and_detached_input(self):
        tren = TaskRepresentationNetwork(64, {"latent": (12, 20), "level1": (6, 10)}, hidden_channels=8, embed_dim=16)
        x = torch.randn(3, 64, 4, 4, requires_grad=True)
        kernels = tren(x)
        self.assertEqual(list(kernels), ["latent", "level1"])
        self.assertEqual(tuple(kernels["latent"].attn.shape), (3, 12, 3, 3))
        self.assertEqual(tuple(kernels["level1"].ffn.shape), (3, 10, 3, 3))
        self.assertTrue(kernels["latent"].attn.requires_grad)  # the kernels carry the generator's graph ...
        total = sum(k.attn.sum() + k.ffn.sum() for k in kernels.values())
        total.backward()
        self.assertIsNone(x.grad)  # ... but not the input's: the generator input is detached
        self.assertGreater(tren.heads["latent"]["attn"].weight.grad.abs().sum().item(), 0)

    def test_per_sample(self):
        tren = TaskRepresentationNetwork(32, {"a": (3, 4)}, hidden_channels=8, embed_dim=8).eval()
        x = torch.randn(4, 32, 4, 4)
        batch = tren(x)["a"].attn
        for b in range(4):
            torch.testing.assert_close(tren(x[b : b + 1])["a"].attn, batch[b : b + 1], rtol=1e-5, atol=1e-6)

    def test_errors(self):
        with self.assertRaises(ValueError):
            TaskRepresentationNetwork(24, {"a": (3, 4)})  # 24 not divisible by 16
        with self.assertRaises(ValueError):
            TaskRepresentationNetwork(32, {})


if __name__ == "__main__":
    unittest.main()
