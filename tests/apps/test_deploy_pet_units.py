"""The MONAI Deploy app's restore operator (framework stubbed, as in test_apps_stubbed.py) takes the bundle's
``pet_units`` (operator argument or env ``TAT_DEPLOY_PET_UNITS``) and names the actual Modality tag value when it
refuses a series."""

from __future__ import annotations

import json
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
from parameterized import parameterized

from tests.apps.test_apps_stubbed import OVERRIDES, _bundle, _deploy_app, _Port, _study
from tests.utils import dicom_series_folder, pet_tags


class TestDeployPetUnitsAndModality(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)
        self.app = _deploy_app("deploy_app_pet_units")
        self.bundle = _bundle(self.d)
        self.vol = np.random.default_rng(0).integers(0, 20, (32, 32, 2)).astype(np.uint16)

    def tearDown(self):
        self.tmp.cleanup()

    def _restore(self, folder: Path, env: dict | None = None, **kwargs) -> list:
        env = {"TAT_DEPLOY_OVERRIDE": json.dumps(OVERRIDES), **(env or {})}
        with mock.patch.dict(os.environ, env):
            if "TAT_DEPLOY_PET_UNITS" not in env:  # (restored on exit by patch.dict)
                os.environ.pop("TAT_DEPLOY_PET_UNITS", None)
            port = _Port()
            self.app.TATRestoreOperator(None, model_path=self.bundle, **kwargs).compute(
                _Port([_study(folder)]), port, None
            )
        return port.emitted["restored"]

    @parameterized.expand([("argument", {"pet_units": "SUV"}, {}), ("env", {}, {"TAT_DEPLOY_PET_UNITS": "SUV"})])
    def test_declared_pet_units_accepted(self, _, kwargs, env):
        folder = Path(dicom_series_folder(str(self.d / "pet"), self.vol, modality="PT", **pet_tags(units="CNTS")))
        with self.assertRaisesRegex(ValueError, "Units CNTS"):  # not declared: refused naming the tag
            self._restore(folder)
        (item,) = self._restore(folder, env, **kwargs)
        self.assertEqual(item["modality"], "PET")
        self.assertEqual(item["suv_factors"], [1.0, 1.0])
        self.assertEqual(item["values"].shape, (32, 32, 2))

    @parameterized.expand([("other", "OT", "is OT, which is not one of"), ("absent", None, "is missing")])
    def test_modality_message_names_the_tag(self, _, tag, words):
        folder = Path(
            dicom_series_folder(str(self.d / "ot"), self.vol.astype(np.int16), modality=tag or "CT", Modality=tag)
        )
        with self.assertRaises(ValueError) as err:
            self._restore(folder)
        msg = str(err.exception)
        self.assertIn(f"Modality tag (0008,0060) {words}", msg)
        self.assertIn("CT, MR, MRI, PET, PT", msg)  # the one alias table


if __name__ == "__main__":
    unittest.main()
