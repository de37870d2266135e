from __future__ import annotations

import unittest

import numpy as np
from custom.transforms import simulate_low_dose_ct
from parameterized import parameterized


def phantom(n=64):
    yy, xx = np.mgrid[:n, :n] - n / 2
    hu = np.full((n, n), -1000.0)
    hu[xx**2 + yy**2 < (0.4 * n) ** 2] = 40.0  # soft tissue disc in air
    hu[(xx - 6) ** 2 + yy**2 < (0.1 * n) ** 2] = 700.0  # bone insert
    return hu


class TestLowDoseCT(unittest.TestCase):
    def test_noise_grows_as_dose_falls(self):
        hu = phantom()
        stds = []
        for i0 in (1e6, 1e5, 1e4):
            noisy, clean = simulate_low_dose_ct(hu, i0, np.random.RandomState(0), pixel_spacing_mm=2.0)
            stds.append(float(np.std((noisy - clean)[24:40, 18:30])))
        self.assertLess(stds[0], stds[1])
        self.assertLess(stds[1], stds[2])
        self.assertGreater(stds[2] / stds[0], 5.0)  # std ~ 1/sqrt(I0): x10 expected for a 100x dose ratio

    def test_clean_is_noise_free_fbp(self):
        hu = phantom()
        original = hu.copy()
        _, clean_a = simulate_low_dose_ct(hu, 1e4, np.random.RandomState(0))
        _, clean_b = simulate_low_dose_ct(hu, 1e6, np.random.RandomState(1))
        np.testing.assert_allclose(clean_a, clean_b)  # target does not depend on dose or noise draw
        self.assertLess(abs(float(np.median(clean_a[28:36, 20:28])) - 40.0), 15.0)  # HU preserved
        np.testing.assert_array_equal(hu, original)

    @parameterized.expand([((24, 40),), ((40, 24),)])
    def test_non_square_slice_stays_on_its_pixels(self, shape):
        """The pair of a non-square slice is registered to it (the reconstruction was shifted by half the difference)."""
        hu = np.full(shape, -1000.0)
        hu[6:14, 8:16] = 500.0
        noisy, clean = simulate_low_dose_ct(hu, 1e6, np.random.RandomState(0))
        self.assertEqual(clean.shape, shape)
        self.assertEqual(noisy.shape, shape)
        self.assertLess(abs(float(np.median(clean[8:12, 10:14])) - 500.0), 30.0)  # the insert, where it was
        self.assertLess(abs(float(np.median(clean[16:, 18:])) + 1000.0), 30.0)  # air elsewhere
        self.assertLess(float(np.abs(clean - hu).mean()), 60.0)

    @parameterized.expand(
        [
            ("3d", np.zeros((4, 4, 4)), 1e5, "2D"),
            ("nan", np.full((4, 4), np.nan), 1e5, "non-finite"),
            ("zero_flux", np.zeros((4, 4)), 0, "must be > 0"),
        ]
    )
    def test_invalid_input(self, _, hu, i0, message):
        with self.assertRaisesRegex(ValueError, message):
            simulate_low_dose_ct(hu, i0)


if __name__ == "__main__":
    unittest.main()
