"""A tiny copy of the authors' released data set, written the way their code writes it.

``root/{PET,CT,MRI}/{train,validation,test}/{LQ,HQ}/``: training patches ``pickle.dump(torch_tensor, f)`` of a
(1, S, S) float tensor in physical units, validation and test slices ``SimpleITK.WriteImage(
SimpleITK.GetImageFromArray(2d_float_array), path)`` (.nii). Shapes scale the published ones down (MRI 256 x 256,
CT 512 x 512, PET 192 x 400).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import SimpleITK
import torch

# (background, foreground, noise of the degraded image) in physical units
MODELS = {"CT": (-1000.0, 60.0, 40.0), "PET": (0.0, 8.0, 1.5), "MRI": (0.0, 1500.0, 150.0)}
SLICE_SHAPES = {"MRI": (32, 32), "CT": (48, 48), "PET": (24, 40)}
PATCH = 40


def _pair(rng: np.random.Generator, modality: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    bg, fg, noise = MODELS[modality]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx, r = rng.uniform(0.4, 0.6) * shape[0], rng.uniform(0.4, 0.6) * shape[1], 0.3 * min(shape)
    hq = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r**2, fg * (1 + 0.3 * np.sin(xx / 3.0)), bg).astype(np.float32)
    lq = (hq + rng.normal(0, noise, shape)).astype(np.float32)
    return lq, hq


def write_bin(path: str, array: np.ndarray) -> None:
    """The authors' training-patch writer: ``pickle.dump`` of a float tensor (1, H, W)."""
    with open(path, "wb") as f:
        pickle.dump(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None], f)


def write_nii(path: str, array: np.ndarray) -> None:
    """The authors' slice writer: SimpleITK from a 2D float array."""
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.asarray(array, dtype=np.float32)), path)


def make_reference_dataset(
    root: str, counts: tuple[int, int, int] = (3, 2, 2), tasks: tuple[str, ...] = ("PET", "CT", "MRI"), seed: int = 0
) -> dict[str, dict[str, list[str]]]:
    """Write the tree; ``counts`` = files per task in train, validation, test.

    Returns:
        ``{task: {split folder: [LQ file paths, sorted]}}``.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, list[str]]] = {}
    for task in tasks:
        written[task] = {}
        for split, n in zip(("train", "validation", "test"), counts):
            for kind in ("LQ", "HQ"):
                os.makedirs(os.path.join(root, task, split, kind), exist_ok=True)
            files = []
            for i in range(n):
                if split == "train":
                    lq, hq = _pair(rng, task, (PATCH, PATCH))
                    name, writer = f"{task.lower()}_{i:03d}.bin", write_bin
                else:
                    lq, hq = _pair(rng, task, SLICE_SHAPES[task])
                    name, writer = f"{task.lower()}_{split}_{i:03d}.nii", write_nii
                writer(os.path.join(root, task, split, "LQ", name), lq)
                writer(os.path.join(root, task, split, "HQ", name), hq)
                files.append(os.path.join(root, task, split, "LQ", name))
            written[task][split] = sorted(files)
    return written
