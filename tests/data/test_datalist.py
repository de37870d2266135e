from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import unittest

import numpy as np
from custom.data import build_datalist, item_name, key_name, load_datalist, validate_datalist
from custom.settings import load_modality_settings
from custom.tools.datalist import main

from tests.utils import SETTINGS_DIR, make_tree, save_nifti, write_ct_series


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
        self.assertFalse(os.path.isabs(raw["training"][0]["label"]))
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

    def test_cli_build_options_reach_the_builder(self):
        """The command's defaults are the builder's, and each option is passed on (values compared, file by file)."""
        root = os.path.join(self.root, "many")
        make_tree(root, {"CT": 20})
        for argv, kwargs in [
            ([], {}),
            (
                ["--val_fraction", "0.25", "--test_fraction", "0.15", "--seed", "3", "--no_validate"],
                {"val_fraction": 0.25, "test_fraction": 0.15, "seed": 3, "validate": False},
            ),
        ]:
            with self.subTest(argv=argv):
                out_path = os.path.join(self.root, "cli.json")
                self.assertEqual(main(["build", "--root", root, "--output", out_path, *argv]), 0)
                with open(out_path) as f:
                    got = json.load(f)
                api_path = os.path.join(self.root, "api.json")
                build_datalist(root, api_path, **kwargs)
                with open(api_path) as f:
                    self.assertEqual(got, json.load(f))
        self.assertEqual([len(got[s]) for s in ("training", "validation", "test")], [12, 5, 3])

    def test_cli_allow_clean_only_flag(self):
        root = os.path.join(self.root, "clean")
        for case in ("a", "b"):
            save_nifti(os.path.join(root, "CT", "label", f"{case}.nii.gz"), np.ones((4, 4, 2)))
        out_path = os.path.join(self.root, "clean.json")
        with self.assertRaises(ValueError):
            main(["build", "--root", root, "--output", out_path])
        self.assertEqual(main(["build", "--root", root, "--output", out_path, "--allow_clean_only"]), 0)
        with open(out_path) as f:
            self.assertEqual(sum(len(v) for v in json.load(f).values()), 2)

    def test_cli_validation_options(self):
        """Build validates unless --no_validate; validate reads the content unless --headers_only, resolves the
        entries against --base_dir, and each command reports what it did on stdout."""
        bad = np.ones((16, 12, 3))
        bad[0, 0, 0] = np.nan
        save_nifti(os.path.join(self.root, "CT", "label", "case01.nii.gz"), bad)
        out_path = os.path.join(self.root, "dl.json")
        with self.assertRaisesRegex(ValueError, "case01.nii.gz: non-finite"):
            main(["build", "--root", self.root, "--output", out_path])
        self.assertFalse(os.path.exists(out_path))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            self.assertEqual(main(["build", "--root", self.root, "--output", out_path, "--no_validate"]), 0)
        with open(out_path) as f:
            counts = {k: len(v) for k, v in json.load(f).items()}
        self.assertEqual(
            out.getvalue().strip(), f"wrote {out_path}: " + ", ".join(f"{k} {n}" for k, n in counts.items())
        )
        with self.assertRaisesRegex(ValueError, "case01.nii.gz: non-finite"):
            main(["validate", "--datalist", out_path])
        with contextlib.redirect_stdout(io.StringIO()) as out:
            self.assertEqual(main(["validate", "--datalist", out_path, "--headers_only"]), 0)
        self.assertEqual(out.getvalue().strip(), f"{out_path}: 8 items OK")
        elsewhere = os.path.join(self.root, "lists", "dl.json")  # relative entries no longer next to the file
        os.makedirs(os.path.dirname(elsewhere))
        shutil.move(out_path, elsewhere)
        with self.assertRaisesRegex(ValueError, "file not found"):
            main(["validate", "--datalist", elsewhere, "--headers_only"])
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(main(["validate", "--datalist", elsewhere, "--headers_only", "--base_dir", self.root]), 0)

    def test_cli_usage_errors(self):
        out_path = os.path.join(self.root, "dl.json")
        for argv in [
            [],
            ["build", "--output", out_path],
            ["build", "--root", self.root],
            ["build", "--root", self.root, "--output", out_path, "--layout", "other"],
            ["validate"],
            ["validate", "--datalist", out_path, "--layout", "other"],
        ]:
            with self.subTest(argv=argv), contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as e:
                main(argv)
            self.assertEqual(e.exception.code, 2)
        self.assertFalse(os.path.exists(out_path))


