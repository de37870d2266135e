from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np
from monai.data import Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from custom.data import SelectSliced, expand_slices, num_slices
from tests.data.helpers import save_nifti


class TestSlicing(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        vol = np.arange(8 * 6 * 5, dtype=np.float32).reshape(8, 6, 5)
        self.vol = vol
        self.img = save_nifti(os.path.join(self.tmp.name, "v_img.nii.gz"), vol + 1)
        self.lab = save_nifti(os.path.join(self.tmp.name, "v_lab.nii.gz"), vol)
        self.flat = save_nifti(os.path.join(self.tmp.name, "f.nii.gz"), vol[..., 0])

    def tearDown(self):
        self.tmp.cleanup()

    def test_counts_from_header(self):
        self.assertEqual(num_slices(self.lab), 5)
        self.assertEqual(num_slices(self.flat), 1)
        items = expand_slices([{"image": self.img, "label": self.lab, "task": "t"}, {"label": self.flat}])
        self.assertEqual([it.get("slice_index") for it in items], [0, 1, 2, 3, 4, 0])
        self.assertEqual(len(expand_slices([{"label": self.lab}], stride=2)), 3)

    def test_slices_pair_in_a_dataset(self):
        items = expand_slices([{"image": self.img, "label": self.lab}])
        chain = Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"], channel_dim="no_channel"),
                         SelectSliced(["image", "label"])])
        ds = Dataset(items, chain)
        out = ds[3]
        self.assertEqual(tuple(out["label"].shape), (1, 8, 6))
        np.testing.assert_allclose(out["label"][0].numpy(), self.vol[..., 3])
        np.testing.assert_allclose(out["image"][0].numpy() - out["label"][0].numpy(), 1.0)

    def test_out_of_range_names_file(self):
        chain = Compose([LoadImaged("label"), EnsureChannelFirstd("label", channel_dim="no_channel")])
        d = chain({"label": self.lab})
        d["slice_index"] = 9
        with self.assertRaisesRegex(ValueError, "v_lab.nii.gz: slice index 9"):
            SelectSliced("label")(d)


if __name__ == "__main__":
    unittest.main()
