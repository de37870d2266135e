"""Tiny data set whose three tasks look like their modalities (CT bone/air/noise, hot-spot PET, blurred MRI)."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from custom.transforms import kspace_truncate


def task_slice(modality: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One degraded input slice in physical units (HU, SUV, MRI scanner units)."""
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = 0.5 + rng.uniform(-0.06, 0.06, 2)
    a, b = rng.uniform(0.28, 0.38, 2)
    r = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2
    body = r < 1
    if modality == "CT":
        img = np.where(body, 40.0, -1000.0) + np.where((r > 0.75) & body, 900.0, 0.0)
        return (img + rng.normal(0, 60, img.shape)).astype(np.float32)
    if modality == "PET":
        img = np.where(body, 1.0, 0.0)
        for _ in range(3):
            hy, hx = rng.uniform(0.35, 0.65, 2)
            img = img + 8.0 * (((yy - hy) ** 2 + (xx - hx) ** 2) < 0.004)
        return np.maximum(img + rng.normal(0, 0.6, img.shape) * np.sqrt(img + 0.1), 0).astype(np.float32)
    img = np.where(body, 900.0 + 500.0 * np.sin(12 * xx + rng.uniform(0, 6)), 0.0)
    return kspace_truncate(img[None], 4.0)[0].numpy().astype(np.float32)


def make_task_dataset(root: str, counts: dict | None = None, size: int = 32, seed: int = 0) -> str:
    """Write 2D NIfTI inputs (labels = inputs: only the inputs matter here) and ``root/datalist.json``.

    Args:
        root: output folder.
        counts: slices per split (default training 6, validation 3, test 2 per task).
        size: slice side.
        seed: random seed.

    Returns:
        the data list path.
    """
    counts = counts or {"training": 6, "validation": 3, "test": 2}
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {split: [] for split in counts}
    for modality in ("CT", "PET", "MRI"):
        os.makedirs(os.path.join(root, modality.lower()), exist_ok=True)
        for split, n in counts.items():
            for i in range(n):
                rel = f"{modality.lower()}/{split}_{i}.nii.gz"
                nib.save(nib.Nifti1Image(task_slice(modality, rng, size), np.eye(4)), os.path.join(root, rel))
                lists[split].append({"image": rel, "label": rel, "modality": modality})
    path = os.path.join(root, "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(lists, f, indent=1)
    return path
