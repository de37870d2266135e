"""Offline tests of the demo data builder (no pip download: the network is never used here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest
import zipfile
from unittest import mock

import numpy as np
from custom.tools import demo_data
from custom.tools.demo_data import WHEELS, DemoConfig, build_demo_data, fetch_wheels

SMALL = dict(
    ct_size=32,
    mri_size=32,
    pet_size=32,
    ct_train_slices=3,
    ct_realisations=2,
    mri_train_slices=3,
    pet_iterations=2,
    pet_slabs=(4, 2, 2),
)
"""A small demo configuration: every track, a few 32² slices, seconds of CPU."""


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


def _nifti_bytes(arr: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(arr, np.eye(4)).to_bytes())


def _fake_wheels(folder: str, replace: dict | None = None) -> None:
    """Wheels holding tiny stand-ins for every member the builder reads (same names, small arrays); ``replace``:
    {member name: bytes} overriding some of them."""
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
    for files in members.values():
        files.update({k: v for k, v in (replace or {}).items() if k in files})
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
            cfg = DemoConfig(**{**SMALL, "ct_realisations": 1})
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


def _dicom_bytes(name: str, spacing: float, outside_fov: bool = False) -> bytes:
    """A pydicom test file with another pixel spacing (and, ``outside_fov``, a -3024 HU quadrant)."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    ds.PixelSpacing = [spacing, spacing]
    if outside_fov:
        arr = ds.pixel_array.copy()
        arr[: arr.shape[0] // 2, : arr.shape[1] // 2] = -3024 - int(ds.RescaleIntercept)
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _atlas() -> np.ndarray:
    """CT atlas stand-in (x, y, z) = (24, 28, 150): 35 HU tissue, 0 HU pockets each touching one x/y face, an
    enclosed 0 HU pocket and a 1 HU strip next to the x = 0 pocket."""
    vol = np.full((24, 28, 150), 35, dtype=np.int16)
    vol[0, 10:14] = 0  # touches the x = 0 face only
    vol[-1, 10:14] = 0
    vol[8:12, 0] = 0
    vol[8:12, -1] = 0
    vol[10:14, 12:16] = 0  # enclosed in x and y: not background
    vol[1, 10:14] = 1  # tissue at 1 HU next to a background pocket
    return vol


class TestHelpers(unittest.TestCase):
    def test_fit_centres_pads_and_crops(self):
        img = np.arange(15, dtype=np.float32).reshape(3, 5)
        out = demo_data._fit(img, 4, -1.0)
        self.assertEqual(out.shape, (4, 4))
        self.assertEqual(out.dtype, np.float32)
        expected = np.full((4, 4), -1.0)
        expected[0:3, :] = img[:, 0:4]  # 1 row of padding (bottom), 1 column cropped (right)
        np.testing.assert_array_equal(out, expected)
        img = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
        out = demo_data._fit(img, 3, 0.5)
        expected = np.full((3, 3), 0.5)
        expected[:, 0:2] = img[2:5]  # rows 2..4 of 7 kept, 2 columns placed at the left of centre
        np.testing.assert_array_equal(out, expected)
        img = np.arange(2 * 7, dtype=np.float32).reshape(2, 7)
        np.testing.assert_array_equal(demo_data._fit(img, 3, 0.0)[:2], img[:, 2:5])  # central columns kept
        out = demo_data._fit(np.ones((2, 2), np.float32), 6, 0.0)
        np.testing.assert_array_equal(np.argwhere(out == 1)[[0, -1]], [[2, 2], [3, 3]])

    def test_shrink_interpolates_and_anti_aliases(self):
        step = np.repeat(np.array([[0.0, 0.0, 1000.0, 1000.0]], np.float32), 4, axis=0)
        up = demo_data._shrink(step, 8)
        self.assertEqual(up.dtype, np.float32)
        self.assertGreaterEqual(float(up.min()), 0.0)  # linear: no overshoot
        self.assertLessEqual(float(up.max()), 1000.0)
        self.assertTrue(np.any((up > 1.0) & (up < 999.0)))  # linear: intermediate values
        line = np.zeros((5, 5), np.float32)
        line[:, 2] = 1000.0
        np.testing.assert_allclose(demo_data._shrink(line, 10)[5, 3:7], [250.0, 750.0, 750.0, 250.0], atol=1e-3)
        noise = np.random.default_rng(0).uniform(0.0, 1000.0, (64, 64)).astype(np.float32)
        small = demo_data._shrink(noise, 4)
        self.assertLess(float(small.std()), 50.0)  # anti-aliased: 16 x 16 pixel averages, not samples
        self.assertAlmostEqual(float(small.mean()), 500.0, delta=50.0)

    def test_axial_puts_anterior_up(self):
        vol = np.zeros((3, 4, 2), np.float32)  # RAS: x right, y anterior
        vol[0, 3, 1] = 1.0  # x = 0, most anterior, slice 1
        vol[2, 0, 1] = 2.0
        out = demo_data._axial(vol, 1)
        self.assertEqual(out.shape, (4, 3))
        self.assertEqual(out.dtype, np.float32)
        self.assertEqual(out[0, 0], 1.0)  # anterior -> top row, x = 0 -> left column
        self.assertEqual(out[3, 2], 2.0)
        self.assertEqual(float(demo_data._axial(vol, 0).sum()), 0.0)

    def test_even(self):
        self.assertEqual(demo_data._even(60, 145, 4), [60, 88, 117, 145])
        self.assertEqual(demo_data._even(0, 10, 4), [0, 3, 7, 10])
        self.assertEqual(demo_data._even(5, 6, 5), [5, 6])  # duplicates removed

    def test_dicom_hu_applies_rescale(self):
        from types import SimpleNamespace

        raw = np.array([[0, 10], [20, 30]], np.int16)
        ds = SimpleNamespace(pixel_array=raw, RescaleSlope="2", RescaleIntercept="-1024")
        np.testing.assert_array_equal(demo_data._dicom_hu(ds), raw * 2.0 - 1024.0)
        np.testing.assert_array_equal(demo_data._dicom_hu(SimpleNamespace(pixel_array=raw)), raw)  # no rescale: raw
        self.assertEqual(demo_data._dicom_hu(ds).dtype, np.float32)

    def test_psnr(self):
        ref = np.array([0.0, 10.0, 20.0, 30.0])
        self.assertAlmostEqual(demo_data._psnr(ref[:2], np.array([0.0, 9.0]), (0.0, 10.0)), 10 * np.log10(200))
        # clipped to the window first: values outside it do not count
        self.assertAlmostEqual(demo_data._psnr(ref, ref + [0, 3, 5, 100], (0.0, 20.0)), 10 * np.log10(400 / 2.25))
        self.assertAlmostEqual(demo_data._psnr(np.full(4, 5.0), np.full(4, 4.0), (0.0, 10.0)), 0.0)  # flat: range 1
        self.assertEqual(demo_data._psnr(ref, ref, (0.0, 30.0)), float("inf"))
        self.assertAlmostEqual(demo_data._psnr(-ref, -ref - 1.0, (-30.0, 0.0)), 10 * np.log10(900 / 0.75))

    def test_save_nifti_writes_float32_with_spacing(self):
        import nibabel as nib

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sub", "a.nii.gz")
            os.makedirs(os.path.dirname(path))
            demo_data._save_nifti(np.arange(6, dtype=np.float64).reshape(2, 3), path, 0.5)
            img = nib.load(path)
            self.assertEqual(img.get_data_dtype(), np.float32)
            np.testing.assert_array_equal(img.affine, np.diag([0.5, 0.5, 1.0, 1.0]))
            np.testing.assert_array_equal(img.get_fdata(), np.arange(6).reshape(2, 3))
            self.assertEqual(os.listdir(os.path.dirname(path)), ["a.nii.gz"])  # no temporary left

    def test_member_errors_are_value_errors(self):
        with tempfile.TemporaryDirectory() as d:
            good, bad = os.path.join(d, "a.whl"), os.path.join(d, "b.whl")
            with zipfile.ZipFile(good, "w") as z:
                z.writestr("x.txt", "x")
            with open(bad, "wb") as f:
                f.write(b"not a zip")
            self.assertEqual(demo_data._member(good, "x.txt"), b"x")
            with self.assertRaisesRegex(ValueError, "cannot read y.txt"):
                demo_data._member(good, "y.txt")
            with self.assertRaisesRegex(ValueError, "b.whl: cannot read x.txt"):
                demo_data._member(bad, "x.txt")

    def test_config_defaults_digest_and_dict(self):
        cfg = DemoConfig()
        # the documented recipe (module and class docstrings)
        self.assertEqual((cfg.ct_i0, cfg.mri_factor, cfg.pet_dose_reduction), (1e5, 4.0, 12.0))
        self.assertEqual(cfg.pet_suv, (8.0, 2.5, 1.0))
        d = cfg.as_dict()
        self.assertEqual(d["version"], demo_data.VERSION)
        self.assertEqual(d["pet_slabs"], list(cfg.pet_slabs))  # tuples as JSON lists
        self.assertRegex(cfg.digest(), r"^[0-9a-f]{12}$")
        self.assertEqual(DemoConfig(seed=0).digest(), cfg.digest())
        self.assertNotEqual(DemoConfig(seed=1).digest(), cfg.digest())


class TestFetchWheels(unittest.TestCase):
    def _pip(self, create: bool, returncode: int = 0):
        calls = []

        def run(cmd, **kwargs):
            calls.append((cmd, kwargs))
            folder, spec = cmd[cmd.index("-d") + 1], cmd[-1]
            name = next(n for n in WHEELS if WHEELS[n]["spec"] == spec)
            if create:
                open(os.path.join(folder, WHEELS[name]["prefix"] + "-py3-none-any.whl"), "wb").close()
            return mock.Mock(returncode=returncode, stderr="")

        return calls, run

    def test_missing_wheel_is_downloaded_into_a_new_cache(self):
        with tempfile.TemporaryDirectory() as d:
            cache = os.path.join(d, "new", "wheels")
            calls, run = self._pip(create=True)
            with mock.patch.object(demo_data.subprocess, "run", side_effect=run):
                found = fetch_wheels(cache, ["dipy"])
            self.assertEqual(found, {"dipy": os.path.join(cache, "dipy-1.12.1-py3-none-any.whl")})
            ((cmd, kwargs),) = calls
            self.assertEqual(cmd[:4], [sys.executable, "-m", "pip", "download"])
            self.assertIn("--no-deps", cmd)
            self.assertEqual(cmd[-1], "dipy==1.12.1")
            self.assertTrue(kwargs["capture_output"] and kwargs["text"])  # pip's stderr goes into the error

    def test_other_wheels_in_the_cache_are_not_taken(self):
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "dipy-1.12.1-py3-none-any.whl"), "wb").close()
            open(os.path.join(d, "nilearn-0.14.1.tar.gz"), "wb").close()
            _, run = self._pip(create=False)
            with mock.patch.object(demo_data.subprocess, "run", side_effect=run):
                with self.assertRaisesRegex(ValueError, "could not fetch nilearn==0.14.1 with pip .exit 0."):
                    fetch_wheels(d, ["nilearn"])

    def test_first_of_several_matching_wheels(self):
        with tempfile.TemporaryDirectory() as d:
            names = ["dipy-1.12.1-cp311-none-any.whl", "dipy-1.12.1-cp310-none-any.whl"]
            for n in names:
                open(os.path.join(d, n), "wb").close()
            with mock.patch.object(demo_data.os, "listdir", return_value=names):
                self.assertEqual(fetch_wheels(d, ["dipy"])["dipy"], os.path.join(d, names[1]))

    def test_error_keeps_the_end_of_pip_output(self):
        with tempfile.TemporaryDirectory() as d:
            failed = mock.Mock(returncode=2, stderr="x" * 1000 + "ERROR: No matching distribution\n")
            with mock.patch.object(demo_data.subprocess, "run", return_value=failed):
                with self.assertRaises(ValueError) as e:
                    fetch_wheels(d, ["dipy"])
            self.assertTrue(str(e.exception).endswith("ERROR: No matching distribution"), str(e.exception))
            self.assertIn("could not fetch dipy==1.12.1 with pip (exit 2)", str(e.exception))
            self.assertLess(len(str(e.exception)), 700)


