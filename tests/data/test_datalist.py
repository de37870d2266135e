from __future__ import annotations

import json
import os
import shutil
import tempfile
import unittest

import numpy as np
from custom.data import build_datalist, load_datalist, validate_datalist
from custom.settings import load_modality_settings
from custom.tools.datalist import main

from tests.utils import SETTINGS_DIR, make_tree, save_nifti


class TestDatalist(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        make_tree(self.root, {"CT": 5, "MR": 3})
        self.settings = load_modality_settings(SETTINGS_DIR)

    def tearDown(self):
        self.tmp.cleanup()

    def test_build_split_by_case_and_load(self):
        out_path = os.path.join(self.root, "datalist.json")
        data = build_datalist(self.root, out_path, self.settings, val_fraction=0.2, test_fraction=0.2)
        self.assertEqual(sum(len(v) for v in data.values()), 8)
        self.assertEqual(len([i for i in data["test"] if i["modality"] == "CT"]), 1)
        with open(out_path) as f:
            raw = json.load(f)
        self.assertFalse(os.path.isabs(raw["training"][0]["image"]))  # relative paths in the file
        items = load_datalist(out_path, "training")
        self.assertTrue(all(os.path.isfile(i["image"]) for i in items))
        self.assertEqual({i["modality"] for i in items}, {"CT", "MRI"})  # not turned into the CT/ folder path
        self.assertEqual({i["task"] for i in items if i["modality"] == "CT"}, {self.settings["CT"]["task"]})
        labels = {os.path.basename(i["label"]) for s in data.values() for i in s if i["modality"] == "CT"}
        self.assertEqual(len(labels), 5)  # each case in exactly one split

    def test_split_folders_are_respected(self):
        root = os.path.join(self.root, "split")
        rng = np.random.default_rng(1)
        for split in ("training", "test"):
            for sub in ("image", "label"):
                save_nifti(os.path.join(root, "PET", split, sub, f"{split}1.nii.gz"), rng.uniform(size=(4, 4)))
        data = build_datalist(root)
        self.assertEqual([len(data[s]) for s in ("training", "validation", "test")], [1, 0, 1])

    def test_missing_partner(self):
        os.remove(os.path.join(self.root, "CT", "image", "case03.nii.gz"))
        with self.assertRaisesRegex(ValueError, "case03.nii.gz: missing partner"):
            build_datalist(self.root)

    def test_validation_names_each_problem(self):
        data = build_datalist(self.root, validate=False)
        items = data["training"] + data["validation"] + data["test"]
        save_nifti(items[0]["image"], np.zeros((5, 5, 3)))  # shape mismatch
        bad = np.ones((16, 12, 3))
        bad[0, 0, 0] = np.nan
        save_nifti(items[1]["label"], bad)  # non-finite
        with open(items[2]["image"], "wb") as f:
            f.write(b"garbage")  # unreadable
        items[3]["modality"] = "US"  # unknown modality
        os.remove(items[4]["label"])  # missing partner
        with self.assertRaises(ValueError) as ctx:
            validate_datalist({"training": items}, settings=self.settings)
        msg = str(ctx.exception)
        self.assertIn(f"{items[0]['image']}: shape mismatch", msg)
        self.assertIn(f"{items[1]['label']}: non-finite", msg)
        self.assertIn(f"{items[2]['image']}: unreadable", msg)
        self.assertIn("unknown modality 'US'", msg)
        self.assertIn(f"{items[4]['label']}: missing partner", msg)

    def test_cli_build_then_validate(self):
        out_path = os.path.join(self.root, "dl.json")
        self.assertEqual(
            main(["build", "--root", self.root, "--output", out_path, "--settings_dir", str(SETTINGS_DIR)]), 0
        )
        self.assertEqual(main(["validate", "--datalist", out_path]), 0)
        shutil.rmtree(os.path.join(self.root, "MR"))
        with self.assertRaisesRegex(ValueError, "file not found"):
            main(["validate", "--datalist", out_path, "--headers_only"])


if __name__ == "__main__":
    unittest.main()
