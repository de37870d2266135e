"""The shareable bundle zip (custom/packaging.py): content, atomic write, and a real `run inference` from the
unzipped folder in a fresh virtual environment holding only metadata.json's packages."""

from __future__ import annotations

import json
import os
import tempfile
import unittest
import zipfile
from pathlib import Path

import numpy as np
import pytest

from custom.packaging import build_archive
from tests.apps.helpers import TINY_ARGS, env_python, run, write_ct_nifti, write_tiny_checkpoint

ENV_VAR = "TAT_BUNDLE_ENV"
ENV_DEFAULT = "/tmp/tat_bundle_env"


class TestArchive(unittest.TestCase):
    def test_content_and_atomic(self):
        with tempfile.TemporaryDirectory() as d:
            out = build_archive(Path(d) / "dist" / "tat_bundle.zip")
            names = zipfile.ZipFile(out).namelist()
            self.assertEqual(sorted(os.listdir(out.parent)), ["tat_bundle.zip"])  # no temporary left
            self.assertTrue(all(n.startswith("tat_bundle/") for n in names))
            for need in [
                "LICENSE",
                "configs/metadata.json",
                "configs/train.json",
                "docs/README.md",
                "configs/schema/meta_schema.json",
                "custom/__init__.py",
                "custom/networks/__init__.py",
            ]:
                self.assertIn(f"tat_bundle/{need}", names)
            self.assertFalse([n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pt", ".ts"))])
            again = build_archive(Path(d) / "again.zip", name="tat_bundle")
            self.assertEqual(out.read_bytes(), again.read_bytes(), "archive is not reproducible")

    def test_failed_build_leaves_nothing(self):
        with tempfile.TemporaryDirectory() as d:
            bad = Path(d) / "bundle"
            (bad / "configs").mkdir(parents=True)
            (bad / "configs" / "metadata.json").write_text(json.dumps({"version": "0.2.0", "changelog": {}}))
            (bad / "LICENSE").write_text("x")
            with self.assertRaises(ValueError):
                build_archive(Path(d) / "out" / "b.zip", bundle_dir=bad)
            self.assertFalse((Path(d) / "out" / "b.zip").exists())


@pytest.mark.external_env
class TestArchiveFreshEnv(unittest.TestCase):
    """Needs a venv built by `scripts/build_bundle_env.sh` (1-4 min here: torch from the local wheel)."""

    def setUp(self):
        self.py = env_python(ENV_VAR, ENV_DEFAULT)
        if self.py is None:
            self.skipTest(
                f"no fresh bundle environment at ${ENV_VAR} (default {ENV_DEFAULT}); build it with "
                f"`make test` (or `scripts/build_bundle_env.sh DIR`) (~1-4 min, torch wheel) to run this test"
            )
        probe = run(
            [
                self.py,
                "-c",
                "import importlib.util as u, sys; print(u.find_spec('custom') is None, "
                "sys.prefix != sys.base_prefix)",
            ],
            cwd=Path(tempfile.gettempdir()),
        )
        if probe.stdout.split() != ["True", "True"]:
            self.fail(f"{self.py} is not a fresh venv without `custom`: {probe.stdout}")

    def test_run_inference_from_unzipped_bundle(self):
        import nibabel as nib

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            zpath = build_archive(d / "tat_bundle.zip")
            with zipfile.ZipFile(zpath) as zf:
                zf.extractall(d / "unzipped")
            root = d / "unzipped" / "tat_bundle"
            write_tiny_checkpoint(root / "models" / "model.pt")
            vol = write_ct_nifti(d / "scans" / "ct_case.nii.gz")
            run(
                [
                    self.py,
                    "-m",
                    "monai.bundle",
                    "run",
                    "inference",
                    "--meta_file",
                    "configs/metadata.json",
                    "--config_file",
                    "configs/inference.json",
                    "--logging_file",
                    "configs/logging.conf",
                    "--bundle_root",
                    ".",
                    "--dataset_dir",
                    d / "scans",
                    "--output_dir",
                    d / "restored",
                    "--modality",
                    "CT",
                    "--device",
                    "$torch.device('cpu')",
                    *TINY_ARGS,
                ],
                cwd=root,
            )
            outs = sorted(p for p in (d / "restored").rglob("*.nii*"))
            self.assertEqual(len(outs), 1, list((d / "restored").rglob("*")))
            img = nib.load(str(outs[0]))
            out = np.asarray(img.dataobj, dtype=np.float32)
            self.assertEqual(out.shape, vol.shape)
            np.testing.assert_allclose(img.affine, np.diag([0.8, 0.8, 2.5, 1.0]), atol=1e-5)
            self.assertTrue(np.isfinite(out).all())
            # physical units (HU), not the network's [0, 1]: a random tiny net spreads over hundreds of HU
            self.assertGreater(out.max() - out.min(), 10.0, "output not mapped back to HU (or constant)")