class TestSources(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.mr2 = _dicom_bytes("CT_small.dcm", 0.25)
        _fake_wheels(
            d,
            {
                "data_store/data/explicit_VR-UN.dcm": _dicom_bytes("CT_small.dcm", 0.5),
                "data_store/data/693_UNCR.dcm": _dicom_bytes("CT_small.dcm", 0.4, outside_fov=True),
                "data_store/data/MR2_UNCR.dcm": cls.mr2,
                "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz": _nifti_bytes(_atlas()),
            },
        )
        cls.wheels = fetch_wheels(d)
        cls.cfg = DemoConfig(**SMALL)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_ct_slices_splits_and_spacing(self):
        import pydicom
        from pydicom.data import get_testdata_file

        items = {i["name"]: i for i in demo_data._ct_sources(self.wheels, self.cfg)}
        splits = {n: i["split"] for n, i in items.items()}
        self.assertEqual(
            splits,
            {
                "ct_tsatlas_z060": "training",
                "ct_tsatlas_z102": "training",
                "ct_tsatlas_z145": "training",
                "ct_pydicomdata_head693_n0": "training",
                "ct_pydicomdata_head693_n1": "training",
                "ct_pydicom_ctsmall": "validation",
                "ct_pydicomdata_abdomen": "test",
                "ct_pydicom_head_j2k": "test",
            },
        )
        for name, item in items.items():
            self.assertEqual(item["hu"].shape, (128, 128) if name == "ct_pydicom_ctsmall" else (32, 32), name)
        spacing = {n: i["spacing"] for n, i in items.items()}
        self.assertEqual(spacing["ct_tsatlas_z060"], 1.0)
        self.assertAlmostEqual(spacing["ct_pydicomdata_abdomen"], 0.5 * 128 / 32)
        self.assertAlmostEqual(spacing["ct_pydicomdata_head693_n1"], 0.4 * 128 / 32)
        self.assertAlmostEqual(spacing["ct_pydicom_ctsmall"], 0.661468)
        self.assertAlmostEqual(spacing["ct_pydicom_head_j2k"], 0.431 * 512 / 32)
        ctsmall = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        np.testing.assert_array_equal(items["ct_pydicom_ctsmall"]["hu"], ctsmall.pixel_array - 1024.0)
        # outside-FOV -3024 HU (693) and values below -1024 (J2K) clipped to -1024 HU
        for name in ("ct_pydicomdata_head693_n0", "ct_pydicom_head_j2k"):
            hu = items[name]["hu"]
            self.assertGreaterEqual(float(hu.min()), -1024.01, name)
            self.assertGreater(float(hu.max()), 0.0, name)
        self.assertAlmostEqual(float(items["ct_pydicomdata_head693_n0"]["hu"][2, 2]), -1024.0, places=2)
        self.assertGreater(float(items["ct_pydicomdata_abdomen"]["hu"][2, 2]), -1000.0)  # abdomen: unclipped file
        self.assertFalse(np.allclose(items["ct_pydicom_head_j2k"]["hu"], items["ct_pydicomdata_head693_n0"]["hu"]))
        self.assertIn("noise draw 1", items["ct_pydicomdata_head693_n1"]["source"])

    def test_ct_atlas_background_is_air(self):
        hu = {i["name"]: i["hu"] for i in demo_data._ct_sources(self.wheels, self.cfg)}["ct_tsatlas_z102"]

        def at(x, y):  # atlas voxel (x, y) in the 32^2 slice: 28 x 24 after the rotation, centred
            return float(hu[2 + 27 - y, 4 + x])

        for x, y in ((0, 11), (23, 11), (9, 0), (9, 27)):  # 0 HU pockets on each x / y face: air
            self.assertEqual(at(x, y), -1000.0, (x, y))
        self.assertEqual(at(11, 13), 0.0)  # enclosed 0 HU: kept
        self.assertEqual(at(1, 11), 1.0)  # 1 HU tissue: kept
        self.assertEqual(at(5, 5), 35.0)
        self.assertEqual(float(hu[0, 0]), -1000.0)  # padding: air
        self.assertEqual(set(np.unique(hu)), {-1000.0, 0.0, 1.0, 35.0})

    def test_mri_slices(self):
        import pydicom

        items = {i["name"]: i for i in demo_data._mri_sources(self.wheels, self.cfg)}
        names = [n for n in items if n.startswith("mri_mni152t1")]
        self.assertEqual(names, ["mri_mni152t1_z040", "mri_mni152t1_z090", "mri_mni152t1_z140"])
        t1 = items["mri_mni152t1_z090"]["clean"]
        self.assertAlmostEqual(float(t1.max()), 200 * 4095 / 255, places=2)  # uint8 template -> 12 bit
        self.assertEqual(float(t1[0, 0]), 0.0)  # padding
        self.assertEqual(t1.shape, (32, 32))
        b0 = [n for n in items if n.startswith("mri_dipy_b0")]
        self.assertEqual(len(b0), 10)
        self.assertEqual(items[b0[3]]["clean"].shape, (16, 16))
        cor = items["mri_dipy_t1coronal"]["clean"]
        self.assertEqual(cor.shape, (20, 20))
        self.assertGreater(float(cor.max()), 3000.0)  # [0, 1] -> 12 bit
        self.assertLessEqual(float(cor.max()), 4095.0)
        splits = {n: i["split"] for n, i in items.items()}
        self.assertEqual(splits.pop("mri_pydicom_mrsmall"), "validation")
        self.assertEqual(splits.pop("mri_dipy_t1coronal"), "test")
        self.assertEqual(set(splits.values()), {"training"})
        self.assertEqual(len(splits), 3 + 10 + 4)
        shoulder = demo_data._shrink(demo_data._dicom_hu(pydicom.dcmread(io.BytesIO(self.mr2))), 64)
        quads = [items[f"mri_pydicomdata_shoulder_q{q}"]["clean"] for q in range(4)]
        np.testing.assert_array_equal(np.block([[quads[0], quads[1]], [quads[2], quads[3]]]), shoulder)
        self.assertIn("rescaled to 64^2, quadrant 3 (32^2)", items["mri_pydicomdata_shoulder_q3"]["source"])

    def test_mri_coronal_is_rotated(self):
        buf = io.BytesIO()
        np.save(buf, np.arange(6, dtype=np.float64).reshape(2, 3) / 5.0)
        with tempfile.TemporaryDirectory() as d:
            _fake_wheels(d, {"dipy/data/files/t1_coronal_slice.npy": buf.getvalue()})
            items = {i["name"]: i for i in demo_data._mri_sources(fetch_wheels(d), self.cfg)}
        np.testing.assert_allclose(
            items["mri_dipy_t1coronal"]["clean"], np.array([[2, 5], [1, 4], [0, 3]]) * 819.0, rtol=1e-6
        )


def _pet_template(folder: str) -> dict[str, str]:
    """A nilearn wheel with MNI stand-ins (x, y, z) = (160, 32, 150) mm, bands along x: grey matter [8, 24),
    white matter [32, 48), other head tissue [56, 72), a 1 mm grey-matter sheet at 100, faint non-head signal
    [128, 144) (T1 below 15 % of its maximum)."""
    gm, wm, t1 = (np.zeros((160, 32, 150), np.uint8) for _ in range(3))
    gm[8:24], wm[32:48], gm[100] = 255, 255, 255
    t1[8:24], t1[32:48], t1[100], t1[56:72], t1[128:144] = 200, 200, 200, 50, 20
    path = os.path.join(folder, WHEELS["nilearn"]["prefix"] + "-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for k, v in (("gm", gm), ("wm", wm), ("t1", t1)):
            z.writestr(demo_data._MNI.format(k), _nifti_bytes(v))
    return {"nilearn": path}


class TestPetSources(unittest.TestCase):
    def test_synthetic_activity(self):
        import re

        cfg = DemoConfig(pet_size=96, pet_slabs=(4, 2, 2))
        with tempfile.TemporaryDirectory() as d:
            items = demo_data._pet_sources(_pet_template(d), cfg)
        zs = {s: [int(i["name"][-3:]) for i in items if i["split"] == s] for s in ("training", "validation", "test")}
        self.assertEqual(zs, {"training": [18, 34, 56, 72], "validation": [38, 42], "test": [46, 52]})
        scales = []
        for item in items:
            img = item["clean"]  # 16 x 80 (2 mm) slice centred in 96 x 96
            self.assertEqual(img.shape, (96, 96))
            self.assertEqual(float(img[0, 0]), 0.0)  # padding
            row = img[48, 8:88].astype(np.float64)  # along x, 2 mm per pixel
            gm, wm, other, outside = row[8], row[20], row[32], row[68]
            scale = float(re.search(r", x([0-9.]+), 4 mm FWHM", item["source"]).group(1))
            self.assertAlmostEqual(gm / 8.0, scale, delta=0.006)
            self.assertAlmostEqual(gm / other, 8.0, places=3)
            self.assertAlmostEqual(wm / other, 2.5, places=3)
            self.assertLess(abs(outside), 1e-3)  # not head
            sheet = row[44:57]
            x = 2.0 * np.arange(44, 57)
            mean = (sheet * x).sum() / sheet.sum()
            fwhm = 2.355 * np.sqrt((sheet * (x - mean) ** 2).sum() / sheet.sum())
            self.assertGreater(fwhm, 3.6)  # 4 mm FWHM point spread, in 2 mm pixels
            self.assertLess(fwhm, 4.5)
            scales.append(scale)
        self.assertTrue(all(0.8 <= s <= 1.2 for s in scales), scales)
        self.assertGreater(max(scales) - min(scales), 0.05)


class TestDegrade(unittest.TestCase):
    def test_simulator_arguments(self):
        cfg = {**DemoConfig(ct_i0=2e4, pet_dose_reduction=8.0, mri_factor=2.0).as_dict(), "pet_iterations": 3}
        img = np.ones((8, 8), np.float32)
        with mock.patch.object(demo_data, "simulate_low_count_pet", return_value="pet") as pet:
            self.assertEqual(demo_data._degrade(("PET", {"name": "p", "clean": img}, cfg)), "pet")
        args = pet.call_args.args
        self.assertEqual((args[1], args[3], args[4]), (1 / 8.0, cfg["pet_counts"], 3))
        with mock.patch.object(demo_data, "simulate_low_dose_ct", return_value="ct") as ct:
            self.assertEqual(demo_data._degrade(("CT", {"name": "c", "hu": img, "spacing": 0.7}, cfg)), "ct")
        self.assertEqual(ct.call_args.args[1], 2e4)
        self.assertEqual(ct.call_args.kwargs["pixel_spacing_mm"], 0.7)
        with mock.patch.object(demo_data, "kspace_truncate") as mri:
            demo_data._degrade(("MRI", {"name": "m", "clean": img}, cfg))
        self.assertEqual(mri.call_args.args[1], 2.0)

    def test_noise_depends_on_name_and_seed(self):
        cfg = DemoConfig().as_dict()
        hu = np.full((16, 16), 40.0, np.float32)

        def draw(name, seed):
            return demo_data._degrade(("CT", {"name": name, "hu": hu, "spacing": 1.0}, {**cfg, "seed": seed}))[0]

        np.testing.assert_array_equal(draw("a", 0), draw("a", 0))
        self.assertFalse(np.array_equal(draw("a", 0), draw("b", 0)))
        self.assertFalse(np.array_equal(draw("a", 0), draw("a", 1)))
        for seed in (2**32 - 1, 2**40 + 12345):  # any --seed is valid
            self.assertEqual(draw("a", seed).shape, (16, 16))


class _SerialPool:
    """ProcessPoolExecutor stand-in (same process) recording its use."""

    used: list = []

    def __init__(self, max_workers):
        _SerialPool.used.append(max_workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, jobs, chunksize=1):
        return map(fn, jobs)


class TestBuild(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.wheels = os.path.join(cls.tmp.name, "wheels")
        os.makedirs(cls.wheels)
        _fake_wheels(cls.wheels)
        cls.cfg = DemoConfig(**SMALL)
        cls.out = os.path.join(cls.tmp.name, "demo")
        cls.log = []
        _SerialPool.used = []
        with mock.patch.object(demo_data, "ProcessPoolExecutor", _SerialPool):
            cls.path = build_demo_data(cls.out, cls.wheels, cls.cfg, log=cls.log.append)  # default: 2 workers
        cls.pool = list(_SerialPool.used)
        with open(cls.path) as f:
            cls.datalist = json.load(f)
        with open(os.path.join(cls.out, ".demo_data.json")) as f:
            cls.stamp = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_datalist_entries(self):
        import nibabel as nib

        self.assertEqual(self.pool, [2])  # workers > 1: a process pool
        items = [i for s in self.datalist.values() for i in s]
        self.assertEqual(len(items), (3 + 2 + 1 + 2) + (3 + 10 + 4 + 1 + 1) + (4 + 2 + 2))
        tasks = {"CT": "low_dose_ct", "MRI": "mri_super_resolution", "PET": "low_count_pet_synthetic"}
        for item in items:
            self.assertEqual(item["task"], tasks[item["modality"]])
            folder = item["modality"].lower()
            self.assertTrue(item["image"].startswith(f"{folder}/image/"), item)
            self.assertTrue(item["label"].startswith(f"{folder}/label/"), item)
        zooms = {}
        for item in items:
            name = os.path.basename(item["label"])[: -len(".nii.gz")]
            zooms[name] = nib.load(os.path.join(self.out, item["label"])).header.get_zooms()[:2]
        self.assertEqual(zooms["ct_tsatlas_z060"], (1.0, 1.0))
        self.assertEqual(zooms["mri_mni152t1_z040"], (1.0, 1.0))
        self.assertEqual(zooms["pet_synthetic_mni152_z018"], (2.0, 2.0))
        self.assertAlmostEqual(float(zooms["ct_pydicomdata_abdomen"][0]), 0.661468 * 128 / 32, places=5)

    def test_summary_is_the_mean_input_psnr(self):
        import nibabel as nib
        from custom.settings import default_modality_dir, load_modality_settings

        settings = load_modality_settings(default_modality_dir())
        psnrs = {}
        for split, items in self.datalist.items():
            for item in items:
                x, y = (nib.load(os.path.join(self.out, item[k])).get_fdata() for k in ("image", "label"))
                window = tuple(settings[item["modality"]]["eval_window"])
                psnrs.setdefault(f"{item['modality']} {split}", []).append(demo_data._psnr(y, x, window))
        summary = self.stamp["summary"]
        self.assertEqual(set(summary), set(psnrs))
        finite = [k for k, v in psnrs.items() if np.isfinite(np.mean(v))]  # a blank slice of the stand-ins: inf
        self.assertGreater(len(finite), 5)
        for key, values in psnrs.items():
            self.assertEqual(summary[key]["slices"], len(values))
        for key in finite:
            values = psnrs[key]
            self.assertAlmostEqual(summary[key]["input_psnr_db"], np.mean(values), delta=0.0051)
            self.assertEqual(summary[key]["input_psnr_db"], round(summary[key]["input_psnr_db"], 2))
        self.assertEqual(self.stamp["config"], self.cfg.as_dict())
        self.assertGreaterEqual(self.stamp["seconds"], 0.0)
        self.assertLess(self.stamp["seconds"], 600.0)

    def test_log(self):
        import re

        self.assertIn("demo data: simulating 35 slice pairs on 2 process(es)", self.log)
        ready = [x for x in self.log if x.startswith("demo data: wheels ready")]
        self.assertEqual(len(ready), 1)
        self.assertLess(float(re.search(r"\(([0-9.]+) s\)", ready[0]).group(1)), 600.0)
        table = [x.split()[:2] for x in self.log if x.startswith("  ")]
        self.assertEqual(table, sorted(table))
        self.assertEqual(len(table), len(self.stamp["summary"]))
        self.assertIn(["CT", "training"], table)
        self.assertTrue(self.log[-1].startswith(f"demo data: wrote {self.path} in "))
        self.assertLess(float(re.search(r" in ([0-9.]+) s$", self.log[-1]).group(1)), 600.0)

    def test_provenance(self):
        with open(os.path.join(self.out, "PROVENANCE.txt")) as f:
            text = f.read()
        lines = text.splitlines()
        for name in WHEELS:
            self.assertIn(f"  {name}: {WHEELS[name]['prefix']}-py3-none-any.whl ({WHEELS[name]['license']})", lines)
        self.assertIn("read with zipfile, not installed", text)
        self.assertIn("test_files/CT_small.dcm, test_files/J2K_pixelrep_mismatch.dcm", text)
        recipe = next(x for x in lines if x.startswith("Recipe: "))
        self.assertEqual(json.loads(recipe[len("Recipe: ") :]), self.cfg.as_dict())
        summary = [x.strip().split(": {")[0] for x in lines if x.startswith("  ") and "'slices'" in x]
        self.assertEqual(summary, sorted(self.stamp["summary"]))
        for modality in ("CT", "MRI", "PET"):
            self.assertIn(f"{modality}:", lines)
        items = [x for x in lines if x.startswith("  [")]
        self.assertEqual(len(items), sum(len(v) for v in self.datalist.values()))
        self.assertIn("  [training] ct_tsatlas_z060: totalsegmentator", text)
        self.assertTrue(text.endswith("\n"))

    def test_reuse_force_and_relative_path(self):
        def rebuilt(*a, **k):
            raise RuntimeError("rebuilt")

        logs = []
        with mock.patch.object(demo_data, "fetch_wheels", side_effect=rebuilt):
            self.assertEqual(build_demo_data(self.out, self.wheels, self.cfg, log=logs.append), self.path)
            self.assertEqual(logs, [f"demo data: reusing {self.path}"])
            with self.assertRaisesRegex(RuntimeError, "rebuilt"):
                build_demo_data(self.out, self.wheels, self.cfg, force=True, log=logs.append)
            with self.assertRaisesRegex(RuntimeError, "rebuilt"):
                build_demo_data(self.out, self.wheels, DemoConfig(seed=3), log=logs.append)
            cwd = os.getcwd()
            try:
                os.chdir(self.tmp.name)
                self.assertEqual(build_demo_data("demo", self.wheels, self.cfg, log=logs.append), self.path)
            finally:
                os.chdir(cwd)
        with tempfile.TemporaryDirectory() as d:  # a stamp without a data list is no complete build
            with open(os.path.join(d, ".demo_data.json"), "w") as f:
                json.dump({"digest": self.cfg.digest()}, f)
            with mock.patch.object(demo_data, "fetch_wheels", side_effect=rebuilt):
                with self.assertRaisesRegex(RuntimeError, "rebuilt"):
                    build_demo_data(d, self.wheels, self.cfg, log=logs.append)

    def test_one_worker_runs_in_process(self):
        with tempfile.TemporaryDirectory() as d:
            _SerialPool.used = []
            with mock.patch.object(demo_data, "ProcessPoolExecutor", _SerialPool):
                build_demo_data(d, self.wheels, DemoConfig(**{**SMALL, "ct_train_slices": 1}), workers=1, log=len)
            self.assertEqual(_SerialPool.used, [])


class TestMain(unittest.TestCase):
    def test_arguments(self):
        with mock.patch.object(demo_data, "build_demo_data") as build:
            argv = ["--output_dir", "o", "--cache_dir", "c", "--workers", "3", "--force", "--settings_dir", "s"]
            argv += ["--ct_i0", "2e4", "--pet_dose_reduction", "4", "--mri_factor", "2", "--seed", "5"]
            self.assertEqual(demo_data.main(argv), 0)
        args, kwargs = build.call_args
        self.assertEqual(args[:2], ("o", "c"))
        self.assertEqual(kwargs, {"workers": 3, "force": True, "settings_dir": "s"})
        cfg = args[2]
        self.assertEqual((cfg.ct_i0, cfg.pet_dose_reduction, cfg.mri_factor, cfg.seed), (2e4, 4.0, 2.0, 5))
        self.assertEqual(cfg.ct_size, DemoConfig().ct_size)

    def test_defaults(self):
        for cpus, workers in ((None, 1), (1, 1), (8, 2)):
            with mock.patch.object(demo_data.os, "cpu_count", return_value=cpus):
                with mock.patch.object(demo_data, "build_demo_data") as build:
                    self.assertEqual(demo_data.main(["--output_dir", "o"]), 0)
            args, kwargs = build.call_args
            self.assertEqual(args[:2], ("o", None))
            self.assertEqual(kwargs, {"workers": workers, "force": False, "settings_dir": None})
            self.assertEqual(args[2].digest(), DemoConfig().digest())

    def test_output_dir_is_required(self):
        with mock.patch.object(demo_data, "build_demo_data") as build:
            with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                demo_data.main([])
        build.assert_not_called()


if __name__ == "__main__":
    unittest.main()
