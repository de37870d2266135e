"""Blended attention windows: smooth weights, the factored form against a literal per-window loop, modes."""

from __future__ import annotations

import itertools
import math
import unittest

import numpy as np
import torch
from custom.networks import TAT
from custom.networks.blocks.attention import WINDOW_MODES, ChannelAttention, channel_attention
from custom.networks.blocks.local_windows import blend_weights, window_starts
from parameterized import parameterized

from tests.utils import TINY, tiny_net


def _definition_weights(size: int, window: int, sigma_scale: float) -> np.ndarray:
    """The blend weights of the docstring, pixel by pixel in float64: ``g(p) = exp(-d^2 / (2 s^2)) - exp(-(k/2)^2 /
    (2 s^2))`` with ``d`` the distance of pixel centre ``p + 1/2`` from the window centre ``k / 2``, over the sum."""
    starts = window_starts(size, window)
    k = min(size, window)
    s = sigma_scale * k
    floor = math.exp(-((k / 2) ** 2) / (2 * s**2))
    g = np.array([[math.exp(-((p + 0.5 - k / 2) ** 2) / (2 * s**2)) - floor for p in range(k)] for _ in starts])
    total = np.zeros(size)
    for start, row in zip(starts, g):
        total[start : start + k] += row
    return np.stack([row / total[start : start + k] for start, row in zip(starts, g)])


class TestBlendWeights(unittest.TestCase):
    @parameterized.expand([(256, 192), (100, 40), (37, 10), (64, 64), (30, 50)])
    def test_partition_of_unity(self, size, window):
        w = blend_weights(size, window)
        starts = window_starts(size, window)
        k = min(size, window)
        self.assertEqual(tuple(w.shape), (len(starts), k))
        total = torch.zeros(size)
        for s, row in zip(starts, w):
            total[s : s + k] += row
        torch.testing.assert_close(total, torch.ones(size), rtol=0, atol=1e-6)
        self.assertTrue(bool((w > 0).all()))

    def test_vanishes_at_interior_window_edges(self):
        w = blend_weights(256, 192)  # windows [0, 192) and [64, 256)
        self.assertLess(w[1, 0].item(), 1e-3)  # second window's first pixel (64), inside the first window
        self.assertLess(w[0, -1].item(), 1e-3)  # first window's last pixel (191)
        self.assertEqual(w[0, 0].item(), 1.0)  # only the first window covers pixel 0
        # continuous: no step between neighbouring pixels larger than a smooth ramp gives
        full = torch.zeros(256)
        full[0:192] += w[0]
        self.assertLess((full[1:] - full[:-1]).abs().max().item(), 0.05)

    @parameterized.expand(
        [(256, 192, 0.125), (100, 40, 0.25), (37, 10, 0.125), (30, 50, 0.125), (1000, 300, 0.125), (100, 40, 10.0)]
    )
    def test_equals_definition(self, size, window, sigma_scale):
        expected = _definition_weights(size, window, sigma_scale)
        got = blend_weights(size, window, sigma_scale)
        self.assertEqual(got.dtype, torch.float32)
        # computed in float64 and rounded once: every weight, even the small ones at the window edges, is its exact
        # value rounded to float32 (1 float32 step allowed for another libm's exp; a float32 step in the computation
        # is 2-5 steps off at sigma 0.125, 1e-4 at sigma 10)
        torch.testing.assert_close(got, torch.from_numpy(expected).float(), rtol=1.2e-7, atol=0)

    def test_on_the_device_asked(self):
        w = blend_weights(100, 40, device=torch.device("meta"))  # made on the device asked ("meta", as a GPU would be)
        self.assertEqual((w.device.type, w.dtype, tuple(w.shape)), ("meta", torch.float32, (3, 40)))

    def test_wider_sigma_is_flatter(self):
        narrow, wide = blend_weights(256, 192, 0.125), blend_weights(256, 192, 0.5)
        self.assertGreater(wide[1, 10].item(), narrow[1, 10].item())

    @parameterized.expand([(0.0,), (-1.0,), (11.0,)])
    def test_bad_sigma(self, sigma):
        with self.assertRaisesRegex(ValueError, "sigma_scale"):
            blend_weights(64, 32, sigma)


def _literal_blend(qkv, heads, temperature, window):
    """Each window attended alone (global attention on its crop), weighted by the outer product of the weights."""
    h, w = qkv.shape[2:]
    c = qkv.shape[1] // 3
    out = torch.zeros(qkv.shape[0], c, h, w)
    ys, xs = window_starts(h, window[0]), window_starts(w, window[1])
    ky, kx = min(h, window[0]), min(w, window[1])
    wy, wx = blend_weights(h, window[0]), blend_weights(w, window[1])
    for (i, y), (j, x) in itertools.product(enumerate(ys), enumerate(xs)):
        crop = qkv[:, :, y : y + ky, x : x + kx]
        out[:, :, y : y + ky, x : x + kx] += channel_attention(crop, heads, temperature) * (wy[i][:, None] * wx[j])
    return out


