"""Unit tests of the inference pieces: writers (atomic, no silent overwrite, dtype range), PET SUV round trip,
slice-by-slice inferer, scan discovery."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from custom.inference import (
    SliceBatchInferer,
    cast_to_dtype,
    find_scans,
    load_dicom_series,
    write_dicom_series,
    write_nifti,
)

from tests.inference.helpers import tiny_net, write_ct_series

torch.set_num_threads(1)


def test_cast_to_dtype_clips_integers() -> None:
    out = cast_to_dtype(np.array([-40000.0, 1.4, 1.6, 40000.0]), np.dtype(np.int16))
    assert out.dtype == np.int16 and out.tolist() == [-32768, 1, 2, 32767]
    assert cast_to_dtype(np.array([-3.0, 70000.0]), np.dtype(np.uint16)).tolist() == [0, 65535]


def test_write_nifti_atomic_and_no_silent_overwrite(tmp_path) -> None:
    ref = nib.Nifti1Image(np.zeros((4, 5, 2), np.int16), np.diag([0.5, 0.6, 2.0, 1.0]))
    path = str(tmp_path / "out.nii.gz")
    write_nifti(np.full((4, 5, 2), 1e6, np.float32), ref, path)
    out = nib.load(path)
    # does not fit int16 unscaled: int16 kept with new scale factors, the value itself not clipped
    assert out.get_data_dtype() == np.int16 and (out.dataobj.slope, out.dataobj.inter) != (1, 0)
    np.testing.assert_allclose(np.asanyarray(out.dataobj), 1e6, rtol=1e-6)
    np.testing.assert_allclose(out.affine, ref.affine)
    with pytest.raises(FileExistsError, match="out.nii.gz"):
        write_nifti(np.zeros((4, 5, 2), np.float32), ref, path)
    write_nifti(np.zeros((4, 5, 2), np.float32), ref, path, overwrite=True)
    assert int(np.asanyarray(nib.load(path).dataobj).max()) == 0
    assert sorted(os.listdir(tmp_path)) == ["out.nii.gz"]  # no temporary file left
    with pytest.raises(ValueError, match="does not match"):
        write_nifti(np.zeros((3, 3), np.float32), ref, str(tmp_path / "bad.nii"))


def _make_pet(folder: str) -> list[str]:
    paths = write_ct_series(folder, n=2)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality, ds.Units, ds.DecayCorrection = "PT", "BQML", "ADMIN"
        ds.PatientWeight = 70
        info = pydicom.Dataset()
        info.RadionuclideTotalDose = 3.5e8
        ds.RadiopharmaceuticalInformationSequence = [info]
        ds.RescaleSlope, ds.RescaleIntercept = 2.0, 0
        ds.save_as(path, enforce_file_format=True)
    return paths


def test_pet_suv_round_trip_and_slope_enlarged(tmp_path) -> None:
    paths = _make_pet(str(tmp_path / "pet"))
    values, info = load_dicom_series(paths, "pet")
    assert info["modality"] == "PET" and info["suv_factors"][0] == pytest.approx(70 * 1000 / 3.5e8)
    out = str(tmp_path / "out")
    write_dicom_series(values, info["datasets"], info["files"], out, info["suv_factors"])
    again, _ = load_dicom_series([os.path.join(out, os.path.basename(f)) for f in paths], "out")
    np.testing.assert_allclose(again, values, rtol=1e-5, atol=1e-6)
    # values beyond the stored range: the slope grows so the maximum is kept
    big = values.copy()
    big[0, 0, 0] = values.max() * 100
    write_dicom_series(big, info["datasets"], info["files"], str(tmp_path / "big"), info["suv_factors"])
    again, _ = load_dicom_series([str(tmp_path / "big" / os.path.basename(f)) for f in info["files"]], "big")
    assert again.max() == pytest.approx(big.max(), rel=1e-3)
    with pytest.raises(FileExistsError):
        write_dicom_series(values, info["datasets"], info["files"], out, info["suv_factors"])


def test_slice_inferer_equals_per_slice() -> None:
    net = tiny_net()
    vol = torch.rand(1, 1, 20, 28, 3)
    with torch.no_grad():
        out = SliceBatchInferer(batch_size=2)(vol, net)
        ref = torch.stack([net(vol[..., k]) for k in range(3)], dim=-1)
        assert out.shape == vol.shape
        assert float((out - ref).abs().max()) < 1e-5
        assert SliceBatchInferer(batch_size=1)(vol[..., 0], net).shape == (1, 1, 20, 28)
    with pytest.raises(ValueError):
        SliceBatchInferer(batch_size=0)


def test_find_scans_refuses_output_equal_to_input(tmp_path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    with pytest.raises(ValueError, match="output_dir must differ"):
        find_scans(str(tmp_path), str(tmp_path))
    with pytest.raises(ValueError, match="not a folder"):
        find_scans(str(tmp_path / "missing"), str(tmp_path / "out"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no NIfTI file or DICOM series"):
        find_scans(str(tmp_path / "empty"), str(tmp_path / "out"))


def test_find_scans_skips_output_inside_dataset(tmp_path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    os.makedirs(tmp_path / "restored")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(tmp_path / "restored" / "a.nii"))
    items = find_scans(str(tmp_path), str(tmp_path / "restored"), modality="CT")
    assert [i["name"] for i in items] == ["a.nii"]


def test_inference_config_has_monai_infer_properties(tmp_path) -> None:
    from monai.bundle import ConfigWorkflow

    from tests.inference.helpers import BUNDLE, INFERENCE_CONFIG

    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    workflow = ConfigWorkflow(
        config_file=INFERENCE_CONFIG,
        workflow_type="infer",
        bundle_root=BUNDLE,
        dataset_dir=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        **{"network_def#dim": 8, "network_def#num_blocks": [1, 1, 1, 1]},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
