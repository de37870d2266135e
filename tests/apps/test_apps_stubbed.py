"""The two apps' own code run here, in the project venv, with their frameworks replaced by minimal stand-ins.

The real end-to-end tests (test_monailabel_app.py, test_deploy_app.py) need separately built environments and
skip without them; these tests run the apps' restore and write code (what this project wrote) on every run: with a
zero-residual checkpoint both apps must return clip(input) in the input's stored units, through
custom.inference.restore and custom.inference.writers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import types
import unittest
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pydicom
import torch
from custom.transforms.data_consistency import kspace_block_error
from parameterized import parameterized

from tests.apps.helpers import (
    BUNDLE,
    REPO,
    TINY_KW,
    mr_phantom,
    save_statistics_checkpoint,
    write_ct_dicom_series,
    write_ct_nifti,
)
from tests.utils import dicom_series_folder, save_checkpoint, save_identity_checkpoint

OVERRIDES = {f"network_def#{k}": v for k, v in TINY_KW.items()}
# the MONAI Label task's request params (apps/monailabel/lib/tat_restore.py REQUEST_OPTIONS)
REQUEST_OPTIONS_PARAMS = ("data_consistency", "kspace_factor", "data_consistency_mode", "task_check", "difference")


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _bundle(d: Path, write_checkpoint=None, name: str = "bundle") -> Path:
    """A copy of the bundle's configs with a tiny checkpoint (default: zero residual, no task statistics)."""
    bundle = d / name
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    (write_checkpoint or (lambda p: save_identity_checkpoint(str(p))))(bundle / "models" / "model.pt")
    return bundle


def _load(path: Path, name: str, stubs: dict) -> types.ModuleType:
    with mock.patch.dict(sys.modules, stubs):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


class TestMonaiLabelTask(unittest.TestCase):
    def test_restores_nifti_through_the_bundle_restore(self):
        lib = _monailabel_lib("tat_restore_stubbed")
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            vol = write_ct_nifti(d / "ct.nii.gz")
            task = lib.TATRestore(str(_bundle(d)), override=OVERRIDES, modality="CT")
            self.assertTrue(task.is_valid())
            begin = time.time()
            path, result = task({"image": str(d / "ct.nii.gz")})
            elapsed = time.time() - begin
            try:
                out = nib.load(path)
                self.assertEqual(out.get_data_dtype(), np.float32)
                np.testing.assert_allclose(out.affine, nib.load(str(d / "ct.nii.gz")).affine)
                np.testing.assert_allclose(out.get_fdata(), np.clip(vol, -1024, 3072), atol=1e-3)
                self.assertEqual(result["modality"], "CT")
                self.assertEqual(result["shape"], list(vol.shape))
                self.assertEqual(result["units"], "HU")  # ct.json's units
                self.assertAlmostEqual(result["min"], float(out.get_fdata().min()), places=3)
                self.assertAlmostEqual(result["max"], float(out.get_fdata().max()), places=3)
                self.assertTrue(0.0 <= result["latency"] <= elapsed + 1e-3, (result["latency"], elapsed))
            finally:
                os.remove(path)
            with self.assertRaisesRegex(ValueError, "modality"):
                lib.TATRestore(str(d / "bundle"), override=OVERRIDES)({"image": str(d / "ct.nii.gz")})

    def test_registration_and_validity(self):
        lib = _monailabel_lib("tat_restore_registration")
        with tempfile.TemporaryDirectory() as d:
            bundle = _bundle(Path(d))
            task = lib.TATRestore(str(bundle), override=OVERRIDES, modality="MRI")
            # what MONAI Label's BasicInferTask gets: a 2D task of type OTHERS (not a label), no network or labels
            kwargs = task.kwargs
            self.assertEqual(kwargs["path"], str(bundle.resolve() / "models" / "model.pt"))
            self.assertEqual((kwargs["type"], kwargs["dimension"]), ("others", 2))
            self.assertIsNone(kwargs["network"])
            self.assertIsNone(kwargs["labels"])
            self.assertEqual((kwargs["config"]["modality"], kwargs["config"]["device"]), ("MRI", "cpu"))
            self.assertEqual(lib.TATRestore(str(bundle), override=OVERRIDES).kwargs["config"]["modality"], "")
            self.assertTrue(task.is_valid())
            (bundle / "models" / "model.pt").rename(bundle / "model.pt")
            self.assertFalse(task.is_valid())  # configs without a checkpoint
            (bundle / "model.pt").rename(bundle / "models" / "model.pt")
            (bundle / "configs" / "inference.json").rename(bundle / "inference.json")
            self.assertFalse(task.is_valid())  # a checkpoint without configs


class _Port:
    def __init__(self, value=None) -> None:
        self.value, self.emitted = value, {}

    def receive(self, name):
        return self.value

    def emit(self, value, name):
        self.emitted[name] = value


class TestDeployOperators(unittest.TestCase):
    def test_restore_and_write_derived_series(self):
        app = _deploy_app("deploy_app_stubbed")
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
            app.DerivedSeriesWriterOperator(None, output_folder=d / "out", restore_operator=restore).compute(
                _Port(out_port.emitted["restored"]), None, None
            )
            for f in files:
                src, out = pydicom.dcmread(f), pydicom.dcmread(str(d / "out" / uid / os.path.basename(f)))
                self.assertNotEqual(out.SeriesInstanceUID, src.SeriesInstanceUID)
                self.assertEqual((out.RescaleSlope, out.RescaleIntercept), (src.RescaleSlope, src.RescaleIntercept))
                np.testing.assert_array_equal(out.pixel_array, src.pixel_array)  # identity: the stored values


