"""Seam score: detects a line in an error map and not a smooth or noisy one."""

from __future__ import annotations

import unittest
from unittest import mock

import numpy as np
import torch
from custom.metrics.seam import gradient_profiles, seam_score, window_edges
from custom.networks import TAT
from custom.networks.blocks import attention
from custom.networks.blocks.local_windows import window_starts
from parameterized import parameterized

from tests.utils import TINY


def _smooth(n: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    return np.sin(3 * x + 1) * np.cos(2 * y) + 0.05 * rng.standard_normal((n, n))


def _rows_with_profile(p_y: np.ndarray, width: int = 6) -> np.ndarray:
    """A residual whose row profile is exactly ``p_y`` (>= 0) and whose column profile is constant (1)."""
    rows = np.concatenate([[0.0], np.cumsum(p_y)])
    return rows[:, None] + np.arange(width)[None, :]


def _network_edges(size: int, train_patch_size: int) -> list[int]:
    """Interior edges, in full-resolution pixels, of the windows a tiny TAT really uses on a ``size``-pixel square."""
    net = TAT(**{**TINY, "train_patch_size": train_patch_size}).eval()
    padded = size + (-size) % net.size_multiple
    with mock.patch.object(attention, "window_tiles", wraps=attention.window_tiles) as spy, torch.no_grad():
        net(torch.rand(1, 1, size, size))
    edges = set()
    for (n, window), _ in spy.call_args_list:  # one call per axis of every windowed attention
        scale = padded // n
        for s in window_starts(n, window):
            for e in (s, s + min(n, window)):
                if 0 < e * scale < size:
                    edges.add(e * scale)
    return sorted(edges)


class TestSeamScore(unittest.TestCase):
    def test_profiles(self):
        r = np.zeros((4, 5))
        r[2:, :] = 1.0  # a step between rows 1 and 2
        p_y, p_x = gradient_profiles(r)
        np.testing.assert_allclose(p_y, [0, 1, 0])
        np.testing.assert_allclose(p_x, [0, 0, 0, 0])

    def test_smooth_image_scores_low(self):
        r = _smooth()
        self.assertLess(seam_score(r), 1.3)
        self.assertLess(seam_score(r, ([40, 90], [64])), 1.3)

    @parameterized.expand([("rows", 0), ("cols", 1)])
    def test_artificial_seam_detected(self, _, axis):
        r = _smooth()
        box = np.zeros_like(r)
        sl = (slice(40, 100), slice(None)) if axis == 0 else (slice(None), slice(40, 100))
        box[sl] = 0.2  # an offset inside a band: lines at 40 and 100
        score = seam_score(r + box, ([40, 100], []) if axis == 0 else ([], [40, 100]))
        self.assertGreater(score, 1.8)
        self.assertGreater(seam_score(r + box), 1.8)  # found without knowing where
        self.assertLess(seam_score(r + box, ([70], [70])), 1.3)  # not where there is none

    def test_ratio_invariant_to_units(self):
        r = _smooth(seed=3)
        r[:, 50:] += 0.1
        self.assertAlmostEqual(seam_score(r), seam_score(100 * r), places=9)
        self.assertAlmostEqual(seam_score(torch.from_numpy(r)), seam_score(r), places=9)

    def test_integer_residual_as_float(self):
        r = np.array([[3, 0, 7], [1, 9, 2], [8, 4, 5], [0, 6, 1]])
        for dtype in (np.uint8, np.int16):  # unsigned differences would wrap around
            for got, expected in zip(gradient_profiles(r.astype(dtype)), gradient_profiles(r.astype(float))):
                np.testing.assert_allclose(got, expected)
            self.assertEqual(seam_score(r.astype(dtype)), seam_score(r.astype(float)))

    def test_smallest_residual(self):
        r = np.array([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0], [1.0, 5.0, 4.0]])  # 3 x 3: the smallest accepted
        p_y, p_x = gradient_profiles(r)
        np.testing.assert_allclose(p_y, [np.mean([2, 1, 3]), np.mean([1, 3, 4])])
        np.testing.assert_allclose(p_x, [np.mean([1, 0, 4]), np.mean([2, 2, 1])])
        self.assertGreater(seam_score(r), 0)

    @parameterized.expand(
        [
            # a spike at profile index j: found by an edge e with j in (e - 2, e - 1, e), and only there
            ("e_minus_3", 10, 7, 1.0),
            ("e_minus_2", 10, 8, 5.0),
            ("e_minus_1", 10, 9, 5.0),
            ("e", 10, 10, 5.0),
            ("e_plus_1", 10, 11, 1.0),
            ("first_boundary", 2, 0, 5.0),  # e - 2 = 0: the first value of the profile
            ("last_boundary", 15, 14, 5.0),  # e = len(p): e - 1 is the last value, e is outside
            ("negative_skipped", 0, 14, 1.0),  # e - 2, e - 1 < 0 are not the profile's last values
        ]
    )
    def test_peak_near_an_edge(self, _, edge, spike, expected):
        p_y = np.ones(15)
        p_y[spike] = 5.0
        r = _rows_with_profile(p_y)
        np.testing.assert_allclose(gradient_profiles(r)[0], p_y)
        self.assertAlmostEqual(seam_score(r, ([edge], [])), expected, places=9)
        self.assertAlmostEqual(seam_score(r), 5.0, places=9)  # anywhere: always found

    def test_no_edges_inside(self):
        r = _smooth(32)
        self.assertEqual(seam_score(r, ([], [])), 0.0)  # no edge given: no seam
        self.assertEqual(seam_score(r, ([40, 50], [-5])), 0.0)  # edges outside the image
        self.assertGreater(seam_score(r, ([], [16])), 0.0)

    def test_line_on_a_flat_error(self):
        r = np.zeros((8, 8))
        r[4:] = 0.5  # one line on an otherwise exact restoration: zero median, a nonzero peak
        self.assertEqual(seam_score(r), float("inf"))
        self.assertEqual(seam_score(r, ([4], [])), float("inf"))
        self.assertEqual(seam_score(r, ([7], [])), 1.0)  # edges away from the line: nothing there (0 over 0)
        self.assertEqual(seam_score(r, ([], [])), 0.0)  # no edge given: no seam, whatever the median
        self.assertEqual(seam_score(r, ([40], [])), 0.0)  # edges outside the image
        self.assertEqual(seam_score(np.zeros((8, 8))), 1.0)

    def test_constant(self):
        self.assertEqual(seam_score(np.ones((8, 8))), 1.0)

    @parameterized.expand(
        [
            (np.zeros((2, 9)),),
            (np.zeros((9, 2)),),
            (np.zeros(9),),
            (np.full((4, 4), np.nan),),
            (np.where(np.eye(4) > 0, np.nan, 1.0),),  # a few NaN
            (np.where(np.eye(4) > 0, np.inf, 1.0),),
        ]
    )
    def test_bad_input(self, r):
        with self.assertRaises(ValueError):
            seam_score(r)

    def test_window_edges(self):
        self.assertEqual(window_edges(128), [])  # no windows at the training size
        self.assertEqual(window_edges(256), [64, 192])  # level 1: windows [0, 192) and [64, 256)
        # 512: windows of 192 at starts 0, 160, 320 (level 1); levels 2-3 scale to the same edges
        self.assertEqual(window_edges(512), [160, 192, 320, 352])
        self.assertEqual(window_edges(512, train_patch_size=None), [])

    def test_window_edges_are_ints_for_seam_score(self):
        edges = window_edges(256)
        self.assertTrue(all(type(e) is int for e in edges), edges)
        r = _smooth(256)
        self.assertGreater(seam_score(r, (edges, edges)), 0)

    @parameterized.expand([(256 - d,) for d in range(8)])
    def test_window_edges_of_a_padded_size(self, size):
        # the network pads to a multiple of 8: the windows are those of 256, cut at the image
        self.assertEqual(window_edges(size), [e for e in window_edges(256) if e < size])

    @parameterized.expand([(16, 10), (30, 11), (20, 4), (24, 8)])
    def test_window_edges_are_the_network_windows(self, size, train_patch_size):
        # small training sizes: windows at every level, and 1.5 * (train_patch_size // heads) rounds differently
        self.assertEqual(window_edges(size, train_patch_size), _network_edges(size, train_patch_size))


if __name__ == "__main__":
    unittest.main()
