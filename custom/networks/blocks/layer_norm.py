"""Layer normalisation over the channel axis of a channels-first feature map."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ChannelLayerNorm"]


class ChannelLayerNorm(nn.Module):
    """Layer norm over channels at every voxel of a ``(B, C, *spatial)`` tensor (Restormer's ``LayerNorm``).

    Statistics use the biased variance, as in the published model. With ``bias=True`` ("WithBias")
    the output is ``(x - mean) / sqrt(var + eps) * weight + bias``; with ``bias=False`` ("BiasFree")
    it is ``x / sqrt(var + eps) * weight`` (the mean is used for the variance only).

    Args:
        channels: number of channels C.
        bias: learn a shift and subtract the mean ("WithBias"); ``False`` gives "BiasFree".
        eps: added to the variance. Default 1e-5 as published.
    """

    def __init__(self, channels: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(B, C, *spatial)``; returns the same shape."""
        if self.bias is not None:
            # F.layer_norm on a channels-last view: one fused kernel, same statistics as the reference.
            # movedim rather than a permutation list built with ``*``: TorchScript cannot size such a list.
            y = F.layer_norm(x.movedim(1, -1), [self.channels], self.weight, self.bias, self.eps)
            return y.movedim(-1, 1)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * torch.rsqrt(var + self.eps) * self.weight.reshape(shape)

    def extra_repr(self) -> str:
        return f"{self.channels}, bias={self.bias is not None}, eps={self.eps}"
