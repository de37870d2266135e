"""The gated feed-forward's published configuration and the extents of its no-graph row strips: each strip reads
its own rows and the depthwise conv's halo (no more: no hidden map of the whole image), and its hidden maps are
padded to multiples of 16 channels."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks.blocks import DepthwiseConv, GatedFeedForward, feed_forward, ffn_hidden_channels, pointwise
from custom.networks.blocks.feed_forward import _add_pointwise
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from parameterized import parameterized


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every parameter uniform in [-0.5, 0.5] (seeded)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)
    return module


def _halo_extent(r0: int, rows: int, size: int, halo: int = 1) -> tuple[int, int]:
    """Rows ``[a0, a1)`` a strip starting at ``r0`` reads: its own rows and ``halo`` rows each side, within the map."""
    return max(0, r0 - halo), min(size, r0 + rows + halo)


class TestPublishedConfiguration(unittest.TestCase):
    def test_defaults_are_published(self):
        """Expansion 2.66, no biases, a static depthwise conv with PyTorch's conv init (the published encoder)."""
        f = GatedFeedForward(8)
        hidden = ffn_hidden_channels(8, 2.66)
        self.assertEqual(hidden, 21)  # int(8 * 2.66): rounded down
        self.assertEqual(ffn_hidden_channels(48, 2.66), 127)  # the published level-1 width
        self.assertEqual(tuple(f.project_in.weight.shape), (2 * hidden, 8, 1, 1))
        self.assertEqual(tuple(f.project_out.weight.shape), (8, hidden, 1, 1))
        self.assertEqual(tuple(f.dwconv.weight.shape), (2 * hidden, 1, 3, 3))
        self.assertIsNone(f.project_in.bias)
        self.assertIsNone(f.project_out.bias)
        self.assertIsNone(f.dwconv.bias)
        self.assertFalse(f.dwconv.dynamic)
        self.assertIsNone(f.dwconv.gate)
        self.assertEqual(f.dwconv.init, "conv")
        self.assertEqual(f.padded_hidden, 32)  # 21 + 11 zero channels

    @parameterized.expand([(False,), (True,)])
    def test_bias_reaches_the_static_convs_only(self, dynamic):
        """``bias`` adds the 1x1 convs' biases, and the depthwise conv's only when it is static (as published)."""
        f = GatedFeedForward(8, 2.0, bias=True, dynamic=dynamic)
        self.assertEqual(tuple(f.project_in.bias.shape), (32,))
        self.assertEqual(tuple(f.project_out.bias.shape), (8,))
        self.assertEqual(f.dwconv.bias is None, dynamic)
        self.assertEqual(f.dwconv.gate is not None, dynamic)
        self.assertEqual(f.dwconv.init, "kaiming" if dynamic else "conv")
        self.assertEqual(f.padded_hidden, 16)  # already a multiple of 16


class TestGated(unittest.TestCase):
    @parameterized.expand([(False,), (True,)])
    def test_gated_computes_its_weights_when_not_given(self, dynamic):
        """``_gated`` without ``weights`` is ``gelu(x1) * x2`` of the plain convs, then the zero channels."""
        f = _randomised(GatedFeedForward(8, 2.66, bias=not dynamic, dynamic=dynamic))
        x = torch.randn(2, 8, 7, 6)
        kernel = torch.randn(2, 42, 3, 3) if dynamic else None
        hidden = 21
        pad = f.padded_hidden - hidden
        with torch.no_grad():
            got = f._gated(x, kernel, hidden, pad)
            given = f._gated(x, kernel, hidden, pad, f._half_weights(hidden, pad))
            x1, x2 = f.dwconv(F.conv2d(x, f.project_in.weight, f.project_in.bias), kernel).chunk(2, 1)
        self.assertEqual(tuple(got.shape), (2, 32, 7, 6))
        torch.testing.assert_close(got[:, :hidden], F.gelu(x1) * x2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[:, hidden:], torch.zeros(2, pad, 7, 6), rtol=0, atol=0)
        torch.testing.assert_close(got, given, rtol=0, atol=0)


class TestHiddenWidths(unittest.TestCase):
    @parameterized.expand([(1.875, 15, 1), (2.0, 16, 0), (2.125, 17, 15)])
    def test_any_hidden_width_equals_the_plain_definition(self, expansion, hidden, pad):
        """Without a graph the halves are padded to a multiple of 16 channels (by 1, 0 or 15 zero channels here);
        the result is ``project_out(gelu(x1) * x2)`` of the plain convs for every width."""
        f = _randomised(GatedFeedForward(8, expansion, bias=True))
        self.assertEqual(f.project_out.in_channels, hidden)
        self.assertEqual(f.padded_hidden - hidden, pad)
        x = torch.randn(2, 8, 7, 6).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            got = f(x)
            x1, x2 = f.dwconv(F.conv2d(x, f.project_in.weight, f.project_in.bias)).chunk(2, 1)
            plain = F.conv2d(F.gelu(x1) * x2, f.project_out.weight, f.project_out.bias)
            gated = f._gated(x, None, hidden, pad)
        self.assertEqual(tuple(gated.shape), (2, hidden + pad, 7, 6))
        torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