class _App(_Base):
    """Application stand-in: the app context from ``-i/-o/-m`` in argv, flows and runs recorded."""

    runs = 0

    @staticmethod
    def init_app_context(argv):
        args = dict(zip(argv[1::2], argv[2::2]))
        return types.SimpleNamespace(input_path=args["-i"], output_path=args["-o"], model_path=args["-m"])

    def add_flow(self, upstream, downstream, ports):
        self.__dict__.setdefault("flows", []).append((upstream, downstream, ports))

    def run(self):
        _App.runs += 1


class _Spec:
    """OperatorSpec stand-in recording the ports an operator declares."""

    def __init__(self) -> None:
        self.inputs, self.outputs, self.conditions = [], [], []

    def input(self, name):
        self.inputs.append(name)

    def output(self, name):
        self.outputs.append(name)
        return types.SimpleNamespace(condition=lambda c: self.conditions.append((name, c)))


def _sdk_selects(rules: str, modality: str) -> bool:
    """MONAI Deploy App SDK 4.0's DICOMSeriesSelectorOperator test of a text condition: equal ignoring case, else
    ``re.search`` ignoring case."""
    (rule,) = json.loads(rules)["selections"]
    pattern = rule["conditions"]["Modality"]
    return modality.casefold() == pattern.casefold() or re.search(pattern, modality, re.IGNORECASE) is not None


