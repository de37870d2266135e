from __future__ import annotations

import unittest

import numpy as np
from custom.transforms import simulate_low_count_pet
from parameterized import parameterized


def phantom(n=48):
    yy, xx = np.mgrid[:n, :n] - n / 2
    act = np.zeros((n, n))
    act[xx**2 + yy**2 < (0.35 * n) ** 2] = 2.0
    act[(xx - 4) ** 2 + yy**2 < (0.1 * n) ** 2] = 10.0
    return act


def psnr(ref, x):
    return 10 * np.log10((ref.max() - ref.min()) ** 2 / np.mean((ref - x) ** 2))


class TestLowCountPET(unittest.TestCase):
    def test_psnr_ordered_by_dose(self):
        act = phantom()
        scores = []
        for fraction in (1 / 4, 1 / 10, 1 / 20):
            low, ref = simulate_low_count_pet(act, fraction, np.random.RandomState(0), total_counts=2e6, iterations=5)
            scores.append(psnr(ref, low))
        self.assertGreater(scores[0], scores[1])
        self.assertGreater(scores[1], scores[2])

    def test_reference_keeps_activity_scale(self):
        act = phantom()
        low, ref = simulate_low_count_pet(act, 0.25, np.random.RandomState(0), iterations=5)
        self.assertAlmostEqual(float(ref.sum()) / float(act.sum()), 1.0, delta=0.1)
        self.assertAlmostEqual(float(low.sum()) / float(ref.sum()), 1.0, delta=0.1)
        self.assertGreaterEqual(float(low.min()), 0.0)

    def test_same_draw_same_result(self):
        act = phantom(32)
        a = simulate_low_count_pet(act, 0.1, np.random.RandomState(3), iterations=3)
        b = simulate_low_count_pet(act, 0.1, np.random.RandomState(3), iterations=3)
        np.testing.assert_array_equal(a[0], b[0])
        self.assertFalse(np.array_equal(a[0], a[1]))  # counts noise: the low-count image differs from the reference

    @parameterized.expand(
        [
            ("negative", -phantom(8), 0.5, "non-negative"),
            ("fraction_above_one", phantom(8), 1.5, "dose_fraction"),
            ("empty", np.zeros((8, 8)), 0.5, "no activity"),
            ("3d", np.ones((4, 4, 4)), 0.5, "2D"),
        ]
    )
    def test_invalid_input(self, _, activity, fraction, message):
        with self.assertRaisesRegex(ValueError, message):
            simulate_low_count_pet(activity, fraction)


if __name__ == "__main__":
    unittest.main()
