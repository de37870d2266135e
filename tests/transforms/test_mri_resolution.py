from __future__ import annotations

import unittest

import numpy as np
import torch
from custom.transforms import kspace_center_mask, kspace_truncate
from parameterized import parameterized


def image(n=64):
    yy, xx = np.mgrid[:n, :n] / n
    return (1000 + 800 * np.cos(2 * np.pi * 2 * xx) + 500 * (np.abs(xx - 0.5) + np.abs(yy - 0.5) < 0.25)).astype(
        np.float32
    )


class TestKSpace(unittest.TestCase):
    @parameterized.expand([((64, 64), 4, 16), ((64, 64), 2, 32), ((60, 48), 4, None)])
    def test_mask_keeps_exactly_the_central_fraction(self, shape, factor, side):
        mask = kspace_center_mask(shape, factor)
        rows, cols = np.nonzero(mask)
        keep = [int(round(s / factor)) for s in shape]
        self.assertEqual(int(mask.sum()), keep[0] * keep[1])
        if side:
            self.assertEqual(mask.mean(), 1 / factor**2)  # x4: 6.25 % of k-space
        self.assertTrue(mask[shape[0] // 2, shape[1] // 2])  # DC after fftshift
        self.assertEqual(rows.max() - rows.min() + 1, keep[0])

    def test_at_least_the_dc_is_kept(self):
        """A factor as large as the side keeps only the DC: the image's mean, never an empty mask (a zero image)."""
        x = torch.as_tensor(image(8)[None])
        out = kspace_truncate(x, 8)
        torch.testing.assert_close(out, torch.full_like(x, float(x.mean())), rtol=1e-5, atol=1e-2)
        self.assertEqual(int(kspace_center_mask((8, 8), 8).sum()), 1)
        self.assertEqual(int(kspace_center_mask((8, 8), 20).sum()), 1)  # round(8 / 20) = 0 frequencies -> still the DC
        self.assertEqual(int(kspace_center_mask((1, 8), 4).sum()), 2)

    def test_channels_are_independent_and_defaults(self):
        """Leading axes are a batch: each (H, W) slice is truncated alone; defaults are x4 over the last 2 axes."""
        g = torch.Generator().manual_seed(0)
        x = torch.rand((2, 3, 12, 16), generator=g) * 1000
        out = kspace_truncate(x)
        for i in range(2):
            for c in range(3):
                torch.testing.assert_close(out[i, c], kspace_truncate(x[i, c], 4.0, 2), rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(out, kspace_truncate(x.numpy(), 4.0, 2), rtol=0, atol=0)

    def test_truncation_removes_only_high_frequencies(self):
        x = image()
        low_only = (1000 + 800 * np.cos(2 * np.pi * 2 * np.mgrid[:64, :64][1] / 64)).astype(np.float32)
        torch.testing.assert_close(kspace_truncate(low_only, 4), torch.as_tensor(low_only), atol=1e-2, rtol=1e-4)
        out = kspace_truncate(x, 4).numpy()
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(out)))
        self.assertLess(spectrum[~kspace_center_mask(x.shape, 4)].max() / spectrum.max(), 0.05)
        self.assertGreater(np.abs(out - x).mean(), 1.0)
        np.testing.assert_array_equal(x, image())  # input untouched

    def test_error_grows_with_factor(self):
        x = torch.as_tensor(image(64)[None])
        err = [float(((kspace_truncate(x, f) - x) ** 2).mean()) for f in (1, 2, 4)]
        self.assertLess(err[0], 1e-6)  # factor 1 keeps all of k-space
        self.assertLess(err[1], err[2])
        with self.assertRaisesRegex(ValueError, "factor must be >= 1"):
            kspace_center_mask((8, 8), 0.5)


if __name__ == "__main__":
    unittest.main()
