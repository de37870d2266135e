"""``python -m monai.bundle run inference`` through the real CLI on tiny NIfTI and DICOM scans.

Three CLI runs shared between the assertions (module-scoped fixtures):

* folder mode, modality from the DICOM tag: a CT series written here with pydicom, pydicom's real
  ``CT_small.dcm`` and ``MR_small.dcm``, plus a NIfTI without any modality (must fail, the rest must be written,
  exit code non-zero);
* data-list mode: CT 3D int16 (odd slice size), PET 2D float32, MRI 3D scaled int16 NIfTI;
* the data-list run again with ``overwrite`` false: every scan skipped, outputs untouched.
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK

from tests.utils import (
    BUNDLE,
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    read_series,
    run_cli,
    save_checkpoint,
    tree_hashes,
    write_ct_series,
)

pytestmark = pytest.mark.slow


def _affine() -> np.ndarray:
    affine = np.array([[0.0, -0.8, 0.0, 20.0], [0.7, 0.0, 0.0, -15.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
    return affine


def _run(tmp: str, *extra: str) -> tuple:
    args = [
        "run",
        "inference",
        "--config_file",
        INFERENCE_CONFIG,
        "--bundle_root",
        BUNDLE,
        "--checkpoint",
        os.path.join(tmp, "model.pt"),
        *TINY_OVERRIDES,
        *extra,
    ]
    return run_cli(*args, cwd=tmp)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = str(tmp_path_factory.mktemp("inference"))
    net = save_checkpoint(os.path.join(tmp, "model.pt"))
    dicom_dir = os.path.join(tmp, "dicom_in")
    write_ct_series(os.path.join(dicom_dir, "ct_series"))
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), os.path.join(dicom_dir, "CT_small.dcm"))
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), os.path.join(dicom_dir, "MR_small.dcm"))
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((16, 16), dtype=np.float32), np.eye(4)), os.path.join(dicom_dir, "x.nii"))

    nifti_dir = os.path.join(tmp, "nifti_in")
    os.makedirs(os.path.join(nifti_dir, "sub"))
    ct = np.where(rng.random((37, 45, 3)) > 0.5, 40, -950) + rng.normal(0, 40, (37, 45, 3))
    nib.save(nib.Nifti1Image(ct.astype(np.int16), _affine()), os.path.join(nifti_dir, "ct3d.nii.gz"))
    pet = (rng.random((30, 26)) * 6).astype(np.float32)
    nib.save(nib.Nifti1Image(pet, _affine()), os.path.join(nifti_dir, "sub", "pet2d.nii"))
    mri_img = nib.Nifti1Image((rng.random((24, 20, 2)) * 3000).astype(np.float32), _affine())
    mri_img.set_data_dtype(np.int16)  # nibabel stores scaled int16 (scl_slope != 1)
    nib.save(mri_img, os.path.join(nifti_dir, "mri3d.nii.gz"))
    datalist = os.path.join(tmp, "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump(
            {
                "test": [
                    {"image": "ct3d.nii.gz", "modality": "CT"},
                    {"image": "sub/pet2d.nii", "modality": "PET"},
                    {"image": "mri3d.nii.gz", "modality": "MRI"},
                ]
            },
            f,
        )
    before = {"dicom": tree_hashes(dicom_dir), "nifti": tree_hashes(nifti_dir)}

    dicom_out, nifti_out = os.path.join(tmp, "dicom_out"), os.path.join(tmp, "nifti_out")
    run_dicom = _run(tmp, "--dataset_dir", dicom_dir, "--output_dir", dicom_out)
    run_nifti = _run(tmp, "--dataset_dir", nifti_dir, "--datalist", datalist, "--output_dir", nifti_out)
    out_hashes = tree_hashes(nifti_out)
    report_nifti = _report(nifti_out)
    run_again = _run(tmp, "--dataset_dir", nifti_dir, "--datalist", datalist, "--output_dir", nifti_out)
    return {
        "net": net,
        "tmp": tmp,
        "dicom_dir": dicom_dir,
        "nifti_dir": nifti_dir,
        "dicom_out": dicom_out,
        "nifti_out": nifti_out,
        "before": before,
        "run_dicom": run_dicom,
        "run_nifti": run_nifti,
        "run_again": run_again,
        "out_hashes": out_hashes,
        "report_nifti": report_nifti,
        "out_hashes_after": tree_hashes(nifti_out),
    }


def _report(folder: str) -> dict:
    with open(os.path.join(folder, "inference_report.json"), encoding="utf-8") as f:
        return json.load(f)


def test_inputs_unchanged(workspace: dict) -> None:
    assert tree_hashes(workspace["dicom_dir"]) == workspace["before"]["dicom"]
    assert tree_hashes(workspace["nifti_dir"]) == workspace["before"]["nifti"]


def test_datalist_run_writes_all(workspace: dict) -> None:
    run = workspace["run_nifti"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert workspace["report_nifti"]["counts"] == {"written": 3, "skipped": 0, "failed": 0}


@pytest.mark.parametrize("name", ["ct3d.nii.gz", "sub/pet2d.nii", "mri3d.nii.gz"])
def test_nifti_geometry_and_dtype(workspace: dict, name: str) -> None:
    src = nib.load(os.path.join(workspace["nifti_dir"], name))
    out = nib.load(os.path.join(workspace["nifti_out"], name))
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(out.header.get_zooms(), src.header.get_zooms(), atol=1e-6)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    assert out.get_data_dtype() == src.get_data_dtype()
    # the network applied here, slice by slice, to the clipped and normalised input; stored to the file's precision
    expected = _in_process(workspace["net"], src.get_fdata(), MODALITY[name])
    slope = float(getattr(out.dataobj, "slope", 1.0) or 1.0)
    atol = (
        0.5 * slope + 1e-3 if np.issubdtype(out.get_data_dtype(), np.integer) else 1e-4 * np.ptp(CLIP[MODALITY[name]])
    )
    np.testing.assert_allclose(out.get_fdata(), expected, rtol=0, atol=atol)


MODALITY = {"ct3d.nii.gz": "CT", "sub/pet2d.nii": "PET", "mri3d.nii.gz": "MRI"}
CLIP = {"CT": (-1024.0, 3072.0), "PET": (0.0, 20.0), "MRI": (0.0, 4095.0)}


def _in_process(net, values: np.ndarray, modality: str) -> np.ndarray:
    """clip(denormalise(net(normalise(clip(values))))) for a 2D slice or each axial slice of a volume."""
    import torch

    lo, hi = CLIP[modality]
    x = ((np.clip(values, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    vol = x if x.ndim == 3 else x[..., None]
    with torch.no_grad():
        y = [
            net(torch.from_numpy(np.ascontiguousarray(vol[..., z]))[None, None])[0, 0].numpy()
            for z in range(vol.shape[-1])
        ]
    return np.clip(np.stack(y, -1) * (hi - lo) + lo, lo, hi).reshape(values.shape)


def test_int16_output_clipped_to_range(workspace: dict) -> None:
    src = nib.load(os.path.join(workspace["nifti_dir"], "ct3d.nii.gz"))
    out = nib.load(os.path.join(workspace["nifti_out"], "ct3d.nii.gz"))
    stored = np.asanyarray(out.dataobj)
    assert stored.dtype == np.int16
    assert src.get_fdata().min() < -1024  # the input goes below the CT range ...
    assert stored.min() >= -1024 and stored.max() <= 3072  # ... the restored scan does not (clip_output)
    expected = _in_process(workspace["net"], src.get_fdata(), "CT")
    assert np.abs(stored - expected).max() <= 0.5 + 1e-3  # rounded, not truncated or wrapped


def test_existing_outputs_skipped_not_overwritten(workspace: dict) -> None:
    run = workspace["run_again"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert _report(workspace["nifti_out"])["counts"] == {"written": 0, "skipped": 3, "failed": 0}
    after = {k: v for k, v in workspace["out_hashes_after"].items() if k != "inference_report.json"}
    assert after == {k: v for k, v in workspace["out_hashes"].items() if k != "inference_report.json"}
    assert "output exists" in run.stdout + run.stderr


def test_folder_run_reports_failure_and_keeps_going(workspace: dict) -> None:
    run = workspace["run_dicom"]
    assert run.returncode != 0
    assert "x.nii" in run.stdout + run.stderr and "modality" in run.stdout + run.stderr
    report = _report(workspace["dicom_out"])
    assert report["counts"] == {"written": 3, "skipped": 0, "failed": 1}
    (failed,) = [s for s in report["scans"] if s["status"] == "failed"]
    assert failed["image"].endswith("x.nii")


def test_dicom_series_derived(workspace: dict) -> None:
    src = read_series(os.path.join(workspace["dicom_dir"], "ct_series"))
    out_dir = os.path.join(workspace["dicom_out"], "ct_series")
    assert sorted(os.listdir(out_dir)) == sorted(os.listdir(os.path.join(workspace["dicom_dir"], "ct_series")))
    out = read_series(out_dir)
    assert len({d.SeriesInstanceUID for d in out}) == 1
    assert out[0].SeriesInstanceUID != src[0].SeriesInstanceUID
    assert not {d.SOPInstanceUID for d in out} & {d.SOPInstanceUID for d in src}
    for s, o in zip(src, out):
        assert o.ImageType[0] == "DERIVED" and o.DerivationDescription
        assert o.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        for tag in (
            "PatientID",
            "PatientName",
            "StudyInstanceUID",
            "FrameOfReferenceUID",
            "Modality",
            "Rows",
            "Columns",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "RescaleIntercept",
        ):
            assert o.get(tag) == s.get(tag), tag
        hu_in = s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept)
        hu_out = o.pixel_array * float(o.RescaleSlope) + float(o.RescaleIntercept)
        assert np.corrcoef(hu_in.ravel(), hu_out.ravel())[0, 1] > 0.5


def test_dicom_series_simpleitk_geometry(workspace: dict) -> None:
    def read(folder: str) -> SimpleITK.Image:
        reader = SimpleITK.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
        return reader.Execute()

    src = read(os.path.join(workspace["dicom_dir"], "ct_series"))
    out = read(os.path.join(workspace["dicom_out"], "ct_series"))
    assert out.GetSize() == src.GetSize() == (24, 20, 4)
    np.testing.assert_allclose(out.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetSpacing(), src.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), src.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_real_pydicom_files(workspace: dict, name: str) -> None:
    src = pydicom.dcmread(os.path.join(workspace["dicom_dir"], name))
    out = pydicom.dcmread(os.path.join(workspace["dicom_out"], name))
    assert out.SeriesInstanceUID != src.SeriesInstanceUID and out.SOPInstanceUID != src.SOPInstanceUID
    assert out.Modality == src.Modality and out.StudyInstanceUID == src.StudyInstanceUID
    assert out.PatientID == src.PatientID and out.ImageType[0] == "DERIVED"
    assert out.pixel_array.shape == src.pixel_array.shape
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        assert out.get(tag) == src.get(tag), tag
    slope_in, slope_out = float(src.get("RescaleSlope", 1)), float(out.get("RescaleSlope", 1))
    v_in = src.pixel_array * slope_in + float(src.get("RescaleIntercept", 0))
    v_out = out.pixel_array * slope_out + float(out.get("RescaleIntercept", 0))
    assert np.corrcoef(v_in.ravel(), v_out.ravel())[0, 1] > 0.5
    image = SimpleITK.ReadImage(os.path.join(workspace["dicom_out"], name))
    ref = SimpleITK.ReadImage(os.path.join(workspace["dicom_dir"], name))
    np.testing.assert_allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-4)
