"""Model-zoo compliance of bundle/: offline metadata schema check, network in/out check, zoo CI conventions.

The conventions mirror Project-MONAI/model-zoo ``ci/verify_bundle.py`` as documented (required files, version in
changelog, metadata keys, network_data_format, inference config ids) — that script itself is not available here.
"""

from __future__ import annotations

import json
import os
import re
import unittest
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
SCHEMA = CONFIGS / "schema" / "meta_schema.json"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
TINY = {"network_def#dim": 8, "network_def#num_blocks": [1, 1, 1, 1], "network_def#num_refinement_blocks": 1}


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
        self.assertEqual(meta["numpy_version"], numpy.__version__)
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


if __name__ == "__main__":
    unittest.main()
