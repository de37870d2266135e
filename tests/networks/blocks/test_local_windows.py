from __future__ import annotations

import unittest

import torch
from custom.networks.blocks import channel_attention, merge_windows, partition_windows, window_starts
from custom.networks.blocks.local_windows import window_tiles
from parameterized import parameterized


def loop_partition_merge(x: torch.Tensor, window: int, fn) -> torch.Tensor:
    """Straightforward per-window loop at batch 1 (the published procedure), for comparison."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    count = torch.zeros_like(x)
    kh, kw = min(h, window), min(w, window)
    for i in window_starts(h, window):
        for j in window_starts(w, window):
            out[..., i : i + kh, j : j + kw] += fn(x[..., i : i + kh, j : j + kw])
            count[..., i : i + kh, j : j + kw] += 1
    return out / count


class TestWindowStarts(unittest.TestCase):
    @parameterized.expand(
        [
            (200, 192, [0, 8]),
            (100, 96, [0, 4]),
            (25, 24, [0, 1]),
            (128, 192, [0]),
            (192, 192, [0]),
            (400, 192, [0, 104, 208]),
            (97, 24, [0, 19, 38, 57, 73]),
        ]
    )
    def test_published_rule(self, size, window, expected):
        starts = window_starts(size, window)
        self.assertEqual(starts, expected)
        k = min(size, window)
        self.assertEqual(starts[-1] + k, size)  # last window ends at the border

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            window_starts(0, 4)
        with self.assertRaises(ValueError):
            window_starts(10, 0)


class TestPartitionMerge(unittest.TestCase):
    @parameterized.expand([((2, 3, 50, 37), (24, 24)), ((1, 2, 9, 10, 11), (4, 5, 6)), ((3, 1, 16, 16), (32, 32))])
    def test_merge_inverts_partition(self, shape, window):
        x = torch.randn(shape)
        patches, index = partition_windows(x, window)
        n = 1
        for idx in index:
            n *= idx.shape[0]
        self.assertEqual(patches.shape[0], shape[0] * n)
        torch.testing.assert_close(merge_windows(patches, index, shape[2:]), x)

    def test_matches_loop_with_per_window_function(self):
        # a per-window non-linear function (normalise each window) distinguishes window membership
        def fn(p: torch.Tensor) -> torch.Tensor:
            return p / p.flatten(-2).norm(dim=-1)[..., None, None]

        x = torch.randn(3, 2, 41, 29)
        patches, index = partition_windows(x, (16, 16))
        ours = merge_windows(fn(patches), index, x.shape[2:])
        for b in range(3):  # each sample as the published code would, alone
            torch.testing.assert_close(ours[b : b + 1], loop_partition_merge(x[b : b + 1], 16, fn))

    def test_window_length_per_axis_required(self):
        with self.assertRaises(ValueError):
            partition_windows(torch.zeros(1, 1, 8, 8), (4,))


class TestWindowTiles(unittest.TestCase):
    @parameterized.expand([(256, 192), (200, 192), (97, 24), (400, 192), (128, 192), (25, 24)])
    def test_tiles_cut_at_every_window_edge(self, size, window):
        tiles, coverage = window_tiles(size, window)
        self.assertEqual(tiles[0][0], 0)
        self.assertEqual(tiles[-1][1], size)
        for (_, e), (a, _) in zip(tiles[:-1], tiles[1:]):
            self.assertEqual(e, a)  # contiguous, no gaps or overlaps
        k = min(size, window)
        starts = window_starts(size, window)
        self.assertEqual(len(coverage), len(starts))
        for s, row in zip(starts, coverage):
            covered = [(a, e) for (a, e), c in zip(tiles, row) if c]
            # each window is exactly the union of the tiles it covers: contiguous from its start to start + k
            self.assertEqual((covered[0][0], covered[-1][1]), (s, s + k))
            self.assertEqual(sum(e - a for a, e in covered), k)
        for t in range(len(tiles)):
            self.assertGreaterEqual(sum(row[t] for row in coverage), 1)  # every tile is in some window


class TestFactoredWindowAttention(unittest.TestCase):
    """The tile-factored attention equals the literal definition: attention inside each window, averaged."""

    @parameterized.expand(
        [
            ((2, 24, 50, 37), 2, (24, 24)),
            ((3, 12, 41, 29), 1, (16, 20)),
            ((1, 12, 200, 200), 1, (192, 192)),
            ((2, 24, 97, 60), 4, (24, 24)),
            ((1, 12, 9, 10, 11), 2, (4, 5, 6)),
        ]
    )
    def test_equals_partition_attend_merge(self, shape, heads, window):
        g = torch.Generator().manual_seed(0)
        qkv = torch.randn(shape, generator=g)
        temperature = torch.rand(heads, 1, 1, generator=g) * 3 + 0.5
        patches, index = partition_windows(qkv, window)
        expected = merge_windows(channel_attention(patches, heads, temperature), index, shape[2:])
        torch.testing.assert_close(channel_attention(qkv, heads, temperature, window), expected, atol=2e-5, rtol=1e-4)

    def test_window_larger_than_map_is_global(self):
        qkv = torch.randn(2, 12, 20, 20)
        temperature = torch.ones(2, 1, 1)
        torch.testing.assert_close(
            channel_attention(qkv, 2, temperature, (32, 32)), channel_attention(qkv, 2, temperature), atol=1e-6, rtol=0
        )

    def test_window_length_per_axis_required(self):
        with self.assertRaises(ValueError):
            channel_attention(torch.zeros(1, 6, 8, 8), 1, torch.ones(1, 1, 1), (4,))


if __name__ == "__main__":
    unittest.main()
