"""Small helpers shared by the data and transform tests (tiny images in temporary folders)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "modality"


def save_nifti(path: str | os.PathLike, arr: np.ndarray, spacing: float = 1.0) -> str:
    """Write ``arr`` as float32 NIfTI (creating folders) and return the path."""
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), affine), os.fspath(path))
    return os.fspath(path)


def make_tree(root: str, modalities: dict[str, int], shape: tuple[int, ...] = (16, 12, 3)) -> None:
    """root/<MOD>/{image,label}/caseNN.nii.gz with random content, ``n`` cases per modality."""
    rng = np.random.default_rng(0)
    for modality, n in modalities.items():
        for i in range(n):
            clean = rng.uniform(0, 100, size=shape)
            save_nifti(os.path.join(root, modality, "label", f"case{i:02d}.nii.gz"), clean)
            save_nifti(os.path.join(root, modality, "image", f"case{i:02d}.nii.gz"), clean + rng.normal(size=shape))
