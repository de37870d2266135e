"""MRI super-resolution degradation on the target's grid: k-space truncation (as published).

k-space truncation keeps the central ``1/factor`` of k-space along each in-plane axis and zeroes the rest
(x4: central 1/4 per axis, 6.25 % of k-space, as the published IXI data), then returns the magnitude of
the inverse FFT, so the low-resolution image lies on the same grid as the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["kspace_center_mask", "kspace_truncate"]


def kspace_center_mask(shape: Sequence[int], factor: float) -> np.ndarray:
    """Boolean mask of the central ``round(n / factor)`` frequencies per axis of a centred (fftshifted) k-space.

    Args:
        shape: spatial shape (H, W) (or more axes).
        factor: down-sampling factor per axis (> 1 for a degradation; 1 keeps everything).

    Returns:
        bool array of ``shape``; its mean is about ``1 / factor ** len(shape)``.

    Raises:
        ValueError: factor < 1.
    """
    if factor < 1:
        raise ValueError(f"kspace_center_mask: factor must be >= 1, got {factor}.")
    axes = []
    for n in shape:
        keep = max(1, int(round(n / factor)))
        start = n // 2 - keep // 2  # the DC sample sits at n // 2 after fftshift
        ax = np.zeros(n, dtype=bool)
        ax[start : start + keep] = True
        axes.append(ax)
    mask = axes[0]
    for ax in axes[1:]:
        mask = mask[..., None] & ax  # outer AND, one axis at a time
    return mask


def kspace_truncate(img: np.ndarray | torch.Tensor, factor: float = 4.0, spatial_dims: int = 2) -> torch.Tensor:
    """Low-pass an image by k-space truncation over its last ``spatial_dims`` axes (vectorised over the rest).

    Args:
        img: (..., H, W) image (not modified).
        factor: per-axis truncation factor (4 keeps 6.25 % of 2D k-space).
        spatial_dims: number of trailing axes transformed.

    Returns:
        float32 tensor of the same shape: ``|IFFT(mask * FFT(img))|``.
    """
    x = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
    dims = tuple(range(-spatial_dims, 0))
    k = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)
    mask = torch.as_tensor(kspace_center_mask(x.shape[-spatial_dims:], factor), device=x.device)
    k = k * mask
    return torch.fft.ifftn(torch.fft.ifftshift(k, dim=dims), dim=dims).abs().to(torch.float32)
