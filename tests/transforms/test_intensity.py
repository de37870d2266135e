from __future__ import annotations

import unittest

import numpy as np
import torch
from custom.settings import load_modality_settings
from custom.transforms import ModalityDenormalized, ModalityNormalized
from monai.data import MetaTensor
from parameterized import parameterized

from tests.utils import SETTINGS_DIR

SETTINGS = load_modality_settings(SETTINGS_DIR)


class TestModalityIntensity(unittest.TestCase):
    @parameterized.expand(
        [
            ("CT", -2000.0, -1024.0, 3072.0, 5000.0),
            ("PET", -1.0, 0.0, 20.0, 30.0),
            ("MRI", -5.0, 0.0, 4095.0, 9000.0),
            ("MR", -5.0, 0.0, 4095.0, 9000.0),
        ]
    )
    def test_clip_and_map_to_unit_range(self, modality, below, low, high, above):
        img = np.array([[[below, low, (low + high) / 2, high, above]]], dtype=np.float32)
        original = img.copy()
        out = ModalityNormalized(["image"], SETTINGS)({"image": img, "modality": modality})
        np.testing.assert_allclose(out["image"].numpy().ravel(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
        np.testing.assert_array_equal(img, original)  # the caller's array is untouched

    @parameterized.expand([("CT",), ("PET",), ("MRI",)])
    def test_denormalize_inverts(self, modality):
        low, high = SETTINGS["CT" if modality == "CT" else modality]["clip_range"]
        phys = torch.linspace(low, high, 11).reshape(1, 1, 11)
        d = ModalityNormalized(["image", "label"], SETTINGS)(
            {"image": phys, "label": phys.clone(), "modality": modality}
        )
        back = ModalityDenormalized(["image"], SETTINGS)(d)
        torch.testing.assert_close(back["image"], phys, atol=1e-6 * (high - low), rtol=0)  # float32 round trip
        self.assertEqual(back["image"].dtype, torch.float32)

    def test_denormalise_clip_option(self):
        pred = torch.tensor([-0.1, 0.5, 1.1]).reshape(1, 1, 3)
        free = ModalityDenormalized(["pred"], SETTINGS)({"pred": pred, "modality": "PET"})["pred"]
        self.assertAlmostEqual(free.flatten()[0].item(), -2.0, places=4)  # unclipped: negative SUV
        clipped = ModalityDenormalized(["pred"], SETTINGS, clip=True)({"pred": pred, "modality": "PET"})["pred"]
        self.assertEqual(clipped.flatten().tolist(), [0.0, 10.0, 20.0])
        batch = pred.reshape(3, 1, 1, 1)  # per-sample ranges: mixed-modality batch
        mixed = ModalityDenormalized(["pred"], SETTINGS, clip=True)({"pred": batch, "modality": ["CT", "PET", "MRI"]})
        self.assertEqual(mixed["pred"].flatten().tolist(), [-1024.0, 10.0, 4095.0])

    def test_errors_name_the_file(self):
        img = MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/data/a.nii.gz"})
        with self.assertRaisesRegex(ValueError, "a.nii.gz: unknown modality 'US'"):
            ModalityNormalized(["image"], SETTINGS)({"image": img, "modality": "US"})
        with self.assertRaisesRegex(ValueError, "a.nii.gz: no 'modality'"):
            ModalityNormalized(["image"], SETTINGS)({"image": img})
        bad = img.clone()
        bad[0, 0, 0] = float("nan")
        with self.assertRaisesRegex(ValueError, "a.nii.gz: non-finite"):
            ModalityNormalized(["image"], SETTINGS)({"image": bad, "modality": "CT"})
        with self.assertRaises(ValueError):
            ModalityNormalized(["image"], {})


class TestMixedBatch(unittest.TestCase):
    def test_batch_with_one_modality_per_sample(self):
        batch = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1).repeat(1, 1, 2, 2)
        out = ModalityDenormalized(["pred"], SETTINGS)({"pred": batch, "modality": ["CT", "PET", "MRI"]})
        self.assertEqual(out["pred"][:, 0, 0, 0].tolist(), [-1024.0, 10.0, 4095.0])
        back = ModalityNormalized(["pred"], SETTINGS)({"pred": out["pred"], "modality": ("CT", "PET", "MRI")})
        torch.testing.assert_close(back["pred"], batch)
        with self.assertRaisesRegex(ValueError, "2 modalities for a batch of 3"):
            ModalityNormalized(["pred"], SETTINGS)({"pred": batch, "modality": ["CT", "PET"]})


if __name__ == "__main__":
    unittest.main()
