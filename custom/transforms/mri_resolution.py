"""MRI super-resolution degradations on the target's grid: k-space truncation (published) and bicubic.

k-space truncation keeps the central ``1/factor`` of k-space along each in-plane axis and zeroes the rest
(x4: central 1/4 per axis, 6.25 % of k-space, as the published IXI data), then returns the magnitude of
the inverse FFT, so the low-resolution image lies on the same grid as the target.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Resize
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = ["kspace_center_mask", "kspace_truncate", "bicubic_degrade", "KSpaceTruncated", "BicubicDegraded"]


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


def bicubic_degrade(img: np.ndarray | torch.Tensor, factor: float = 4.0) -> torch.Tensor:
    """Bicubic down-sampling by ``factor`` (with anti-aliasing) then bicubic up-sampling to the input grid.

    Args:
        img: (C, H, W) image (not modified).
        factor: down-sampling factor per axis.

    Returns:
        float32 (C, H, W) tensor.
    """
    x = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
    size = tuple(int(s) for s in x.shape[1:])
    small = tuple(max(1, int(round(s / factor))) for s in size)
    low = Resize(small, mode="bicubic", anti_aliasing=True)(x)
    up = Resize(size, mode="bicubic")(low)
    return convert_to_tensor(up, dtype=torch.float32, track_meta=False)


class _DegradeMRId(MapTransform):
    def __init__(self, clean_key: str = "label", output_key: str = "image", factor: float = 4.0) -> None:
        super().__init__(clean_key)
        if factor < 1:
            raise ValueError(f"{type(self).__name__}: factor must be >= 1, got {factor}.")
        self.clean_key = clean_key
        self.output_key = output_key
        self.factor = float(factor)

    def _degrade(self, x: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        clean = d[self.clean_key]
        if len(clean.shape) != 3:
            raise ValueError(f"{type(self).__name__}: '{self.clean_key}' must be (C, H, W), got {tuple(clean.shape)}.")
        out = self._degrade(clean)
        dtype = torch.float32 if isinstance(clean, torch.Tensor) else np.float32
        d[self.output_key] = convert_to_dst_type(out, clean, dtype=dtype)[0]
        return d


class KSpaceTruncated(_DegradeMRId):
    """Write a k-space truncated copy of ``data[clean_key]`` (C, H, W) to ``data[output_key]``.

    Args:
        clean_key: key of the high-resolution slice (usually ``"label"``).
        output_key: key receiving the low-resolution slice on the same grid (usually ``"image"``).
        factor: per-axis truncation factor (published: 4, central 6.25 % of k-space).
    """

    def _degrade(self, x: Any) -> torch.Tensor:
        return kspace_truncate(x, self.factor, spatial_dims=2)


class BicubicDegraded(_DegradeMRId):
    """Bicubic alternative to :class:`KSpaceTruncated`: down-sample by ``factor`` then up-sample back.

    Args:
        clean_key: key of the high-resolution slice.
        output_key: key receiving the degraded slice on the same grid.
        factor: down-sampling factor per axis.
    """

    def _degrade(self, x: Any) -> torch.Tensor:
        return bicubic_degrade(x, self.factor)