class TestDeployApplication(unittest.TestCase):
    """The Deploy app's pipeline, operator construction and model paths, with the SDK stubbed."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)
        self.app = _deploy_app("deploy_app_compose", Application=_App)

    def tearDown(self):
        self.tmp.cleanup()

    def test_series_selection_takes_ct_pet_mr_only(self):
        for modality in ("CT", "PT", "MR", "ct", "mr"):
            self.assertTrue(_sdk_selects(self.app.SELECTION_RULES, modality), modality)
        for modality in ("RTSTRUCT", "OCT", "OPT", "RTDOSE", "SEG", "SR", "OT", "CR", "PR", "MRSPECT"):
            self.assertFalse(_sdk_selects(self.app.SELECTION_RULES, modality), modality)

    def test_compose_wires_the_pipeline(self):
        bundle = _bundle(self.d)
        app = self.app.TATRestorationApp()
        app.argv = ["app.py", "-i", str(self.d / "in"), "-o", str(self.d / "out"), "-m", str(bundle)]
        app.compose()
        (loader, selector, p1), (selector2, restore, p2), (restore2, writer, p3) = app.flows
        self.assertIs(selector2, selector)
        self.assertIs(restore2, restore)
        (condition,) = loader.args[1:]
        self.assertEqual((loader.args[0], condition.args), (app, (app, 1)))  # the folder is read once
        self.assertEqual(loader.kwargs, {"input_folder": self.d / "in", "name": "dicom_loader"})
        self.assertEqual(
            selector.kwargs, {"rules": self.app.SELECTION_RULES, "all_matched": True, "name": "series_selector"}
        )  # every restorable series of a study, not only the first
        self.assertIsInstance(restore, self.app.TATRestoreOperator)
        self.assertEqual((restore.bundle_root, restore.kwargs), (bundle.resolve(), {"name": "tat_restore"}))
        self.assertIsInstance(writer, self.app.DerivedSeriesWriterOperator)
        self.assertEqual((writer.output_folder, writer.kwargs), (self.d / "out", {"name": "derived_writer"}))
        self.assertIs(writer.restore_operator, restore)
        # the ports joined are the ones the operators declare (the SDK's: dicom_study_list, study_selected_series_list)
        restore_spec, writer_spec = _Spec(), _Spec()
        restore.setup(restore_spec)
        writer.setup(writer_spec)
        self.assertEqual(p1, {("dicom_study_list", "dicom_study_list")})
        self.assertEqual(p2, {("study_selected_series_list", "study_selected_series_list")})
        self.assertEqual(p3, {("restored", "restored")})
        self.assertEqual((restore_spec.inputs, restore_spec.outputs), (["study_selected_series_list"], ["restored"]))
        self.assertEqual(writer_spec.inputs, ["restored"])
        self.assertEqual(restore_spec.conditions, [("restored", None)])  # ConditionType.NONE (stubbed as None)

    def test_name_and_version_are_the_packaged_ones(self):
        import yaml

        app = self.app.TATRestorationApp
        manifest = yaml.safe_load((REPO / "apps" / "deploy" / "app.yaml").read_text())
        self.assertEqual(str(manifest["application"]["version"]), app.version)
        self.assertIn(f"--tag {app.name}:{app.version}", (REPO / "apps" / "deploy" / "README.md").read_text())

    def test_running_the_script_runs_the_app_with_info_logs(self):
        _App.runs = 0
        with mock.patch("logging.basicConfig") as basic_config:
            _deploy_app("__main__", Application=_App)  # `python apps/deploy/app.py ...`
        basic_config.assert_called_once_with(level=logging.INFO)  # the operators' progress is shown
        self.assertEqual(_App.runs, 1)
        _deploy_app("deploy_app_imported", Application=_App)  # imported: nothing runs
        self.assertEqual(_App.runs, 1)

    def test_operators_pass_conditions_and_names_to_the_sdk(self):
        bundle = _bundle(self.d)
        fragment, condition = object(), object()
        restore = self.app.TATRestoreOperator(fragment, condition, model_path=bundle, name="r")
        writer = self.app.DerivedSeriesWriterOperator(
            fragment, condition, output_folder=self.d, restore_operator=restore, name="w"
        )
        for op, name in ((restore, "r"), (writer, "w")):
            self.assertEqual(op.args, (fragment, condition))
            self.assertEqual(op.kwargs, {"name": name})

    def _restore(self, model_path: Path, folder: Path, env: dict, **kwargs):
        """A restore operator built and run on one series folder under ``env`` (only); returns it and its items."""
        with mock.patch.dict(os.environ, env):
            for var in ("TAT_DEPLOY_OVERRIDE", "TAT_DEPLOY_PET_UNITS", *self.app.OPTION_ENV):
                if var not in env:
                    os.environ.pop(var, None)
            restore = self.app.TATRestoreOperator(None, model_path=model_path, **kwargs)
            port = _Port()
            restore.compute(_Port([_study(folder)]), port, None)
        return restore, port.emitted["restored"]

    def test_rerun_replaces_the_output_series(self):
        write_ct_dicom_series(self.d / "in" / "s1")
        env = {"TAT_DEPLOY_OVERRIDE": json.dumps(OVERRIDES)}
        restore, items = self._restore(_bundle(self.d), self.d / "in" / "s1", env)
        writer = self.app.DerivedSeriesWriterOperator(None, output_folder=self.d / "out", restore_operator=restore)
        uids = []
        for _ in range(2):  # the app run again on the same output folder (the folder exists the second time)
            writer.compute(_Port(items), None, None)
            _, written = _series(self.d / "out" / items[0]["uid"])
            uids.append({ds.SeriesInstanceUID for ds in written})
        self.assertEqual([p.name for p in (self.d / "out").iterdir()], [items[0]["uid"]])
        self.assertEqual(len(uids[0] | uids[1]), 2, "the second run's series did not replace the first")

    def test_checkpoint_file_and_no_override_env(self):
        hu = write_ct_dicom_series(self.d / "in" / "s1")
        bundle = _bundle(self.d)  # models/model.pt: the identity
        config = json.loads((bundle / "configs" / "inference.json").read_text())
        config["network_def"].update(TINY_KW)  # the tiny network in the bundle itself: no TAT_DEPLOY_OVERRIDE
        (bundle / "configs" / "inference.json").write_text(json.dumps(config))
        _random_checkpoint(bundle / "other.pt")
        _, (identity,) = self._restore(bundle, self.d / "in" / "s1", {})
        np.testing.assert_allclose(identity["values"], np.clip(hu, -1024, 3072), atol=1e-3)
        _, (other,) = self._restore(bundle / "other.pt", self.d / "in" / "s1", {})
        self.assertGreater(np.abs(other["values"] - identity["values"]).max(), 1.0, "other.pt was not used")

    def test_bad_operator_option_refused_before_any_series_is_read(self):
        write_ct_dicom_series(self.d / "in" / "s1")
        env = {"TAT_DEPLOY_OVERRIDE": json.dumps(OVERRIDES)}
        with mock.patch("custom.inference.io.load_dicom_series") as load:
            with self.assertRaisesRegex(ValueError, "kspace_factor must be >= 1"):
                self._restore(_bundle(self.d), self.d / "in" / "s1", env, options={"kspace_factor": 0.5})
        load.assert_not_called()

    def test_model_path_forms(self):
        bundle = _bundle(self.d)
        ckpt = bundle / "models" / "model.pt"
        other = bundle / "other.pt"
        shutil.copy(ckpt, other)
        for given, expected in ((bundle, ckpt), (bundle / "models", ckpt), (ckpt, ckpt), (other, other)):
            self.assertEqual(self.app._bundle_paths(given), (bundle.resolve(), expected.resolve()), given)
        cwd = os.getcwd()
        try:
            os.chdir(bundle / "models")
            self.assertEqual(self.app._bundle_paths(Path(".")), (bundle.resolve(), ckpt.resolve()))
            self.assertEqual(self.app._bundle_paths(Path("model.pt")), (bundle.resolve(), ckpt.resolve()))
        finally:
            os.chdir(cwd)
        other.unlink()
        ckpt.unlink()
        with self.assertRaisesRegex(FileNotFoundError, "need a bundle with configs/inference.json and models/model.pt"):
            self.app._bundle_paths(bundle)  # configs without a checkpoint
        save_identity_checkpoint(str(ckpt))
        (bundle / "configs" / "inference.json").unlink()
        with self.assertRaisesRegex(FileNotFoundError, f"{bundle.resolve()}: need a bundle"):
            self.app._bundle_paths(bundle)  # a checkpoint without configs


# --- the "Is it real?" options (data consistency, task check, difference) through both apps ---------------------

INFERENCE = json.loads((BUNDLE / "configs" / "inference.json").read_text())
NO_STATISTICS = "no task statistics in the checkpoint"


def _random_checkpoint(path: Path) -> None:
    save_checkpoint(str(path), seed=3)  # a network that changes the scan, so the options show


def _monailabel_lib(name: str = "tat_restore_options") -> types.ModuleType:
    """apps/monailabel/lib/tat_restore.py imported under ``name`` with the MONAI Label modules it imports stubbed."""
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
    return _load(REPO / "apps" / "monailabel" / "lib" / "tat_restore.py", name, stubs)


def _deploy_app(name: str = "deploy_app_options", **core) -> types.ModuleType:
    """apps/deploy/app.py imported under ``name`` with the MONAI Deploy SDK modules it imports stubbed (``core``:
    stand-ins replacing those of ``monai.deploy.core``)."""
    stubs = {
        "monai.deploy": _module("monai.deploy"),
        "monai.deploy.conditions": _module("monai.deploy.conditions", CountCondition=_Base),
        "monai.deploy.core": _module(
            "monai.deploy.core",
            **{
                "AppContext": _Base,
                "Application": _Base,
                "ConditionType": types.SimpleNamespace(NONE=None),
                "Fragment": _Base,
                "Operator": _Base,
                "OperatorSpec": _Base,
                **core,
            },
        ),
        "monai.deploy.operators": _module("monai.deploy.operators"),
        "monai.deploy.operators.dicom_data_loader_operator": _module("x", DICOMDataLoaderOperator=_Base),
        "monai.deploy.operators.dicom_series_selector_operator": _module("y", DICOMSeriesSelectorOperator=_Base),
    }
    return _load(REPO / "apps" / "deploy" / "app.py", name, stubs)


def _nifti(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def _block_error(image: np.ndarray, measured: np.ndarray, factor: float = 4.0) -> float:
    return kspace_block_error(torch.as_tensor(image)[None], torch.as_tensor(measured)[None], factor)


def _cli(bundle: Path, dataset_dir: Path, output_dir: Path, **options) -> list[dict]:
    """The bundle's own inference (inference.json's evaluator, as `monai.bundle run inference` runs it) in-process;
    returns the report's scan entries."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    values = {"bundle_root": str(bundle), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir)}
    for key, value in {**values, **OVERRIDES, "device": torch.device("cpu"), **options}.items():
        parser[key] = value
    output_dir.mkdir(parents=True, exist_ok=True)
    parser.get_parsed_content("evaluator").run()
    return json.loads((output_dir / "inference_report.json").read_text())["scans"]


