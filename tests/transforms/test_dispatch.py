from __future__ import annotations

import unittest

import torch
from custom.data import load_modality_settings
from custom.transforms import KSpaceTruncated, ModalityDispatchd, ModalityNormalized, SimulateLowDoseCTd
from monai.data import CacheDataset
from monai.transforms import Compose

from tests.data.helpers import SETTINGS_DIR


class TestModalityDispatchd(unittest.TestCase):
    def test_clean_only_items_get_their_modality_degradation(self):
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        disc = (((yy - 16) ** 2 + (xx - 16) ** 2) < 100).float()[None]
        items = [
            {"label": disc * 1040 - 1000, "modality": "CT"},
            {"label": disc * 2000, "modality": "MR"},
            {"label": disc * 5, "image": disc * 4, "modality": "PET"},
        ]  # already paired: untouched
        chain = Compose(
            [
                ModalityDispatchd({"CT": SimulateLowDoseCTd(i0=1e5), "MRI": KSpaceTruncated(factor=4)}),
                ModalityNormalized(["image", "label"], load_modality_settings(SETTINGS_DIR)),
            ]
        )
        ds = CacheDataset(items, chain, progress=False)
        for i in range(3):
            out = ds[i]
            self.assertEqual(tuple(out["image"].shape), (1, 32, 32))
            self.assertGreaterEqual(float(out["image"].min()), 0.0)
            self.assertLessEqual(float(out["image"].max()), 1.0)
        self.assertFalse(torch.equal(ds[0]["image"], ds[0]["label"]))
        torch.testing.assert_close(ds[2]["image"], disc * 4 / 20)

    def test_unknown_modality(self):
        with self.assertRaisesRegex(ValueError, "no transform for modality 'PET'"):
            ModalityDispatchd({"CT": lambda d: d})({"label": torch.zeros(1, 2, 2), "modality": "PET"})


if __name__ == "__main__":
    unittest.main()
