from __future__ import annotations

import unittest

import torch
from custom.transforms import PairedRandCropd
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd, RandRotate90d


class TestPairedRandCropd(unittest.TestCase):
    def _pair(self, h=40, w=36):
        label = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)
        return {"image": label + 0.5, "label": label}

    def test_same_window_in_both(self):
        crop = PairedRandCropd(["image", "label"], roi_size=16)
        crop.set_random_state(0)
        starts = set()
        for _ in range(5):
            out = crop(self._pair())
            self.assertEqual(tuple(out["image"].shape), (1, 16, 16))
            torch.testing.assert_close(out["image"] - out["label"], torch.full((1, 16, 16), 0.5))
            starts.add(float(out["label"][0, 0, 0]))
        self.assertGreater(len(starts), 1)  # the window moves

    def test_pads_small_images(self):
        out = PairedRandCropd(["image", "label"], roi_size=48)(self._pair(20, 30))
        self.assertEqual(tuple(out["label"].shape), (1, 48, 48))
        self.assertEqual(float(out["label"].sum()), float(self._pair(20, 30)["label"].sum()))

    def test_default_patch_is_published_128(self):
        out = PairedRandCropd(["image", "label"])(self._pair(130, 140))
        self.assertEqual(tuple(out["image"].shape), (1, 128, 128))
        torch.testing.assert_close(out["image"] - out["label"], torch.full((1, 128, 128), 0.5))

    def test_pad_mode_is_used(self):
        """A small image is padded with the requested numpy.pad mode (here its edge values), not with zeros."""
        pair = {"image": torch.full((1, 4, 6), 7.0), "label": torch.full((1, 4, 6), 3.0)}
        out = PairedRandCropd(["image", "label"], roi_size=8, pad_mode="edge")(pair)
        self.assertEqual(tuple(out["image"].shape), (1, 8, 8))
        torch.testing.assert_close(out["image"], torch.full((1, 8, 8), 7.0))
        torch.testing.assert_close(out["label"], torch.full((1, 8, 8), 3.0))
        unpadded = PairedRandCropd(["image", "label"], roi_size=8, pad_mode=None)(pair)
        self.assertEqual(tuple(unpadded["image"].shape), (1, 4, 6))

    def test_channels_may_differ_but_not_spatial_shape(self):
        """Only the spatial shape must agree (a 2-channel input with a 1-channel target is fine); H is checked too."""
        label = torch.arange(24 * 20, dtype=torch.float32).reshape(1, 24, 20)
        out = PairedRandCropd(["image", "label"], roi_size=8)({"image": label.repeat(2, 1, 1) + 0.5, "label": label})
        self.assertEqual(tuple(out["image"].shape), (2, 8, 8))
        torch.testing.assert_close(out["image"] - out["label"], torch.full((2, 8, 8), 0.5))
        with self.assertRaisesRegex(ValueError, r"shape mismatch.*\(8, 8\).*\(9, 8\)"):
            PairedRandCropd(["image", "label"], 4)({"image": torch.zeros(1, 8, 8), "label": torch.zeros(1, 9, 8)})

    def test_lazy_crop_is_pending(self):
        """With lazy=True the crop is recorded, not applied (MONAI lazy resampling), the same window in both keys."""
        pair = {k: MetaTensor(v) for k, v in self._pair(20, 24).items()}
        out = PairedRandCropd(["image", "label"], 8)(pair, lazy=True)
        for key in ("image", "label"):
            self.assertEqual(tuple(out[key].shape), (1, 20, 24))  # not cropped yet
            self.assertEqual(len(out[key].pending_operations), 1)
            self.assertEqual(tuple(out[key].peek_pending_shape()), (8, 8))
        self.assertEqual(
            out["image"].pending_operations[0]["extra_info"], out["label"].pending_operations[0]["extra_info"]
        )

    def test_missing_key(self):
        pair = self._pair(20, 20)
        with self.assertRaisesRegex(KeyError, "label"):
            PairedRandCropd(["image", "label"], 8)({"image": pair["image"]})
        out = PairedRandCropd(["image", "label"], 8, allow_missing_keys=True)({"image": pair["image"]})
        self.assertEqual(set(out), {"image"})
        self.assertEqual(tuple(out["image"].shape), (1, 8, 8))

    def test_flips_rotations_stay_paired(self):
        aug = Compose(
            [
                PairedRandCropd(["image", "label"], 16),
                RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
                RandRotate90d(["image", "label"], prob=0.5),
            ]
        )
        aug.set_random_state(3)
        for _ in range(6):
            out = aug(self._pair())
            torch.testing.assert_close(out["image"] - out["label"], torch.full((1, 16, 16), 0.5))

    def test_shape_mismatch_names_files(self):
        d = {
            "image": MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "in.nii"}),
            "label": MetaTensor(torch.zeros(1, 8, 9), meta={"filename_or_obj": "target.nii"}),
        }
        with self.assertRaisesRegex(ValueError, "shape mismatch.*in.nii.*target.nii"):
            PairedRandCropd(["image", "label"], 4)(d)


if __name__ == "__main__":
    unittest.main()