class TestMonaiLabelOptions(unittest.TestCase):
    """Request params data_consistency / task_check / difference of the MONAI Label task, through Restorer."""

    @classmethod
    def setUpClass(cls):
        cls.lib = _monailabel_lib()

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)
        self.returned: list[str] = []

    def tearDown(self):
        for path in self.returned:
            if os.path.exists(path):
                os.remove(path)
        self.tmp.cleanup()

    def _task(self, write_checkpoint=_random_checkpoint, **kwargs):
        return self.lib.TATRestore(str(_bundle(self.d, write_checkpoint)), override=OVERRIDES, **kwargs)

    def _infer(self, task, image: Path, **params) -> tuple[str, dict]:
        path, result = task({"image": str(image), **params})
        self.returned.append(path)
        json.dumps(result)  # the response's params must be JSON
        return path, result

    def test_defaults_are_inference_json_values(self):
        task = self._task()
        expected = {
            "data_consistency": INFERENCE["data_consistency"],
            "kspace_factor": INFERENCE["kspace_factor"],
            "data_consistency_mode": INFERENCE["data_consistency_mode"],
            "task_check": INFERENCE["task_check"],
            "difference": INFERENCE["difference_output"],
        }
        self.assertEqual(task.defaults, expected)
        self.assertEqual({k: task.kwargs["config"][k] for k in expected}, expected)  # shown in /info
        vol = write_ct_nifti(self.d / "ct.nii.gz")
        _, result = self._infer(task, self.d / "ct.nii.gz", modality="CT")
        self.assertEqual(result["image"], "difference" if INFERENCE["difference_output"] else "restored")
        self.assertEqual(result["shape"], list(vol.shape))
        with self.assertRaisesRegex(ValueError, "unknown TAT option"):
            self.lib.TATRestore(str(self.d / "bundle"), override=OVERRIDES, options={"diference": True})

    @parameterized.expand([("request", {}, {"difference": True}), ("app_conf", {"difference": "true"}, {})])
    def test_difference_is_restored_minus_input(self, _, options, params):
        vol = write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task(options=options)
        restored_path, restored = self._infer(task, self.d / "ct.nii.gz", modality="CT", difference=False)
        self.assertEqual(restored["image"], "restored")
        path, result = self._infer(task, self.d / "ct.nii.gz", modality="CT", **params)
        self.assertEqual(result["image"], "difference")
        self.assertTrue(path.endswith("_difference.nii.gz"), path)
        self.assertFalse(os.path.exists(path.replace("_difference", "")), "restored temp file left behind")
        diff, out = _nifti(path), _nifti(restored_path)
        self.assertGreater(np.abs(diff).max(), 1.0, "the network changed nothing: the test shows nothing")
        np.testing.assert_allclose(diff, out - vol, atol=1e-2)
        self.assertAlmostEqual(result["difference_max"], float(diff.max()), places=2)
        self.assertAlmostEqual(result["difference_min"], float(diff.min()), places=2)
        np.testing.assert_allclose(nib.load(path).affine, nib.load(str(self.d / "ct.nii.gz")).affine)

    def test_task_check_in_response_log_and_descrip(self):
        write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task(lambda p: save_statistics_checkpoint(p, tasks=("PET",), threshold=-1.0))
        with self.assertLogs(level="WARNING") as logs:
            path, result = self._infer(task, self.d / "ct.nii.gz", modality="CT")
        self.assertEqual(result["predicted_task"], "PET")
        self.assertGreater(result["task_distance"], 0.0)
        self.assertEqual(len(result["warnings"]), 2, result["warnings"])
        self.assertIn("declared CT", result["warnings"][0])
        self.assertIn("exceeds the calibrated threshold", result["warnings"][1])
        self.assertTrue(any("declared CT" in line for line in logs.output))
        descrip = bytes(nib.load(path).header["descrip"]).decode()
        self.assertTrue(descrip.startswith("TAT warning: the network"), descrip)
        path, result = self._infer(task, self.d / "ct.nii.gz", modality="CT", task_check=False)
        self.assertEqual((result["predicted_task"], result["task_distance"], result["warnings"]), (None, None, []))
        self.assertNotIn("TAT warning", bytes(nib.load(path).header["descrip"]).decode())

    @unittest.skipUnless(os.path.isdir("/proc/self/fd"), "needs /proc/self/fd to count open files")
    def test_requests_leave_no_open_files(self):
        write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task()
        self._infer(task, self.d / "ct.nii.gz", modality="CT")  # the first request loads the bundle
        before = len(os.listdir("/proc/self/fd"))
        for params in ({}, {"difference": True}, {}):
            self._infer(task, self.d / "ct.nii.gz", modality="CT", **params)
        self.assertEqual(len(os.listdir("/proc/self/fd")), before, "a request leaked a file descriptor")

    def test_failed_write_leaves_no_temporary_file(self):
        write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task()
        spool = self.d / "spool"
        spool.mkdir()
        restorer = task._load()
        with mock.patch.object(tempfile, "tempdir", str(spool)):
            with mock.patch.object(restorer, "write_item", side_effect=OSError("disk full")):
                with self.assertRaisesRegex(OSError, "disk full"):
                    task({"image": str(self.d / "ct.nii.gz"), "modality": "CT"})
            self.assertEqual(os.listdir(spool), [])
            path, _ = self._infer(task, self.d / "ct.nii.gz", modality="CT")  # the task still serves requests
        self.assertEqual(os.listdir(spool), [os.path.basename(path)])

    def test_data_consistency_on_mri(self):
        vol = mr_phantom((32, 32, 2))
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(self.d / "mr.nii.gz"))
        task = self._task()
        off_path, off = self._infer(task, self.d / "mr.nii.gz", modality="MRI")
        on_path, on = self._infer(task, self.d / "mr.nii.gz", modality="MRI", data_consistency=True)
        self.assertTrue(on["data_consistency"])
        self.assertFalse(off["data_consistency"])
        self.assertGreater(_block_error(_nifti(off_path), vol), 1e-2)  # the network alone changed the block
        self.assertLess(_block_error(_nifti(on_path), vol), 1e-3)
        self.assertEqual(on["warnings"], [])  # 32 is divisible by 4

    def test_data_consistency_leaves_ct_unchanged(self):
        write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task()
        off_path, _ = self._infer(task, self.d / "ct.nii.gz", modality="CT")
        with self.assertLogs("custom.transforms.data_consistency", "INFO") as logs:
            on_path, on = self._infer(task, self.d / "ct.nii.gz", modality="CT", data_consistency=True)
        np.testing.assert_array_equal(_nifti(on_path), _nifti(off_path))
        self.assertTrue(any("not MRI: left unchanged" in line for line in logs.output))

    def test_size_not_divisible_by_the_factor_warns_and_restores(self):
        vol = mr_phantom((30, 30, 2))
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(self.d / "mr.nii.gz"))
        path, result = self._infer(self._task(), self.d / "mr.nii.gz", modality="MRI", data_consistency=True)
        (warning,) = [w for w in result["warnings"] if "kspace_factor" in w]
        self.assertIn("30x30 is not divisible by kspace_factor 4", warning)
        self.assertEqual(_nifti(path).shape, vol.shape)
        self.assertLess(_block_error(_nifti(path), vol), 1e-3)  # still made consistent, with the rounding

    def test_checkpoint_without_statistics_warns_once_and_restores(self):
        vol = write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task()  # random weights, no task statistics; task_check on by inference.json
        self.assertTrue(INFERENCE["task_check"])
        with self.assertLogs("custom.inference.task_check", "WARNING") as logs:
            for params in ({}, {"difference": True}, {"data_consistency": True}):
                path, result = self._infer(task, self.d / "ct.nii.gz", modality="CT", **params)
                self.assertEqual(_nifti(path).shape, vol.shape)
                self.assertIsNone(result["predicted_task"])
        self.assertEqual(sum(NO_STATISTICS in line for line in logs.output), 1, logs.output)

    def test_bad_input_gives_what_the_cli_gives(self):
        vol = mr_phantom((30, 30, 2))  # size not divisible by kspace_factor 4; checkpoint without task statistics
        (self.d / "scans").mkdir()
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(self.d / "scans" / "mr.nii.gz"))
        task = self._task()
        with self.assertLogs("custom.inference.task_check", "WARNING") as app_logs:
            path, result = self._infer(task, self.d / "scans" / "mr.nii.gz", modality="MRI", data_consistency=True)
        with self.assertLogs("custom.inference.task_check", "WARNING") as cli_logs:
            (entry,) = _cli(self.d / "bundle", self.d / "scans", self.d / "cli", modality="MRI", data_consistency=True)
        self.assertEqual(entry["status"], "written")
        self.assertEqual(result["warnings"], entry["warnings"])
        self.assertEqual((result["predicted_task"], entry["predicted_task"]), (None, None))
        self.assertEqual([NO_STATISTICS in line for line in app_logs.output].count(True), 1)
        self.assertEqual([NO_STATISTICS in line for line in cli_logs.output].count(True), 1)
        np.testing.assert_allclose(_nifti(path), _nifti(entry["output"]), atol=1e-4)

    @parameterized.expand(
        [("flag", {"difference": "maybe"}, "difference"), ("mode", {"data_consistency_mode": "x"}, "mode")]
    )
    def test_bad_option_values_are_refused(self, _, params, words):
        write_ct_nifti(self.d / "ct.nii.gz")
        with self.assertRaisesRegex(ValueError, words):
            self._task()({"image": str(self.d / "ct.nii.gz"), "modality": "CT", **params})

    @parameterized.expand(
        [(f"{param}_{kind}", param, kind) for param in REQUEST_OPTIONS_PARAMS for kind in ("expression", "reference")]
    )
    def test_config_syntax_in_params_is_refused_and_never_run(self, _, param, kind):
        write_ct_nifti(self.d / "ct.nii.gz")
        task = self._task()
        key = self.lib.REQUEST_OPTIONS[param]
        marker = self.d / f"pwned_{param}"
        valid = "'nonnegative'" if param == "data_consistency_mode" else "4" if param == "kspace_factor" else "True"
        value = f"$open({str(marker)!r}, 'w').write('x') and {valid}" if kind == "expression" else "@network_def"
        with self.assertRaisesRegex(ValueError, f"inference option {key} must"):
            task({"image": str(self.d / "ct.nii.gz"), "modality": "CT", param: value})
        self.assertFalse(marker.exists(), "a request param was evaluated by the bundle's config parser")
        with self.assertRaisesRegex(ValueError, f"inference option {key} must"):  # --conf values too, at start
            self.lib.TATRestore(str(self.d / "bundle"), override=OVERRIDES, options={param: value})
        self.assertFalse(marker.exists())
        _, result = self._infer(task, self.d / "ct.nii.gz", modality="CT")  # the task still serves good requests
        self.assertEqual(result["image"], "restored")

    def test_override_option_keys_are_the_defaults(self):
        write_ct_nifti(self.d / "ct.nii.gz")
        override = {**OVERRIDES, "task_check": False, "kspace_factor": 2}
        bundle = _bundle(self.d, lambda p: save_statistics_checkpoint(p, tasks=("PET",), threshold=-1.0))
        task = self.lib.TATRestore(str(bundle), override=override)
        self.assertTrue(INFERENCE["task_check"])  # inference.json turns it on; the override turns it off
        self.assertEqual((task.defaults["task_check"], task.defaults["kspace_factor"]), (False, 2))
        self.assertEqual(task.defaults["data_consistency_mode"], INFERENCE["data_consistency_mode"])
        self.assertEqual((task.kwargs["config"]["task_check"], task.kwargs["config"]["kspace_factor"]), (False, 2))
        self.assertEqual(task.options({})["task_check"], False)
        _, result = self._infer(task, self.d / "ct.nii.gz", modality="CT")
        self.assertEqual((result["predicted_task"], result["warnings"]), (None, []))  # no task check ran
        _, result = self._infer(task, self.d / "ct.nii.gz", modality="CT", task_check=True)  # the request wins
        self.assertEqual(result["predicted_task"], "PET")
        conf = self.lib.TATRestore(str(bundle), override=override, options={"task_check": "true"})  # --conf wins
        self.assertEqual(conf.defaults["task_check"], "true")
        _, result = self._infer(conf, self.d / "ct.nii.gz", modality="CT")
        self.assertEqual(result["predicted_task"], "PET")


