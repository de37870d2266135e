from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np
import pydicom
from custom.data import DicomReader, load_image
from custom.data.readers import pet_suv_factor
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.utils import save_nifti

CT_FILE = get_testdata_file("CT_small.dcm")
MR_FILE = get_testdata_file("MR_small.dcm")


def _pet_dataset(weight=70.0, dose=3.7e8, half_life=6586.2, start="100000", series="110000"):
    ds = pydicom.dcmread(CT_FILE)
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.PatientWeight = weight
    ds.SeriesDate = "20200101"
    ds.SeriesTime = series
    info = Dataset()
    info.RadionuclideTotalDose = dose
    info.RadionuclideHalfLife = half_life
    info.RadiopharmaceuticalStartTime = start
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])
    return ds


class TestReaders(unittest.TestCase):
    def test_ct_dicom_rescaled_to_hu_with_modality(self):
        ds = pydicom.dcmread(CT_FILE)
        img = load_image(CT_FILE)
        expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        self.assertEqual(tuple(img.shape), (128, 128))
        np.testing.assert_allclose(np.sort(img.numpy().ravel()), np.sort(expected.ravel()))
        self.assertLess(float(img.min()), -500)  # air in HU, not raw stored values
        self.assertEqual(img.meta["modality"], "CT")
        self.assertEqual(load_image(MR_FILE).meta["modality"], "MRI")

    def test_dicom_series_folder_is_stacked(self):
        with tempfile.TemporaryDirectory() as d:
            series = os.path.join(d, "series")
            os.makedirs(series)
            for i in range(3):
                ds = pydicom.dcmread(CT_FILE)
                ds.InstanceNumber = i + 1
                ds.ImagePositionPatient = [0.0, 0.0, float(i) * 2.5]
                ds.save_as(os.path.join(series, f"s{i}.dcm"))
            img = load_image(series)
            self.assertEqual(tuple(img.shape), (128, 128, 3))
            self.assertEqual(img.meta["modality"], "CT")

    def test_pet_suv_from_tags(self):
        ds = _pet_dataset()
        decayed = 3.7e8 * 2 ** (-3600.0 / 6586.2)
        self.assertAlmostEqual(pet_suv_factor(ds, "pet.dcm"), 70.0 * 1000.0 / decayed, places=9)
        with self.assertRaisesRegex(ValueError, "pet.dcm"):
            pet_suv_factor(_pet_dataset(weight=0.0), "pet.dcm")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "pet.dcm")
            ds.save_as(path)
            raw = load_image(path, dicom_suv=False).numpy()
            suv = load_image(path)
            np.testing.assert_allclose(suv.numpy(), raw * pet_suv_factor(ds, path), rtol=1e-5)
            self.assertEqual(suv.meta["modality"], "PET")

    def test_modality_in_meta(self):
        self.assertEqual(load_image(CT_FILE).meta["modality"], "CT")
        with tempfile.TemporaryDirectory() as d:
            nii = load_image(save_nifti(os.path.join(d, "a.nii.gz"), np.zeros((4, 4))))
            self.assertFalse(nii.meta.get("modality"))  # NIfTI carries no modality: the data list gives it

    def test_unreadable_and_missing_files_are_named(self):
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "broken.nii.gz")
            with open(bad, "wb") as f:
                f.write(b"not an image")
            with self.assertRaisesRegex(ValueError, "broken.nii.gz: unreadable"):
                load_image(bad)
            with self.assertRaisesRegex(ValueError, "nope.nii: file not found"):
                load_image(os.path.join(d, "nope.nii"))

    def test_reader_usable_in_loadimaged(self):
        from monai.transforms import LoadImaged

        out = LoadImaged("image", reader=DicomReader)({"image": CT_FILE})
        self.assertEqual(out["image"].meta["modality"], "CT")
        with tempfile.TemporaryDirectory() as d:  # NIfTI items in the same list fall back to MONAI's readers
            nii = save_nifti(os.path.join(d, "a.nii.gz"), np.ones((5, 6, 2)))
            self.assertEqual(tuple(LoadImaged("image", reader=DicomReader)({"image": nii})["image"].shape), (5, 6, 2))


if __name__ == "__main__":
    unittest.main()
