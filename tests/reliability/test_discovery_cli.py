"""Folder-mode inference through the real CLI: every entry found under ``dataset_dir`` reaches
``inference_report.json`` as written, skipped or failed (a symlinked series folder is restored, a link loop, a
second link, a README and a broken link are reported, nothing is dropped), and the inputs are untouched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.utils import (
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    dicom_series_folder,
    run_cli,
    save_checkpoint,
    save_nifti,
    tree_hashes,
)

pytestmark = pytest.mark.slow


def test_every_entry_found_is_in_the_report(tmp_path):
    root, store, out = str(tmp_path / "in"), str(tmp_path / "store"), str(tmp_path / "out")
    rng = np.random.default_rng(0)
    series = dicom_series_folder(os.path.join(store, "series"), rng.integers(0, 2000, (32, 32, 2)).astype(np.int16))
    save_nifti(os.path.join(root, "a", "scan.nii.gz"), rng.uniform(-1000, 1000, (32, 32, 2)))
    os.symlink(series, os.path.join(root, "linked_series"))  # a series folder reached through a link
    os.symlink(series, os.path.join(root, "a", "second_link"))  # the same series a second time
    os.symlink(root, os.path.join(root, "a", "loop"))  # a loop back to the root
    os.symlink(os.path.join(store, "gone.nii.gz"), os.path.join(root, "broken.nii.gz"))
    with open(os.path.join(root, "README.txt"), "w", encoding="utf-8") as f:
        f.write("scans of the week")
    save_checkpoint(str(tmp_path / "model.pt"))
    before = tree_hashes(str(tmp_path / "store"), metadata=True)
    proc = run_cli(
        "run",
        "inference",
        "--config_file",
        INFERENCE_CONFIG,
        "--bundle_root",
        os.path.dirname(os.path.dirname(INFERENCE_CONFIG)),
        "--checkpoint",
        str(tmp_path / "model.pt"),
        *TINY_OVERRIDES,
        "--dataset_dir",
        root,
        "--output_dir",
        out,
        "--modality",
        "CT",
        cwd=str(tmp_path),
    )
    with open(os.path.join(out, "inference_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    status = {os.path.relpath(r["image"], root): (r["status"], r["message"]) for r in report["scans"]}
    assert status[os.path.join("a", "scan.nii.gz")][0] == "written", status
    restored = [k for k in ("linked_series", os.path.join("a", "second_link")) if status[k][0] == "written"]
    assert len(restored) == 1, status  # the series once, the other link reported as the same folder
    other = ({"linked_series", os.path.join("a", "second_link")} - set(restored)).pop()
    assert status[other][0] == "skipped" and "same folder as" in status[other][1], status
    assert os.path.isdir(os.path.join(out, restored[0])) and len(os.listdir(os.path.join(out, restored[0]))) == 2
    assert status[os.path.join("a", "loop")][0] == "skipped", status
    assert status["README.txt"][0] == "skipped" and "not a NIfTI file" in status["README.txt"][1], status
    assert status["broken.nii.gz"][0] == "failed" and "broken symbolic link" in status["broken.nii.gz"][1], status
    assert len(status) == 6, status  # nothing found was dropped
    assert proc.returncode != 0  # the broken link failed
    assert tree_hashes(str(tmp_path / "store"), metadata=True) == before
