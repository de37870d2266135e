"""Data consistency, task check and difference output through ``python -m monai.bundle run inference``.

Two CLI runs with the tiny network and a checkpoint holding task statistics (module-scoped fixture):

* data-list mode, ``--data_consistency true --difference_output true``: a k-space truncated MRI volume of odd
  size, a CT slice, a PET slice declared as CT;
* folder mode on a DICOM CT series with ``--difference_output true``.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from custom.handlers.task_statistics import compute_task_statistics, store_task_statistics
from custom.settings import load_modality_settings
from custom.transforms import kspace_truncate
from custom.transforms.data_consistency import kspace_block_error

from tests.utils import (
    BUNDLE,
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    make_task_dataset,
    read_series,
    run_cli,
    task_slice,
    tiny_net,
    write_ct_series,
)

pytestmark = pytest.mark.slow


def _run(tmp: str, *extra: str):
    args = ["run", "inference", "--config_file", INFERENCE_CONFIG, "--bundle_root", BUNDLE]
    return run_cli(*args, "--checkpoint", os.path.join(tmp, "model.pt"), *TINY_OVERRIDES, *extra, cwd=tmp)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = str(tmp_path_factory.mktemp("checks"))
    net = tiny_net()
    ckpt = os.path.join(tmp, "model.pt")
    torch.save({"model": net.state_dict()}, ckpt)
    settings = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))
    store_task_statistics(ckpt, compute_task_statistics(net, make_task_dataset(os.path.join(tmp, "train")), settings))

    rng = np.random.default_rng(0)
    scans = os.path.join(tmp, "scans")
    os.makedirs(scans)
    yy, xx = np.mgrid[:33, :27]
    phantom = np.where((yy - 16) ** 2 + (xx - 13) ** 2 < 120, 1200.0 + 400 * np.sin(xx / 2.0), 100.0)
    mri = np.stack([kspace_truncate(phantom[None] * (1 + 0.2 * k), 4)[0].numpy() for k in range(2)], -1)
    nib.save(nib.Nifti1Image(mri.astype(np.float32), np.eye(4)), os.path.join(scans, "mri.nii.gz"))
    nib.save(nib.Nifti1Image(task_slice("CT", rng), np.eye(4)), os.path.join(scans, "ct.nii.gz"))
    nib.save(nib.Nifti1Image(task_slice("PET", rng), np.eye(4)), os.path.join(scans, "pet_as_ct.nii.gz"))
    datalist = os.path.join(tmp, "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        names = [("mri.nii.gz", "MRI"), ("ct.nii.gz", "CT"), ("pet_as_ct.nii.gz", "CT")]
        json.dump({"test": [{"image": n, "modality": m} for n, m in names]}, f)
    out = os.path.join(tmp, "out")
    flags = ["--data_consistency", "true", "--difference_output", "true"]
    run = _run(tmp, "--dataset_dir", scans, "--datalist", datalist, "--output_dir", out, *flags)

    dicom_in, dicom_out = os.path.join(tmp, "dicom"), os.path.join(tmp, "dicom_out")
    write_ct_series(os.path.join(dicom_in, "ct_series"))
    run_dicom = _run(tmp, "--dataset_dir", dicom_in, "--output_dir", dicom_out, "--difference_output", "true")
    return {
        "tmp": tmp,
        "scans": scans,
        "out": out,
        "run": run,
        "dicom_in": dicom_in,
        "dicom_out": dicom_out,
        "run_dicom": run_dicom,
    }


def _report(folder: str) -> dict:
    with open(os.path.join(folder, "inference_report.json"), encoding="utf-8") as f:
        return {os.path.basename(s["image"]): s for s in json.load(f)["scans"]}


def _load(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def test_runs(ws: dict) -> None:
    assert ws["run"].returncode == 0, ws["run"].stderr[-3000:]
    assert ws["run_dicom"].returncode == 0, ws["run_dicom"].stderr[-3000:]


def test_mri_central_kspace_is_the_inputs(ws: dict) -> None:
    x = _load(os.path.join(ws["scans"], "mri.nii.gz"))[None]
    y = _load(os.path.join(ws["out"], "mri.nii.gz"))[None]
    assert not np.allclose(x, y, atol=1.0)  # the network did change the scan
    assert kspace_block_error(torch.from_numpy(y), torch.from_numpy(x), 4) < 1e-3


def test_other_modalities_untouched_and_logged(ws: dict) -> None:
    log = ws["run"].stdout + ws["run"].stderr
    assert "ct.nii.gz is CT, not MRI: left unchanged" in log
    assert "mri.nii.gz central 8x7 k-space per slice replaced" in log
    x = _load(os.path.join(ws["scans"], "ct.nii.gz"))[None]
    y = _load(os.path.join(ws["out"], "ct.nii.gz"))[None]
    assert kspace_block_error(torch.from_numpy(y), torch.from_numpy(x), 4) > 1e-3  # no replacement happened


def test_odd_size_not_divisible_is_reported(ws: dict) -> None:
    (warning,) = [w for w in _report(ws["out"])["mri.nii.gz"]["warnings"] if "kspace_factor" in w]
    assert "33x27 is not divisible by kspace_factor 4" in warning


@pytest.mark.parametrize("name", ["mri.nii.gz", "ct.nii.gz"])
def test_difference_nifti(ws: dict, name: str) -> None:
    stem = name[: -len(".nii.gz")]
    diff_path = os.path.join(ws["out"], f"{stem}_difference.nii.gz")
    assert _report(ws["out"])[name]["difference_output"] == diff_path
    diff = nib.load(diff_path)
    assert diff.get_data_dtype() == np.float32
    expected = _load(os.path.join(ws["out"], name)) - _load(os.path.join(ws["scans"], name))
    np.testing.assert_allclose(diff.get_fdata(), expected, atol=1e-2 * max(1.0, np.abs(expected).max()))
    np.testing.assert_allclose(diff.affine, nib.load(os.path.join(ws["scans"], name)).affine)


def test_report_has_task_check(ws: dict) -> None:
    report = _report(ws["out"])
    for name in ("mri.nii.gz", "ct.nii.gz", "pet_as_ct.nii.gz"):
        assert {"predicted_task", "task_distance", "warnings"} <= set(report[name])
        assert isinstance(report[name]["task_distance"], float)
    assert report["ct.nii.gz"]["predicted_task"] == "CT"
    assert report["pet_as_ct.nii.gz"]["predicted_task"] != "CT"  # the random tiny net need not say PET
    assert any("declared CT" in w for w in report["pet_as_ct.nii.gz"]["warnings"])
    assert not any("declared" in w for w in report["ct.nii.gz"]["warnings"])


def test_warnings_in_log_and_nifti_descrip(ws: dict) -> None:
    assert "pet_as_ct.nii.gz: the network's task representation says" in ws["run"].stdout + ws["run"].stderr
    descrip = nib.load(os.path.join(ws["out"], "pet_as_ct.nii.gz")).header["descrip"].tobytes().decode()
    assert descrip.startswith("TAT warning: the network's task representation says")
    assert nib.load(os.path.join(ws["out"], "ct.nii.gz")).header["descrip"].tobytes().strip(b"\x00") == b""


def test_dicom_difference_series(ws: dict) -> None:
    src = read_series(os.path.join(ws["dicom_in"], "ct_series"))
    restored = read_series(os.path.join(ws["dicom_out"], "ct_series"))
    diff = read_series(os.path.join(ws["dicom_out"], "ct_series_difference"))
    assert len(diff) == len(src)
    assert len({d.SeriesInstanceUID for d in diff}) == 1
    assert diff[0].SeriesInstanceUID not in {restored[0].SeriesInstanceUID, src[0].SeriesInstanceUID}
    assert int(diff[0].SeriesNumber) == int(src[0].SeriesNumber) + 2000
    assert "difference" in str(diff[0].SeriesDescription)

    def hu(d: pydicom.Dataset) -> np.ndarray:
        return d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))

    for s, r, d in zip(src, restored, diff):
        np.testing.assert_allclose(hu(d), hu(r) - hu(s), atol=1.0 + float(d.get("RescaleSlope", 1)))
    assert any((hu(d) < 0).any() for d in diff)  # signed differences are kept
    report = _report(ws["dicom_out"])["ct_series"]
    assert report["predicted_task"] in ("CT", "PET", "MRI")
    comments = [str(r.get("ImageComments", "")) for r in restored]
    assert all(c == ("TAT warning: " + "; ".join(report["warnings"]) if report["warnings"] else "") for c in comments)
