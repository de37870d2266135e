"""Shared helpers for the ecosystem tests: tiny TAT overrides, a tiny checkpoint, a small CT volume."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from tests.utils import cli_args, dicom_series_folder, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
# the tests' tiny network (tests/utils.py), train_patch_size as inference.json sets it
TINY_ARGS = cli_args(tiny_overrides(patch=False))
TINY_KW = {k.split("#", 1)[1]: v for k, v in tiny_overrides(patch=False).items()}


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
    """A CT series (12-bit unsigned stored, RescaleIntercept -1024, 2.5 mm slices, dated today) of the same phantom
    through tests/utils.py's one DICOM writer; returns HU values (rows, cols, n)."""
    import datetime

    hu = np.rint(write_ct_nifti(folder.parent / ".phantom.nii.gz", shape))
    (folder.parent / ".phantom.nii.gz").unlink()
    hu = np.clip(hu, -1024, 3071)
    today = datetime.date.today().strftime("%Y%m%d")
    dicom_series_folder(
        str(folder),
        (hu + 1024).astype(np.uint16),
        positions=[2.5 * k for k in range(shape[2])],
        spacing=(0.8, 0.8),
        thickness=2.5,
        bits_stored=12,
        slope=1,
        inter=-1024,
        RescaleType="HU",
        PatientName="Phantom^TAT",
        PatientID="TAT0001",
        StudyDate=today,
        SeriesDate=today,
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
    )
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
