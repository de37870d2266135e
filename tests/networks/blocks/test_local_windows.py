from __future__ import annotations

import unittest

import torch
from parameterized import parameterized

from custom.networks.blocks import merge_windows, partition_windows, window_starts


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


if __name__ == "__main__":
    unittest.main()