class TestBlendedAttention(unittest.TestCase):
    @parameterized.expand(
        [((2, 24, 40, 52), 2, (24, 20)), ((1, 12, 33, 17), 1, (16, 16)), ((3, 24, 30, 30), 4, (12, 30))]
    )
    def test_factored_equals_literal(self, shape, heads, window):
        torch.manual_seed(0)
        qkv = torch.randn(*shape)
        temperature = torch.rand(heads, 1, 1) + 0.5
        got = channel_attention(qkv, heads, temperature, window, blend=True)
        torch.testing.assert_close(got, _literal_blend(qkv, heads, temperature, window), rtol=1e-5, atol=1e-5)
        published = channel_attention(qkv, heads, temperature, window)
        self.assertGreater((got - published).abs().max().item(), 1e-3)  # a different mixing than the mean

    @parameterized.expand([(False,), (True,)])
    def test_bias_with_or_without_projection(self, blend):
        # the bias is added after the projection, or alone without one, in every window mode
        torch.manual_seed(4)
        qkv, t = torch.randn(2, 12, 20, 26), torch.rand(2, 1, 1) + 0.5
        project, bias = torch.randn(5, 4), torch.randn(5)
        plain = channel_attention(qkv, 2, t, (12, 12), blend)
        got = channel_attention(qkv, 2, t, (12, 12), blend, project=project, project_bias=bias)
        expected = torch.einsum("oc,bchw->bohw", project, plain) + bias[:, None, None]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        alone = channel_attention(qkv, 2, t, (12, 12), blend, project_bias=bias[:4])
        torch.testing.assert_close(alone, plain + bias[:4, None, None], rtol=1e-6, atol=1e-6)

    def test_window_covering_the_map_is_global(self):
        torch.manual_seed(1)
        qkv = torch.randn(1, 12, 20, 20)
        t = torch.ones(2, 1, 1)
        got = channel_attention(qkv, 2, t, (20, 20), blend=True)
        torch.testing.assert_close(got, channel_attention(qkv, 2, t), rtol=1e-6, atol=1e-6)

    def test_module_modes(self):
        torch.manual_seed(2)
        x = torch.randn(2, 8, 40, 40)
        outs = {}
        for mode in WINDOW_MODES:
            torch.manual_seed(3)
            outs[mode] = ChannelAttention(8, 2, train_size=16, window_mode=mode).eval()(x)
        torch.manual_seed(3)
        no_windows = ChannelAttention(8, 2, train_size=None).eval()(x)
        torch.testing.assert_close(outs["global"], no_windows, rtol=0, atol=0)
        self.assertGreater((outs["published"] - outs["global"]).abs().max().item(), 1e-4)
        self.assertGreater((outs["blended"] - outs["published"]).abs().max().item(), 1e-4)

    @parameterized.expand([(m,) for m in WINDOW_MODES])
    def test_map_within_the_window_is_global(self, mode):
        # window 12 (1.5 x 8) on a 12 x 10 map: global attention in every mode, whatever the channel count (24 > 12)
        torch.manual_seed(5)
        x = torch.randn(2, 24, 12, 10)
        torch.manual_seed(6)
        a = ChannelAttention(24, 2, bias=True, train_size=8, window_mode=mode).eval()
        torch.manual_seed(6)
        no_windows = ChannelAttention(24, 2, bias=True, train_size=None).eval()
        self.assertIsNone(a.local_window(x.shape[2:]))
        self.assertEqual(a.local_window((13, 10)), None if mode == "global" else [12, 12])
        with torch.no_grad():
            torch.testing.assert_close(a(x), no_windows(x), rtol=0, atol=0)

    def test_unknown_mode(self):
        with self.assertRaisesRegex(ValueError, "published, global, blended"):
            ChannelAttention(8, 2, train_size=16, window_mode="smooth")


class TestTATWindowModes(unittest.TestCase):
    def test_default_published_and_switch(self):
        net = tiny_net()
        self.assertEqual(net.window_mode, "published")
        x = torch.rand(1, 1, 80, 72)  # level 1 window 48 < 80: windows at full resolution
        with torch.no_grad():
            published = net(x)
            self.assertIs(net.set_window_mode("blended"), net)
            self.assertEqual(net.window_mode, "blended")
            blended = net(x)
            net.set_window_mode("published")
            torch.testing.assert_close(net(x), published, rtol=0, atol=0)
        self.assertGreater((blended - published).abs().max().item(), 1e-5)
        self.assertEqual(TAT(**TINY, window_mode="global").window_mode, "global")

    @parameterized.expand([(m,) for m in WINDOW_MODES])
    def test_batch_equals_each_alone(self, mode):
        net = tiny_net().set_window_mode(mode)
        torch.manual_seed(4)
        x = torch.rand(3, 1, 72, 88)
        with torch.no_grad():
            batch = net(x)
            for i in range(3):
                torch.testing.assert_close(batch[i : i + 1], net(x[i : i + 1]), rtol=1e-5, atol=1e-5)

    def test_forward_writes_nothing(self):
        net = tiny_net().set_window_mode("blended")
        before = {k: v.clone() for k, v in net.state_dict().items()}
        attrs = {n: dict(vars(m)) for n, m in net.named_modules()}
        with torch.no_grad():
            net(torch.rand(1, 1, 80, 80))
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)
        for n, m in net.named_modules():
            self.assertEqual(set(vars(m)), set(attrs[n]), n)
            plain = {k: v for k, v in vars(m).items() if isinstance(v, (str, int, float, bool, tuple, type(None)))}
            self.assertEqual(plain, {k: v for k, v in attrs[n].items() if k in plain}, n)

    def test_bad_mode(self):
        with self.assertRaisesRegex(ValueError, "published, global, blended"):
            TAT(**TINY, window_mode="sliding")
        with self.assertRaisesRegex(ValueError, "published, global, blended"):
            tiny_net().set_window_mode("none")


if __name__ == "__main__":
    unittest.main()
