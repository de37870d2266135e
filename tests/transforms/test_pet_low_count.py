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
            ("one_nan", np.where(np.eye(8) > 0, np.nan, 1.0), 0.5, "finite"),
            ("zero_fraction", phantom(8), 0.0, "dose_fraction"),
        ]
    )
    def test_invalid_input(self, _, activity, fraction, message):
        with self.assertRaisesRegex(ValueError, message):
            simulate_low_count_pet(activity, fraction)

    def test_iterations_below_one_refused(self):
        with self.assertRaisesRegex(ValueError, "iterations"):
            simulate_low_count_pet(phantom(8), 0.5, np.random.RandomState(0), iterations=0)

    def test_counts_set_by_dose_times_total(self):
        """Only the kept counts (total_counts x dose_fraction) set the low-count image: same draw, same image."""
        act = phantom(16)
        a, ref_a = simulate_low_count_pet(act, 0.5, np.random.RandomState(5), total_counts=2e4, iterations=3)
        b, ref_b = simulate_low_count_pet(act, 0.25, np.random.RandomState(5), total_counts=4e4, iterations=3)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref_a, ref_b, rtol=1e-5, atol=1e-6)

    def test_units_follow_activity(self):
        """Both images are in the units of the activity: scaling the activity scales them alike (same draw)."""
        act = phantom(16)
        low, ref = simulate_low_count_pet(act, 0.1, np.random.RandomState(2), total_counts=1e4, iterations=3)
        for factor in (3.0, 1e-4):  # a faint slice (projections summing to < 1) is simulated too
            low_f, ref_f = simulate_low_count_pet(
                factor * act, 0.1, np.random.RandomState(2), total_counts=1e4, iterations=3
            )
            np.testing.assert_allclose(low_f, factor * low, rtol=1e-4, atol=factor * 1e-5)
            np.testing.assert_allclose(ref_f, factor * ref, rtol=1e-4, atol=factor * 1e-5)

    def test_reference_is_noise_free(self):
        """The target depends neither on the dose fraction nor on the draw, and is zero where there is no activity."""
        act = phantom(16)
        _, ref_a = simulate_low_count_pet(act, 0.1, np.random.RandomState(0))
        _, ref_b = simulate_low_count_pet(act, 1.0, np.random.RandomState(1))
        np.testing.assert_allclose(ref_a, ref_b, rtol=1e-5, atol=1e-6)
        self.assertLess(float(np.abs(ref_a[0, :]).max()), 0.02)  # air above the disc (activity 2 and 10): < 1%
        self.assertLess(float(np.abs(ref_a - act).mean() / act.mean()), 0.25)  # limited-angle data would smear it

    def test_whole_slice_reconstructed_to_its_corners(self):
        """A non-square slice full of activity is reconstructed up to its corners (outside the inscribed circle)."""
        act = np.ones((12, 20))
        _, ref = simulate_low_count_pet(act, 1.0, np.random.RandomState(0))
        self.assertAlmostEqual(float(ref[0, 0]), 1.0, delta=0.1)
        self.assertAlmostEqual(float(ref[0, -1]), 1.0, delta=0.1)
        self.assertLess(float(np.abs(ref[2:-2, 2:-2] - 1.0).max()), 0.1)

    def test_num_angles(self):
        """By default one projection angle per image row; a given number of angles is used."""
        act = phantom(16)
        default = simulate_low_count_pet(act, 0.5, np.random.RandomState(0), iterations=2)
        explicit = simulate_low_count_pet(act, 0.5, np.random.RandomState(0), iterations=2, num_angles=16)
        fewer = simulate_low_count_pet(act, 0.5, np.random.RandomState(0), iterations=2, num_angles=8)
        np.testing.assert_array_equal(default[1], explicit[1])
        np.testing.assert_array_equal(default[0], explicit[0])
        self.assertGreater(float(np.abs(fewer[1] - default[1]).max()), 1e-3)

    def test_angles_span_half_a_turn(self):
        """The views are spread evenly over 180 degrees: two views are orthogonal and locate a point source."""
        act = np.zeros((16, 16))
        act[4, 11] = 10.0
        _, ref = simulate_low_count_pet(act, 1.0, np.random.RandomState(0), num_angles=2, iterations=20)
        self.assertEqual(np.unravel_index(int(ref.argmax()), ref.shape), (4, 11))
        self.assertGreater(float(ref[3:6, 10:13].sum() / ref.sum()), 0.9)  # two views at 0 and 180 degrees smear it

    def test_full_dose_noise_falls_with_total_counts(self):
        act = phantom(16)
        errors = []
        for total in (1e3, 1e5):
            low, ref = simulate_low_count_pet(act, 1.0, np.random.RandomState(0), total_counts=total, iterations=3)
            errors.append(float(np.mean((low - ref) ** 2)))
        self.assertGreater(errors[0], 10 * errors[1])  # error variance ~ 1 / counts
        self.assertGreater(np.sqrt(errors[0]) / float(act.max()), 0.01)  # 1000 counts over a slice are very noisy

    @parameterized.expand([((12, 20),), ((20, 12),)])
    def test_non_square_slice_stays_on_its_pixels(self, shape):
        act = np.zeros(shape)
        act[3:9, 4:10] = 5.0
        low, ref = simulate_low_count_pet(act, 0.5, np.random.RandomState(0), total_counts=1e6, iterations=10)
        self.assertEqual(low.shape, shape)
        self.assertEqual(ref.shape, shape)
        self.assertEqual(low.dtype, np.float32)
        self.assertEqual(ref.dtype, np.float32)
        self.assertAlmostEqual(
            float(ref[3:9, 4:10].sum()) / float(act.sum()), 1.0, delta=0.2
        )  # the insert, where it was
        self.assertLess(float(ref[:, 11:].max()), 0.5)
        self.assertLess(float(ref[10:, :].max()), 0.5)

    def test_activity_not_modified_and_no_seed(self):
        act = phantom(8)
        original = act.copy()
        low, ref = simulate_low_count_pet(
            act, 1.0, iterations=1
        )  # dose_fraction 1 is allowed; rng defaults to a fresh one
        np.testing.assert_array_equal(act, original)
        self.assertEqual(low.shape, (8, 8))
        self.assertTrue(np.isfinite(low).all())


if __name__ == "__main__":
    unittest.main()
