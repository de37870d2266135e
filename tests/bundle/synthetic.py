"""Tiny synthetic NIfTI pairs of the three modalities and a datalist, for bundle workflow tests."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np

# physical-unit intensity models: (background, foreground, noise of the degraded image)
_MODELS = {"CT": (-1000.0, 60.0, 40.0), "PET": (0.0, 8.0, 1.5), "MRI": (0.0, 1500.0, 150.0)}
_TASKS = {"CT": "low_dose_ct", "PET": "low_count_pet", "MRI": "mri_super_resolution"}


def _volume(rng: np.random.Generator, modality: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    bg, fg, noise = _MODELS[modality]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.empty(shape, np.float32)
    for z in range(shape[2]):
        cy, cx, r = (
            rng.uniform(0.3, 0.7) * shape[0],
            rng.uniform(0.3, 0.7) * shape[1],
            rng.uniform(0.2, 0.35) * shape[0],
        )
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        label[..., z] = np.where(disk, fg * (1 + 0.3 * np.sin(xx / 3.0)), bg)
    image = label + rng.normal(0, noise, shape).astype(np.float32)
    return image, label


def make_dataset(
    root: str, n_train: int = 2, n_val: int = 1, shape: tuple[int, int, int] = (40, 40, 3), seed: int = 0
) -> str:
    """Write ``n_train``/``n_val`` volume pairs per modality under ``root`` and ``root/datalist.json``.

    Returns:
        the datalist path.
    """
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {"training": [], "validation": []}
    for modality in _MODELS:
        for split, count in (("training", n_train), ("validation", n_val)):
            for i in range(count):
                image, label = _volume(rng, modality, shape)
                names = {}
                for kind, arr in (("image", image), ("label", label)):
                    rel = f"{modality}/{split}_{i}_{kind}.nii.gz"
                    os.makedirs(os.path.join(root, modality), exist_ok=True)
                    nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(root, rel))
                    names[kind] = rel
                lists[split].append({**names, "modality": modality, "task": _TASKS[modality]})
    path = os.path.join(root, "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(lists, f, indent=1)
    return path
