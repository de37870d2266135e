"""The attention under float16 / bfloat16: its sums over voxels (Gram matrices, squared norms, window sums) do not
overflow float16's range (65504) or get rounded by autocast, on the whole-map and the row-strip paths, under autocast
and in a half-precision model."""

from __future__ import annotations

import unittest

import torch
from custom.networks import TAT
from custom.networks.blocks import ChannelAttention
from custom.networks.blocks.attention import _window_attention, channel_attention
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from custom.networks.blocks.local_windows import window_tiles
from parameterized import parameterized
from torch import nn

# q and k of this scale on a 30 x 32 map: a window of 12 x 12 sums ~144 * 900 per Gram diagonal entry, the whole map
# ~960 * 900, both beyond float16's 65504; single products (900) and the normalised attention fit easily
SCALE = 30.0
MODES = [("global", None, False), ("published", [12, 12], False), ("blended", [12, 12], True)]


def _maps(seed: int) -> list[torch.Tensor]:
    """q, k (correlated, so that the attention is not uniform) and v, each ``(2, 4, 30, 32)`` channels-last."""
    g = torch.Generator().manual_seed(seed)
    q = SCALE * torch.randn(2, 4, 30, 32, generator=g)
    k = q + SCALE * 0.5 * torch.randn(2, 4, 30, 32, generator=g)
    v = torch.randn(2, 4, 30, 32, generator=g)
    return [z.contiguous(memory_format=torch.channels_last) for z in (q, k, v)]


def _attention_module(seed: int) -> tuple[ChannelAttention, ChannelLayerNorm, torch.Tensor]:
    """A windowed attention block (train size 8: windows of 12 on a 30 x 32 map) whose q and k reach ``SCALE``."""
    torch.manual_seed(seed)
    a = ChannelAttention(8, 2, bias=True, train_size=8, window_mode="published")
    with torch.no_grad():
        for p in a.parameters():
            p.uniform_(-0.5, 0.5)
        a.qkv.weight[:16] *= 1.5 * SCALE  # q and k rows: q and k of about 37 (uniform weights on 8 unit channels)
    x = torch.randn(1, 8, 30, 32).contiguous(memory_format=torch.channels_last)
    return a, ChannelLayerNorm(8), x


class TestFloat16Sums(unittest.TestCase):
    @parameterized.expand(MODES)
    def test_channel_attention_under_float16_autocast(self, _, window, blend):
        maps = _maps(0)
        t = torch.tensor([[[1.5]], [[0.7]]])
        expected = channel_attention(maps, 2, t, window, blend)
        with torch.autocast("cpu", dtype=torch.float16):
            got = channel_attention(maps, 2, t, window, blend)
        self.assertTrue(torch.isfinite(got).all())
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.02)
        # the attention is not uniform (a mean of v would pass a loose comparison too)
        uniform = maps[2].reshape(2, 2, 2, -1).mean(2, keepdim=True).expand(-1, -1, 2, -1).reshape(maps[2].shape)
        self.assertGreater((expected - uniform).abs().max().item(), 0.5)

    @parameterized.expand(MODES)
    def test_channel_attention_in_half_precision(self, _, window, blend):
        maps = _maps(1)
        t = torch.tensor([[[1.5]], [[0.7]]])
        expected = channel_attention(maps, 2, t, window, blend)
        got = channel_attention([z.half() for z in maps], 2, t.half(), window, blend)
        self.assertEqual(got.dtype, torch.float16)  # a half-precision model stays in half precision
        self.assertTrue(torch.isfinite(got).all())
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.02)

    def test_row_strips_under_float16_autocast(self):
        a, norm, x = _attention_module(2)
        with torch.no_grad():
            expected = x + a(norm(x))
            with torch.autocast("cpu", dtype=torch.float16):
                whole = x + a(norm(x))
                strips = a.residual_in_strips(x, norm, None, 5)  # strips of 5 x 32 voxels: ~160 * 1400 per entry
        for got in (whole, strips):
            self.assertTrue(torch.isfinite(got).all())
            torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.05)

    def test_row_strips_in_half_precision(self):
        a, norm, x = _attention_module(3)
        with torch.no_grad():
            expected = x + a(norm(x))
            half = a.half()
            strips = half.residual_in_strips(x.half(), norm.half(), None, 5)
            whole = x.half() + half(norm(x.half()))
        self.assertEqual(strips.dtype, torch.float16)
        for got in (whole, strips):
            self.assertTrue(torch.isfinite(got).all())
            torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.05)

    @parameterized.expand([("bf16 autocast", True), ("bf16 model", False)])
    def test_row_strips_sum_in_float32(self, _, autocast):
        """The strips' Gram matrices come in bf16 (under bf16 autocast, or from a bf16 model) and are summed over strips
        in float32: in bf16 the Gram entry of a first row of 16s (32 * 256 = 8192, a bf16 step of 64 there) absorbs
        every later row's 32 * 0.9^2 (below half a step), so the attention drifts from float32's."""
        torch.manual_seed(0)
        a = ChannelAttention(2, 1)  # global attention; q = k = v = x (identity convs), no projection
        with torch.no_grad():
            a.qkv.weight.copy_(torch.eye(2).repeat(3, 1)[..., None, None])
            a.qkv_dwconv.weight.zero_()
            a.qkv_dwconv.weight[:, 0, 1, 1] = 1.0
            a.project_out.weight.copy_(torch.eye(2)[..., None, None])
            a.temperature.fill_(4.0)
        x = torch.empty(1, 2, 64, 32)
        x[:, 0] = 0.9
        x[:, 0, 0] = 16.0
        x[:, 1] = torch.rand(64, 32) + 0.5
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = x + a(x)
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    got = a.residual_in_strips(x, nn.Identity(), None, 1)  # strips of one row
            else:
                got = a.bfloat16().residual_in_strips(x.bfloat16(), nn.Identity(), None, 1)
        self.assertEqual(got.dtype, torch.float32 if autocast else torch.bfloat16)
        # bf16 outputs (a bf16 model) are rounded to steps of 0.125 at 16-32; strips summed in bf16 are off by ~0.5
        torch.testing.assert_close(got.float(), expected, rtol=0.01, atol=0.02 if autocast else 0.15)