class TestStripExtents(unittest.TestCase):
    @parameterized.expand([(False,), (True,)])
    def test_forward_strips_read_their_rows_and_one_halo_row(self, dynamic):
        """Without a graph, each strip's hidden maps are computed from its rows and one halo row each side (3x3
        depthwise conv) of one sample, in order; the result is that of the whole map."""
        f = _randomised(GatedFeedForward(8, 2.66, dynamic=dynamic))  # hidden 21 + 11 zero channels
        batch, size, rows = 2, 30, 14  # more rows a strip than channels (8) and columns (11): strips of the height
        x = torch.randn(batch, 8, size, 11).contiguous(memory_format=torch.channels_last)
        kernel = torch.randn(batch, 42, 3, 3) if dynamic else None
        expected = f(x, kernel).detach()  # with a graph: the whole map
        row_bytes = 11 * 32 * 4  # one row of one sample's hidden map (21 + 11 zero channels, float32)
        with torch.no_grad():
            with mock.patch.object(feed_forward, "STRIP_BYTES", row_bytes * size):
                self.assertIsNone(feed_forward._strip_rows(x, 32))  # the whole height in one strip: the whole map
            with mock.patch.object(feed_forward, "STRIP_BYTES", row_bytes * (size - 1)):
                self.assertEqual(feed_forward._strip_rows(x, 32), size - 1)
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", row_bytes * rows):
            self.assertEqual(feed_forward._strip_rows(x, 32), rows)
            with mock.patch.object(f, "_gated", wraps=f._gated) as gated:
                got = f(x, kernel)
        calls = gated.call_args_list
        starts = range(0, size, rows)
        self.assertEqual(len(calls), batch * len(starts))
        for n, call in enumerate(calls):
            s, r0 = divmod(n, len(starts))
            a0, a1 = _halo_extent(r0 * rows, rows, size)
            torch.testing.assert_close(call.args[0], x[s : s + 1, :, a0:a1], rtol=0, atol=0)
            if dynamic:
                torch.testing.assert_close(call.args[1], kernel[s : s + 1], rtol=0, atol=0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(1, 30, 5), (3, 12, 4)])
    def test_forward_strips_in_other_spatial_dims(self, spatial_dims, size, rows):
        """1D maps go in strips along their length and 3D maps in slabs of their first spatial dim, as 2D maps in
        rows: the same call pattern, the values of the whole map."""
        f = _randomised(GatedFeedForward(8, 2.66, spatial_dims=spatial_dims))  # hidden 21 + 11 zero channels
        x = torch.randn(2, 8, size, *(5, 4)[: spatial_dims - 1])
        expected = f(x).detach()
        row_values = x[0, 0, 0].numel()  # values of one channel of one row (slab)
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", row_values * 32 * 4 * rows):
            self.assertEqual(feed_forward._strip_rows(x, 32), rows)
            with mock.patch.object(f, "_gated", wraps=f._gated) as gated:
                got = f(x)
        starts = range(0, size, rows)
        self.assertEqual(gated.call_count, 2 * len(starts))
        for call, r0 in zip(gated.call_args_list, starts):  # the first sample's strips
            a0, a1 = _halo_extent(r0, rows, size)
            torch.testing.assert_close(call.args[0], x[:1, :, a0:a1], rtol=0, atol=0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(8, [8, 8, 16]), (128, [32])])
    def test_block_strips_read_their_rows_and_pad_groups_to_16(self, group, widths):
        """In ``residual_in_strips_`` each strip's layer norm reads its rows and one halo row each side (the input
        values, before earlier strips are added in), and each channel group's maps are padded to a multiple of 16
        channels in its last group only; the result is ``y + f(norm(y))``."""
        f = _randomised(GatedFeedForward(8, 2.66, bias=True))  # hidden 21: groups of 8, 8 and 5 (+ 11 zeros)
        norm = _randomised(ChannelLayerNorm(8))
        size, rows = 23, 4
        y = torch.randn(1, 8, size, 9).contiguous(memory_format=torch.channels_last)
        read: list[torch.Tensor] = []

        def recording_norm(t: torch.Tensor) -> torch.Tensor:
            read.append(t.clone())
            return norm(t)

        with torch.no_grad():
            expected = y + f(norm(y))
            work = y.clone()
            conv = mock.patch.object(f.dwconv, "forward", wraps=f.dwconv.forward)
            with mock.patch.object(feed_forward, "GROUP_CHANNELS", group), conv as dwconv:
                f.residual_in_strips_(work, recording_norm, None, rows)
        spans = [_halo_extent(r0, rows, size) for r0 in range(0, size, rows)]
        self.assertEqual(len(read), len(spans))
        for (a0, a1), strip in zip(spans, read):
            torch.testing.assert_close(strip, y[:, :, a0:a1], rtol=0, atol=0)
        # per strip and channel group: the two halves' depthwise convs, on maps of the strip's rows and halo
        calls = dwconv.call_args_list
        self.assertEqual([c.args[0].shape[1] for c in calls], [w for _ in spans for w in widths for _ in range(2)])
        self.assertEqual(
            [c.args[0].shape[2] for c in calls], [a1 - a0 for a0, a1 in spans for _ in range(2 * len(widths))]
        )
        torch.testing.assert_close(work, expected, rtol=1e-5, atol=1e-5)