class TestRestorerSteps(unittest.TestCase):
    """The apps' shared path: Restorer.from_bundle's postprocessing steps with per-call options."""

    @classmethod
    def setUpClass(cls):
        from custom.inference.restore import Restorer

        cls.tmp = tempfile.TemporaryDirectory()
        cls.restorer = Restorer.from_bundle(_bundle(Path(cls.tmp.name)), overrides=OVERRIDES, device="cpu")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def _by_name(self, options: dict) -> dict:
        return {type(t).__name__: t for t in self.restorer.steps(options)}

    def test_steps_are_the_configs_postprocessing_in_order(self):
        names = [type(t).__name__ for t in self.restorer.steps()]
        self.assertEqual(names, [t["_target_"].rsplit(".", 1)[-1] for t in INFERENCE["postprocessing"]["transforms"]])

    def test_options_apply_per_call_and_do_not_leak(self):
        on = self._by_name({"data_consistency": True, "kspace_factor": 2, "difference_output": True})
        self.assertTrue(on["DataConsistencyd"].enabled)
        self.assertEqual(on["DataConsistencyd"].factor, 2.0)
        self.assertTrue(on["SaveDifferenced"].enabled)
        default = self._by_name({})
        self.assertEqual(default["DataConsistencyd"].enabled, INFERENCE["data_consistency"])
        self.assertEqual(default["DataConsistencyd"].factor, float(INFERENCE["kspace_factor"]))
        self.assertEqual(default["SaveDifferenced"].enabled, INFERENCE["difference_output"])
        self.assertIs(default["TaskCheckd"], on["TaskCheckd"])  # one task check: statistics read once
        self.assertIs(default["TaskCheckd"].network, self.restorer.network)  # the loaded weights, not a new net

    def test_unknown_option_and_bad_value(self):
        with self.assertRaisesRegex(ValueError, "unknown inference option"):
            self.restorer.steps({"network_def#dim": 16})
        with self.assertRaisesRegex(ValueError, "kspace_factor must be >= 1"):
            self.restorer.steps({"kspace_factor": 0.5})

    def test_restore_item_leaves_the_input_unchanged(self):
        image = torch.rand(1, 16, 16, 2) * 100
        before = image.clone()
        d = self.restorer.restore_item({"image": image, "modality": "MRI"}, {"data_consistency": True})
        torch.testing.assert_close(image, before)
        self.assertEqual(tuple(d["pred"].shape), (1, 16, 16, 2))
        torch.testing.assert_close(d["input"], before)