class TestFloat16Training(unittest.TestCase):
    def test_gradients_under_float16_autocast(self):
        """A training step under float16 autocast (AMP, CUDA's default) at the training size: finite gradients close to
        float32's (the global Gram matrices of a 32 x 32 patch overflowed float16 with the default initialisation)."""
        torch.manual_seed(7)
        net = TAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), train_patch_size=32)
        x = torch.rand(1, 1, 32, 32)
        grads = []
        for enabled in (False, True):
            net.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, enabled=enabled):
                loss = (net(x) - x).abs().mean()
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
        self.assertTrue(torch.isfinite(grads[1]).all())
        self.assertLess(((grads[1] - grads[0]).norm() / grads[0].norm()).item(), 0.05)


class TestWindowSums(unittest.TestCase):
    @parameterized.expand([(torch.float32,), (torch.bfloat16,)])
    def test_window_sums_not_rounded_by_autocast(self, dtype):
        """Per-window sums of the per-tile statistics run in float32 under bf16 autocast (they are GEMMs, which
        autocast would run in bf16), also when the statistics come in bf16 (bf16 maps)."""
        torch.manual_seed(4)
        axes = [window_tiles(30, 12), window_tiles(32, 12)]
        grid = [len(tiles) for tiles, _ in axes]
        gram = (torch.randn(*grid, 1, 2, 3, 3) * 100).to(dtype)
        norms = (torch.rand(*grid, 1, 2, 2, 3) * 1000 + 500).to(dtype)
        t = torch.rand(2, 1, 1) + 0.5
        expected = _window_attention(gram.double(), norms.double(), axes, t.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _window_attention(gram, norms, axes, t, torch.bfloat16)
        self.assertEqual(got.dtype, torch.float32)  # bf16 maps, float32 temperature: float32 attention
        torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)

    def test_float32_maps_with_windows_under_autocast(self):
        """Float32 maps under bf16 autocast (the products come in bf16, the norms in float32) run and stay close."""
        maps = [z / SCALE for z in _maps(5)]
        t = torch.tensor([[[1.5]], [[0.7]]])
        expected = channel_attention(maps, 2, t, [12, 12])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = channel_attention(maps, 2, t, [12, 12])
        torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.05)


if __name__ == "__main__":
    unittest.main()
