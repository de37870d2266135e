"""The attention module against plain definitions: its published parameters, any number of spatial dimensions,
its argument checks, and the windowed attention on the smallest window grids."""

from __future__ import annotations

import itertools
import unittest

import torch
import torch.nn.functional as F
from custom.networks.blocks.attention import ChannelAttention, channel_attention
from custom.networks.blocks.local_windows import window_starts
from parameterized import parameterized

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def plain_attention(qkv: torch.Tensor, heads: int, temperature: torch.Tensor) -> torch.Tensor:
    """Restormer's MDTA core on ``(B, 3C, *spatial)``: per head, ``softmax(norm(q) norm(k)^T * t) v``."""
    b, c3 = qkv.shape[:2]
    q, k, v = (z.reshape(b, heads, c3 // 3 // heads, -1) for z in qkv.chunk(3, 1))  # (B, h, C/h, P)
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * temperature).softmax(-1)
    return (attn @ v).reshape(b, c3 // 3, *qkv.shape[2:])


def plain_window_mean(
    qkv: torch.Tensor, heads: int, temperature: torch.Tensor, window: tuple[int, int]
) -> torch.Tensor:
    """The published local windows in 2D, one by one: attention on each window's crop, averaged where they overlap."""
    h, w = qkv.shape[2:]
    kh, kw = min(h, window[0]), min(w, window[1])
    out = torch.zeros(qkv.shape[0], qkv.shape[1] // 3, h, w)
    count = torch.zeros(h, w)
    for y, x in itertools.product(window_starts(h, window[0]), window_starts(w, window[1])):
        out[:, :, y : y + kh, x : x + kw] += plain_attention(qkv[:, :, y : y + kh, x : x + kw], heads, temperature)
        count[y : y + kh, x : x + kw] += 1
    return out / count


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random parameters (a positive temperature per head), so that every one of them shows in the output."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "temperature":
                p.uniform_(0.5, 2.0)
            else:
                p.uniform_(-0.5, 0.5)


class TestChannelAttentionModule(unittest.TestCase):
    def test_default_is_the_published_encoder_attention(self) -> None:
        """By default the static encoder MDTA of Restormer (``bias=False``), 2D: exactly its parameters."""
        a = ChannelAttention(8, 2)
        shapes = {name: tuple(p.shape) for name, p in a.state_dict().items()}
        expected = {
            "temperature": (2, 1, 1),
            "qkv.weight": (24, 8, 1, 1),
            "qkv_dwconv.weight": (24, 1, 3, 3),
            "project_out.weight": (8, 8, 1, 1),
        }
        self.assertEqual(shapes, expected)
        with self.assertRaises(ValueError):  # a static depthwise conv takes no generated kernel
            a(torch.randn(1, 8, 5, 5), torch.randn(1, 24, 3, 3))

    @parameterized.expand([(False, True), (True, False)])
    def test_biases_as_published(self, dynamic: bool, depthwise_bias: bool) -> None:
        """``bias=True``: a bias in every conv, except the task-adaptive depthwise conv (published without one)."""
        a = ChannelAttention(8, 2, bias=True, dynamic=dynamic)
        biases = {name for name in a.state_dict() if name.endswith("bias")}
        expected = {"qkv.bias", "project_out.bias"} | ({"qkv_dwconv.bias"} if depthwise_bias else set())
        self.assertEqual(biases, expected)
        self.assertEqual("qkv_dwconv.gate" in a.state_dict(), dynamic)

    @parameterized.expand([(1, (11,)), (2, (7, 6)), (3, (5, 4, 6))])
    def test_equals_plain_convs_in_any_dimension(self, spatial_dims: int, size: tuple[int, ...]) -> None:
        """1x1 conv, 3x3 depthwise conv (with its bias), attention, 1x1 conv, with the convs of ``spatial_dims``."""
        a = ChannelAttention(6, 2, bias=True, spatial_dims=spatial_dims)
        _randomise(a)
        x = torch.randn(2, 6, *size)
        conv = _CONV[spatial_dims]
        qkv = conv(x, a.qkv.weight, a.qkv.bias)
        qkv = conv(qkv, a.qkv_dwconv.weight, a.qkv_dwconv.bias, padding=1, groups=18)
        expected = conv(plain_attention(qkv, 2, a.temperature), a.project_out.weight, a.project_out.bias)
        with torch.no_grad():
            torch.testing.assert_close(a(x), expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(0,), (-1,), (3,), (5,)])
    def test_heads_must_divide_channels(self, heads: int) -> None:
        with self.assertRaisesRegex(ValueError, "num_heads"):
            ChannelAttention(8, heads)

    def test_heads_up_to_one_per_channel(self) -> None:
        a = ChannelAttention(4, 4)  # one channel per head: every q k^T is 1 x 1 and the softmax gives 1
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            v = a.qkv_dwconv(a.qkv(x))[:, 8:]
            torch.testing.assert_close(a(x), a.project_out(v), rtol=1e-5, atol=1e-6)

    @parameterized.expand([(0,), (-3,)])
    def test_train_size_must_be_positive(self, train_size: int) -> None:
        with self.assertRaisesRegex(ValueError, "train_size"):
            ChannelAttention(8, 2, train_size=train_size)

    def test_smallest_train_size(self) -> None:
        """``train_size=1`` is valid: windows of ``int(1.5) = 1`` voxel, used on any larger map."""
        a = ChannelAttention(4, 1, train_size=1)
        self.assertEqual(a.window, 1)
        self.assertEqual(a.local_window((2, 1)), [1, 1])
        self.assertIsNone(a.local_window((1, 1)))


class TestSmallWindowGrids(unittest.TestCase):
    """The factored windowed attention equals the literal per-window mean on the smallest window grids."""

    @parameterized.expand(
        [
            ((2, 12, 24, 12), 2, (12, 12)),  # two windows side by side, no overlap: two tiles
            ((1, 12, 10, 20), 1, (12, 10)),  # the same along the other axis (the first one global)
            ((2, 12, 13, 12), 2, (12, 12)),  # two windows overlapping: three tiles
            ((1, 12, 24, 24), 2, (12, 12)),  # 2 x 2 windows, 4 tiles
        ]
    )
    def test_equals_window_by_window(self, shape: tuple[int, ...], heads: int, window: tuple[int, int]) -> None:
        g = torch.Generator().manual_seed(3)
        qkv = torch.randn(shape, generator=g)
        temperature = torch.rand(heads, 1, 1, generator=g) * 2 + 0.5
        expected = plain_window_mean(qkv, heads, temperature, window)
        got = channel_attention(qkv, heads, temperature, window)
        self.assertEqual(got.shape, expected.shape)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # and with the output conv folded in, from three separate maps
        project, bias = torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
        folded = channel_attention(list(qkv.chunk(3, 1)), heads, temperature, window, False, 0.125, project, bias)
        torch.testing.assert_close(
            folded, torch.einsum("oc,bchw->bohw", project, expected) + bias[:, None, None], rtol=1e-5, atol=1e-5
        )


if __name__ == "__main__":
    unittest.main()
