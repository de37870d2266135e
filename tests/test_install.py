"""A non-editable install of the project finds its files through package data, never the repository layout.

The project (a copy of its packaging files, ``custom/`` and ``bundle/``) is installed with
``pip install --no-deps --no-build-isolation`` into a fresh virtual environment that sees the development
environment's packages (torch, MONAI, ...) but not the repository; everything below then runs from a folder outside
the repository, so a path computed from ``__file__`` into the repository layout would fail. One process of the
installed environment runs every check (torch and MONAI import once; about 50 s in all on the shared 2-core
machine). Marked ``slow`` (it builds its own environment, so it needs none of the prebuilt ones the
``external_env`` tests skip without) and kept in the default suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
import textwrap
import unittest
import venv

import numpy as np
import pytest

from tests.utils import REPO, save_nifti

_COPY = ("setup.cfg", "pyproject.toml", "README.md", "custom", "bundle")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pt", "*.ts", "*.onnx", "*.pt2", "eval", "outputs")


@pytest.mark.slow
class TestNonEditableInstall(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        try:
            cls._install(cls.tmp.name)
        except BaseException:
            cls.tmp.cleanup()
            raise

    @classmethod
    def _install(cls, root: str) -> None:
        src = os.path.join(root, "src")
        os.makedirs(src)
        for name in _COPY:
            path = os.path.join(REPO, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(src, name), symlinks=True, ignore=_SKIP)
            else:
                shutil.copy2(path, src)
        env_dir = os.path.join(root, "venv")
        venv.EnvBuilder(with_pip=False).create(env_dir)
        cls.python = os.path.join(env_dir, "bin", "python")
        site = subprocess.run(
            [cls.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        cls.site = site
        # the development environment's packages, as a plain path (its .pth files, the editable install, are not run)
        with open(os.path.join(site, "dev-packages.pth"), "w", encoding="utf-8") as f:
            f.write(sysconfig.get_path("purelib") + "\n")
        cls.work = os.path.join(root, "elsewhere")
        os.makedirs(cls.work)
        proc = subprocess.run(
            [cls.python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed", src],
            capture_output=True,
            text=True,
            cwd=cls.work,
            timeout=300,
        )
        if proc.returncode != 0:
            raise AssertionError(f"pip install failed:\n{proc.stdout}\n{proc.stderr}")
        shutil.rmtree(src)  # nothing of the source tree is left to find
        cls.found = cls.run_checks()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def run_checks(cls) -> dict:
        """One process of the installed environment (torch and MONAI import once) runs every check."""
        yy, xx = np.mgrid[:16, :16]
        label = ((((yy - 8) ** 2 + (xx - 8) ** 2) < 30) * 900.0 + 100).astype(np.float32)
        for name, shift in (("x", 5.0), ("y", 0.0), ("r", 1.0)):
            save_nifti(os.path.join(cls.work, f"{name}.nii.gz"), label + shift)
        with open(os.path.join(cls.work, "datalist.json"), "w") as f:
            json.dump({"test": [{"image": "x.nii.gz", "label": "y.nii.gz", "modality": "MRI"}]}, f)
        with open(os.path.join(cls.work, "report.json"), "w") as f:
            scan = {"image": os.path.join(cls.work, "x.nii.gz"), "output": os.path.join(cls.work, "r.nii.gz")}
            json.dump({"scans": [{**scan, "status": "written"}]}, f)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["OMP_NUM_THREADS"] = "1"
        proc = subprocess.run(
            [cls.python, "-c", _CHECKS], capture_output=True, text=True, cwd=cls.work, env=env, timeout=300
        )
        if proc.returncode != 0:
            raise AssertionError(f"the checks did not run in the installed environment:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def test_package_data_settings_and_bundle(self):
        found = self.found
        for key in ("package", "modality_dir", "bundle", "demo_bundle"):
            self.assertTrue(found[key].startswith(self.site), f"{key}: {found[key]} is not the installed copy")
        self.assertEqual(found["tasks"], ["CT", "MRI", "PET"])
        self.assertTrue(found["train_json"])

    def test_task_statistics_command_finds_its_config(self):
        run = self.found["task_statistics"]
        # the shipped inference.json was found and parsed (network_def built): the failure is the checkpoint's
        self.assertEqual(run["code"], 1, run)
        self.assertIn("missing.pt: checkpoint not found", run["stderr"])

    def test_consistency_command_uses_the_shipped_settings(self):
        run = self.found["consistency"]
        self.assertEqual(run["code"], 0, run)
        self.assertRegex(run["stdout"], r"restored +PSNR")

    def test_packaging_zips_the_shipped_bundle(self):
        run = self.found["packaging"]
        self.assertEqual(run["code"], 0, run)
        names = self.found["zip"]
        top = names[0].split("/")[0]
        for need in ("configs/metadata.json", "configs/modality/ct.json", "LICENSE", "custom/__init__.py"):
            self.assertIn(f"{top}/{need}", names)
        self.assertFalse([n for n in names if "/custom/_bundle/" in n], "the shipped bundle is packed twice")

    def test_include_weights_from_the_installed_bundle_names_the_folder(self):
        run = self.found["weights"]
        self.assertEqual(run["code"], 1, run)
        self.assertIn(os.path.join(self.site, "custom", "_bundle", "models") + ": no weights", run["stderr"])
        self.assertIn("--bundle_dir", run["stderr"])
        self.assertFalse(self.found["weights_zip"])

    def test_interference_default_config_is_the_installed_one(self):
        config, root = self.found["interference_config"]
        self.assertEqual(config, os.path.join(self.site, "custom", "_bundle", "configs", "train.json"))
        self.assertEqual(root, os.path.join(self.site, "custom", "_bundle"))


_CHECKS = textwrap.dedent("""
    import contextlib, io, json, os, zipfile
    import custom, custom.tools.demo, custom.tools.demo_data
    from custom.evaluation import consistency
    from custom.settings import default_modality_dir, load_modality_settings, packaged_bundle
    from custom.tools import interference, packaging, task_statistics


    def call(main, argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


    d = default_modality_dir()
    bundle = custom.tools.demo.bundle_root()
    found = {
        "package": custom.__file__,
        "modality_dir": str(d),
        "tasks": sorted(load_modality_settings(d)),
        "bundle": str(packaged_bundle()),
        "demo_bundle": bundle,
        "train_json": os.path.isfile(os.path.join(bundle, "configs", "train.json")),
        "task_statistics": call(task_statistics.main, ["--checkpoint", "missing.pt", "--datalist", "datalist.json"]),
        "consistency": call(consistency.main, ["--report", "report.json", "--datalist", "datalist.json"]),
        "packaging": call(packaging.main, ["--output", "b.zip"]),
        "weights": call(packaging.main, ["--output", "w.zip", "--include_weights"]),
        "weights_zip": os.path.exists("w.zip"),
        "interference_config": list(interference.resolve_config(None, None)),
    }
    with zipfile.ZipFile("b.zip") as zf:
        found["zip"] = zf.namelist()
    print(json.dumps(found))
    """)


if __name__ == "__main__":
    unittest.main()
