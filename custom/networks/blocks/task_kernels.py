"""Task representation network (TREN): bottleneck features -> per-level task-adaptive depthwise kernels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from custom.networks.blocks.sampling import pixel_shuffle
from monai.networks.layers.factories import Conv

__all__ = ["TaskKernels", "TaskRepresentationNetwork"]


class TaskKernels(NamedTuple):
    """The generated kernels of one decoder level, shared by all blocks of that level.

    Attributes:
        attn: ``(B, 3C, k, ..., k)`` for the attention's depthwise conv.
        ffn: ``(B, 2 * hidden, k, ..., k)`` for the feed-forward's depthwise conv.
    """

    attn: torch.Tensor
    ffn: torch.Tensor


class _ResidualConvBlock(nn.Module):
    """``x + conv(gelu(conv(x)))`` with biased 3x3 convs."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.body = nn.Sequential(
            conv(channels, channels, kernel_size=3, padding=1),
            nn.GELU(),
            conv(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TaskRepresentationNetwork(nn.Module):
    """Infers the task from the bottleneck features and generates every decoder level's kernels.

    The input is detached first: no gradient flows from the generator back into the encoder, as
    published. Pipeline: pixel-shuffle by ``shuffle_factor`` (``C -> C / factor**d`` channels), conv to
    ``hidden_channels`` + GELU, two residual conv blocks, convs ``hidden -> hidden -> 2 * hidden ->
    embed_dim`` each with GELU, global average pool, a two-layer MLP (GELU), then one linear head + GELU
    per (level, attn/ffn) producing ``channels * k**d`` values reshaped to a kernel per channel.

    Args:
        in_channels: channels of the bottleneck features (``8 * dim`` in TAT).
        kernel_channels: per level name, the ``(attn, ffn)`` channel counts of its depthwise convs, in the
            order the decoder uses them (e.g. ``{"latent": (1152, 2042), "level3": (576, 1020), ...}``).
        spatial_dims: number of spatial dimensions.
        shuffle_factor: pixel-shuffle factor applied first (published: 4).
        hidden_channels: width of the conv trunk (published: 64).
        embed_dim: width of the task embedding (published: 256).
        kernel_size: generated kernel size k.

    Raises:
        ValueError: ``in_channels`` not divisible by ``shuffle_factor ** spatial_dims``, or no levels.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_channels: Mapping[str, tuple[int, int]],
        spatial_dims: int = 2,
        shuffle_factor: int = 4,
        hidden_channels: int = 64,
        embed_dim: int = 256,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        ratio = shuffle_factor**spatial_dims
        if in_channels % ratio != 0:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by shuffle_factor**spatial_dims ({ratio})."
            )
        if not kernel_channels:
            raise ValueError("kernel_channels must name at least one level.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.shuffle_factor = shuffle_factor
        self.kernel_size = kernel_size
        h = hidden_channels
        self.features = nn.Sequential(
            conv(in_channels // ratio, h, kernel_size=3, padding=1),
            nn.GELU(),
            _ResidualConvBlock(h, spatial_dims),
            _ResidualConvBlock(h, spatial_dims),
            conv(h, h, kernel_size=3, padding=1, bias=False),
            nn.GELU(),
            conv(h, 2 * h, kernel_size=3, padding=1, bias=False),
            nn.GELU(),
            conv(2 * h, embed_dim, kernel_size=3, padding=1, bias=False),
            nn.GELU(),
        )
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim, bias=False),
            nn.GELU(),
            nn.Linear(embed_dim, embed_dim, bias=False),
            nn.GELU(),
        )
        taps = kernel_size**spatial_dims
        self.heads = nn.ModuleDict(
            {
                level: nn.ModuleDict(
                    {
                        "attn": nn.Linear(embed_dim, attn_ch * taps, bias=False),
                        "ffn": nn.Linear(embed_dim, ffn_ch * taps, bias=False),
                    }
                )
                for level, (attn_ch, ffn_ch) in kernel_channels.items()
            }
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The task embedding ``(B, embed_dim)`` of bottleneck features ``x`` ``(B, C, *spatial)`` (detached)."""
        x = pixel_shuffle(x.detach(), self.spatial_dims, self.shuffle_factor)
        x = self.features(x)
        return self.mlp(x.flatten(2).mean(-1))

    def forward(self, x: torch.Tensor) -> dict[str, TaskKernels]:
        """Args:
            x: bottleneck features ``(B, C, *spatial)``.

        Returns:
            level name -> :class:`TaskKernels` with ``(B, channels, k, ..., k)`` tensors.
        """
        z = self.embed(x)
        b = z.shape[0]
        shape = (self.kernel_size,) * self.spatial_dims
        kernels = {}
        for level, heads in self.heads.items():
            attn = F.gelu(heads["attn"](z)).reshape(b, -1, *shape)
            ffn = F.gelu(heads["ffn"](z)).reshape(b, -1, *shape)
            kernels[level] = TaskKernels(attn=attn, ffn=ffn)
        return kernels
