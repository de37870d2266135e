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

    def test_missing_image_key(self):
        """An absent image key is an error by default, and skipped (item unchanged) with allow_missing_keys."""
        img = torch.full((1, 2, 2), 1024.0)
        with self.assertRaisesRegex(KeyError, "label"):
            ModalityNormalized(["image", "label"], SETTINGS)({"image": img, "modality": "CT"})
        out = ModalityNormalized(["image", "label"], SETTINGS, allow_missing_keys=True)(
            {"image": img, "modality": "CT"}
        )
        self.assertNotIn("label", out)
        torch.testing.assert_close(out["image"], torch.full((1, 2, 2), 0.5))
        none = ModalityNormalized(["label"], SETTINGS, allow_missing_keys=True)({"image": img, "modality": "CT"})
        self.assertEqual(set(none), {"image", "modality"})
        self.assertIs(none["image"], img)

    def test_metadata_kept(self):
        """The file name and affine travel with the image (the writers need them), single and mixed batches."""
        meta = {"filename_or_obj": "/data/a.nii.gz"}
        img = MetaTensor(torch.full((1, 2, 2), 1024.0), meta=dict(meta))
        out = ModalityNormalized(["image"], SETTINGS)({"image": img, "modality": "CT"})["image"]
        self.assertIsInstance(out, MetaTensor)
        self.assertEqual(out.meta["filename_or_obj"], "/data/a.nii.gz")
        self.assertIsInstance(
            ModalityNormalized(["image"], SETTINGS)({"image": img.numpy(), "modality": "CT"})["image"], MetaTensor
        )
        batch = MetaTensor(torch.full((2, 1, 2, 2), 0.5), meta=dict(meta))
        mixed = ModalityDenormalized(["pred"], SETTINGS)({"pred": batch, "modality": ["CT", "PET"]})["pred"]
        self.assertIsInstance(mixed, MetaTensor)
        self.assertEqual(mixed.meta["filename_or_obj"], "/data/a.nii.gz")

    @parameterized.expand([(np.int16,), (np.float64,), (np.float32,)])
    def test_output_is_float32(self, dtype):
        """Stored CT is often int16 and NIfTI readers may give float64: the network always gets float32."""
        img = np.array([[[-1024, 1024, 3072]]], dtype=dtype)
        out = ModalityNormalized(["image"], SETTINGS)({"image": img, "modality": "CT"})["image"]
        self.assertEqual(out.dtype, torch.float32)
        np.testing.assert_allclose(out.numpy().ravel(), [0.0, 0.5, 1.0])
        back = ModalityDenormalized(["image"], SETTINGS)(
            {"image": torch.as_tensor(out, dtype=torch.float64), "modality": "CT"}
        )
        self.assertEqual(back["image"].dtype, torch.float32)

    def test_keyword_arguments(self):
        """The bundle configs instantiate these with keyword arguments only (including a custom modality key)."""
        pred = torch.tensor([-0.5, 0.5]).reshape(1, 1, 2)
        out = ModalityDenormalized(keys=["pred"], settings=SETTINGS, modality_key="kind", clip=True)(
            {"pred": pred, "kind": "CT"}
        )
        self.assertEqual(out["pred"].flatten().tolist(), [-1024.0, 1024.0])
        norm = ModalityNormalized(keys="image", settings=SETTINGS, modality_key="kind")({"image": pred, "kind": "PET"})
        np.testing.assert_allclose(norm["image"].flatten().tolist(), [0.0, 0.025])


class TestMixedBatch(unittest.TestCase):
    def test_batch_with_one_modality_per_sample(self):
        batch = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1).repeat(1, 1, 2, 2)
        out = ModalityDenormalized(["pred"], SETTINGS)({"pred": batch, "modality": ["CT", "PET", "MRI"]})
        self.assertEqual(out["pred"][:, 0, 0, 0].tolist(), [-1024.0, 10.0, 4095.0])
        back = ModalityNormalized(["pred"], SETTINGS)({"pred": out["pred"], "modality": ("CT", "PET", "MRI")})
        torch.testing.assert_close(back["pred"], batch)
        with self.assertRaisesRegex(ValueError, "2 modalities for a batch of 3"):
            ModalityNormalized(["pred"], SETTINGS)({"pred": batch, "modality": ["CT", "PET"]})

    def test_mixed_batch_interior_values(self):
        """Mid-range values of every modality in one batch map exactly as they would one by one (no clipping)."""
        phys = torch.tensor([[-1024.0, 1024.0, 3072.0], [0.0, 10.0, 20.0], [0.0, 2047.5, 4095.0]]).reshape(3, 1, 1, 3)
        norm = ModalityNormalized(["image"], SETTINGS)({"image": phys, "modality": ["CT", "PET", "MRI"]})["image"]
        torch.testing.assert_close(norm, torch.tensor([0.0, 0.5, 1.0]).repeat(3, 1).reshape(3, 1, 1, 3))
        back = ModalityDenormalized(["image"], SETTINGS)({"image": norm, "modality": ["CT", "PET", "MRI"]})["image"]
        torch.testing.assert_close(back, phys)

    def test_batch_or_channels_with_one_modality(self):
        """A batch (or multi-channel image) with a single modality name uses that range for every sample."""
        batch = torch.tensor([-1024.0, 1024.0, 3072.0]).reshape(3, 1, 1, 1).repeat(1, 2, 2, 2)
        for modality in ("CT", ["CT", "CT", "CT"]):
            out = ModalityNormalized(["image"], SETTINGS)({"image": batch, "modality": modality})["image"]
            self.assertEqual(out.shape, batch.shape)
            self.assertEqual(out[:, 0, 0, 0].tolist(), [0.0, 0.5, 1.0])
        two_channels = torch.tensor([[[0.0, 10.0]], [[20.0, 40.0]]])
        out = ModalityNormalized(["image"], SETTINGS)({"image": two_channels, "modality": "PET"})["image"]
        self.assertEqual(out.flatten().tolist(), [0.0, 0.5, 1.0, 1.0])


if __name__ == "__main__":
    unittest.main()
