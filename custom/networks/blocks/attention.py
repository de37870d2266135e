"""Multi-Dconv head transposed attention (MDTA, Restormer) with an optional task-adaptive depthwise conv."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from custom.networks.blocks.dynamic_conv import DepthwiseConv
from custom.networks.blocks.local_windows import merge_windows, partition_windows

__all__ = ["ChannelAttention", "channel_attention"]


def channel_attention(qkv: torch.Tensor, num_heads: int, temperature: torch.Tensor) -> torch.Tensor:
    """Transposed (channel) self-attention over all voxels of each sample.

    Per head (``C / num_heads`` channels), q and k are L2-normalised along the voxel axis and
    ``A = softmax(q k^T * temperature)`` is a ``(C/h, C/h)`` matrix applied to v. The normalisation is
    applied to the Gram matrix ``q k^T`` (``A_ij = G_ij / (|q_i| |k_j|)``, norms clamped at 1e-12 as in
    ``F.normalize``), which is the same value without materialising normalised copies of q and k.
    Works on the channels-last view, so a channels-last input needs no layout copies.

    Args:
        qkv: ``(B, 3C, *spatial)``: q, k and v stacked along channels.
        num_heads: number of heads h; divides C.
        temperature: ``(h, 1, 1)`` learned scale per head.

    Returns:
        ``(B, C, *spatial)``, channels-last in memory.
    """
    b, c3 = qkv.shape[:2]
    spatial = qkv.shape[2:]
    c = c3 // 3
    t = qkv.movedim(1, -1).reshape(b, -1, 3, num_heads, c // num_heads)  # (B, N, 3, h, C/h)
    q, k, v = (t[:, :, i].permute(0, 2, 3, 1) for i in range(3))  # each (B, h, C/h, N)
    gram = q @ k.transpose(-2, -1)  # (B, h, C/h, C/h)
    q_norm = torch.linalg.vector_norm(q, dim=-1).clamp_min(1e-12)  # (B, h, C/h), no squared copy of q
    k_norm = torch.linalg.vector_norm(k, dim=-1).clamp_min(1e-12)
    attn = gram / (q_norm[..., :, None] * k_norm[..., None, :]) * temperature
    out = v.transpose(-2, -1) @ attn.softmax(dim=-1).transpose(-2, -1)  # (B, h, N, C/h)
    out = out.permute(0, 2, 1, 3).reshape(b, *spatial, c)  # (B, *spatial, C)
    return out.movedim(-1, 1)


class ChannelAttention(nn.Module):
    """MDTA: 1x1 conv to q, k, v, 3x3 depthwise conv, channel attention per head, 1x1 output conv.

    The depthwise conv is static in the encoder and task-adaptive in the decoder (``dynamic=True``,
    see :class:`DepthwiseConv`). When a feature map is larger than ``1.5 * train_size`` along an axis,
    the attention (not the convs) runs in overlapping local windows of that length and is averaged
    where they overlap (test-time local converter); smaller maps use global attention, as published.

    Args:
        dim: channels C.
        num_heads: attention heads; must divide ``dim``.
        bias: bias in the 1x1 convs and the static depthwise conv.
        spatial_dims: number of spatial dimensions.
        dynamic: task-adaptive depthwise conv (decoder) instead of a static one (encoder).
        train_size: spatial size of this block's input during training; ``None`` disables local windows.

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``, or ``train_size`` is not positive.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = False,
        spatial_dims: int = 2,
        dynamic: bool = False,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must divide the channel count ({dim}).")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be positive or None, got {train_size}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.num_heads = num_heads
        self.spatial_dims = spatial_dims
        self.window = None if train_size is None else int(train_size * 1.5)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = conv(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = DepthwiseConv(
            dim * 3, 3, spatial_dims, dynamic=dynamic, bias=bias and not dynamic, init="normal" if dynamic else "conv"
        )
        self.project_out = conv(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: ``(B, C, *spatial)``.
            kernel: generated depthwise kernel ``(B, 3C, 3, ..., 3)`` for a dynamic block, else ``None``.

        Returns:
            ``(B, C, *spatial)``.
        """
        qkv = self.qkv_dwconv(self.qkv(x), kernel)
        spatial = qkv.shape[2:]
        if self.window is None or all(s <= self.window for s in spatial):
            out = channel_attention(qkv, self.num_heads, self.temperature)
        else:
            patches, index = partition_windows(qkv, [self.window] * self.spatial_dims)
            out = channel_attention(patches, self.num_heads, self.temperature)
            out = merge_windows(out, index, spatial)
        return self.project_out(out)