class TestItemName(unittest.TestCase):
    def test_the_file_an_item_comes_from(self):
        import pathlib

        import torch
        from monai.data import MetaTensor

        loaded = MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/d/loaded.nii.gz"})
        self.assertEqual(item_name({"source": "/d/s", "image": "/d/i.nii"}), "/d/s")  # source first
        self.assertEqual(item_name({"image": "/d/i.nii"}), "/d/i.nii")
        self.assertEqual(item_name({"image": pathlib.Path("/d/p.nii")}), "/d/p.nii")
        self.assertEqual(item_name({"image": ["/d/s/1.dcm", "/d/s/2.dcm"]}), "/d/s")  # a series: its folder
        self.assertEqual(item_name({"image": ["1.dcm", "2.dcm"]}), "1.dcm")  # no folder: its first file
        self.assertEqual(item_name({"image": loaded}), "/d/loaded.nii.gz")
        # a tensor without a file name is never written out as its values
        self.assertEqual(item_name({"image": torch.zeros(1, 2, 2)}), "?")
        self.assertEqual(item_name({"image": MetaTensor(torch.zeros(1, 2, 2))}), "?")
        self.assertEqual(item_name({}), "?")
        self.assertEqual(item_name({"source": None, "image": "/d/i.nii"}), "/d/i.nii")
        # the keys in order: the first that names a file
        item = {"input_path": "/d/in.nii", "image": loaded}
        self.assertEqual(item_name(item, ("input_path", "image")), "/d/in.nii")
        self.assertEqual(item_name(item, ("missing", "image")), "/d/loaded.nii.gz")
        self.assertEqual(item_name(item), "/d/loaded.nii.gz")  # default: "image"

    def test_the_file_of_one_key(self):
        import torch
        from monai.data import MetaTensor

        item = {
            "source": "/d/scan",  # the item's source is not the file of each key
            "image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": "/d/low.nii.gz"}),
            "label": "/d/high.nii.gz",
            "series": ["/d/s/1.dcm", "/d/s/2.dcm"],
            "values": torch.zeros(1, 2, 2),
        }
        self.assertEqual(key_name(item, "image"), "/d/low.nii.gz")
        self.assertEqual(key_name(item, "label"), "/d/high.nii.gz")
        self.assertEqual(key_name(item, "series"), "/d/s")
        self.assertEqual(key_name(item, "values"), "item key 'values'")
        self.assertEqual(key_name(item, "missing"), "item key 'missing'")


