"""Model-zoo compliance of bundle/: offline metadata schema check, network in/out check, zoo CI conventions, and
the zoo's own CI on the bundle zip (``scripts/zoo_ci.py``, ``make zoo-ci``; the zoo copy in ``shared/zoo-ci``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out  # noqa: E402

from tests.utils import tiny_overrides  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
SCHEMA = CONFIGS / "schema" / "meta_schema.json"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
TINY = tiny_overrides(patch=False)  # train_patch_size as each config sets it


def _meta() -> dict:
    return json.loads(META.read_text())


class TestZooFiles(unittest.TestCase):
    def test_required_files(self):
        for rel in [
            "LICENSE",
            "configs/metadata.json",
            "configs/logging.conf",
            "docs/README.md",
            "docs/data_license.txt",
            "large_files.yml",
            "configs/train.json",
        ]:
            self.assertTrue((BUNDLE / rel).is_file(), f"bundle/{rel} missing")
        self.assertIn("Apache License", (BUNDLE / "LICENSE").read_text())

    def test_all_configs_parse(self):
        for f in sorted(CONFIGS.glob("*.json")):
            with self.subTest(config=f.name):
                ConfigParser.load_config_file(f)

    def test_large_files_entries(self):
        import yaml

        content = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
        self.assertIn("large_files", content)
        for item in content["large_files"] or []:
            self.assertTrue({"path", "url", "hash_val", "hash_type"} <= set(item), item)
            self.assertTrue(item["path"].startswith("models/"), item)

    def test_readme_headings(self):
        text = (BUNDLE / "docs" / "README.md").read_text()
        headings = {h.strip().lower() for h in re.findall(r"^#+\s+(.*)$", text, re.M)}
        for h in [
            "model overview",
            "data",
            "training configuration",
            "performance",
            "limitations",
            "intended use and disclaimer",
            "references",
            "license",
            "authors",
            "tags",
            "system configuration",
            "citation",
            "model zoo ci",
        ]:
            self.assertIn(h, headings, f"docs/README.md lacks heading {h!r}")


class TestMetadata(unittest.TestCase):
    def test_verify_metadata_offline(self):
        # the schema file exists, so verify_metadata does not download (monai.apps.utils.download_url)
        import jsonschema  # noqa: F401  verify_metadata silently breaks without it (TypeError on except)

        verify_metadata(meta_file=str(META), filepath=str(SCHEMA))

    def test_schema_rejects_bad_metadata(self):
        import jsonschema

        schema = json.loads(SCHEMA.read_text())
        for broken in ({"version": "1.0"}, {"network_data_format": {"inputs": {}, "outputs": {}}}):
            meta = {**_meta(), **broken}
            with self.subTest(broken=broken), self.assertRaises(jsonschema.ValidationError):
                jsonschema.validate(meta, schema)

    def test_zoo_conventions(self):
        meta = _meta()
        self.assertRegex(meta["version"], SEMVER)
        self.assertIn(meta["version"], meta["changelog"])
        for v in meta["changelog"]:
            self.assertRegex(v, SEMVER)
        import monai
        import numpy

        self.assertEqual(meta["monai_version"], monai.__version__)
        self.assertEqual(meta["pytorch_version"], torch.__version__.split("+")[0])
        # numpy and the other pins are the newest releases that install on Python 3.10-3.12 (the zoo's CPU CI
        # runs 3.10), older than this venv's: same major version here, the exact versions in the bundle env
        self.assertEqual(meta["numpy_version"].split(".")[0], numpy.__version__.split(".")[0])
        for pkg, version in meta["required_packages_version"].items():
            self.assertRegex(version, r"^\d+(\.\d+)*$", f"{pkg} must be pinned to one release")
        self.assertIn("jsonschema", meta["required_packages_version"], "verify_metadata needs jsonschema")
        # monai >= 1.4 renames 'optional_packages_version' onto 'required_packages_version' when parsing
        self.assertNotIn("optional_packages_version", meta)
        for key in ["task", "description", "authors", "copyright", "intended_use", "references", "supported_apps"]:
            self.assertTrue(meta.get(key), key)
        self.assertTrue(any("TAT" in r for r in meta["references"]))
        self.assertTrue(any("Restormer" in r for r in meta["references"]))
        for io, key in (("inputs", "image"), ("outputs", "pred")):
            d = meta["network_data_format"][io][key]
            self.assertEqual(d["num_channels"], 1)
            self.assertEqual(len(d["spatial_shape"]), 2)
            self.assertEqual(d["value_range"], [0, 1])
            self.assertEqual(d["dtype"], "float32")

    def test_required_packages_cover_imports(self):
        """Every third-party top-level import of custom/ is torch, monai, numpy or in required_packages_version."""
        import ast

        dist_of = {
            "skimage": "scikit-image",
            "ignite": "pytorch-ignite",
            "yaml": "pyyaml",
            "PIL": "pillow",
            "SimpleITK": "SimpleITK",
        }
        required = {k.lower() for k in _meta()["required_packages_version"]}
        optional_only = {"nilearn", "dipy", "onnx", "onnxruntime"}  # demo-data builder / export, imported lazily
        import sys

        stdlib = set(sys.stdlib_module_names) | {"__future__", "custom", "torch", "monai", "numpy"}
        missing = set()
        for py in (BUNDLE.parent / "custom").rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for n in names:
                    top = n.split(".")[0]
                    if top in stdlib or top in optional_only:
                        continue
                    if dist_of.get(top, top).lower() not in required:
                        missing.add(f"{top} ({py.name})")
        self.assertFalse(missing, f"imported but not in required_packages_version: {sorted(missing)}")


class TestNetInOut(unittest.TestCase):
    def _verify(self, config: str):
        torch.set_num_threads(1)
        verify_net_in_out(
            net_id="network_def", meta_file=str(META), config_file=str(CONFIGS / config), device="cpu", n=4, **TINY
        )

    def test_train_config(self):
        self._verify("train.json")

    @unittest.skipUnless((CONFIGS / "inference.json").is_file(), "bundle/configs/inference.json not written yet")
    def test_inference_config(self):
        self._verify("inference.json")

    def test_shapes_of_spatial_pattern(self):
        """'8*n' must give multiples of 8 for any n (the network downsamples 3 times)."""
        from monai.bundle.scripts import _get_fake_spatial_shape

        shape = _meta()["network_data_format"]["inputs"]["image"]["spatial_shape"]
        for n in (1, 3, 4):
            self.assertEqual(_get_fake_spatial_shape(shape, n=n), (8 * n, 8 * n))


@unittest.skipUnless((CONFIGS / "inference.json").is_file(), "bundle/configs/inference.json not written yet")
class TestInferenceIds(unittest.TestCase):
    def test_zoo_ids(self):
        cfg = ConfigParser.load_config_file(CONFIGS / "inference.json")
        for key in [
            "bundle_root",
            "device",
            "network_def",
            "network",
            "preprocessing",
            "dataset",
            "dataloader",
            "inferer",
            "postprocessing",
            "evaluator",
            "checkpointloader",
            "initialize",
            "run",
        ]:
            self.assertIn(key, cfg, f"inference.json lacks id {key!r}")
        self.assertEqual(cfg.get("inference"), "%run", "`run inference` needs an 'inference' id aliasing 'run'")


def _zoo_ci():
    sys.path.insert(0, str(BUNDLE.parent / "scripts"))
    try:
        import zoo_ci
    finally:
        sys.path.pop(0)
    return zoo_ci


class TestZooCI(unittest.TestCase):
    """The model zoo's CI (``shared/zoo-ci``: verify_bundle, format checks, unit test) on the unzipped bundle zip.

    verify_bundle runs in the bundle env (``$TAT_BUNDLE_ENV``, only the metadata's packages, as the zoo's CPU
    CI installs them) when it is there, else in this interpreter.
    """

    @classmethod
    def setUpClass(cls):
        cls.zoo_ci = _zoo_ci()
        if not (cls.zoo_ci.DEFAULT_ZOO / "ci" / "verify_bundle.py").is_file():
            if os.environ.get("CI") == "true":
                raise AssertionError(f"CI: no model zoo copy at {cls.zoo_ci.DEFAULT_ZOO} (set ZOO_CI_DIR)")
            raise unittest.SkipTest(f"no model zoo copy at {cls.zoo_ci.DEFAULT_ZOO} (set ZOO_CI_DIR)")
        env_py = Path(os.environ.get("TAT_BUNDLE_ENV", "/nonexistent")) / "bin" / "python"
        cls.python = str(env_py) if env_py.is_file() else sys.executable
        cls.work = Path(tempfile.mkdtemp(prefix="zoo_ci_"))
        cls.bundle = cls.zoo_ci.layout(cls.zoo_ci.DEFAULT_ZOO, cls.work)
        cls.commands = cls.zoo_ci.checks(cls.work, cls.bundle, cls.python)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def _check(self, name: str):
        proc = self.zoo_ci.run_check(name, self.commands[name], self.work, self.zoo_ci.child_env())
        self.assertEqual(proc.returncode, 0, f"zoo {name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def test_layout_as_a_zoo_pr(self):
        self.assertEqual(self.bundle.name, "tat_ct_pet_mri_restoration")
        self.assertTrue((self.bundle / "custom" / "networks" / "tat.py").is_file())
        self.assertFalse((self.bundle / "models" / "model.pt").exists(), "no weights are released")
        custom_data = (self.work / "ci" / "bundle_custom_data.py").read_text()
        self.assertIn(f"exclude_verify_preferred_files_list.append({self.bundle.name!r})", custom_data)
        self.assertIn(f"exclude_verify_torchscript_list.append({self.bundle.name!r})", custom_data)
        self.assertEqual(len(self.zoo_ci.ZOO_EXCLUSIONS), 2, "only the two exclusions the README states")
        self.assertEqual(self.zoo_ci.text_file_problems(self.bundle), [])

    def test_verify_bundle(self):
        self._check("prepare_schema")
        self.assertTrue((self.bundle / "eval" / "schema.json").is_file())
        for mode in ("min", "full"):
            out = self._check(f"verify_bundle -m {mode}").stdout
            self.assertIn("metadata format is verified correctly.", out)
        self.assertIn("data shape is verified correctly.", out)
        shutil.rmtree(self.bundle / "eval")

    def test_black(self):
        self.assertIn("--skip-magic-trailing-comma", self.commands["black"])
        self._check("black")

    # The zoo's isort (profile black, run from the zoo root) sorts `custom` as a third-party package; so does
    # this repository's setup.cfg (known_third_party = custom), so one sorting passes both.
    def test_isort(self):
        self._check("isort")

    def test_flake8(self):
        self._check("flake8")

    def test_json_format(self):
        self._check("pretty-format-json")

    def test_unit_test(self):
        err = self._check("unit test").stderr
        self.assertIn("Ran 2 tests", err)
        self.assertNotIn("does not exists, skip test", err)


if __name__ == "__main__":
    unittest.main()
