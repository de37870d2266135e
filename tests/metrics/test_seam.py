"""Seam score: detects a line in an error map and not a smooth or noisy one."""

from __future__ import annotations

import unittest

import numpy as np
import torch
from custom.metrics.seam import gradient_profiles, seam_score, window_edges
from parameterized import parameterized


def _smooth(n: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    return np.sin(3 * x + 1) * np.cos(2 * y) + 0.05 * rng.standard_normal((n, n))


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

    def test_constant(self):
        self.assertEqual(seam_score(np.ones((8, 8))), 1.0)

    @parameterized.expand([(np.zeros((2, 9)),), (np.zeros(9),), (np.full((4, 4), np.nan),)])
    def test_bad_input(self, r):
        with self.assertRaises(ValueError):
            seam_score(r)

    def test_window_edges(self):
        self.assertEqual(window_edges(128), [])  # no windows at the training size
        self.assertEqual(window_edges(256), [64, 192])  # level 1: windows [0, 192) and [64, 256)
        # 512: windows of 192 at starts 0, 160, 320 (level 1); levels 2-3 scale to the same edges
        self.assertEqual(window_edges(512), [160, 192, 320, 352])
        self.assertEqual(window_edges(512, train_patch_size=None), [])


if __name__ == "__main__":
    unittest.main()