def _study(folder: Path) -> types.SimpleNamespace:
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    sops = [types.SimpleNamespace(get_native_sop_instance=lambda f=f: types.SimpleNamespace(filename=f)) for f in files]
    series = types.SimpleNamespace(
        SeriesInstanceUID=pydicom.dcmread(files[0]).SeriesInstanceUID, get_sop_instances=lambda: sops
    )
    return types.SimpleNamespace(selected_series=[types.SimpleNamespace(series=series)])


def _series(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Physical values (rows, cols, n) of a series folder, slices by position, and the datasets."""
    ds = sorted((pydicom.dcmread(str(p)) for p in folder.glob("*.dcm")), key=lambda x: float(x.ImagePositionPatient[2]))
    values = np.stack([x.pixel_array * float(x.RescaleSlope) + float(x.RescaleIntercept) for x in ds], -1)
    return values, ds


class TestDeployOptions(unittest.TestCase):
    """TAT_DEPLOY_DATA_CONSISTENCY / _TASK_CHECK / _DIFFERENCE (and operator options) of the Deploy app."""

    @classmethod
    def setUpClass(cls):
        cls.app = _deploy_app()

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def _run(self, folder: Path, bundle: Path, env: dict | None = None, out: str = "out", **kwargs) -> list[dict]:
        """Both operators on one series folder; returns the emitted items (written under self.d / out)."""
        env = {"TAT_DEPLOY_OVERRIDE": json.dumps(OVERRIDES), **(env or {})}
        with mock.patch.dict(os.environ, env):
            for var in self.app.OPTION_ENV:
                if var not in env:
                    os.environ.pop(var, None)
            restore = self.app.TATRestoreOperator(None, model_path=bundle, **kwargs)
            port = _Port()
            restore.compute(_Port([_study(folder)]), port, None)
            writer = self.app.DerivedSeriesWriterOperator(None, output_folder=self.d / out, restore_operator=restore)
            writer.compute(_Port(port.emitted["restored"]), None, None)
        return port.emitted["restored"]

    def _mr_series(self, shape=(32, 32, 2), name: str = "mr") -> tuple[Path, np.ndarray]:
        vol = mr_phantom(shape)
        folder = dicom_series_folder(str(self.d / name), vol.astype(np.uint16), modality="MR", slope=1, inter=0)
        return Path(folder), vol

    @parameterized.expand(
        [
            ("unset", {}, {}),
            ("on", {"TAT_DEPLOY_DATA_CONSISTENCY": "true", "TAT_DEPLOY_DIFFERENCE": "yes"},
             {"data_consistency": True, "difference_output": True}),
            ("off", {"TAT_DEPLOY_TASK_CHECK": "false", "TAT_DEPLOY_KSPACE_FACTOR": "2"},
             {"task_check": False, "kspace_factor": 2.0}),
            ("mode", {"TAT_DEPLOY_DATA_CONSISTENCY_MODE": "real", "TAT_DEPLOY_DIFFERENCE": ""},
             {"data_consistency_mode": "real"}),
        ]
    )  # fmt: skip
    def test_env_options(self, _, env, expected):
        self.assertEqual(self.app.env_options(env), expected)

    @parameterized.expand(
        [
            ("flag", "TAT_DEPLOY_DATA_CONSISTENCY", "maybe"),
            ("factor", "TAT_DEPLOY_KSPACE_FACTOR", "0.5"),
            ("not_number", "TAT_DEPLOY_KSPACE_FACTOR", "four"),
            ("mode", "TAT_DEPLOY_DATA_CONSISTENCY_MODE", "abs"),
            ("expression", "TAT_DEPLOY_DATA_CONSISTENCY_MODE", "$'real'"),
            ("reference", "TAT_DEPLOY_KSPACE_FACTOR", "@kspace_factor"),
            ("flag_expression", "TAT_DEPLOY_TASK_CHECK", "$True"),
        ]
    )
    def test_bad_env_values_name_the_variable(self, _, var, value):
        with self.assertRaisesRegex(ValueError, f"{var}: inference option {self.app.OPTION_ENV[var]} must"):
            self.app.env_options({var: value})

    @parameterized.expand(
        [("env", {"TAT_DEPLOY_DIFFERENCE": "true"}, {}), ("argument", {}, {"difference_output": True})]
    )
    def test_difference_series(self, _, env, options):
        hu = write_ct_dicom_series(self.d / "in" / "series1")
        bundle = _bundle(self.d, _random_checkpoint)
        (item,) = self._run(self.d / "in" / "series1", bundle, env, options=options)
        uid = item["uid"]
        restored, out = _series(self.d / "out" / uid)
        diff, diff_ds = _series(self.d / "out" / f"{uid}_difference")
        self.assertGreater(np.abs(diff).max(), 5.0, "the network changed nothing: the test shows nothing")
        np.testing.assert_allclose(diff, restored - hu, atol=1.0)  # both stored as integers
        self.assertEqual(len({x.SeriesInstanceUID for x in diff_ds} | {x.SeriesInstanceUID for x in out}), 2)
        self.assertIn("TAT difference", str(diff_ds[0].SeriesDescription))
        self.assertEqual(sorted(p.name for p in (self.d / "out").iterdir()), [uid, f"{uid}_difference"])
        if not INFERENCE["difference_output"]:  # default from inference.json: no difference series
            self._run(self.d / "in" / "series1", bundle, out="out_default")
            self.assertEqual([p.name for p in (self.d / "out_default").iterdir()], [uid])

    def test_task_check_warnings_in_image_comments(self):
        write_ct_dicom_series(self.d / "in" / "series1")
        bundle = _bundle(self.d, lambda p: save_statistics_checkpoint(p, tasks=("PET",), threshold=-1.0))
        with self.assertLogs(level="WARNING") as logs:
            (item,) = self._run(self.d / "in" / "series1", bundle)
        self.assertEqual(item["predicted_task"], "PET")
        self.assertEqual(len(item["warnings"]), 2, item["warnings"])
        self.assertTrue(any(item["uid"] in line and "declared CT" in line for line in logs.output), logs.output)
        _, out = _series(self.d / "out" / item["uid"])
        for ds in out:
            self.assertTrue(str(ds.ImageComments).startswith("TAT warning: "), ds.get("ImageComments"))
            self.assertIn("declared CT", str(ds.ImageComments))
            self.assertIn("exceeds the calibrated threshold", str(ds.ImageComments))
        (item,) = self._run(self.d / "in" / "series1", bundle, {"TAT_DEPLOY_TASK_CHECK": "false"}, out="off")
        self.assertNotIn("predicted_task", item)
        _, out = _series(self.d / "off" / item["uid"])
        self.assertFalse(any("ImageComments" in ds for ds in out))

    def test_data_consistency_on_mr_only(self):
        folder, vol = self._mr_series()
        bundle = _bundle(self.d, _random_checkpoint)
        (off,) = self._run(folder, bundle, out="off")
        (on,) = self._run(folder, bundle, {"TAT_DEPLOY_DATA_CONSISTENCY": "true"}, out="on")
        self.assertGreater(_block_error(off["values"], vol), 1e-2)
        self.assertLess(_block_error(on["values"], vol), 1e-3)
        written, _ = _series(self.d / "on" / on["uid"])
        np.testing.assert_allclose(written, on["values"], atol=0.51)  # the writer got the consistent values
        write_ct_dicom_series(self.d / "in" / "ct")
        (ct_off,) = self._run(self.d / "in" / "ct", bundle, out="ct_off")
        (ct_on,) = self._run(self.d / "in" / "ct", bundle, {"TAT_DEPLOY_DATA_CONSISTENCY": "true"}, out="ct_on")
        np.testing.assert_array_equal(ct_on["values"], ct_off["values"])

    def test_size_not_divisible_warns_in_image_comments(self):
        folder, vol = self._mr_series((30, 30, 2))
        (item,) = self._run(folder, _bundle(self.d, _random_checkpoint), {"TAT_DEPLOY_DATA_CONSISTENCY": "1"})
        self.assertTrue(any("30x30 is not divisible by kspace_factor 4" in w for w in item["warnings"]))
        self.assertLess(_block_error(item["values"], vol), 1e-3)
        _, out = _series(self.d / "out" / item["uid"])
        self.assertTrue(all("not divisible by kspace_factor" in str(ds.get("ImageComments", "")) for ds in out))

    def test_bad_input_gives_what_the_cli_gives(self):
        folder, _ = self._mr_series((30, 30, 2), "scans/mr")  # not divisible by kspace_factor 4; no task statistics
        bundle = _bundle(self.d, _random_checkpoint)
        with self.assertLogs("custom.inference.task_check", "WARNING") as app_logs:
            (item,) = self._run(folder, bundle, {"TAT_DEPLOY_DATA_CONSISTENCY": "true"})
        with self.assertLogs("custom.inference.task_check", "WARNING") as cli_logs:
            (entry,) = _cli(bundle, folder.parent, self.d / "cli", data_consistency=True)
        self.assertEqual(entry["status"], "written")
        self.assertEqual(item["warnings"], entry["warnings"])
        self.assertEqual([NO_STATISTICS in line for line in app_logs.output].count(True), 1)
        self.assertEqual([NO_STATISTICS in line for line in cli_logs.output].count(True), 1)
        app_values, app_ds = _series(self.d / "out" / item["uid"])
        cli_values, cli_ds = _series(Path(entry["output"]))
        np.testing.assert_array_equal(app_values, cli_values)
        self.assertEqual([x.ImageComments for x in app_ds], [x.ImageComments for x in cli_ds])

    def test_checkpoint_without_statistics_warns_once_and_restores(self):
        write_ct_dicom_series(self.d / "in" / "a")
        write_ct_dicom_series(self.d / "in" / "b")
        bundle = _bundle(self.d)  # no task statistics; task_check on by inference.json
        env = {"TAT_DEPLOY_OVERRIDE": json.dumps(OVERRIDES)}
        with mock.patch.dict(os.environ, env), self.assertLogs("custom.inference.task_check", "WARNING") as logs:
            restore = self.app.TATRestoreOperator(None, model_path=bundle)
            port = _Port()
            restore.compute(_Port([_study(self.d / "in" / "a"), _study(self.d / "in" / "b")]), port, None)
            restore.compute(_Port([_study(self.d / "in" / "a")]), port, None)
        self.assertEqual(sum(NO_STATISTICS in line for line in logs.output), 1, logs.output)
        self.assertEqual(len(port.emitted["restored"]), 1)
        self.assertIsNone(port.emitted["restored"][0]["predicted_task"])


if __name__ == "__main__":
    unittest.main()
