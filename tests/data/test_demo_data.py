"""Offline tests of the demo data builder (no pip download: the network is never used here)."""

from __future__ import annotations

import json
import os
import tempfile
import unittest
import zipfile
from unittest import mock

import numpy as np
from custom.tools import demo_data
from custom.tools.demo_data import WHEELS, DemoConfig, build_demo_data, fetch_wheels


class TestDemoData(unittest.TestCase):
    def test_cached_wheels_are_reused_without_pip(self):
        with tempfile.TemporaryDirectory() as d:
            for name in WHEELS:
                path = os.path.join(d, WHEELS[name]["prefix"] + "-py3-none-any.whl")
                with zipfile.ZipFile(path, "w") as z:
                    z.writestr("x.txt", "x")
            with mock.patch.object(demo_data.subprocess, "run", side_effect=AssertionError("pip called")):
                found = fetch_wheels(d)
            self.assertEqual(set(found), set(WHEELS))
            self.assertTrue(all(os.path.isfile(p) for p in found.values()))

    def test_pip_failure_is_reported(self):
        with tempfile.TemporaryDirectory() as d:
            failed = mock.Mock(returncode=1, stderr="no network")
            with mock.patch.object(demo_data.subprocess, "run", return_value=failed):
                with self.assertRaisesRegex(ValueError, "pydicom-data==1.0.0.*no network"):
                    fetch_wheels(d, ["pydicom-data"])

    def test_complete_output_is_reused(self):
        with tempfile.TemporaryDirectory() as d:
            cfg = DemoConfig()
            with open(os.path.join(d, "datalist.json"), "w") as f:
                json.dump({"training": []}, f)
            with open(os.path.join(d, ".demo_data.json"), "w") as f:
                json.dump({"digest": cfg.digest()}, f)
            with mock.patch.object(demo_data, "fetch_wheels", side_effect=AssertionError("rebuilt")):
                self.assertEqual(build_demo_data(d, config=cfg, log=lambda s: None), os.path.join(d, "datalist.json"))
            self.assertNotEqual(DemoConfig(ct_i0=1e4).digest(), cfg.digest())  # another recipe triggers a rebuild

    def test_degrade_jobs_give_pairs_in_physical_units(self):
        cfg = DemoConfig().as_dict()
        yy, xx = np.mgrid[:32, :32] - 16
        disc = (xx**2 + yy**2 < 100).astype(np.float32)
        ct = demo_data._degrade(("CT", {"name": "a", "hu": disc * 1040 - 1000, "spacing": 1.0}, cfg))
        pet = demo_data._degrade(("PET", {"name": "b", "clean": disc * 5}, {**cfg, "pet_iterations": 3}))
        mri = demo_data._degrade(("MRI", {"name": "c", "clean": disc * 2000}, cfg))
        for degraded, clean in (ct, pet, mri):
            self.assertEqual(degraded.shape, (32, 32))
            self.assertEqual(clean.shape, (32, 32))
            self.assertGreater(float(np.abs(degraded - clean).mean()), 0.0)
        self.assertLess(float(ct[1].min()), -800)  # HU kept
        self.assertGreater(float(mri[1].max()), 1999)


if __name__ == "__main__":
    unittest.main()


def _nifti_bytes(arr: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(arr, np.eye(4)).to_bytes())


def _fake_wheels(folder: str) -> None:
    """Wheels holding tiny stand-ins for every member the builder reads (same names, small arrays)."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(buf)
    ct = buf.getvalue()
    buf = io.BytesIO()
    pydicom.dcmread(get_testdata_file("MR_small.dcm")).save_as(buf)
    mr = buf.getvalue()
    head = np.zeros((24, 28, 150), dtype=np.uint8)
    head[4:20, 4:24, 10:140] = 200
    members = {
        "pydicom-data": {f"data_store/data/{n}": ct for n in ("693_UNCR.dcm", "explicit_VR-UN.dcm")}
        | {"data_store/data/MR2_UNCR.dcm": mr},
        "dipy": {
            "dipy/data/files/S0_10slices.nii.gz": _nifti_bytes(rng.uniform(0, 4095, (16, 16, 10, 1)).astype(np.uint16)),
            "dipy/data/files/t1_coronal_slice.npy": b"",
        },
        "nilearn": {demo_data._MNI.format(k): _nifti_bytes(head // d) for k, d in (("t1", 1), ("gm", 2), ("wm", 3))},
        "totalsegmentator": {
            "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz": _nifti_bytes(
                np.where(head > 0, 35, 0).astype(np.int16)
            )
        },
    }
    npy = io.BytesIO()
    np.save(npy, rng.uniform(0, 1, (20, 20)))
    members["dipy"]["dipy/data/files/t1_coronal_slice.npy"] = npy.getvalue()
    for name, files in members.items():
        with zipfile.ZipFile(os.path.join(folder, WHEELS[name]["prefix"] + "-py3-none-any.whl"), "w") as z:
            for member, data in files.items():
                z.writestr(member, data)


class TestDemoBuildOffline(unittest.TestCase):
    def test_build_splits_by_source_and_labels_pet_synthetic(self):
        from custom.data import load_datalist, validate_datalist

        with tempfile.TemporaryDirectory() as d:
            wheels = os.path.join(d, "wheels")
            os.makedirs(wheels)
            _fake_wheels(wheels)
            cfg = DemoConfig(
                ct_size=32,
                mri_size=32,
                pet_size=32,
                ct_train_slices=3,
                ct_realisations=1,
                mri_train_slices=3,
                pet_iterations=2,
                pet_slabs=(4, 2, 2),
            )
            out = os.path.join(d, "demo")
            with mock.patch.object(demo_data.subprocess, "run", side_effect=AssertionError("pip called")):
                path = build_demo_data(out, wheels, cfg, workers=1, log=lambda s: None)
                self.assertEqual(validate_datalist(path), (3 + 1 + 1 + 2) + (3 + 10 + 4 + 1 + 1) + (4 + 2 + 2))
            splits = {s: load_datalist(path, s) for s in ("training", "validation", "test")}
            for modality in ("CT", "MRI", "PET"):
                for s in splits.values():
                    self.assertTrue(any(i["modality"] == modality for i in s))
            sources = {
                s: {i["source"].split(",")[0] for i in items if i["modality"] != "PET"} for s, items in splits.items()
            }
            self.assertFalse(sources["training"] & sources["test"])  # no source file in two splits
            self.assertFalse(sources["training"] & sources["validation"])
            pet = [i for s in splits.values() for i in s if i["modality"] == "PET"]
            self.assertTrue(
                all("synthetic" in i["image"] and "synthetic" in i["task"] and "SYNTHETIC" in i["source"] for i in pet)
            )
            with open(os.path.join(out, "PROVENANCE.txt")) as f:
                self.assertIn("SYNTHETIC", f.read())
            with mock.patch.object(demo_data, "fetch_wheels", side_effect=AssertionError("rebuilt")):
                self.assertEqual(build_demo_data(out, wheels, cfg, log=lambda s: None), path)  # reused
