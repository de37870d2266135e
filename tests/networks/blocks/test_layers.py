"""Layer norm, attention, feed-forward, sampling and TREN."""

from __future__ import annotations

import itertools
import unittest

import torch
import torch.nn as nn
import torch.nn.functional as F
from custom.networks.blocks import (
    ChannelAttention,
    ChannelLayerNorm,
    Downsample,
    GatedFeedForward,
    TaskRepresentationNetwork,
    TransformerBlock,
    Upsample,
)
from custom.networks.blocks.sampling import pixel_shuffle, pixel_unshuffle
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


def _offsets(r: int, d: int) -> list[tuple[int, tuple[slice, ...]]]:
    """Per sub-voxel offset ``(a_1, ..., a_d)``: its channel offset ``a_1 r^(d-1) + ... + a_d`` and the strided
    index ``(:, :, a_1::r, ..., a_d::r)`` of the voxels it fills."""
    out = []
    for offset in itertools.product(range(r), repeat=d):
        flat = 0
        for a in offset:
            flat = flat * r + a
        out.append((flat, (slice(None), slice(None), *(slice(a, None, r) for a in offset))))
    return out


def reference_pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pixel shuffle by its definition (PyTorch's in 2D): ``out[:, c, r i + a] = x[:, c r^d + flat(a), i]``."""
    d = x.dim() - 2
    out = x.new_empty(x.shape[0], x.shape[1] // r**d, *(s * r for s in x.shape[2:]))
    for flat, index in _offsets(r, d):
        out[index] = x[:, flat :: r**d]
    return out


def reference_pixel_unshuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """The inverse of :func:`reference_pixel_shuffle`."""
    d = x.dim() - 2
    out = x.new_empty(x.shape[0], x.shape[1] * r**d, *(s // r for s in x.shape[2:]))
    for flat, index in _offsets(r, d):
        out[:, flat :: r**d] = x[index]
    return out


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

    @parameterized.expand([(True,), (False,)])
    def test_eps_is_used(self, with_bias: bool) -> None:
        """A large ``eps`` on a map of small variance: the output follows the formula with that ``eps``."""
        ln = ChannelLayerNorm(6, bias=with_bias, eps=0.3)
        with torch.no_grad():
            ln.weight.uniform_(0.5, 1.5)
            if with_bias:
                ln.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 6, 4, 5) * 0.5 + 1
        expected = reference_layer_norm(x, ln.weight, ln.bias, eps=0.3)
        torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-5)
        self.assertGreater((expected - reference_layer_norm(x, ln.weight, ln.bias)).abs().max().item(), 0.1)

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

    @parameterized.expand([(1, (5,)), (2, (3, 4)), (3, (2, 3, 4))])
    def test_pixel_shuffle_definition(self, spatial_dims: int, size: tuple[int, ...]) -> None:
        """In every dimension: the definition, and the unshuffle its inverse."""
        x = torch.randn(2, 3 * 2**spatial_dims, *size)
        shuffled = pixel_shuffle(x, spatial_dims, 2)
        torch.testing.assert_close(shuffled, reference_pixel_shuffle(x, 2), rtol=0, atol=0)
        torch.testing.assert_close(pixel_unshuffle(shuffled, spatial_dims, 2), x, rtol=0, atol=0)
        y = torch.randn(2, 3, *(2 * s for s in size))
        torch.testing.assert_close(pixel_unshuffle(y, spatial_dims, 2), reference_pixel_unshuffle(y, 2), rtol=0, atol=0)

    @parameterized.expand([(1, (6,)), (2, (4, 6)), (3, (2, 4, 6))])
    def test_down_up_equal_conv_and_shuffle(self, spatial_dims: int, size: tuple[int, ...]) -> None:
        """3x3 conv ``C -> C/2`` and unshuffle down, 3x3 conv ``C -> 2C`` and shuffle up, in every dimension."""
        conv = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]
        x = torch.randn(1, 4, *size)
        down, up = Downsample(4, spatial_dims), Upsample(4 * 2 ** (spatial_dims - 1), spatial_dims)
        with torch.no_grad():
            d = down(x)
            torch.testing.assert_close(
                d, reference_pixel_unshuffle(conv(x, down.conv.weight, padding=1), 2), rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(
                up(d), reference_pixel_shuffle(conv(d, up.conv.weight, padding=1), 2), rtol=1e-5, atol=1e-5
            )
        self.assertEqual(tuple(d.shape), (1, 2 ** (spatial_dims + 1), *(s // 2 for s in size)))

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

    def test_published_widths_by_default(self) -> None:
        """Defaults as published: shuffle by 4, a trunk of 64 channels, a 256-wide embedding, 3x3 kernels."""
        tren = TaskRepresentationNetwork(32, {"a": (3, 4)})
        convs = [m for m in tren.features.modules() if isinstance(m, nn.Conv2d)]
        self.assertEqual(convs[0].in_channels, 2)  # 32 / 4**2
        self.assertEqual({m.out_channels for m in convs[:-2]}, {64})
        self.assertEqual((convs[-2].out_channels, convs[-1].out_channels), (128, 256))
        self.assertEqual([tuple(m.weight.shape) for m in tren.mlp if isinstance(m, nn.Linear)], [(256, 256)] * 2)
        kernels = tren(torch.randn(2, 32, 2, 2))["a"]
        self.assertEqual((tuple(kernels.attn.shape), tuple(kernels.ffn.shape)), ((2, 3, 3, 3), (2, 4, 3, 3)))

    def test_errors(self):
        with self.assertRaises(ValueError):
            TaskRepresentationNetwork(24, {"a": (3, 4)})  # 24 not divisible by 16
        with self.assertRaises(ValueError):
            TaskRepresentationNetwork(32, {})


if __name__ == "__main__":
    unittest.main()
