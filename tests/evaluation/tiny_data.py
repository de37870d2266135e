"""Tiny paired NIfTI data set (2D slices and one 3D MRI volume) with training/validation/test splits."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np

# (background, foreground, noise of the degraded image) in physical units
MODELS = {"CT": (-1000.0, 60.0, 40.0), "PET": (0.0, 8.0, 1.5), "MRI": (0.0, 1500.0, 150.0)}
TASKS = {"CT": "low_dose_ct", "PET": "low_count_pet", "MRI": "mri_super_resolution"}

# tiny network and budget shared by the evaluation and demo tests (train.json keys)
TINY_OVERRIDES = {
    "network_def#dim": 4,
    "network_def#num_blocks": [1, 1, 1, 1],
    "network_def#num_refinement_blocks": 1,
    "network_def#heads": [1, 1, 1, 1],
    "network_def#tren_hidden_channels": 4,
    "network_def#tren_embed_dim": 8,
    "patch_size": 32,
    "samples_per_task": 1,
    "num_workers": 0,
}


def tiny_network_kwargs() -> dict:
    """``custom.networks.TAT`` arguments equal to :data:`TINY_OVERRIDES` on top of train.json."""
    return {k.split("#")[1]: v for k, v in TINY_OVERRIDES.items() if k.startswith("network_def#")} | {
        "train_patch_size": TINY_OVERRIDES["patch_size"],
        "bias": False,
        "ffn_expansion_factor": 2.66,
        "layer_norm_type": "WithBias",
        "task_adaptive": True,
    }


def _pair(rng: np.random.Generator, modality: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    bg, fg, noise = MODELS[modality]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx, r = 0.5 * shape[0], 0.45 * shape[1], 0.3 * shape[0]
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
    label2d = np.where(disk, fg * (1 + 0.3 * np.sin(xx / 3.0)), bg).astype(np.float32)
    label = (
        label2d
        if len(shape) == 2
        else np.repeat(label2d[..., None], shape[2], axis=2) * (1 + 0.1 * np.arange(shape[2], dtype=np.float32))
    )
    image = (label + rng.normal(0, noise, label.shape)).astype(np.float32)
    return image, label


def make_tiny_dataset(root: str, size: int = 32, seed: int = 0) -> str:
    """Write the data set under ``root`` and ``root/datalist.json``; returns the datalist path.

    Splits: training 2 and validation 1 2D pairs per modality; test 1 2D pair per modality plus one 3D MRI volume
    of 3 slices (``mri/test_vol_*``).
    """
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    plan = [
        (m, s, i, (size, size))
        for m in MODELS
        for s, n in (("training", 2), ("validation", 1), ("test", 1))
        for i in range(n)
    ] + [("MRI", "test", "vol", (size, size, 3))]
    for modality, split, i, shape in plan:
        image, label = _pair(rng, modality, shape)
        item = {"modality": modality, "task": TASKS[modality]}
        for kind, arr in (("image", image), ("label", label)):
            rel = f"{modality.lower()}/{split}_{i}_{kind}.nii.gz"
            os.makedirs(os.path.join(root, modality.lower()), exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(root, rel))
            item[kind] = rel
        lists[split].append(item)
    path = os.path.join(root, "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(lists, f, indent=1)
    return path
