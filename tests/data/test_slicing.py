from __future__ import annotations

import os
import pathlib
import re
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from custom.data import LoadSliced, expand_slices, load_image, load_slice, num_slices
from monai.data import Dataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from tests.utils import dicom_slice, save_nifti, save_scaled_nifti, write_bin, write_ct_series


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


class TestSliceSelection(unittest.TestCase):
    """Which slices / files the training path uses: counts, shapes and refusals of num_slices / expand_slices /
    load_slice (a wrong count or a wrong slice silently changes the training data)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        self.vol = np.arange(8 * 6 * 5, dtype=np.float32).reshape(8, 6, 5)

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name: str) -> str:
        return os.path.join(self.d, name)

    def test_slab_is_float32_and_checked_like_a_full_load(self):
        """A scaled int16 volume is read as float32 with the scaling applied; a NaN in the slab read is refused."""
        raw = np.arange(8 * 6 * 5, dtype=np.int16).reshape(8, 6, 5) - 100
        path = save_scaled_nifti(self.path("scaled.nii.gz"), raw, slope=0.5, inter=-3.0)
        for z in (0, 4):
            sl = load_slice(path, z)
            self.assertEqual(sl.dtype, torch.float32)
            np.testing.assert_array_equal(sl.numpy(), raw[..., z] * 0.5 - 3.0)
            np.testing.assert_array_equal(sl.numpy(), load_image(path)[..., z].numpy())
        vol = self.vol.copy()
        vol[2, 3, 1] = np.nan
        path = save_nifti(self.path("nan.nii.gz"), vol)
        np.testing.assert_array_equal(load_slice(path, 2).numpy(), vol[..., 2])  # other slices are fine
        with self.assertRaisesRegex(ValueError, r"nan\.nii\.gz: non-finite values"):
            load_slice(path, 1)

    def test_trailing_singleton_axes_are_dropped(self):
        for name, arr in (("v4.nii.gz", self.vol[..., None]), ("v5.nii.gz", self.vol[..., None, None])):
            path = save_nifti(self.path(name), arr)
            self.assertEqual(num_slices(path), 5, name)
            for z in (0, 3, 4):
                np.testing.assert_array_equal(load_slice(path, z).numpy(), self.vol[..., z], err_msg=name)

    def test_single_slice_volume_is_one_2d_slice(self):
        path = save_nifti(self.path("one.nii.gz"), self.vol[..., 1:2])  # (8, 6, 1): a 3D volume of one slice
        self.assertEqual(num_slices(path), 1)
        self.assertEqual([it["slice_index"] for it in expand_slices([{"label": path}])], [0])
        sl = load_slice(path, 0)
        self.assertEqual(tuple(sl.shape), (8, 6))
        np.testing.assert_array_equal(sl.numpy(), self.vol[..., 1])
        with self.assertRaisesRegex(ValueError, "one.nii.gz: slice index 1 out of range"):
            load_slice(path, 1)

    def test_not_2d_or_3d_is_refused_naming_the_file(self):
        cases = {"four_d.nii.gz": np.stack([self.vol, self.vol], -1), "one_d.nii.gz": np.arange(5.0)}
        for name, arr in cases.items():
            path = save_nifti(self.path(name), arr)
            for call in (lambda: num_slices(path), lambda: load_slice(path, 0)):
                with self.assertRaisesRegex(ValueError, f"{name}: expected a 2D or 3D image, got shape"):
                    call()

    def test_other_axes_and_stride(self):
        path = save_nifti(self.path("v.nii.gz"), self.vol, spacing=2.0)
        self.assertEqual([num_slices(path, 0), num_slices(path, 1), num_slices(path)], [8, 6, 5])
        items = expand_slices([{"label": path, "task": "t"}], axis=0, stride=3)
        self.assertEqual([it["slice_index"] for it in items], [0, 3, 6])
        self.assertEqual({it["task"] for it in items}, {"t"})
        sl = LoadSliced("label", axis=0)(items[2])["label"]
        np.testing.assert_array_equal(sl.numpy(), self.vol[6])
        self.assertEqual(float(sl.affine[0, 3]), 12.0)  # origin of slice 6 at 2 mm spacing along x
        last = load_slice(path, 4)
        np.testing.assert_array_equal(np.asarray(last.affine)[:, 3], [0.0, 0.0, 4.0, 1.0])

    def test_missing_file_is_named(self):
        for name in ("nope.nii.gz", "nope.bin", "nope.dcm"):
            path = self.path(name)
            calls = (lambda: num_slices(path), lambda: load_slice(path, 0), lambda: expand_slices([{"label": path}]))
            for call in calls:
                with self.assertRaisesRegex(ValueError, f"{name}: file not found"):
                    call()

    def test_path_like_input_gives_string_file_names(self):
        path = save_nifti(self.path("v.nii.gz"), self.vol)
        sl = load_slice(pathlib.Path(path), 2)
        self.assertEqual(sl.meta["filename_or_obj"], path)
        self.assertIsInstance(sl.meta["filename_or_obj"], str)
        self.assertEqual(sl.meta["slice_index"], 2)
        self.assertEqual(num_slices(pathlib.Path(path)), 5)

    def test_2d_files_are_one_slice(self):
        flat = save_nifti(self.path("flat.nii.gz"), self.vol[..., 0])
        single = dicom_slice(self.path("one.dcm"), np.arange(30, dtype=np.int16).reshape(6, 5))
        patch = self.path("patch.bin")
        write_bin(patch, self.vol[..., 0])
        for path in (flat, single, patch):
            name = os.path.basename(path)
            self.assertEqual(num_slices(path), 1, name)
            self.assertEqual([it["slice_index"] for it in expand_slices([{"label": path}])], [0], name)
            np.testing.assert_array_equal(load_slice(path, 0).numpy(), load_image(path).numpy(), err_msg=name)
            self.assertEqual(load_slice(path, 0).ndim, 2, name)
            for index in (1, -1):
                with self.assertRaisesRegex(ValueError, f"{name}: slice index {index} out of range for 1 slice"):
                    load_slice(path, index)

    def test_dicom_series_counts_files_and_refuses_out_of_range(self):
        folder = self.path("series")
        os.makedirs(folder)
        write_ct_series(folder, n=3)
        self.assertEqual(num_slices(folder), 3)
        self.assertEqual([it["slice_index"] for it in expand_slices([{"image": folder}], key="image")], [0, 1, 2])
        np.testing.assert_array_equal(load_slice(folder, 2).numpy(), load_image(folder)[..., 2].numpy())
        for index in (3, -1):
            with self.assertRaisesRegex(ValueError, f"series: slice index {index} out of range for 3 slices"):
                load_slice(folder, index)
        with self.assertRaisesRegex(ValueError, "series: a DICOM series can only be sliced along axis 2"):
            load_slice(folder, 0, axis=0)

    def test_load_sliced_defaults(self):
        path = save_nifti(self.path("v.nii.gz"), self.vol)
        out = LoadSliced(["image", "label"])({"image": path, "label": path})  # no slice_index: slice 0
        for key in ("image", "label"):
            np.testing.assert_array_equal(out[key].numpy(), self.vol[..., 0])
            self.assertEqual(out[key].meta["slice_index"], 0)
        with self.assertRaises(KeyError):  # a missing key is an error unless allowed
            LoadSliced(["image", "label"])({"label": path, "slice_index": 1})
        out = LoadSliced(["image", "label"], allow_missing_keys=True)({"label": path, "slice_index": 1})
        self.assertNotIn("image", out)
        np.testing.assert_array_equal(out["label"].numpy(), self.vol[..., 1])

    def test_files_the_loaders_refuse_are_refused_when_counting(self):
        """num_slices (expand_slices) must not count a file that load_slice cannot read: it used to count a .mgz
        volume's slices and any other file as one slice, and training then failed on the first item."""
        mgz = self.path("v.mgz")
        nib.save(nib.MGHImage(self.vol, np.eye(4)), mgz)
        text = self.path("notes.txt")
        with open(text, "w") as f:
            f.write("not an image")
        for path in (mgz, text):
            name = os.path.basename(path)
            for call in (
                lambda: num_slices(path),
                lambda: expand_slices([{"label": path}]),
                lambda: load_slice(path, 0),
            ):
                with self.assertRaisesRegex(ValueError, f"{name}: unsupported file type"):
                    call()
        for n in (1, 2):  # a series folder of any size, one file too (load_slice refuses the folder)
            folder = self.path(f"series{n}")
            os.makedirs(folder)
            write_ct_series(folder, n=n)
            for axis in (0, 1):
                for call in (lambda: num_slices(folder, axis), lambda: load_slice(folder, 0, axis)):
                    with self.assertRaisesRegex(ValueError, f"series{n}: a DICOM series can only be sliced along axis"):
                        call()
        single = dicom_slice(self.path("one.dcm"), np.arange(30, dtype=np.int16).reshape(6, 5))
        self.assertEqual(num_slices(single, 0), 1)  # a single 2D file is one slice along any axis

    def test_stride_must_be_a_positive_integer(self):
        path = save_nifti(self.path("v.nii.gz"), self.vol)
        self.assertEqual([it["slice_index"] for it in expand_slices([{"label": path}], stride=4)], [0, 4])
        for stride in (0, -1, 1.5, True, None, "abc", "2", float("inf")):
            with self.assertRaisesRegex(
                ValueError, f"stride must be a positive integer.*got {re.escape(repr(stride))}"
            ):
                expand_slices([{"label": path}], stride=stride)
        for stride in (np.int64(2), 2.0):  # a numpy integer (from a config) or an integral float is a stride
            self.assertEqual([it["slice_index"] for it in expand_slices([{"label": path}], stride=stride)], [0, 2, 4])


if __name__ == "__main__":
    unittest.main()
