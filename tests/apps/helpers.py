"""Shared helpers for the ecosystem tests: tiny TAT overrides, a tiny checkpoint, a small CT volume."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
TINY_ARGS = ["--network_def#dim", "8", "--network_def#num_blocks", "[1,1,1,1]", "--network_def#num_refinement_blocks", "1"]
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
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=child_env(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
