"""Malformed and hostile inputs (generated, see ``corpus.py``): each gets a clear error naming the file and the
problem, in-process and through the real ``custom.tools.datalist`` CLI (one run over the whole corpus)."""

from __future__ import annotations

import json
import os

import pytest
from custom.data import load_image, validate_datalist
from custom.data.slicing import load_slice, num_slices

from tests.reliability.corpus import make_corpus, make_empty_tree
from tests.utils import run_module, tree_hashes

NAMES = [
    "zero_byte",
    "truncated_gz",
    "truncated_nii",
    "corrupt_header",
    "absurd_shape",
    "huge_dims",
    "four_d",
    "one_d",
    "nan_voxels",
    "inf_voxels",
    "shape_mismatch",
    "unknown_modality",
    "missing_modality",
    "missing_file",
    "not_nifti",
    "dicom_mixed_series",
    "dicom_missing_slice",
    "dicom_empty",
    "dicom_no_pixels",
    "dicom_non_image",
    "dicom_garbage",
    "complex_nifti",
    "rgb_nifti",
    "gzip_crc",
    "dicom_rescale_slope_zero",
    "dicom_bits_mismatch",
    "dicom_rgb",
    "pet_counts",
    "pet_no_weight",
    "dicom_duplicate_slice",
]
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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    cases = make_corpus(root)
    datalist = os.path.join(root, "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump({"training": [cases[n].item for n in NAMES]}, f)
    before = tree_hashes(root, metadata=True)
    proc = run_module("custom.tools.datalist", "validate", "--datalist", datalist)
    return {"root": root, "cases": cases, "datalist": datalist, "before": before, "proc": proc}


def test_corpus_size(corpus):
    assert len(corpus["cases"]) >= 20 and sorted(corpus["cases"]) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_validate_names_file_and_problem(corpus, name):
    case = corpus["cases"][name]
    with pytest.raises(ValueError) as err:
        validate_datalist({"training": [case.item]}, base_dir=corpus["root"])
    lines = str(err.value).splitlines()[1:]
    culprit = os.path.join(corpus["root"], case.culprit)
    hits = [line for line in lines if line.startswith(culprit) and case.problem in line.lower()]
    assert hits, f"{name}: no line naming {culprit} with {case.problem!r} in:\n{err.value}"
    assert len(lines) == 1 + (name in ("four_d", "one_d")), f"{name}: exactly one problem expected:\n{err.value}"


@pytest.mark.parametrize("name", sorted(SLICE_PROBLEMS))
def test_training_readers_name_file_and_problem(corpus, name):
    """The training path (expand_slices -> num_slices, LoadSliced -> load_slice) and load_image."""
    path = os.path.join(corpus["root"], corpus["cases"][name].item["image"])
    calls = [lambda: num_slices(path), lambda: load_slice(path, 0)]
    if name not in ("four_d", "one_d"):  # load_image is generic (any shape); the 2D/3D rule belongs to slicing
        calls.append(lambda: load_image(path))
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(path) and SLICE_PROBLEMS[name] in msg.lower(), f"{name}: {msg}"


def test_huge_declared_dims_refused_before_reading(corpus):
    """A ~100 TB header in a 100-byte file is refused from the header (no allocation attempt, no MemoryError)."""
    path = os.path.join(corpus["root"], corpus["cases"]["huge_dims"].item["image"])
    with pytest.raises(ValueError, match=r"header declares shape \(30000, 30000, 30000\).*larger than the limit"):
        load_image(path)


@pytest.mark.slow
def test_validate_cli_reports_every_case(corpus):
    proc = corpus["proc"]
    assert proc.returncode == 1
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]  # one line per problem, no stack
    last = err.strip().splitlines()
    for name in NAMES:
        case = corpus["cases"][name]
        culprit = os.path.join(corpus["root"], case.culprit)
        assert any(line.startswith(culprit) and case.problem in line.lower() for line in last), (name, err[-3000:])
    assert tree_hashes(corpus["root"], metadata=True) == corpus["before"]  # validation never modifies an input


def test_build_errors_name_the_folder(tmp_path):
    from custom.data import build_datalist

    roots = make_empty_tree(str(tmp_path))
    with pytest.raises(ValueError, match=f"{roots['empty_root']}: no modality folder"):
        build_datalist(roots["empty_root"])
    with pytest.raises(ValueError, match="no degraded inputs|no clean|no case"):
        build_datalist(roots["empty_modality"])
    with pytest.raises(ValueError, match="case01.nii.gz: missing partner"):
        build_datalist(roots["missing_partner"])
    assert not os.path.exists(os.path.join(roots["missing_partner"], "datalist.json"))
