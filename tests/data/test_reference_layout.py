"""Data list of the authors' released layout: pairing, order, task names, every problem reported at once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from custom.data.reference_layout import (
    build_reference_datalist,
    first_per_task,
    scan_reference_layout,
    validate_reference_datalist,
)
from custom.settings import load_modality_settings
from custom.tools.datalist import main

from tests.utils import REPO, SETTINGS_DIR, make_reference_dataset, write_bin, write_nii

SETTINGS = load_modality_settings(SETTINGS_DIR)
TASKS = {"CT": "low_dose_ct", "PET": "low_count_pet", "MRI": "mri_super_resolution"}


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TestReferenceLayout(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.root = os.path.join(self.dir.name, "released")
        self.written = make_reference_dataset(self.root, counts=(3, 2, 2))

    def test_pairs_order_and_tasks(self):
        out = build_reference_datalist(self.root, settings=SETTINGS)
        self.assertEqual({k: len(v) for k, v in out.items()}, {"training": 9, "validation": 6, "test": 6})
        for split, folder in (("training", "train"), ("validation", "validation"), ("test", "test")):
            expected = [f for task in sorted(self.written) for f in self.written[task][folder]]
            self.assertEqual([i["image"] for i in out[split]], expected)  # task folder, then file name
            for item in out[split]:
                parts = item["image"].split(os.sep)
                self.assertEqual(parts[-2], "LQ")
                self.assertEqual(item["label"], os.sep.join(parts[:-2] + ["HQ", parts[-1]]))
                self.assertEqual(item["modality"], parts[-4])
                self.assertEqual(item["task"], TASKS[parts[-4]])
                self.assertEqual(item["source"], parts[-1])
        without = scan_reference_layout(self.root)[0]
        self.assertEqual({i["task"] for i in without["test"]}, {"ct", "pet", "mri"})

    def test_cli_build_and_validate(self):
        output = os.path.join(self.root, "datalist.json")
        settings_dir = SETTINGS_DIR
        main(
            ["build", "--layout", "reference", "--root", self.root, "--output", output, "--settings_dir", settings_dir]
        )
        data = json.load(open(output))
        self.assertEqual(data["training"][0]["image"], os.path.join("CT", "train", "LQ", "ct_000.bin"))
        self.assertEqual({i["task"] for i in data["training"]}, set(TASKS.values()))  # --settings_dir's task names
        self.assertEqual(data["test"][-1]["label"], os.path.join("PET", "test", "HQ", "pet_test_001.nii"))
        self.assertEqual(main(["validate", "--layout", "reference", "--datalist", output]), 0)
        os.remove(os.path.join(self.root, "MRI", "test", "HQ", "mri_test_000.nii"))
        proc = subprocess.run(
            [sys.executable, "-m", "custom.tools.datalist", "validate", "--layout", "reference", "--datalist", output],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        self.assertEqual(proc.returncode, 1)
        self.assertIn("mri_test_000.nii: missing partner", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_cli_validation_options(self):
        """Build validates unless --no_validate; validate reads the content unless --headers_only and checks the
        tree given by --root; each command reports what it did on stdout."""
        bad = np.ones((40, 40), np.float32)
        bad[0, 0] = np.nan
        write_bin(os.path.join(self.root, "CT", "train", "LQ", "ct_001.bin"), bad)
        output = os.path.join(self.root, "datalist.json")
        with self.assertRaisesRegex(ValueError, "ct_001.bin: non-finite"):
            main(["build", "--layout", "reference", "--root", self.root, "--output", output])
        with contextlib.redirect_stdout(io.StringIO()) as out:
            main(["build", "--layout", "reference", "--root", self.root, "--output", output, "--no_validate"])
        self.assertEqual(out.getvalue().strip(), f"wrote {output}: training 9, validation 6, test 6")
        with self.assertRaisesRegex(ValueError, "ct_001.bin: non-finite"):
            main(["validate", "--layout", "reference", "--datalist", output])
        argv = ["validate", "--layout", "reference", "--datalist", output, "--headers_only"]
        with contextlib.redirect_stdout(io.StringIO()) as out:
            self.assertEqual(main(argv), 0)
        self.assertEqual(out.getvalue().strip(), f"{output}: 21 items OK")
        other = os.path.join(self.dir.name, "other")  # --root: the tree re-checked instead of the datalist's folder
        shutil.copytree(self.root, other)
        os.remove(os.path.join(other, "MRI", "test", "HQ", "mri_test_000.nii"))
        with self.assertRaisesRegex(ValueError, "mri_test_000.nii: missing partner"):
            main([*argv, "--root", other])

    def test_every_problem_is_reported_at_once(self):
        marker = os.path.join(self.dir.name, "pwned")
        ct_train = os.path.join(self.root, "CT", "train")
        with open(os.path.join(ct_train, "LQ", "ct_001.bin"), "wb") as f:
            pickle.dump(_RunsCode(marker), f)  # hostile
        os.remove(os.path.join(ct_train, "HQ", "ct_002.bin"))  # LQ without HQ
        write_bin(os.path.join(ct_train, "HQ", "ct_009.bin"), np.zeros((40, 40), np.float32))  # HQ without LQ
        mri_val = os.path.join(self.root, "MRI", "validation")
        write_nii(os.path.join(mri_val, "HQ", "mri_validation_000.nii"), np.zeros((16, 32), np.float32))  # shape
        shutil.rmtree(os.path.join(self.root, "PET", "test"))
        for kind in ("LQ", "HQ"):
            os.makedirs(os.path.join(self.root, "PET", "test", kind))  # empty task folder
        open(os.path.join(mri_val, "LQ", "notes.txt"), "w").close()
        output = os.path.join(self.root, "datalist.json")
        with self.assertRaises(ValueError) as ctx:
            build_reference_datalist(self.root, output, SETTINGS)
        message = str(ctx.exception)
        expected = [
            r"CT/train/LQ/ct_001\.bin: refused to unpickle global '(posix|os)\.system'",
            r"CT/train/LQ/ct_002\.bin: missing partner, no .*CT/train/HQ/ct_002\.bin",
            r"CT/train/HQ/ct_009\.bin: missing partner, no .*CT/train/LQ/ct_009\.bin",
            r"MRI/validation/LQ/mri_validation_000\.nii: shape mismatch between input \(32, 32\) and target \(32, 16\)",
            r"PET/test/LQ: empty folder",
            r"PET/test/HQ: empty folder",
            r"MRI/validation/LQ/notes\.txt: not a \.bin/\.nii/\.nii\.gz file",
        ]
        for pattern in expected:
            self.assertRegex(message, pattern)
        self.assertEqual(len(message.splitlines()), 1 + len(expected))  # nothing else: the other files are fine
        self.assertFalse(os.path.exists(marker))
        self.assertFalse(os.path.exists(output))  # nothing written

    def test_missing_folders(self):
        shutil.rmtree(os.path.join(self.root, "CT", "validation"))
        shutil.rmtree(os.path.join(self.root, "MRI", "test", "HQ"))
        errors = scan_reference_layout(self.root)[1]
        self.assertEqual(len(errors), 2)
        self.assertRegex(errors[0], r"CT/validation: folder missing")
        self.assertRegex(errors[1], r"MRI/test/HQ: folder missing")
        with self.assertRaisesRegex(ValueError, "no task folder"):
            build_reference_datalist(os.path.join(self.root, "CT", "train"))

    def test_folder_names_are_matched_case_insensitively(self):
        os.rename(os.path.join(self.root, "CT", "train", "LQ"), os.path.join(self.root, "CT", "train", "lq"))
        os.rename(os.path.join(self.root, "MRI", "test"), os.path.join(self.root, "MRI", "Test"))
        out, errors = scan_reference_layout(self.root)
        self.assertEqual(errors, [])
        self.assertEqual({k: len(v) for k, v in out.items()}, {"training": 9, "validation": 6, "test": 6})
        ct = [i for i in out["training"] if i["modality"] == "CT"]
        self.assertEqual([os.path.basename(i["image"]) for i in ct], ["ct_000.bin", "ct_001.bin", "ct_002.bin"])
        for item in ct:
            self.assertTrue(os.path.isfile(item["image"]), item["image"])  # the folder's own spelling
        mri = [i for i in out["test"] if i["modality"] == "MRI"]
        self.assertEqual(len(mri), 2)
        self.assertTrue(all(os.path.isfile(i["label"]) for i in mri))
        shutil.rmtree(os.path.join(self.root, "PET", "validation", "HQ"))
        open(os.path.join(self.root, "PET", "validation", "hq"), "w").close()  # a file, not the HQ folder
        self.assertEqual(
            [e.split(": ")[1] for e in scan_reference_layout(self.root)[1]], ["folder missing (HQ = targets)."]
        )

    def test_hidden_files_and_stray_root_files_are_ignored(self):
        for name in (".DS_Store", "._ct_000.bin"):
            open(os.path.join(self.root, "CT", "train", "LQ", name), "w").close()
        os.makedirs(os.path.join(self.root, "MRI", "train", "HQ", ".ipynb_checkpoints"))
        open(os.path.join(self.root, "ct"), "w").close()  # a file named like a task folder is not one
        out, errors = scan_reference_layout(self.root)
        self.assertEqual(errors, [])
        self.assertEqual({k: len(v) for k, v in out.items()}, {"training": 9, "validation": 6, "test": 6})

    def test_relative_root_gives_absolute_paths(self):
        out, errors = scan_reference_layout(os.path.relpath(self.root))
        self.assertEqual(errors, [])
        paths = [i[k] for items in out.values() for i in items for k in ("image", "label")]
        self.assertEqual(len(paths), 42)
        self.assertTrue(all(os.path.isabs(p) and os.path.isfile(p) for p in paths))

    def test_a_single_content_problem_is_one_line_under_the_title(self):
        write_nii(os.path.join(self.root, "PET", "test", "HQ", "pet_test_000.nii"), np.zeros((8, 8), np.float32))
        with self.assertRaises(ValueError) as ctx:
            build_reference_datalist(self.root, settings=SETTINGS)
        lines = str(ctx.exception).splitlines()
        self.assertEqual(len(lines), 2, lines)  # the data set title, then the problem (no nested title)
        self.assertTrue(lines[0].startswith("invalid data set "))
        self.assertRegex(lines[1], r"PET/test/LQ/pet_test_000\.nii: shape mismatch")

    def test_content_problems_are_reported_with_missing_splits(self):
        for task in ("PET", "CT", "MRI"):
            shutil.rmtree(os.path.join(self.root, task, "test"))  # no test pair at all
        write_bin(os.path.join(self.root, "CT", "train", "HQ", "ct_001.bin"), np.zeros((24, 40), np.float32))
        with self.assertRaises(ValueError) as ctx:
            build_reference_datalist(self.root, settings=SETTINGS)
        lines = str(ctx.exception).splitlines()[1:]
        self.assertEqual(len(lines), 4, lines)
        self.assertEqual(sum(bool(re.search(r"/test: folder missing", line)) for line in lines), 3)
        self.assertRegex(lines[-1], r"CT/train/LQ/ct_001\.bin: shape mismatch")

    def test_validate_false_reads_no_file(self):
        with open(os.path.join(self.root, "CT", "train", "HQ", "ct_001.bin"), "wb") as f:
            f.write(b"not a pickle")
        out = build_reference_datalist(self.root, settings=SETTINGS, validate=False)
        self.assertEqual(len(out["training"]), 9)
        with self.assertRaisesRegex(ValueError, r"CT/train/HQ/ct_001\.bin: unreadable pickled tensor"):
            build_reference_datalist(self.root, settings=SETTINGS)

    def test_a_task_without_settings_is_refused(self):
        settings = {m: SETTINGS[m] for m in ("CT", "MRI")}
        with self.assertRaisesRegex(ValueError, r"PET/.*: unknown modality 'PET'"):
            build_reference_datalist(self.root, settings=settings)

    def test_validate_reference_datalist(self):
        output = os.path.join(self.root, "datalist.json")
        build_reference_datalist(self.root, output, SETTINGS)
        self.assertEqual(validate_reference_datalist(output, settings=SETTINGS), 21)
        with self.assertRaisesRegex(ValueError, r"PET/.*: unknown modality 'PET'"):
            validate_reference_datalist(output, settings={m: SETTINGS[m] for m in ("CT", "MRI")})
        broken = os.path.join(self.root, "MRI", "validation", "HQ", "mri_validation_001.nii")
        with open(broken, "wb") as f:
            f.write(b"garbage")
        with self.assertRaises(ValueError) as ctx:
            validate_reference_datalist(output)  # reads the files by default
        lines = str(ctx.exception).splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[1].startswith(broken + ":"), lines[1])
        self.assertEqual(validate_reference_datalist(output, check_content=False), 21)  # headers only: present


class TestFirstPerTask(unittest.TestCase):
    def test_first_files_of_each_task_by_name(self):
        items = [
            {"image": f"/d/{t}/validation/LQ/{n}.nii", "task": t}
            for t, names in (("ct", ["b", "a", "d", "c"]), ("mri", ["z", "y"]), ("pet", ["10", "9", "2"]))
            for n in names
        ]
        out = first_per_task(list(reversed(items)), 2)
        self.assertEqual(
            [(i["task"], os.path.basename(i["image"])) for i in out],
            [("ct", "a.nii"), ("ct", "b.nii"), ("mri", "y.nii"), ("mri", "z.nii"), ("pet", "10.nii"), ("pet", "2.nii")],
        )
        self.assertEqual(len(first_per_task(items, None)), len(items))  # whole split
        self.assertEqual(
            [i["image"] for i in first_per_task(items, 1)],
            ["/d/ct/validation/LQ/a.nii", "/d/mri/validation/LQ/y.nii", "/d/pet/validation/LQ/10.nii"],
        )
        self.assertEqual(len(first_per_task(items, 16)), len(items))  # fewer than 16: all kept

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "count must be >= 1"):
            first_per_task([], 0)
        with self.assertRaisesRegex(ValueError, "item 0"):
            first_per_task([{"image": "a.nii"}], 1)


if __name__ == "__main__":
    unittest.main()
