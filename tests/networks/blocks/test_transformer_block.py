"""The transformer block's published configuration and its arguments reaching its layers."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
from custom.networks.blocks import TransformerBlock, feed_forward
from parameterized import parameterized


class TestConfiguration(unittest.TestCase):
    def test_defaults_are_published(self):
        """Expansion 2.66, no conv biases, layer norms with bias, static 2D convs, no local windows."""
        blk = TransformerBlock(8, 2)
        self.assertEqual(blk.ffn.project_out.in_channels, 21)  # int(8 * 2.66)
        for conv in (blk.attn.qkv, blk.attn.project_out, blk.ffn.project_in, blk.ffn.project_out):
            self.assertIsNone(conv.bias)
        self.assertIsNone(blk.attn.qkv_dwconv.gate)
        self.assertIsNone(blk.ffn.dwconv.gate)
        self.assertIsNotNone(blk.norm1.bias)
        self.assertIsNotNone(blk.norm2.bias)
        self.assertEqual(blk.attn.num_heads, 2)
        self.assertEqual(blk.attn.spatial_dims, 2)
        self.assertIsNone(blk.attn.window)
        self.assertEqual(blk.attn.window_mode, "published")

    @parameterized.expand([("WithBias", True), ("BiasFree", False)])
    def test_layer_norm_types(self, layer_norm_type, with_bias):
        blk = TransformerBlock(8, 2, layer_norm_type=layer_norm_type)
        self.assertEqual(blk.norm1.bias is not None, with_bias)
        self.assertEqual(blk.norm2.bias is not None, with_bias)

    def test_unknown_layer_norm_type_is_refused(self):
        for name in ("Bias", "withbias", ""):
            with self.assertRaises(ValueError):
                TransformerBlock(8, 2, layer_norm_type=name)


class TestLargeMaps(unittest.TestCase):
    def test_one_large_sample_is_the_whole_map_result(self):
        """A single sample with a large map and no strips (blended windows) is the whole-map path's own output:
        there is no batch to split, so no per-sample output is allocated and copied."""
        torch.manual_seed(0)
        blk = TransformerBlock(8, 2, train_size=8, window_mode="blended")
        x = torch.randn(1, 8, 26, 19)
        results = []
        real = blk._whole_map

        def whole_map(*args: object) -> torch.Tensor:
            results.append(real(*args))
            return results[-1]

        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 32 * 4 * 5):
            self.assertIsNone(blk._strip_rows(x))
            self.assertTrue(blk._large(x))
            with mock.patch.object(blk, "_whole_map", side_effect=whole_map):
                got = blk(x)
        self.assertEqual(len(results), 1)
        self.assertIs(got, results[0])

    def test_batch_of_large_maps_keeps_the_input_dtype(self):
        """A batch of large float64 maps, sample by sample (blended windows: no strips), gives float64 values: those
        of the batched graph path to float64 precision."""
        torch.manual_seed(1)
        blk = TransformerBlock(8, 2, bias=True, train_size=8, window_mode="blended").double()
        x = torch.randn(2, 8, 26, 19, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        expected = blk(x).detach()
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 32 * 8 * 5):  # 8 bytes a value
            self.assertIsNone(blk._strip_rows(x))
            self.assertTrue(blk._large(x))
            with mock.patch.object(blk, "_whole_map", wraps=blk._whole_map) as whole:
                got = blk(x)
        self.assertEqual([c.args[0].shape[0] for c in whole.call_args_list], [1, 1])  # sample by sample
        self.assertEqual(got.dtype, torch.float64)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


class TestStripRows(unittest.TestCase):
    def test_blended_windows_decide_by_the_map_size(self):
        """Blended windows (no strips) apply when the height or the width exceeds the window (12 here), whatever
        the channel count: a tall narrow map has windows, a small map with many channels has none."""
        blended = TransformerBlock(16, 2, train_size=8, window_mode="blended")
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 1):
            self.assertIsNone(blended._strip_rows(torch.randn(1, 16, 26, 10)))  # taller than the window
            self.assertIsNone(blended._strip_rows(torch.randn(1, 16, 10, 26)))  # wider than the window
            self.assertEqual(blended._strip_rows(torch.randn(1, 16, 12, 12)), (4, 4))  # 16 channels > 12: no matter

    def test_each_branch_gets_its_own_strip_rows(self):
        """The attention's strips and the feed-forward's strips have their own row counts (q, k and v of C channels
        against a group of hidden channels)."""
        torch.manual_seed(2)
        blk = TransformerBlock(8, 2, dynamic=True, train_size=8)
        x = torch.randn(1, 8, 26, 19).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 19 * 4 * 32 * 5):
            self.assertEqual(blk._strip_rows(x), (20, 5))
            attn = mock.patch.object(blk.attn, "residual_in_strips", wraps=blk.attn.residual_in_strips)
            ffn = mock.patch.object(blk.ffn, "residual_in_strips_", wraps=blk.ffn.residual_in_strips_)
            with attn as attn_strips, ffn as ffn_strips:
                got = blk(x)
        self.assertEqual(attn_strips.call_args.args[3], 20)
        self.assertEqual(ffn_strips.call_args.args[3], 5)
        torch.testing.assert_close(got, blk(x).detach(), rtol=1e-5, atol=1e-5)

    def test_strips_when_either_branch_needs_them(self):
        """Rows per strip come from the strip budget per row of one sample (q, k, v: C channels; the feed-forward: a
        group of 21 + 11 zero hidden channels); the block goes in strips when either branch's rows are fewer than
        the map's height, whatever its width and channel count."""
        blk = TransformerBlock(8, 2, train_size=8)
        x = torch.randn(1, 8, 40, 6).contiguous(memory_format=torch.channels_last)
        row = 6 * 4  # bytes of one channel of one row, float32
        with torch.no_grad():
            with mock.patch.object(feed_forward, "STRIP_BYTES", row * 32 * 10):
                self.assertEqual(blk._strip_rows(x), (40, 10))  # the attention in one strip, the feed-forward in 4
                got = blk(x)
            with mock.patch.object(feed_forward, "STRIP_BYTES", row * 32 * 40):
                self.assertIsNone(blk._strip_rows(x))  # both branches in one strip: the whole map
        torch.testing.assert_close(got, blk(x).detach(), rtol=1e-5, atol=1e-5)

    def test_strip_rows_of_the_published_full_resolution_blocks(self):
        """The strip budget as tuned (README: 4 MiB a strip, hidden channels in groups of 128): the published
        full-resolution blocks (2 x 48 = 96 channels, hidden 255 + 1 zero channel) at 256 x 256 go in attention
        strips of 42 rows (README: q, k and v of 96 channels) and feed-forward strips of 32 rows (a group of 128
        hidden channels); the feed-forward alone in strips of 16 rows (a half's 256 hidden channels)."""
        blk = TransformerBlock(96, 1)
        x = torch.empty(1, 96, 256, 256).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            self.assertEqual(blk._strip_rows(x), (42, 32))
            self.assertEqual(feed_forward._strip_rows(x, blk.ffn.padded_hidden), 16)

    def test_no_strips_for_an_empty_map(self):
        """A map without columns has nothing to cut: the whole map (no division by its zero row size)."""
        blk = TransformerBlock(8, 2)
        with torch.no_grad():
            for shape in ((1, 8, 5, 0), (1, 8, 0, 5)):
                self.assertIsNone(blk._strip_rows(torch.empty(shape)), shape)

    def test_3d_maps_take_the_whole_map_path(self):
        """The strips and the sample-by-sample path are 2D only: a batch of 3D maps goes through the whole-map path
        as a batch whatever the strip budget, with the values of the graph path."""
        torch.manual_seed(3)
        blk = TransformerBlock(8, 2, bias=True, spatial_dims=3)
        x = torch.randn(2, 8, 6, 5, 4)
        expected = blk(x).detach()
        with torch.no_grad(), mock.patch.object(feed_forward, "STRIP_BYTES", 1):
            self.assertIsNone(blk._strip_rows(x))
            self.assertFalse(blk._large(x))
            with mock.patch.object(blk, "_whole_map", wraps=blk._whole_map) as whole:
                got = blk(x)
        whole.assert_called_once()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
