"""The shareable bundle zip (custom/tools/packaging.py): content, atomic write, and the bundle's commands run as a user
runs them from the unzipped folder, or from another folder with --bundle_root, in a fresh virtual environment holding
only metadata.json's packages (scripts/build_bundle_env.sh, $TAT_BUNDLE_ENV)."""

from __future__ import annotations

import json
import os
import tempfile
import unittest
import zipfile
from pathlib import Path

import numpy as np
import pytest
from custom.tools.packaging import BUNDLE_NAME, build_archive, main

from tests.apps.helpers import BUNDLE, TINY_ARGS, env_python, run, write_ct_nifti, write_tiny_checkpoint

ENV_VAR = "TAT_BUNDLE_ENV"
ENV_DEFAULT = "/tmp/tat_bundle_env"


class TestArchive(unittest.TestCase):
    def test_content_and_atomic(self):
        with tempfile.TemporaryDirectory() as d:
            out = build_archive(Path(d) / "dist" / "any_name.zip")
            names = zipfile.ZipFile(out).namelist()
            self.assertEqual(sorted(os.listdir(out.parent)), ["any_name.zip"])  # no temporary left
            self.assertTrue(all(n.startswith(f"{BUNDLE_NAME}/") for n in names))  # the zoo name, not the file's
            for need in [
                "LICENSE",
                "configs/metadata.json",
                "configs/train.json",
                "docs/README.md",
                "configs/schema/meta_schema.json",
                "custom/__init__.py",
                "custom/networks/__init__.py",
            ]:
                self.assertIn(f"{BUNDLE_NAME}/{need}", names)
            self.assertFalse([n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pt", ".ts", ".pt2"))])
            again = build_archive(Path(d) / "again.zip", name=BUNDLE_NAME)
            self.assertEqual(out.read_bytes(), again.read_bytes(), "archive is not reproducible")

    def test_zoo_name_and_cli_default(self):
        self.assertRegex(BUNDLE_NAME, r"^[a-z0-9]+(_[a-z0-9]+)+$")  # the zoo's snake_case
        for word in ("ct", "pet", "mri", "restoration"):  # data and task
            self.assertIn(word, BUNDLE_NAME.split("_"))
        version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
        with tempfile.TemporaryDirectory() as d:
            cwd = os.getcwd()
            os.chdir(d)
            try:
                self.assertEqual(main([]), 0)
            finally:
                os.chdir(cwd)
            self.assertEqual(os.listdir(Path(d) / "dist"), [f"{BUNDLE_NAME}_v{version}.zip"])

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

    def _unzip(self, d: Path) -> Path:
        with zipfile.ZipFile(build_archive(d / "bundle.zip")) as zf:
            zf.extractall(d / "unzipped")
        root = d / "unzipped" / BUNDLE_NAME
        write_tiny_checkpoint(root / "models" / "model.pt")
        return root

    def _check_restored(self, out_dir: Path, vol: np.ndarray) -> None:
        import nibabel as nib

        outs = sorted(p for p in out_dir.rglob("*.nii*"))
        self.assertEqual(len(outs), 1, list(out_dir.rglob("*")))
        img = nib.load(str(outs[0]))
        out = np.asarray(img.dataobj, dtype=np.float32)
        self.assertEqual(out.shape, vol.shape)
        np.testing.assert_allclose(img.affine, np.diag([0.8, 0.8, 2.5, 1.0]), atol=1e-5)
        self.assertTrue(np.isfinite(out).all())
        # physical units (HU), not the network's [0, 1]: a random tiny net spreads over hundreds of HU
        self.assertGreater(out.max() - out.min(), 10.0, "output not mapped back to HU (or constant)")

    def _inference(self, root: Path, d: Path, cwd: Path, prefix: str) -> None:
        vol = write_ct_nifti(d / "scans" / "ct_case.nii.gz")
        p = f"{prefix}/" if prefix else ""
        run(
            [
                self.py,
                "-m",
                "monai.bundle",
                "run",
                "inference",
                "--meta_file",
                f"{p}configs/metadata.json",
                "--config_file",
                f"{p}configs/inference.json",
                "--logging_file",
                f"{p}configs/logging.conf",
                "--bundle_root",
                prefix or ".",
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
            cwd=cwd,
        )
        self._check_restored(d / "restored", vol)

    def test_env_has_the_metadata_pins(self):
        meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
        pins = {"torch": meta["pytorch_version"], "monai": meta["monai_version"], "numpy": meta["numpy_version"]}
        pins.update(meta["required_packages_version"])
        code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
        got = json.loads(run([self.py, "-c", code, *pins], cwd=Path(tempfile.gettempdir())).stdout)
        self.assertEqual({k: v.split("+")[0] for k, v in got.items()}, pins)

    def test_run_inference_from_unzipped_bundle(self):
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            root = self._unzip(d)
            self._inference(root, d, cwd=root, prefix="")

    def test_run_inference_from_another_folder(self):
        """--bundle_root from elsewhere: `custom` is importable only once `run` puts the bundle root on sys.path
        (the collate function was a `$custom...` expression evaluated against a failed `import custom`)."""
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            root = self._unzip(d)
            elsewhere = d / "elsewhere"
            elsewhere.mkdir()
            self._inference(root, d, cwd=elsewhere, prefix=str(root))

    def test_verify_metadata_in_bundle_env(self):
        with tempfile.TemporaryDirectory() as d:
            root = self._unzip(Path(d))
            proc = run(
                [
                    self.py,
                    "-m",
                    "monai.bundle",
                    "verify_metadata",
                    "--meta_file",
                    "configs/metadata.json",
                    "--filepath",
                    "configs/schema/meta_schema.json",
                ],
                cwd=root,
            )
            self.assertIn("metadata is verified with no error", proc.stdout + proc.stderr)

    def test_train_then_evaluate_from_unzipped_bundle(self):
        """`run` of train.json + evaluate.json evaluates the trained checkpoint; it does not train again."""
        from tests.utils import make_dataset

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            root = self._unzip(d)
            (root / "models" / "model.pt").unlink()
            make_dataset(str(d / "data"), n_train=1, n_val=1, shape=(24, 24, 2))
            common = [
                "--meta_file",
                "configs/metadata.json",
                "--logging_file",
                "configs/logging.conf",
                "--bundle_root",
                ".",
                "--dataset_dir",
                d / "data",
                *TINY_ARGS,
                "--network_def#train_patch_size",
                "16",
                "--patch_size",
                "16",
                "--samples_per_task",
                "1",
                "--num_workers",
                "0",
            ]
            run([self.py, "-m", "monai.bundle", "run", "--config_file", "configs/train.json", *common,
                 "--output_dir", d / "train_out", "--num_iterations", "1", "--val_interval", "1"], cwd=root)  # fmt: skip
            best = root / "models" / "model.pt"
            trained = best.stat().st_mtime_ns
            latest = (root / "models" / "latest.pt").stat().st_mtime_ns
            proc = run(
                [
                    self.py,
                    "-m",
                    "monai.bundle",
                    "run",
                    "--config_file",
                    "['configs/train.json','configs/evaluate.json']",
                    *common,
                    "--output_dir",
                    d / "eval",
                    "--eval_split",
                    "validation",
                ],
                cwd=root,
            )
            self.assertEqual(best.stat().st_mtime_ns, trained, "evaluation trained again")
            self.assertEqual((root / "models" / "latest.pt").stat().st_mtime_ns, latest)
            written = sorted(os.listdir(d / "eval"))
            self.assertTrue(any(f.startswith("validation") for f in written), (written, proc.stdout[-2000:]))
