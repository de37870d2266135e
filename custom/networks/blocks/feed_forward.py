"""Gated-Dconv feed-forward network (GDFN, Restormer) with an optional task-adaptive depthwise conv."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from custom.networks.blocks.dynamic_conv import DepthwiseConv, _zero_padded
from custom.networks.blocks.pointwise import pointwise_conv
from monai.networks.layers.factories import Conv

__all__ = ["GatedFeedForward", "ffn_hidden_channels"]


def ffn_hidden_channels(dim: int, expansion: float) -> int:
    """Hidden width of the gated feed-forward: ``int(dim * expansion)`` (published rounding)."""
    return int(dim * expansion)


class GatedFeedForward(nn.Module):
    """GDFN: 1x1 conv to ``2 * hidden``, 3x3 depthwise conv, ``gelu(x1) * x2``, 1x1 conv back to ``dim``.

    Args:
        dim: channels C.
        expansion: hidden width factor; hidden = ``int(C * expansion)``.
        bias: bias in the convs (static depthwise conv only).
        spatial_dims: number of spatial dimensions.
        dynamic: task-adaptive depthwise conv (decoder) instead of a static one (encoder).
    """

    def __init__(
        self, dim: int, expansion: float = 2.66, bias: bool = False, spatial_dims: int = 2, dynamic: bool = False
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        hidden = ffn_hidden_channels(dim, expansion)
        self.project_in = conv(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = DepthwiseConv(
            hidden * 2,
            3,
            spatial_dims,
            dynamic=dynamic,
            bias=bias and not dynamic,
            init="kaiming" if dynamic else "conv",
        )
        self.project_out = conv(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: ``(B, C, *spatial)``.
            kernel: generated depthwise kernel ``(B, 2 * hidden, 3, ..., 3)`` for a dynamic block, else ``None``.

        Returns:
            ``(B, C, *spatial)``.
        """
        hidden = self.project_out.in_channels
        # the two halves are computed as separate tensors (1x1 conv rows and depthwise kernels split): each is then
        # contiguous, and the GELU and the product run vectorised over whole maps; a channel half of one
        # channels-last tensor is strided, and the GELU on it is several times slower on CPU. Each half is padded
        # with zero channels to a multiple of 16 (published widths are odd: 127, 255, ...), where the GEMM and
        # depthwise kernels are faster; the padded channels are exactly 0 and meet zero columns of project_out.
        pad = (-hidden) % 16
        w_in = self.project_in.weight.flatten(1)
        b_in = self.project_in.bias
        halves = []
        for part in (slice(0, hidden), slice(hidden, 2 * hidden)):
            w = _zero_padded(w_in[part], pad)
            b = None if b_in is None else _zero_padded(b_in[part], pad)
            halves.append(self.dwconv(pointwise_conv(x, w, b), kernel, part, pad))
        x1, x2 = halves
        if x1.requires_grad or x2.requires_grad:
            gated = F.gelu(x1) * x2
        else:  # no graph to keep (inference): in place, two hidden-size maps less to allocate and write
            gated = torch.ops.aten.gelu_(x1).mul_(x2)
        w_out = _zero_padded(self.project_out.weight.flatten(1), pad, 1)
        return pointwise_conv(gated, w_out, self.project_out.bias)
