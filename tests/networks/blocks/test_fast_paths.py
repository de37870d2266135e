"""The inference fast paths equal the plain definitions: 1x1 convs as GEMMs, channel parts of the depthwise conv,
the output conv folded into the attention matrices, and the in-place (no-graph) branches of the blocks."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks import TAT
from custom.networks.blocks import (
    ChannelAttention,
    DepthwiseConv,
    GatedFeedForward,
    TransformerBlock,
    dynamic_conv,
    feed_forward,
)
from custom.networks.blocks.attention import _add_product, channel_attention
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from custom.networks.blocks.pointwise import pointwise_conv
from custom.networks.blocks.task_kernels import TaskKernels
from custom.networks.blocks.transformer_block import _residual
from parameterized import parameterized


def _randomise(module: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)


class TestPointwise(unittest.TestCase):
    @parameterized.expand([(True,), (False,)])
    def test_equals_conv(self, channels_last):
        torch.manual_seed(0)
        x = torch.randn(2, 6, 5, 7)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(9, 6, 1, 1), torch.randn(9)
        out = pointwise_conv(x, w, b)
        torch.testing.assert_close(out, F.conv2d(x, w, b), rtol=1e-5, atol=1e-5)
        self.assertTrue(out.is_contiguous(memory_format=torch.channels_last))
        part = pointwise_conv(x, w, b, slice(2, 5))
        torch.testing.assert_close(part, F.conv2d(x, w, b)[:, 2:5], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pointwise_conv(x, w.flatten(1)), F.conv2d(x, w), rtol=1e-5, atol=1e-5)
        rows = x[:, :, 1:4]  # a row strip: contiguous channels-last view for a channels-last x (the 2D GEMM path)
        strip = pointwise_conv(rows, w, b)
        torch.testing.assert_close(strip, F.conv2d(rows, w, b), rtol=1e-5, atol=1e-5)
        self.assertEqual(tuple(strip.shape), (2, 9, 3, 7))


class TestDepthwiseParts(unittest.TestCase):
    @parameterized.expand([(1, False), (3, False), (1, True), (3, True)])
    def test_part_equals_channels_of_whole(self, batch, dynamic):
        conv = DepthwiseConv(10, dynamic=dynamic, bias=not dynamic)
        _randomise(conv)
        x = torch.randn(batch, 10, 6, 7).contiguous(memory_format=torch.channels_last)
        gen = torch.randn(batch, 10, 3, 3) if dynamic else None
        whole = conv(x, gen)
        for part in (slice(0, 4), slice(4, 10)):
            torch.testing.assert_close(conv(x[:, part], gen, part), whole[:, part], rtol=1e-5, atol=1e-5)
            if dynamic:
                torch.testing.assert_close(conv._shifted_taps(x[:, part], gen[:, part], part), whole[:, part])

    @parameterized.expand([(1,), (3,)])
    def test_zero_padded_channels(self, batch):
        conv = DepthwiseConv(6, dynamic=True)
        _randomise(conv)
        x = torch.randn(batch, 6, 5, 5)
        gen = torch.randn(batch, 6, 3, 3)
        padded = torch.cat([x[:, 2:5], torch.randn(batch, 2, 5, 5)], 1)  # 2 extra channels, any values
        out = conv(padded, gen, slice(2, 5), pad=2)
        self.assertEqual(tuple(out.shape), (batch, 5, 5, 5))
        torch.testing.assert_close(out[:, :3], conv(x, gen)[:, 2:5], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 3:], torch.zeros(batch, 2, 5, 5))  # zero kernels
        static = DepthwiseConv(6, bias=True)
        _randomise(static)
        out = static(padded, None, slice(2, 5), pad=2)
        torch.testing.assert_close(out[:, :3], static(x)[:, 2:5], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 3:], torch.zeros(batch, 2, 5, 5))  # zero bias too
        taps = conv._shifted_taps(padded, torch.cat([gen[:, 2:5], torch.zeros(batch, 2, 3, 3)], 1), slice(2, 5), 2)
        torch.testing.assert_close(taps[:, :3], conv(x, gen)[:, 2:5], rtol=1e-5, atol=1e-5)

    def test_generated_shape_checked_against_all_channels(self):
        conv = DepthwiseConv(10, dynamic=True)
        with self.assertRaises(ValueError):
            conv(torch.randn(1, 4, 5, 5), torch.randn(1, 4, 3, 3), slice(0, 4))


def _plain_attention_block(a: ChannelAttention, x: torch.Tensor, kernel, window) -> torch.Tensor:
    qkv = a.qkv_dwconv(F.conv2d(x, a.qkv.weight, a.qkv.bias), kernel)
    return F.conv2d(
        channel_attention(qkv, a.num_heads, a.temperature, window), a.project_out.weight, a.project_out.bias
    )


class TestFoldedProjection(unittest.TestCase):
    @parameterized.expand([(None, 1), (None, 3), ((10, 10), 1), ((10, 10), 3), ((10, 20), 2)])
    def test_equals_projection_after_attention(self, window, heads):
        torch.manual_seed(1)
        qkv = torch.randn(2, 18, 14, 20).contiguous(memory_format=torch.channels_last)
        t = torch.rand(heads, 1, 1) + 0.5
        w, b = torch.randn(5, 6), torch.randn(5)
        expected = torch.einsum("oc,bchw->bohw", w, channel_attention(qkv, heads, t, window)) + b[:, None, None]
        got = channel_attention(qkv, heads, t, window, project=w, project_bias=b)
        self.assertEqual(tuple(got.shape), (2, 5, 14, 20))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(None, False), ((10, 10), False), ((10, 10), True)])
    def test_separate_maps_equal_stacked(self, window, blend):
        torch.manual_seed(2)
        qkv = torch.randn(2, 18, 14, 20)
        t = torch.rand(2, 1, 1) + 0.5
        stacked = channel_attention(qkv, 2, t, window, blend)
        maps = [z.contiguous(memory_format=torch.channels_last) for z in qkv.chunk(3, 1)]
        torch.testing.assert_close(channel_attention(maps, 2, t, window, blend), stacked, rtol=1e-5, atol=1e-5)
        swapped = channel_attention([maps[1], maps[0], maps[2]], 2, t, window, blend)  # q and k do not commute
        self.assertGreater((swapped - stacked).abs().max().item(), 1e-3)

    @parameterized.expand([("published",), ("blended",), ("global",)])
    def test_module_equals_plain_convs(self, mode):
        a = ChannelAttention(12, 3, bias=True, train_size=8, window_mode=mode)
        _randomise(a)
        x = torch.randn(2, 12, 18, 15)
        blend = mode == "blended"
        qkv = a.qkv_dwconv(F.conv2d(x, a.qkv.weight, a.qkv.bias))
        window = None if mode == "global" else [12, 12]
        plain = F.conv2d(
            channel_attention(qkv, 3, a.temperature, window, blend), a.project_out.weight, a.project_out.bias
        )
        torch.testing.assert_close(a(x), plain, rtol=1e-5, atol=1e-5)

    def test_gradients_match_plain(self):
        a = ChannelAttention(8, 2, dynamic=True, train_size=8)
        _randomise(a)
        x = torch.randn(1, 8, 14, 14, requires_grad=True)
        kernel = torch.randn(1, 24, 3, 3)
        a(x, kernel).square().sum().backward()
        fast = [p.grad.clone() for p in a.parameters()] + [x.grad.clone()]
        a.zero_grad()
        x.grad = None
        _plain_attention_block(a, x, kernel, [12, 12]).square().sum().backward()
        for g, p in zip(fast, [p.grad for p in a.parameters()] + [x.grad]):
            torch.testing.assert_close(g, p, rtol=1e-4, atol=1e-4)


class TestInPlaceBranches(unittest.TestCase):
    def test_feed_forward_without_graph_equals_with(self):
        f = GatedFeedForward(8, 2.66, bias=True)
        _randomise(f)
        x = torch.randn(2, 8, 6, 6)
        with torch.no_grad():
            fast = f(x)
        torch.testing.assert_close(fast, f(x).detach())
        x1, x2 = f.dwconv(F.conv2d(x, f.project_in.weight, f.project_in.bias)).chunk(2, 1)
        plain = F.conv2d(F.gelu(x1) * x2, f.project_out.weight, f.project_out.bias)
        torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)

    @parameterized.expand([(1, False), (2, True)])
    def test_feed_forward_row_strips_equal_whole_map(self, batch, dynamic):
        f = GatedFeedForward(8, 2.66, dynamic=dynamic)
        _randomise(f)
        x = torch.randn(batch, 8, 30, 11).contiguous(memory_format=torch.channels_last)
        kernel = torch.randn(batch, 42, 3, 3) if dynamic else None
        whole = f(x, kernel).detach()  # with a graph: always the whole map
        with torch.no_grad():
            self.assertIsNone(feed_forward._strip_rows(x, 32))  # small map: one piece
            with mock.patch.object(feed_forward, "STRIP_BYTES", 11 * 32 * 4 * 5):
                self.assertEqual(feed_forward._strip_rows(x, 32), 5)  # rows of one sample: strips go sample by sample
                with mock.patch.object(f, "_gated", wraps=f._gated) as gated:
                    strips = f(x, kernel)
                self.assertEqual(gated.call_count, 6 * batch)
                self.assertTrue(all(call.args[0].shape[0] == 1 for call in gated.call_args_list))
                for s in range(batch):  # each sample as alone
                    alone = f(x[s : s + 1], None if kernel is None else kernel[s : s + 1])
                    torch.testing.assert_close(strips[s : s + 1], alone, rtol=0, atol=0)
            with mock.patch.object(feed_forward, "STRIP_BYTES", 1):
                self.assertEqual(feed_forward._strip_rows(x, 32), 4)  # at least 4 rows a strip
                smallest = f(x, kernel)
        torch.testing.assert_close(strips, whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(smallest, whole, rtol=1e-5, atol=1e-5)
        self.assertTrue(strips.is_contiguous(memory_format=torch.channels_last))

    def test_block_without_graph_equals_with_and_keeps_input(self):
        blk = TransformerBlock(8, 2, dynamic=True, train_size=4)
        _randomise(blk)
        x = torch.randn(1, 8, 9, 9)
        before = x.clone()
        with torch.no_grad():
            fast = blk(x)
        torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is never modified
        torch.testing.assert_close(fast, blk(x).detach())

    def test_residual(self):
        x, branch = torch.randn(3, 4), torch.randn(3, 4)
        expected = x + branch
        self.assertIs(_residual(x, branch), branch)  # in place: no graph to keep
        torch.testing.assert_close(branch, expected)
        low = torch.randn(3, 4).bfloat16()
        out = _residual(x, low)  # a bf16 branch (autocast) is added into a new float32 tensor
        self.assertEqual(out.dtype, torch.float32)
        self.assertIsNot(out, low)
        grad = torch.randn(3, 4, requires_grad=True)
        out = _residual(grad, branch)
        self.assertIsNot(out, branch)
        self.assertTrue(out.requires_grad)
        wide = torch.randn(1, 4)
        self.assertEqual(tuple(_residual(torch.randn(3, 4), wide).shape), (3, 4))  # broadcast: not in place


class TestRowStrips(unittest.TestCase):
    """The no-graph row-strip paths of the transformer block equal the whole-map definitions."""

    @parameterized.expand(
        [
            ("global", 1, False, 3),
            ("global", 2, True, 1),
            ("published", 1, True, 3),  # 20 x 17 map, windows of 12: tiles cut rows at 8 and 12, strips of 3 cross them
            ("published", 2, False, 5),
            ("published", 1, False, 1),
        ]
    )
    def test_attention_equals_whole_map(self, mode, batch, dynamic, rows):
        torch.manual_seed(3)
        a = ChannelAttention(12, 3, bias=not dynamic, dynamic=dynamic, train_size=8, window_mode=mode)
        norm = ChannelLayerNorm(12)
        _randomise(a)
        _randomise(norm)
        x = torch.randn(batch, 12, 20, 17).contiguous(memory_format=torch.channels_last)
        kernel = torch.randn(batch, 36, 3, 3) if dynamic else None
        with torch.no_grad():
            expected = x + a(norm(x), kernel)
            got = a.residual_in_strips(x, norm, kernel, rows)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        self.assertTrue(got.is_contiguous(memory_format=torch.channels_last))

    @parameterized.expand([("published", 2), ("global", 1)])
    def test_attention_strips_of_a_channels_first_map(self, mode, batch):
        # "other layouts work": residual rows that are not contiguous are read, not viewed
        torch.manual_seed(5)
        a = ChannelAttention(12, 3, bias=True, train_size=8, window_mode=mode)
        norm = ChannelLayerNorm(12)
        _randomise(a)
        _randomise(norm)
        x = torch.randn(batch, 12, 20, 17)
        before = x.clone()
        with torch.no_grad():
            expected = x + a(norm(x))
            got = a.residual_in_strips(x, norm, None, 3)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is not written

    @parameterized.expand([(1,), (3,), (7,), (20,)])
    def test_attention_strips_read_their_rows_and_halo_only(self, rows):
        a = ChannelAttention(12, 3, train_size=8)
        norm = ChannelLayerNorm(12)
        _randomise(a)
        x = torch.randn(1, 12, 20, 17).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = x + a(norm(x))
            with mock.patch.object(norm, "forward", wraps=norm.forward) as spy:
                got = a.residual_in_strips(x, norm, None, rows)
        # each strip of rows with one halo row above and below (the 3 x 3 depthwise conv), cut at the map's border
        starts = range(0, 20, rows)
        heights = [min(20, r0 + rows + 1) - max(0, r0 - 1) for r0 in starts]
        self.assertEqual([call.args[0].shape[2] for call in spy.call_args_list], heights)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(False,), (True,)])
    def test_attention_strips_in_float64(self, dynamic):
        a = ChannelAttention(12, 3, bias=not dynamic, dynamic=dynamic, train_size=8).double()
        norm = ChannelLayerNorm(12).double()
        _randomise(a)
        x = torch.randn(1, 12, 20, 17, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        kernel = torch.randn(1, 36, 3, 3, dtype=torch.float64) if dynamic else None
        with torch.no_grad():
            expected = x + a(norm(x), kernel)
            got = a.residual_in_strips(x, norm, kernel, 3)
        self.assertEqual(got.dtype, torch.float64)  # the output in x's dtype, not float32
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    def test_attention_refuses_blended_windows(self):
        a = ChannelAttention(12, 3, train_size=8, window_mode="blended")
        with torch.no_grad(), self.assertRaises(ValueError):
            a.residual_in_strips(torch.randn(1, 12, 20, 17), ChannelLayerNorm(12), None, 4)

    @parameterized.expand([(1, False, 1, 8), (2, True, 4, 8), (1, True, 7, 128), (1, False, 30, 16)])
    def test_feed_forward_equals_whole_map(self, batch, dynamic, rows, group):
        torch.manual_seed(4)
        f = GatedFeedForward(8, 2.66, bias=not dynamic, dynamic=dynamic)  # hidden 21: groups of 8, 8 and 5 + 11 zeros
        norm = ChannelLayerNorm(8)
        _randomise(f)
        _randomise(norm)
        y = torch.randn(batch, 8, 30, 11).contiguous(memory_format=torch.channels_last)
        kernel = torch.randn(batch, 42, 3, 3) if dynamic else None
        with torch.no_grad():
            expected = y + f(norm(y), kernel)
            work = y.clone()
            fused = mock.patch.object(dynamic_conv, "_FUSED", wraps=dynamic_conv._FUSED)
            with mock.patch.object(feed_forward, "GROUP_CHANNELS", group), fused as spy:
                got = f.residual_in_strips_(work, norm, kernel, rows)
        if dynamic_conv._FUSED is not None:
            self.assertTrue(spy.called)  # the GELU inside oneDNN's depthwise conv
        self.assertIs(got, work)  # in place
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        self.assertTrue(got.is_contiguous(memory_format=torch.channels_last))

    @parameterized.expand([("published",), ("global",)])
    def test_block_uses_strips_and_equals_graph_path(self, mode):
        blk = TransformerBlock(8, 2, bias=True, dynamic=True, train_size=8, window_mode=mode)
        _randomise(blk)
        x = torch.randn(1, 8, 26, 19).contiguous(memory_format=torch.channels_last)
        kernels = TaskKernels(torch.randn(1, 24, 3, 3), torch.randn(1, 42, 3, 3))
        before = x.clone()
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 4 * 32 * 5):
            self.assertEqual(blk._strip_rows(x), (20, 5))  # q, k, v: 8 channels each a row; feed-forward: 21 + 11 zeros
            with mock.patch.object(ChannelAttention, "residual_in_strips", wraps=blk.attn.residual_in_strips) as spy:
                fast = blk(x, kernels)
            spy.assert_called_once()
        torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is never modified
        torch.testing.assert_close(fast, blk(x, kernels).detach(), rtol=1e-5, atol=1e-5)

    def test_block_strips_go_sample_by_sample(self):
        blk = TransformerBlock(8, 2, dynamic=True, train_size=8)
        _randomise(blk)
        x = torch.randn(3, 8, 26, 19).contiguous(memory_format=torch.channels_last)
        kernels = TaskKernels(torch.randn(3, 24, 3, 3), torch.randn(3, 42, 3, 3))
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 4 * 32 * 5):
            self.assertEqual(blk._strip_rows(x), blk._strip_rows(x[:1]))  # sized for one sample
            with mock.patch.object(ChannelAttention, "residual_in_strips", wraps=blk.attn.residual_in_strips) as spy:
                fast = blk(x, kernels)
            self.assertEqual(spy.call_count, 3)
            for s in range(3):
                alone = blk(x[s : s + 1], TaskKernels(kernels.attn[s : s + 1], kernels.ffn[s : s + 1]))
                torch.testing.assert_close(fast[s : s + 1], alone, rtol=0, atol=0)  # each sample as alone
        torch.testing.assert_close(fast, blk(x, kernels).detach(), rtol=1e-5, atol=1e-5)
        self.assertTrue(fast.is_contiguous(memory_format=torch.channels_last))
        with torch.no_grad():
            for bad in (
                torch.empty(3, 26, 19, 9),  # another shape
                torch.empty(3, 26, 8, 19).transpose(2, 3),  # not contiguous
                torch.empty(3, 26, 19, 8, dtype=torch.float64),  # another dtype
            ):
                with self.assertRaises(ValueError):
                    blk.attn.residual_in_strips(x, blk.norm1, kernels.attn, 5, out=bad)

    def test_block_whole_map_when_strips_do_not_apply(self):
        x = torch.randn(1, 8, 26, 19)
        blended = TransformerBlock(8, 2, train_size=8, window_mode="blended")
        plain = TransformerBlock(8, 2, train_size=8)
        with mock.patch.object(feed_forward, "STRIP_BYTES", 1):
            self.assertIsNone(plain._strip_rows(x))  # gradients enabled: a graph to keep
            with torch.no_grad():
                self.assertIsNone(blended._strip_rows(x))  # blended windows at this size
                self.assertIsNotNone(TransformerBlock(8, 2, train_size=32, window_mode="blended")._strip_rows(x))
                self.assertEqual(plain._strip_rows(x), (4, 4))  # at least 4 rows a strip
                meta = x.to("meta")  # another device than the CPU (a GPU has no page faults to avoid)
                self.assertIsNone(plain._strip_rows(meta))
                self.assertIsNone(feed_forward._strip_rows(meta, 16))
                self.assertIsNotNone(feed_forward._strip_rows(x, 16))
        with torch.no_grad():
            self.assertIsNone(plain._strip_rows(x))  # a small map: one piece

    @parameterized.expand([("published", False, True), ("global", True, True), ("published", True, False)])
    def test_block_strips_under_autocast_keep_float32_residual(self, mode, dynamic, bias):
        torch.manual_seed(6)
        blk = TransformerBlock(8, 2, bias=bias, dynamic=dynamic, train_size=8, window_mode=mode)
        _randomise(blk)
        # a large offset: a residual rounded to bf16 (8 significant bits, steps of 2 at 300) would be off by up to 1
        x = (torch.randn(2, 8, 26, 19) + 300.0).contiguous(memory_format=torch.channels_last)
        kernels = TaskKernels(torch.randn(2, 24, 3, 3), torch.randn(2, 42, 3, 3)) if dynamic else None
        with torch.no_grad():
            exact = blk(x, kernels)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                whole = blk(x[:1], None if kernels is None else TaskKernels(kernels.attn[:1], kernels.ffn[:1]))
                with mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 2 * 32 * 5):  # bf16 maps: 2 bytes a value
                    self.assertEqual(blk._strip_rows(x), (20, 5))
                    with mock.patch.object(
                        ChannelAttention, "residual_in_strips", wraps=blk.attn.residual_in_strips
                    ) as spy:
                        strips = blk(x, kernels)
                    self.assertEqual(spy.call_count, 2)  # the strips run under autocast, sample by sample
        self.assertEqual(strips.dtype, torch.float32)
        branch = (exact - x).abs().max().item()
        self.assertGreater(branch, 0.5)  # the branches matter
        # bf16 branches: errors of a few percent of the branch, not of the residual
        torch.testing.assert_close(strips, exact, rtol=0, atol=0.05 * branch)
        torch.testing.assert_close(strips[:1], whole, rtol=0, atol=0.05 * branch)
        self.assertGreater((strips - exact).abs().max().item(), 0)  # the branches did run in bf16

    def test_feed_forward_strips_under_autocast(self):
        f = GatedFeedForward(8, 2.66)  # hidden 21 + 11 zero channels
        _randomise(f)
        x = torch.randn(2, 8, 30, 11).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            exact = f(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                whole = f(x)
                with mock.patch.object(feed_forward, "STRIP_BYTES", 11 * 32 * 2 * 5):  # bf16 maps: 2 bytes a value
                    self.assertEqual(feed_forward._strip_rows(x, 32), 5)
                    strips = f(x)
        self.assertEqual(whole.dtype, torch.bfloat16)
        self.assertEqual(strips.dtype, whole.dtype)  # the strips give what the whole map gives under autocast
        scale = exact.abs().max().item()
        torch.testing.assert_close(strips.float(), exact, rtol=0, atol=0.03 * scale)
        torch.testing.assert_close(strips, whole, rtol=0, atol=0.03 * scale)
        self.assertTrue(strips.is_contiguous(memory_format=torch.channels_last))
        with torch.no_grad():
            self.assertIsNone(feed_forward._strip_rows(x[:0], 32))  # an empty batch: nothing to cut

    def test_block_large_maps_threshold(self):
        blk = TransformerBlock(8, 2)  # feed-forward hidden 21 + 11 zero channels
        x = torch.randn(2, 8, 26, 19)
        one = 26 * 19 * 32  # values of one sample's hidden map
        with torch.no_grad():
            with mock.patch.object(feed_forward, "STRIP_BYTES", one * 4):
                self.assertTrue(blk._large(x))  # float32: exactly one strip's bytes
            with mock.patch.object(feed_forward, "STRIP_BYTES", one * 4 + 1):
                self.assertFalse(blk._large(x))
            with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 maps: 2 bytes a value
                with mock.patch.object(feed_forward, "STRIP_BYTES", one * 2):
                    self.assertTrue(blk._large(x))
                with mock.patch.object(feed_forward, "STRIP_BYTES", one * 2 + 1):
                    self.assertFalse(blk._large(x))
        self.assertFalse(blk._large(x))  # a graph: never
        x = torch.randn(2, 8, 12, 10).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 12 * 10 * 32 * 4):
            self.assertIsNone(blk._strip_rows(x))  # one strip for the block at 12 x 10
            with mock.patch.object(blk, "_whole_map", wraps=blk._whole_map) as whole:
                blk(x)
            self.assertEqual([c.args[0].shape[0] for c in whole.call_args_list], [1, 1])  # a batch of 2 goes 1 by 1

    @parameterized.expand([(False,), (True,)])
    def test_block_batch_of_large_maps_goes_sample_by_sample(self, dynamic):
        # blended windows at this size: no block strips, so the whole-map path, batched or one sample at a time
        blk = TransformerBlock(8, 2, bias=True, dynamic=dynamic, train_size=8, window_mode="blended")
        _randomise(blk)
        x = torch.randn(3, 8, 26, 19).contiguous(memory_format=torch.channels_last)
        kernels = TaskKernels(torch.randn(3, 24, 3, 3), torch.randn(3, 42, 3, 3)) if dynamic else None
        before = x.clone()
        with torch.no_grad():
            self.assertIsNone(blk._strip_rows(x))
            with mock.patch.object(blk, "_whole_map", wraps=blk._whole_map) as whole:
                batched = blk(x, kernels)
            whole.assert_called_once()  # small maps go as a batch
            self.assertEqual(whole.call_args.args[0].shape[0], 3)
            with mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 32 * 4 * 5):  # one sample's feed-forward: strips
                self.assertIsNone(blk._strip_rows(x))
                fold = mock.patch.object(dynamic_conv, "_fold", wraps=dynamic_conv._fold)
                with fold as folded, mock.patch.object(blk, "_whole_map", wraps=blk._whole_map) as whole:
                    fast = blk(x, kernels)
                folded.assert_not_called()  # no batch folded into the conv groups
                self.assertEqual([c.args[0].shape[0] for c in whole.call_args_list], [1, 1, 1])
                for s in range(3):
                    one = None if kernels is None else TaskKernels(kernels.attn[s : s + 1], kernels.ffn[s : s + 1])
                    torch.testing.assert_close(fast[s : s + 1], blk(x[s : s + 1], one), rtol=0, atol=0)  # as alone
        torch.testing.assert_close(x, before, rtol=0, atol=0)
        expected = blk(x, kernels).detach()  # the graph path, batched
        torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)
        self.assertTrue(fast.is_contiguous(memory_format=torch.channels_last))

    def test_attention_output_under_autocast_adds_in_float32(self):
        # residual + (v @ m) + bias: the product in bf16 as autocast computes it, the bias and the residual added in
        # float32 (values bf16 cannot hold: 8 significant bits, steps of 2 at 300), exactly in that order
        torch.manual_seed(0)
        residual = torch.randn(2, 6, 4) + 300.0
        v, m = torch.randn(2, 6, 3), torch.randn(2, 3, 4)
        for bias in (None, torch.full((4,), 1.0 + 2.0**-12)):
            out = torch.empty_like(residual)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                _add_product(residual, v, m, bias, out)
                y = torch.bmm(v, m)
            self.assertEqual(y.dtype, torch.bfloat16)
            expected = residual + (y.float() if bias is None else y.float() + bias)
            # a bias rounded to bf16 is 2.4e-4 off (1 + 2^-12 -> 1), a residual rounded to bf16 up to 1
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
            plain = torch.baddbmm(residual, v, m) + (0 if bias is None else bias)
            self.assertGreater((out - plain).abs().max().item(), 0)  # the product did run in bf16


class TestReduceFinal(unittest.TestCase):
    def test_split_conv_equals_concatenation(self):
        net = TAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, bias=True, tren_hidden_channels=8)
        _randomise(net.reduce_final)
        maps = [torch.randn(2, c, 9, 11).contiguous(memory_format=torch.channels_last) for c in (8, 16, 16)]
        expected = net.reduce_final(torch.cat(maps, 1)).detach()  # with a graph: the concatenation
        with torch.no_grad():
            with mock.patch.object(torch, "cat", side_effect=AssertionError("no concatenation without a graph")):
                got = net._reduce_final(maps)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            with mock.patch.object(torch, "cat", wraps=torch.cat) as cat:
                net._reduce_final(maps)
            cat.assert_called_once()  # autocast: the plain concatenation

    def test_network_without_graph_equals_with(self):
        torch.manual_seed(5)
        net = TAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, tren_hidden_channels=8, train_patch_size=16)
        x = torch.rand(1, 1, 40, 48)
        expected = net(x).detach()
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 48 * 4 * 24 * 6):
            got = net(x)  # row strips in the level-1 blocks, published windows (40 x 48 > 24), split final conv
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