class TestBuildChoosesFiles(unittest.TestCase):
    """Which files become which items and splits (a wrong pairing or split silently changes the training data)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_case_names_pair_partners_and_stray_entries_are_ignored(self):
        rng = np.random.default_rng(0)
        ct = os.path.join(self.root, "CT")
        cases = {"patient_0001": ".nii.gz", "patient_0002": ".nii.gz"}  # names longer than the suffix, same prefix
        for case, suffix in cases.items():
            for sub in ("image", "label"):
                save_nifti(os.path.join(ct, sub, case + suffix), rng.uniform(size=(4, 4, 2)))
        save_nifti(os.path.join(ct, "image", "patient_0003.nii"), rng.uniform(size=(4, 4, 2)))  # .nii vs .nii.gz
        save_nifti(os.path.join(ct, "label", "patient_0003.nii.gz"), rng.uniform(size=(4, 4, 2)))
        write_ct_series(os.path.join(ct, "image", "patient_0005"), n=2, rows=4, cols=4)  # a series folder ...
        save_nifti(os.path.join(ct, "label", "patient_0005.nii.gz"), rng.uniform(size=(4, 4, 2)))  # ... and a file
        for sub in ("image", "label"):  # DICOM series folders (no suffix)
            write_ct_series(os.path.join(ct, sub, "patient_0004"), n=2, rows=4, cols=4)
            for stray in (".DS_Store", "notes.txt"):
                with open(os.path.join(ct, sub, stray), "w") as f:
                    f.write("not an image")
        with open(os.path.join(self.root, "README.md"), "w") as f:
            f.write("stray file at the root")
        os.makedirs(os.path.join(self.root, "docs"))  # a folder that is no modality
        data = build_datalist(self.root, val_fraction=0.0, test_fraction=0.0)
        pairs = sorted(
            (os.path.basename(i["image"]), os.path.basename(i["label"]), i["source"]) for i in data["training"]
        )
        self.assertEqual(
            pairs,
            [
                ("patient_0001.nii.gz", "patient_0001.nii.gz", "patient_0001.nii.gz"),
                ("patient_0002.nii.gz", "patient_0002.nii.gz", "patient_0002.nii.gz"),
                ("patient_0003.nii", "patient_0003.nii.gz", "patient_0003.nii.gz"),
                ("patient_0004", "patient_0004", "patient_0004"),
                ("patient_0005", "patient_0005.nii.gz", "patient_0005.nii.gz"),
            ],
        )
        self.assertTrue(
            all(os.path.dirname(i["image"]).endswith(os.path.join("CT", "image")) for i in data["training"])
        )
        self.assertEqual({(i["modality"], i["task"]) for i in data["training"]}, {("CT", "ct")})

    def test_split_sizes_are_rounded_fractions_of_the_cases(self):
        make_tree(self.root, {"CT": 10}, shape=(4, 4, 2))

        def sizes(data: dict) -> list[int]:
            return [len(data[s]) for s in ("training", "validation", "test")]

        data = build_datalist(self.root, val_fraction=0.2, test_fraction=0.3, validate=False)
        self.assertEqual(sizes(data), [5, 2, 3])
        sources = [i["source"] for s in data.values() for i in s]
        self.assertEqual(sorted(sources), [f"case{i:02d}.nii.gz" for i in range(10)])  # each case once
        default = build_datalist(self.root, validate=False)
        self.assertEqual(sizes(default), [8, 1, 1])  # 10 % validation, 10 % test
        self.assertEqual(default, build_datalist(self.root, seed=0, validate=False))  # reproducible default seed
        for items in default.values():
            for item in items:
                self.assertEqual(os.path.basename(item["image"]), item["source"])  # partners stay together

    def test_fractions_outside_the_cases_are_refused(self):
        """Negative fractions, fractions summing to more than 1, or a modality left without a training case by
        rounding (2 cases at 0.3 / 0.3) used to empty its training split silently; all cases to validation and test
        (sum 1) stays allowed."""
        make_tree(self.root, {"CT": 4}, shape=(4, 4, 2))
        for val, test, message in (
            (-0.1, 0.1, "val_fraction must be a fraction of the cases in \\[0, 1\\], got -0.1"),
            (0.1, 1.5, "test_fraction must be a fraction of the cases in \\[0, 1\\], got 1.5"),
            (float("nan"), 0.1, "val_fraction must be .* got nan"),
            (0.6, 0.5, "val_fraction 0.6 \\+ test_fraction 0.5 is more than all the cases"),
            ("0.1", 0.1, "val_fraction must be a fraction of the cases in \\[0, 1\\], got '0.1'"),
            (0.1, None, "test_fraction must be .* got None"),
            (0.4, 0.4, "CT: 4 cases leave none for training with val_fraction 0.4 and test_fraction 0.4 \\(2 valid"),
        ):
            with self.subTest(val=val, test=test), self.assertRaisesRegex(ValueError, message):
                build_datalist(self.root, val_fraction=val, test_fraction=test, validate=False)
        # numpy fractions (np.float32 is no float subclass) are fractions too
        data = build_datalist(self.root, val_fraction=np.float32(0.25), test_fraction=np.float64(0.25), validate=False)
        self.assertEqual([len(data[s]) for s in ("training", "validation", "test")], [2, 1, 1])
        data = build_datalist(self.root, val_fraction=0.5, test_fraction=0.5, validate=False)
        self.assertEqual([len(data[s]) for s in ("training", "validation", "test")], [0, 2, 2])

    def test_clean_only_needs_the_flag(self):
        make_tree(self.root, {"MR": 2}, shape=(4, 4, 2))
        shutil.rmtree(os.path.join(self.root, "MR", "image"))
        with self.assertRaisesRegex(ValueError, "image: no degraded inputs; pass allow_clean_only=True"):
            build_datalist(self.root)
        data = build_datalist(self.root, val_fraction=0.0, test_fraction=0.0, allow_clean_only=True)
        self.assertEqual(len(data["training"]), 2)
        self.assertTrue(all("image" not in i and os.path.isfile(i["label"]) for i in data["training"]))

    def test_root_problems_and_default_validation(self):
        with self.assertRaisesRegex(ValueError, "nowhere: data set root not found"):
            build_datalist(os.path.join(self.root, "nowhere"))
        os.makedirs(os.path.join(self.root, "docs"))
        with self.assertRaisesRegex(ValueError, "no modality folder"):
            build_datalist(self.root)
        make_tree(self.root, {"CT": 2}, shape=(4, 4, 2))
        with open(os.path.join(self.root, "CT", "label", "case01.nii.gz"), "wb") as f:
            f.write(b"garbage")
        self.assertEqual(len(build_datalist(self.root, validate=False)["training"]), 2)
        with self.assertRaisesRegex(ValueError, "case01.nii.gz: unreadable"):  # validated by default
            build_datalist(self.root)
        save_nifti(os.path.join(self.root, "CT", "label", "case01.nii.gz"), np.ones((4, 4, 2)))
        make_tree(self.root, {"MR": 1}, shape=(4, 4, 2))
        settings = load_modality_settings(SETTINGS_DIR)
        with self.assertRaisesRegex(ValueError, "unknown modality 'MRI'"):  # validated against the given settings
            build_datalist(self.root, settings={"CT": settings["CT"]})
        cwd = os.getcwd()
        try:
            os.chdir(self.root)
            data = build_datalist(".", validate=False)
        finally:
            os.chdir(cwd)
        self.assertTrue(all(os.path.isabs(i[k]) for i in data["training"] for k in ("image", "label")))

    def test_load_datalist_split_paths_and_errors(self):
        lists = {
            "training": [{"image": "CT/image/a.nii.gz", "label": "CT/label/a.nii.gz", "modality": "CT"}],
            "validation": [{"image": "CT/image/b.nii.gz", "label": "CT/label/b.nii.gz", "modality": "CT"}],
        }
        path = os.path.join(self.root, "lists", "dl.json")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            json.dump(lists, f)
        folder = os.path.dirname(path)
        # the files need not exist yet: both paths are joined with the json's folder, or with base_dir
        (val,) = load_datalist(path, "validation")
        self.assertEqual(val["image"], os.path.join(folder, "CT", "image", "b.nii.gz"))
        self.assertEqual(val["label"], os.path.join(folder, "CT", "label", "b.nii.gz"))
        self.assertEqual(val["modality"], "CT")
        (train,) = load_datalist(path, "training", base_dir=self.root)
        self.assertEqual(train["label"], os.path.join(self.root, "CT", "label", "a.nii.gz"))
        with self.assertRaisesRegex(ValueError, r"dl.json: no 'test' split \(has \['training', 'validation'\]\)"):
            load_datalist(path, "test")
        with open(path, "w") as f:
            f.write("{not json")
        with self.assertRaisesRegex(ValueError, "dl.json: unreadable data list"):
            load_datalist(path)
        with self.assertRaisesRegex(ValueError, "missing.json: unreadable data list"):
            load_datalist(os.path.join(self.root, "missing.json"))

    def test_validate_counts_items_and_resolves_relative_paths(self):
        make_tree(self.root, {"CT": 2}, shape=(4, 4, 2))
        lists = {
            "training": [{"image": "CT/image/case00.nii.gz", "label": "CT/label/case00.nii.gz", "modality": "ct"}],
            "validation": [{"label": "CT/label/case01.nii.gz", "modality": "MR"}],  # clean-only item
            "numTraining": 1,  # not a list of items: skipped
        }
        path = os.path.join(self.root, "dl.json")
        with open(path, "w") as f:
            json.dump(lists, f)
        self.assertEqual(validate_datalist(path), 2)  # against the json's folder
        self.assertEqual(validate_datalist(lists, base_dir=self.root), 2)
        cwd = os.getcwd()
        try:
            os.chdir(self.root)
            self.assertEqual(validate_datalist(lists), 2)  # a dict without base_dir: the working directory
        finally:
            os.chdir(cwd)
        with open(os.path.join(self.root, "CT", "label", "case01.nii.gz"), "wb") as f:
            f.write(b"garbage")
        self.assertEqual(validate_datalist(path, check_content=False), 2)  # presence only: the content is not read
        with open(path, "w") as f:
            f.write("{not json")
        with self.assertRaisesRegex(ValueError, "dl.json: unreadable data list"):
            validate_datalist(path)

    def test_validate_gives_one_line_per_problem_naming_the_file(self):
        make_tree(self.root, {"CT": 1}, shape=(4, 4, 2))
        label = os.path.join(self.root, "CT", "label", "case00.nii.gz")
        image = os.path.join(self.root, "CT", "image", "case00.nii.gz")
        gone = os.path.join(self.root, "gone.nii.gz")
        garbage = os.path.join(self.root, "garbage.nii.gz")
        with open(garbage, "wb") as f:
            f.write(b"garbage")
        four_d = save_nifti(os.path.join(self.root, "four_d.nii.gz"), np.ones((4, 4, 2, 2)))
        items = [
            {"label": label},  # no modality
            {"image": image},  # no modality, no label
            {"image": gone, "label": label, "modality": "CT"},  # missing partner
            {"label": gone, "modality": "CT"},  # clean-only item whose target is missing
            {"image": garbage, "label": label, "modality": "CT"},  # unreadable input
            {"image": four_d, "label": four_d, "modality": "CT"},  # not 2D / 3D
        ]
        with self.assertRaises(ValueError) as ctx:
            validate_datalist({"training": items})
        lines = str(ctx.exception).splitlines()
        self.assertEqual(lines[0], "invalid data list:")
        expected = [
            f"{label}: no 'modality' in the item (training[0]",
            f"{image}: no 'modality' in the item (training[1]",
            "training[1]: no 'label' (clean target) in the item.",
            f"{gone}: missing partner: file not found ('image' of training[2]).",
            f"{gone}: file not found ('label' of training[3]).",
            f"{garbage}: ",
            f"{four_d}: expected a 2D or 3D image",
            f"{four_d}: expected a 2D or 3D image",
        ]
        self.assertEqual(len(lines) - 1, len(expected), str(ctx.exception))
        for line, start in zip(lines[1:], expected):
            self.assertTrue(line.startswith(start), f"{line!r} does not start with {start!r}")


if __name__ == "__main__":
    unittest.main()
