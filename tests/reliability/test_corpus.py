"""Malformed and hostile inputs (generated, see ``corpus.py``): each gets a clear error naming the file and the
problem, in-process and through the real ``custom.tools.datalist`` CLI (one run over the whole corpus)."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import pytest
from custom.data import load_image, validate_datalist
from custom.data.slicing import load_slice, num_slices
from parameterized import parameterized

from tests.reliability.corpus import NAMES, make_corpus, make_empty_tree
from tests.utils import run_module, tree_hashes

# the file-level problems also surface on the training path (header count + one-slice read), before any voxel
# of a huge declared image is allocated
SLICE_PROBLEMS = {
    "zero_byte": "empty file",
    "truncated_nii": "truncated",
    "corrupt_header": "corrupt",
    "absurd_shape": "invalid",
    "huge_dims": "larger than",
    "four_d": "2d or 3d",
    "one_d": "2d or 3d",
    "missing_file": "not found",
    "not_nifti": "not a nifti",
    "dicom_mixed_series": "mixed series",
    "dicom_missing_slice": "missing slice",
    "dicom_empty": "empty",
    "dicom_no_pixels": "no pixel data",
    "dicom_non_image": "no pixel data",
    "dicom_garbage": "unreadable dicom file",
    "complex_nifti": "complex voxel type",
    "rgb_nifti": "rgb / vector voxel type",
    "gzip_crc": "crc",
    "dicom_rescale_slope_zero": "rescaleslope 0",
    "dicom_bits_mismatch": "bitsallocated 8 does not match",
    "dicom_rgb": "colour image",
    "dicom_duplicate_slice": "duplicate slice",
}  # (PET that cannot become SUV is refused when its pixels are read, not by the header-only slice count)


class TestCorpus(unittest.TestCase):
    """One corpus, validated in-process case by case and once through the CLI."""

    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.root = root = tmp
        cls.cases = make_corpus(root)
        datalist = os.path.join(root, "datalist.json")
        with open(datalist, "w", encoding="utf-8") as f:
            json.dump({"training": [cls.cases[n].item for n in NAMES]}, f)
        cls.before = tree_hashes(root, metadata=True)
        cls.proc = run_module("custom.tools.datalist", "validate", "--datalist", datalist)

    def test_corpus_size(self):
        self.assertGreaterEqual(len(self.cases), 20)
        self.assertEqual(sorted(self.cases), sorted(NAMES))

    @parameterized.expand([(name,) for name in NAMES])
    def test_validate_names_file_and_problem(self, name):
        case = self.cases[name]
        with self.assertRaises(ValueError) as err:
            validate_datalist({"training": [case.item]}, base_dir=self.root)
        lines = str(err.exception).splitlines()[1:]
        culprit = os.path.join(self.root, case.culprit)
        hits = [line for line in lines if line.startswith(culprit) and case.problem in line.lower()]
        self.assertTrue(hits, f"{name}: no line naming {culprit} with {case.problem!r} in:\n{err.exception}")
        expected = 1 + (name in ("four_d", "one_d"))
        self.assertEqual(len(lines), expected, f"{name}: exactly one problem expected:\n{err.exception}")

    @parameterized.expand([(name,) for name in sorted(SLICE_PROBLEMS)])
    def test_training_readers_name_file_and_problem(self, name):
        """The training path (expand_slices -> num_slices, LoadSliced -> load_slice) and load_image."""
        path = os.path.join(self.root, self.cases[name].item["image"])
        calls = [lambda: num_slices(path), lambda: load_slice(path, 0)]
        if name not in ("four_d", "one_d"):  # load_image is generic (any shape); the 2D/3D rule belongs to slicing
            calls.append(lambda: load_image(path))
        for call in calls:
            with self.assertRaises(ValueError) as err:
                call()
            msg = str(err.exception)
            self.assertTrue(msg.startswith(path), f"{name}: {msg}")
            self.assertIn(SLICE_PROBLEMS[name], msg.lower(), f"{name}: {msg}")

    def test_huge_declared_dims_refused_before_reading(self):
        """A ~100 TB header in a 100-byte file is refused from the header (no allocation attempt, no MemoryError)."""
        path = os.path.join(self.root, self.cases["huge_dims"].item["image"])
        with self.assertRaisesRegex(
            ValueError, r"header declares shape \(30000, 30000, 30000\).*larger than the limit"
        ):
            load_image(path)

    @pytest.mark.slow
    def test_validate_cli_reports_every_case(self):
        proc = self.proc
        self.assertEqual(proc.returncode, 1)
        err = proc.stderr
        self.assertNotIn("Traceback", err, err[-3000:])  # one line per problem, no stack
        last = err.strip().splitlines()
        for name in NAMES:
            case = self.cases[name]
            culprit = os.path.join(self.root, case.culprit)
            found = any(line.startswith(culprit) and case.problem in line.lower() for line in last)
            self.assertTrue(found, (name, err[-3000:]))
        self.assertEqual(tree_hashes(self.root, metadata=True), self.before)  # validation never modifies an input


class TestBuildErrors(unittest.TestCase):
    def test_build_errors_name_the_folder(self):
        from custom.data import build_datalist

        with tempfile.TemporaryDirectory() as d:
            roots = make_empty_tree(d)
            with self.assertRaisesRegex(ValueError, f"{roots['empty_root']}: no modality folder"):
                build_datalist(roots["empty_root"])
            with self.assertRaisesRegex(ValueError, "no degraded inputs|no clean|no case"):
                build_datalist(roots["empty_modality"])
            with self.assertRaisesRegex(ValueError, "case01.nii.gz: missing partner"):
                build_datalist(roots["missing_partner"])
            self.assertFalse(os.path.exists(os.path.join(roots["missing_partner"], "datalist.json")))


if __name__ == "__main__":
    unittest.main()
