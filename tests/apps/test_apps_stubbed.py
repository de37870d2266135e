"""The two apps' own code run here, in the project venv, with their frameworks replaced by minimal stand-ins.

The real end-to-end tests (test_monailabel_app.py, test_deploy_app.py) need separately built environments and
skip without them; these tests run the apps' restore and write code (what this project wrote) on every run: with a
zero-residual checkpoint both apps must return clip(input) in the input's stored units, through
custom.inference.restore and custom.inference.writers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import types
import unittest
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom

from tests.apps.helpers import BUNDLE, REPO, TINY_KW, write_ct_dicom_series, write_ct_nifti
from tests.inference.helpers import save_identity_checkpoint

OVERRIDES = {f"network_def#{k}": v for k, v in TINY_KW.items()}


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _bundle(d: Path) -> Path:
    bundle = d / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    save_identity_checkpoint(str(bundle / "models" / "model.pt"))
    return bundle


def _load(path: Path, name: str, stubs: dict) -> types.ModuleType:
    with mock.patch.dict(sys.modules, stubs):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


class TestMonaiLabelTask(unittest.TestCase):
    def test_restores_nifti_through_the_bundle_restore(self):
        stubs = {
            "monailabel": _module("monailabel"),
            "monailabel.interfaces": _module("monailabel.interfaces"),
            "monailabel.interfaces.tasks": _module("monailabel.interfaces.tasks"),
            "monailabel.interfaces.tasks.infer_v2": _module(
                "monailabel.interfaces.tasks.infer_v2", InferType=types.SimpleNamespace(OTHERS="others")
            ),
            "monailabel.tasks": _module("monailabel.tasks"),
            "monailabel.tasks.infer": _module("monailabel.tasks.infer"),
            "monailabel.tasks.infer.basic_infer": _module("monailabel.tasks.infer.basic_infer", BasicInferTask=_Base),
        }
        lib = _load(REPO / "apps" / "monailabel" / "lib" / "tat_restore.py", "tat_restore_stubbed", stubs)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            vol = write_ct_nifti(d / "ct.nii.gz")
            task = lib.TATRestore(str(_bundle(d)), override=OVERRIDES, modality="CT")
            self.assertTrue(task.is_valid())
            path, result = task({"image": str(d / "ct.nii.gz")})
            try:
                out = nib.load(path)
                self.assertEqual(out.get_data_dtype(), np.float32)
                np.testing.assert_allclose(out.affine, nib.load(str(d / "ct.nii.gz")).affine)
                np.testing.assert_allclose(out.get_fdata(), np.clip(vol, -1024, 3072), atol=1e-3)
                self.assertEqual(result["modality"], "CT")
                self.assertEqual(result["shape"], list(vol.shape))
            finally:
                os.remove(path)
            with self.assertRaisesRegex(ValueError, "modality"):
                lib.TATRestore(str(d / "bundle"), override=OVERRIDES)({"image": str(d / "ct.nii.gz")})


class _Port:
    def __init__(self, value=None) -> None:
        self.value, self.emitted = value, {}

    def receive(self, name):
        return self.value

    def emit(self, value, name):
        self.emitted[name] = value


class TestDeployOperators(unittest.TestCase):
    def test_restore_and_write_derived_series(self):
        deploy = {
            "monai.deploy": _module("monai.deploy"),
            "monai.deploy.conditions": _module("monai.deploy.conditions", CountCondition=_Base),
            "monai.deploy.core": _module(
                "monai.deploy.core",
                AppContext=_Base,
                Application=_Base,
                ConditionType=types.SimpleNamespace(NONE=None),
                Fragment=_Base,
                Operator=_Base,
                OperatorSpec=_Base,
            ),
            "monai.deploy.operators": _module("monai.deploy.operators"),
            "monai.deploy.operators.dicom_data_loader_operator": _module("x", DICOMDataLoaderOperator=_Base),
            "monai.deploy.operators.dicom_series_selector_operator": _module("y", DICOMSeriesSelectorOperator=_Base),
        }
        app = _load(REPO / "apps" / "deploy" / "app.py", "deploy_app_stubbed", deploy)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            hu = write_ct_dicom_series(d / "in" / "series1")
            files = sorted(str(p) for p in (d / "in" / "series1").glob("*.dcm"))
            sops = [types.SimpleNamespace(get_native_sop_instance=lambda f=f: types.SimpleNamespace(filename=f))
                    for f in files]  # fmt: skip
            uid = pydicom.dcmread(files[0]).SeriesInstanceUID
            series = types.SimpleNamespace(SeriesInstanceUID=uid, get_sop_instances=lambda: sops)
            study = types.SimpleNamespace(selected_series=[types.SimpleNamespace(series=series)])
            with mock.patch.dict(os.environ, {"TAT_DEPLOY_OVERRIDE": __import__("json").dumps(OVERRIDES)}):
                restore = app.TATRestoreOperator(None, model_path=_bundle(d))
                out_port = _Port()
                restore.compute(_Port([study]), out_port, None)
            (item,) = out_port.emitted["restored"]
            np.testing.assert_allclose(item["values"], np.clip(hu, -1024, 3072), atol=1e-3)
            app.DerivedSeriesWriterOperator(None, output_folder=d / "out").compute(
                _Port(out_port.emitted["restored"]), None, None
            )
            for f in files:
                src, out = pydicom.dcmread(f), pydicom.dcmread(str(d / "out" / uid / os.path.basename(f)))
                self.assertNotEqual(out.SeriesInstanceUID, src.SeriesInstanceUID)
                self.assertEqual((out.RescaleSlope, out.RescaleIntercept), (src.RescaleSlope, src.RescaleIntercept))
                np.testing.assert_array_equal(out.pixel_array, src.pixel_array)  # identity: the stored values


if __name__ == "__main__":
    unittest.main()
