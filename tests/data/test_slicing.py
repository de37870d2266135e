from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np
from custom.data import LoadSliced, expand_slices, num_slices
from monai.data import Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from tests.utils import save_nifti


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
        chain = Compose(
            [LoadSliced(["image", "label"]), EnsureChannelFirstd(["image", "label"], channel_dim="no_channel")]
        )
        ds = Dataset(items, chain)
        out = ds[3]
        self.assertEqual(tuple(out["label"].shape), (1, 8, 6))
        np.testing.assert_allclose(out["label"][0].numpy(), self.vol[..., 3])
        np.testing.assert_allclose(out["image"][0].numpy() - out["label"][0].numpy(), 1.0)

    def test_out_of_range_names_file(self):
        with self.assertRaisesRegex(ValueError, "v_lab.nii.gz: slice index 9"):
            LoadSliced("label")({"label": self.lab, "slice_index": 9})


if __name__ == "__main__":
    unittest.main()


class TestLoadSliced(unittest.TestCase):
    def test_equals_full_load_then_select(self):
        import pydicom
        from custom.data import load_slice
        from pydicom.data import get_testdata_file

        with tempfile.TemporaryDirectory() as d:
            vol = np.random.default_rng(0).normal(size=(9, 7, 4)).astype(np.float32)
            path = save_nifti(os.path.join(d, "v.nii.gz"), vol, spacing=2.0)
            chain = Compose([LoadImaged("label"), EnsureChannelFirstd("label", channel_dim="no_channel")])
            for z in range(4):
                full = chain({"label": path})["label"][..., z]
                part = EnsureChannelFirstd("label", channel_dim="no_channel")(
                    LoadSliced("label")({"label": path, "slice_index": z})
                )["label"]
                torch_equal = np.array_equal(full.numpy(), part.numpy())
                self.assertTrue(torch_equal)
            self.assertEqual(float(load_slice(path, 2).affine[2, 3]), 2.0)  # slice origin moves along z
            with self.assertRaisesRegex(ValueError, "v.nii.gz: slice index 4 out of range"):
                load_slice(path, 4)
            series = os.path.join(d, "series")
            os.makedirs(series)
            for i in (2, 0, 1):  # written out of order, InstanceNumber reversed: the position along the normal decides
                ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
                ds.InstanceNumber = 3 - i
                ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i]
                ds.PixelData = (ds.pixel_array + i * 100).astype(ds.pixel_array.dtype).tobytes()
                ds.save_as(os.path.join(series, f"f{i}.dcm"))
            s0, s2 = load_slice(series, 0), load_slice(series, 2)
            self.assertAlmostEqual(float((s2 - s0).mean()), 200.0, places=3)
            self.assertEqual(s0.meta["modality"], "CT")
