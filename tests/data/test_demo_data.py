"""Offline tests of the demo data builder (no pip download: the network is never used here)."""

from __future__ import annotations

import json
import os
import tempfile
import unittest
import zipfile
from unittest import mock

import numpy as np

from custom.data import demo_data
from custom.data.demo_data import WHEELS, DemoConfig, build_demo_data, fetch_wheels


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
