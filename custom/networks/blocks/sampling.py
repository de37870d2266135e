"""Down- and up-sampling between U-Net levels by convolution and pixel (un)shuffle."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.utils import pixelshuffle, pixelunshuffle

__all__ = ["Downsample", "Upsample", "pixel_shuffle", "pixel_unshuffle"]


def pixel_shuffle(x: torch.Tensor, spatial_dims: int, factor: int) -> torch.Tensor:
    """Pixel shuffle ``(B, C * r**d, *S) -> (B, C, *(S * r))``; PyTorch's kernel in 2D (keeps channels-last)."""
    return F.pixel_shuffle(x, factor) if spatial_dims == 2 else pixelshuffle(x, spatial_dims, factor)


def pixel_unshuffle(x: torch.Tensor, spatial_dims: int, factor: int) -> torch.Tensor:
    """Pixel unshuffle ``(B, C, *(S * r)) -> (B, C * r**d, *S)``; PyTorch's kernel in 2D (keeps channels-last)."""
    return F.pixel_unshuffle(x, factor) if spatial_dims == 2 else pixelunshuffle(x, spatial_dims, factor)


class Downsample(nn.Module):
    """3x3 conv ``C -> C/2`` then pixel-unshuffle by 2: ``(B, C, H, W) -> (B, 2C, H/2, W/2)`` in 2D.

    Args:
        channels: input channels C (even).
        spatial_dims: number of spatial dimensions.
    """

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.conv = Conv[Conv.CONV, spatial_dims](channels, channels // 2, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_unshuffle(self.conv(x), self.spatial_dims, 2)


class Upsample(nn.Module):
    """3x3 conv ``C -> 2C`` then pixel-shuffle by 2: ``(B, C, H, W) -> (B, C/2, 2H, 2W)`` in 2D.

    Args:
        channels: input channels C.
        spatial_dims: number of spatial dimensions.
    """

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.conv = Conv[Conv.CONV, spatial_dims](channels, channels * 2, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(self.conv(x), self.spatial_dims, 2)
