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
            ("one_nan", np.where(np.eye(4) > 0, np.nan, 0.0), 1e5, "non-finite"),
        ]
    )
    def test_invalid_input(self, _, hu, i0, message):
        with self.assertRaisesRegex(ValueError, message):
            simulate_low_dose_ct(hu, i0)

    @parameterized.expand(
        [("negative_flux", {"i0": -1.0}), ("spacing", {"pixel_spacing_mm": 0.0}), ("mu", {"mu_water": 0.0})]
    )
    def test_non_positive_parameters_refused(self, _, kwargs):
        args = {"i0": 1e5, **kwargs}
        with self.assertRaisesRegex(ValueError, "must be > 0"):
            simulate_low_dose_ct(np.zeros((4, 4)), **args)

    def test_hu_kept_at_any_spacing_and_mu_water(self):
        """The clean target is in HU whatever the pixel spacing and water attenuation; they only set the noise."""
        hu = phantom(32)
        base_noisy, base = simulate_low_dose_ct(hu, 1e5, np.random.RandomState(0))
        for kwargs in ({"pixel_spacing_mm": 2.0}, {"pixel_spacing_mm": 0.5}, {"mu_water": 0.04}):
            noisy, clean = simulate_low_dose_ct(hu, 1e5, np.random.RandomState(0), **kwargs)
            np.testing.assert_allclose(clean, base, atol=1.0)
            self.assertFalse(np.allclose(noisy, base_noisy, atol=1.0))
        self.assertLess(abs(float(np.median(base[14:18, 10:14])) - 40.0), 15.0)  # soft tissue
        self.assertLess(abs(float(np.median(base[14:18, 20:24])) - 700.0), 60.0)  # bone insert
        self.assertLess(abs(float(np.median(base[:3, :3])) + 1000.0), 60.0)  # air, in the corner

    def test_noise_falls_with_pixel_size(self):
        """At the same photons per bin, smaller pixels are noisier (the same line-integral noise over a shorter mm)."""
        hu = phantom(32)
        stds = []
        for spacing in (0.5, 2.0):
            noisy, clean = simulate_low_dose_ct(hu, 1e4, np.random.RandomState(0), pixel_spacing_mm=spacing)
            stds.append(float(np.std((noisy - clean)[12:20, 8:14])))
        self.assertGreater(stds[0], 2.0 * stds[1])

    def test_documented_defaults(self):
        """mu_water defaults to water at about 70 keV (0.0192 / mm), pixels to 1 mm, one angle per row."""
        hu = phantom(16)
        default = simulate_low_dose_ct(hu, 1e4, np.random.RandomState(0))
        explicit = simulate_low_dose_ct(
            hu, 1e4, np.random.RandomState(0), mu_water=0.0192, pixel_spacing_mm=1.0, num_angles=16
        )
        np.testing.assert_array_equal(default[0], explicit[0])
        np.testing.assert_array_equal(default[1], explicit[1])
        fewer = simulate_low_dose_ct(hu, 1e4, np.random.RandomState(0), num_angles=8)
        self.assertGreater(float(np.abs(fewer[1] - default[1]).max()), 1.0)

    def test_whole_slice_reconstructed_to_its_corners(self):
        """A non-square slice of water is reconstructed up to its corners (outside the inscribed circle)."""
        hu = np.zeros((12, 20))
        noisy, clean = simulate_low_dose_ct(hu, 1e6, np.random.RandomState(0))
        self.assertLess(abs(float(clean[:3, :3].mean())), 150.0)  # water (0 HU), not air (-1000 HU)
        self.assertLess(abs(float(clean[:3, -3:].mean())), 150.0)
        self.assertTrue(np.isfinite(noisy).all())

    def test_angles_span_half_a_turn(self):
        """The views are spread evenly over 180 degrees: two views are orthogonal and locate a dense point."""
        hu = np.full((16, 16), -1000.0)
        hu[4, 11] = 3000.0
        _, clean = simulate_low_dose_ct(hu, 1e6, np.random.RandomState(0), num_angles=2)
        self.assertEqual(np.unravel_index(int(clean.argmax()), clean.shape), (4, 11))  # 0 and 180 degrees: a streak

    def test_photon_starvation(self):
        """A bin with no photon detected reads as 0.5 photons: the finite line integral -log(0.5 / i0)."""
        hu = np.full((4, 4), 1000.0)
        noisy_a, _ = simulate_low_dose_ct(hu, 1e-6, np.random.RandomState(0))  # (almost surely) no photon anywhere
        noisy_b, _ = simulate_low_dose_ct(hu, 1e-5, np.random.RandomState(0))
        self.assertTrue(np.isfinite(noisy_a).all())
        # every bin holds the same value log(2 i0), and FBP is linear: the attenuation maps are in that ratio
        ratio = (noisy_a / 1000.0 + 1.0) / (noisy_b / 1000.0 + 1.0)
        np.testing.assert_allclose(ratio, np.log(2e-6) / np.log(2e-5), rtol=1e-4)

    def test_no_seed_and_dtypes(self):
        noisy, clean = simulate_low_dose_ct(np.zeros((8, 8), dtype=np.int16), 0.5)  # a fresh draw; i0 < 1 is allowed
        self.assertEqual(noisy.dtype, np.float32)
        self.assertEqual(clean.dtype, np.float32)
        self.assertEqual(noisy.shape, (8, 8))
        noisy, clean = simulate_low_dose_ct([[0.0] * 6] * 6, 1e5, np.random.RandomState(0))  # any array-like
        self.assertEqual(clean.shape, (6, 6))


if __name__ == "__main__":
    unittest.main()
