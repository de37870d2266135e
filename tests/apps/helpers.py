"""Shared helpers for the ecosystem tests: tiny TAT overrides, a tiny checkpoint, a small CT volume."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
TINY_ARGS = [
    "--network_def#dim",
    "8",
    "--network_def#num_blocks",
    "[1,1,1,1]",
    "--network_def#num_refinement_blocks",
    "1",
]
TINY_KW = {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1}


def env_python(var: str, default: str) -> Path | None:
    """The interpreter of an externally built environment, or None when it is not there."""
    py = Path(os.environ.get(var, default)) / "bin" / "python"
    return py if py.is_file() else None


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Plain state dict of a tiny TAT (the format train.json's best saver writes)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    for k, v in TINY_KW.items():
        parser[f"network_def#{k}"] = v
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def write_ct_nifti(path: Path, shape=(40, 48, 3)) -> np.ndarray:
    """A small CT-like volume in HU (air, water disc, bone ring) saved as NIfTI; returns the array."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    r = np.sqrt(x**2 + y**2)
    sl = np.where(r < 0.7, 40.0, -1000.0) + np.where((r > 0.6) & (r < 0.7), 900.0, 0.0)
    vol = np.stack([sl + rng.normal(0, 30, sl.shape) for _ in range(shape[2])], -1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return vol


def run(cmd: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=str(cwd), env=child_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def write_ct_dicom_series(folder: Path, shape=(40, 48, 3)) -> np.ndarray:
    """A CT series (uint16 stored, RescaleIntercept -1024) of the same phantom; returns HU values (rows, cols, n)."""
    import datetime

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu = np.rint(write_ct_nifti(folder.parent / ".phantom.nii.gz", shape))
    (folder.parent / ".phantom.nii.gz").unlink()
    hu = np.clip(hu, -1024, 3071)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = "Phantom^TAT", "TAT0001", "CT"
        ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows, ds.Columns = shape[0], shape[1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (hu[..., k] + 1024).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"slice{k:03d}.dcm"), enforce_file_format=True)
    return hu.astype(np.float32)


def save_statistics_checkpoint(path: Path, tasks=("PET",), threshold: float = -1.0, identity: bool = True) -> Path:
    """``{"model": ..., "task_statistics": ...}`` of the tiny TAT (zero residual when ``identity``) with task
    statistics that make the task check's outcome known: every task centred at 0 with unit spread, so a scan is
    predicted as ``tasks[0]`` when it is the only one, and a negative ``threshold`` flags every scan as far."""
    import torch
    from custom.handlers.task_statistics import STATS_KEY, task_embeddings

    from tests.utils import tiny_net

    net = tiny_net(0)
    if identity:
        with torch.no_grad():
            for p in net.output.parameters():
                p.zero_()
    width = task_embeddings(net, torch.rand(1, 1, 32, 32)).shape[1]
    stats = {
        "tasks": list(tasks),
        "mean": torch.zeros(len(tasks), width),
        "std": torch.ones(len(tasks), width),
        "threshold": float(threshold),
        "percentile": 99.0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), STATS_KEY: stats}, path)
    return path


def mr_phantom(shape=(32, 32, 2)) -> np.ndarray:
    """A small MR-like volume (scanner units, non-negative, edges and texture) as float32 (rows, cols, n)."""
    rng = np.random.default_rng(1)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    r = np.sqrt(x**2 + y**2)
    sl = np.where(r < 0.75, 900.0 + 300.0 * x, 20.0) + np.where(r < 0.3, 600.0, 0.0)
    vol = np.stack([sl + rng.normal(0, 40, sl.shape) for _ in range(shape[2])], -1)
    return np.clip(np.rint(vol), 0, 4095).astype(np.float32)
