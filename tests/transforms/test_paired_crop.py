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
