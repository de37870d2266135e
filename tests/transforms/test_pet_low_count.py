from __future__ import annotations

import unittest

import numpy as np
import torch
from custom.transforms import SimulateLowCountPETd, simulate_low_count_pet


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

    def test_transform_and_errors(self):
        t = SimulateLowCountPETd(dose_fraction=0.1, iterations=3)
        label = torch.as_tensor(phantom(32)[None], dtype=torch.float32)
        out = t({"label": label})
        torch.testing.assert_close(out["image"], t({"label": label})["image"])  # deterministic per item
        self.assertEqual(tuple(out["image"].shape), (1, 32, 32))
        self.assertFalse(torch.equal(out["image"], out["label"]))
        with self.assertRaises(ValueError):
            simulate_low_count_pet(-phantom(8), 0.5)
        with self.assertRaises(ValueError):
            simulate_low_count_pet(phantom(8), 1.5)


if __name__ == "__main__":
    unittest.main()
