from __future__ import annotations

import unittest

import numpy as np
import torch
from custom.transforms import SimulateLowDoseCTd, simulate_low_dose_ct
from monai.data import MetaTensor


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

    def test_transform_writes_pair(self):
        label = MetaTensor(torch.as_tensor(phantom(32)[None], dtype=torch.float32), meta={"pixdim": [1, 2.0, 2.0, 1]})
        t = SimulateLowDoseCTd(i0=1e5, seed=0)
        out = t({"label": label})
        self.assertEqual(tuple(out["image"].shape), (1, 32, 32))
        self.assertIsInstance(out["image"], torch.Tensor)
        self.assertFalse(torch.equal(out["image"], out["label"]))
        again = t({"label": label})
        torch.testing.assert_close(out["image"], again["image"])  # fixed per item: deterministic, cacheable
        other = SimulateLowDoseCTd(i0=1e5, seed=1)({"label": label})
        self.assertFalse(torch.equal(out["image"], other["image"]))
        other_slice = t({"label": label, "slice_index": 3})
        self.assertFalse(torch.equal(out["image"], other_slice["image"]))
        ranged = SimulateLowDoseCTd(i0_range=(1e4, 1e6), seed=0)({"label": label})
        self.assertEqual(tuple(ranged["image"].shape), (1, 32, 32))
        with self.assertRaises(ValueError):
            t({"label": torch.zeros(1, 4, 4, 4)})
        with self.assertRaises(ValueError):
            simulate_low_dose_ct(np.zeros((4, 4)), 0)


if __name__ == "__main__":
    unittest.main()


class TestSimulatorCaching(unittest.TestCase):
    def test_simulation_runs_once_under_cachedataset(self):
        from unittest import mock

        from custom.transforms import ct_low_dose
        from monai.data import CacheDataset
        from monai.transforms import Randomizable

        t = SimulateLowDoseCTd(i0=1e5)
        self.assertNotIsInstance(t, Randomizable)  # so CacheDataset caches its output
        data = [{"label": torch.as_tensor(phantom(32)[None], dtype=torch.float32)}]
        with mock.patch.object(ct_low_dose, "simulate_low_dose_ct", wraps=ct_low_dose.simulate_low_dose_ct) as sim:
            ds = CacheDataset(data, t, progress=False)
            first, second = ds[0], ds[0]
        self.assertEqual(sim.call_count, 1)
        torch.testing.assert_close(first["image"], second["image"])
