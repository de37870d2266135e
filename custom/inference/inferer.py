"""Slice-by-slice inference of a 2D network on 2D images and 3D volumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["SliceBatchInferer"]


class SliceBatchInferer(Inferer):
    """Run a 2D network on ``(B, C, H, W)`` batches directly and on ``(B, C, H, W, D)`` volumes slice by slice.

    The D slices (last axis) are folded into the batch and run ``batch_size`` at a time, whole (no tiling:
    the network handles any H, W itself); the output has the input's layout. Unlike MONAI's ``SliceInferer``
    it also accepts 2D input and never tiles a slice.

    Args:
        batch_size: slices per forward pass.

    Raises:
        ValueError: ``batch_size`` < 1, or input that is not 4D/5D.
    """

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.batch_size = batch_size

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Restore ``inputs``.

        Args:
            inputs: ``(B, C, H, W)`` or ``(B, C, H, W, D)``.
            network: 2D network ``(N, C, H, W) -> (N, C', H, W)``.
            args: extra positional arguments of ``network``.
            kwargs: extra keyword arguments of ``network``.

        Returns:
            ``(B, C', H, W)`` or ``(B, C', H, W, D)``.
        """
        if inputs.dim() == 4:
            return torch.cat(
                [
                    network(inputs[i : i + self.batch_size], *args, **kwargs)
                    for i in range(0, inputs.shape[0], self.batch_size)
                ]
            )
        if inputs.dim() != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, D) input, got {tuple(inputs.shape)}.")
        b, c, h, w, d = inputs.shape
        slices = inputs.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        out = self(slices, network, *args, **kwargs)
        return out.reshape(b, d, out.shape[1], h, w).permute(0, 2, 3, 4, 1)