class TestStripGeometry(unittest.TestCase):
    def test_published_widths_go_in_groups_of_128(self):
        """With the default group size (README: groups of 128) the published hidden widths 127 and 255 (C = 48, 96)
        go in groups of 128 channels, the last one with its zero channels (no group of an odd width); the result is
        ``y + f(norm(y))``."""
        for dim, widths in ((48, [128]), (96, [128, 128])):
            f = _randomised(GatedFeedForward(dim, 2.66, bias=True))
            norm = _randomised(ChannelLayerNorm(dim))
            y = torch.randn(1, dim, 7, 5).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                expected = y + f(norm(y))
                work = y.clone()
                with mock.patch.object(f.dwconv, "forward", wraps=f.dwconv.forward) as dwconv:
                    f.residual_in_strips_(work, norm, None, 4)
            calls = dwconv.call_args_list  # two strips, each group's two halves
            self.assertEqual(
                [c.args[0].shape[1] for c in calls], [w for _ in range(2) for w in widths for _ in range(2)]
            )
            torch.testing.assert_close(work, expected, rtol=1e-5, atol=1e-4)  # values up to about 13

    def test_strips_take_the_halo_of_the_depthwise_kernel(self):
        """The strips' halo is half the depthwise kernel: with a 5x5 kernel (in place of the published 3x3) each
        strip reads two rows each side, and both strip paths equal the whole map."""
        f = _randomised(GatedFeedForward(8, 2.0, bias=True))  # hidden 16: no zero channels
        f.dwconv = _randomised(DepthwiseConv(32, 5, bias=True))
        norm = _randomised(ChannelLayerNorm(8))
        size, rows = 13, 4
        x = torch.randn(2, 8, size, 6).contiguous(memory_format=torch.channels_last)
        expected = f(x).detach()  # with a graph: the whole map
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 6 * 16 * 4 * rows):
            self.assertEqual(feed_forward._strip_rows(x, 16), rows)
            with mock.patch.object(f, "_gated", wraps=f._gated) as gated:
                got = f(x)
            work = x[:1].clone()
            f.residual_in_strips_(work, norm, None, rows)
        spans = [_halo_extent(r0, rows, size, 2) for r0 in range(0, size, rows)]
        self.assertEqual([c.args[0].shape[2] for c in gated.call_args_list], [a1 - a0 for a0, a1 in spans] * 2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(work, x[:1] + f(norm(x[:1])).detach(), rtol=1e-5, atol=1e-5)

    def test_block_strips_thinner_than_the_halo(self):
        """Strips of 1 row with a 5x5 depthwise kernel (halo 2): each strip's layer norm still reads input values
        (a later strip's halo would reach rows already written), so the result is ``y + f(norm(y))``."""
        f = _randomised(GatedFeedForward(8, 2.0, bias=True))
        f.dwconv = _randomised(DepthwiseConv(32, 5, bias=True))
        norm = _randomised(ChannelLayerNorm(8))
        y = torch.randn(1, 8, 9, 6).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = y + f(norm(y))
            for rows in (1, 2, 3):
                work = y.clone()
                f.residual_in_strips_(work, norm, None, rows)
                torch.testing.assert_close(work, expected, rtol=1e-5, atol=1e-5, msg=f"rows={rows}")

    def test_no_strips_for_a_map_without_rows_or_columns(self):
        """An empty map has nothing to cut: the whole map (no division by its zero row size)."""
        with torch.no_grad():
            for shape in ((1, 8, 0, 5), (1, 8, 5, 0), (1, 8, 0)):
                self.assertIsNone(feed_forward._strip_rows(torch.empty(shape), 32), shape)

    def test_block_strips_of_a_bf16_map_under_autocast(self):
        """A bf16 map (a bf16 image under bf16 autocast) in the float32 feed-forward's block strips: the autocast
        products are added into the bf16 rows (float32 project_out weights are no GEMM operand for them); the values of
        ``y + f(norm(y))`` under autocast, in bf16."""
        f = _randomised(GatedFeedForward(8, 2.66))
        norm = _randomised(ChannelLayerNorm(8))
        y = torch.randn(1, 8, 12, 5).bfloat16().contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            expected = y + f(norm(y))
            work = y.clone()
            f.residual_in_strips_(work, norm, None, 4)
        self.assertEqual(work.dtype, torch.bfloat16)
        scale = expected.abs().max().item()
        torch.testing.assert_close(work, expected, rtol=0, atol=0.02 * scale)


class TestAddPointwise(unittest.TestCase):
    @staticmethod
    def _strip() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A channels-last sample, rows 2:6 of which get ``w @ x`` added: ``(base, x, w, expected)``."""
        torch.manual_seed(0)
        base = torch.randn(1, 6, 9, 5).contiguous(memory_format=torch.channels_last)
        x = torch.randn(1, 4, 4, 5).contiguous(memory_format=torch.channels_last)
        w = torch.randn(6, 4)
        expected = base.clone()
        expected[:, :, 2:6] += torch.einsum("oc,bchw->bohw", w, x)
        return base, x, w, expected

    def _check(self, base: torch.Tensor, expected: torch.Tensor) -> None:
        torch.testing.assert_close(base, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(base[:, :, :2], expected[:, :, :2], rtol=0, atol=0)  # other rows untouched
        torch.testing.assert_close(base[:, :, 6:], expected[:, :, 6:], rtol=0, atol=0)

    def test_accumulates_into_a_row_strip_of_one_sample_as_one_gemm(self):
        """A row strip of a channels-last sample gets ``acc += w @ x`` in place (one GEMM into its memory: no
        separate product map), the other rows untouched."""
        base, x, w, expected = self._strip()
        acc = base[:, :, 2:6]
        no_map = mock.patch.object(feed_forward, "pointwise_conv", side_effect=AssertionError("a product map"))
        with torch.no_grad(), no_map, mock.patch.object(pointwise, "PREFER_ONEDNN", False):
            self.assertIs(_add_pointwise(acc, x, w), acc)
        self._check(base, expected)

    @unittest.skipIf(pointwise._LINEAR is None, "this torch has no oneDNN product")
    def test_onednn_product_added_into_a_row_strip(self):
        """Where the products go to oneDNN (:data:`~custom.networks.blocks.pointwise.PREFER_ONEDNN`), a row strip
        gets oneDNN's product added into its memory, the other rows untouched; with a graph, MKL's in-place GEMM."""
        for grad in (False, True):
            base, x, w, expected = self._strip()
            acc = base[:, :, 2:6]
            onednn = mock.patch.object(pointwise, "_LINEAR", wraps=pointwise._LINEAR)
            with torch.set_grad_enabled(grad), mock.patch.object(pointwise, "PREFER_ONEDNN", True), onednn as spy:
                self.assertIs(_add_pointwise(acc, x, w), acc)
            self.assertEqual(spy.call_count, 0 if grad else 1)
            self._check(base, expected)

    def test_other_layouts_and_dtypes_add_a_product_map(self):
        """A batch's strip (not one block of memory), the default layout and a bf16 ``x`` (autocast) add
        ``pointwise_conv(x, w)`` into ``acc``, which keeps its dtype."""
        torch.manual_seed(1)
        w = torch.randn(6, 4)
        cases = [
            (torch.randn(2, 6, 9, 5).contiguous(memory_format=torch.channels_last)[:, :, 2:6], torch.randn(2, 4, 4, 5)),
            (torch.randn(1, 6, 4, 5), torch.randn(1, 4, 4, 5)),
            (torch.randn(1, 6, 4, 5), torch.randn(1, 4, 4, 5).contiguous(memory_format=torch.channels_last)),
            (torch.randn(1, 6, 4, 5).contiguous(memory_format=torch.channels_last), torch.randn(1, 4, 4, 5).bfloat16()),
        ]
        for acc, x in cases:
            low = x.dtype == torch.bfloat16
            expected = acc + torch.einsum("oc,bchw->bohw", w, x.float())
            spy = mock.patch.object(feed_forward, "pointwise_conv", wraps=feed_forward.pointwise_conv)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=low), spy as product:
                self.assertIs(_add_pointwise(acc, x, w), acc)
            product.assert_called_once()
            self.assertEqual(acc.dtype, torch.float32)
            tol = 2e-2 if low else 1e-5
            torch.testing.assert_close(acc, expected, rtol=tol, atol=tol)


if __name__ == "__main__":
    unittest.main()
