"""Seam score: how much a restoration's error jumps along straight lines (window edges).

Definition. For a residual ``r = restored - target`` of shape ``(H, W)``, the row profile is the mean absolute
difference between neighbouring rows, ``p_y[i] = mean_x |r[i + 1, x] - r[i, x]|`` (``H - 1`` values, the
boundary between rows ``i`` and ``i + 1``), and the column profile ``p_x`` likewise. A window edge at row ``e``
(the first row of a window, or the first row after one) draws a line in the error map and makes ``p_y[e - 1]``
stand out against the profile's median. The seam score is

    ``max over the given edges e of max(p[e - 2], p[e - 1], p[e]) / median(p)``

over both axes (the boundary +-1, allowing for half-pixel shifts through the decoder's upsampling), or, without
edges, ``max(p) / median(p)``, the largest line of the image wherever it lies. A smooth residual scores about 1;
an error map with a visible rectangle scores well above (2.2 on the demo CT slice with the published windows,
1.46 at most for global attention, issue 15).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["gradient_profiles", "seam_score", "window_edges"]


def gradient_profiles(residual: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Row and column profiles of a 2D residual's absolute finite differences.

    Args:
        residual: ``(H, W)`` with ``H, W >= 3``, finite.

    Returns:
        ``(p_y, p_x)`` of lengths ``H - 1`` and ``W - 1`` (float64).

    Raises:
        ValueError: not 2D, smaller than 3 x 3, or non-finite.
    """
    r = residual.detach().cpu().double().numpy() if isinstance(residual, torch.Tensor) else np.asarray(residual, float)
    if r.ndim != 2 or min(r.shape) < 3:
        raise ValueError(f"seam score needs a 2D residual of at least 3 x 3, got shape {r.shape}.")
    if not np.isfinite(r).all():
        raise ValueError("seam score: the residual holds NaN or Inf values.")
    return np.abs(np.diff(r, axis=0)).mean(axis=1), np.abs(np.diff(r, axis=1)).mean(axis=0)


def _peak(profile: np.ndarray, edges: Sequence[int] | None) -> float:
    """The profile's peak (at ``edges``, or anywhere for ``None``) over its median; 0 for no edge inside; for a zero
    median, 1 if that peak is 0 too (no line) and infinity otherwise."""
    if edges is None:
        peak = float(profile.max())
    else:
        values = [profile[j] for e in edges for j in (e - 2, e - 1, e) if 0 <= j < len(profile)]
        if not values:
            return 0.0
        peak = float(max(values))
    median = float(np.median(profile))
    if median <= 0:
        return 1.0 if peak <= 0 else float("inf")
    return peak / median


def seam_score(residual: np.ndarray | torch.Tensor, edges: tuple[Sequence[int], Sequence[int]] | None = None) -> float:
    """Peak of the residual's gradient profile (at the given edges, or anywhere) over its median (see module doc).

    Args:
        residual: ``(H, W)`` restored minus target (any unit: the score is a ratio).
        edges: ``(row_edges, col_edges)``: boundaries where a seam is expected (e.g. :func:`window_edges`),
            or ``None`` for the largest line anywhere.

    Returns:
        The score, >= 0; about 1 for a smooth error, large for a line. A constant residual scores 1.

    Raises:
        ValueError: see :func:`gradient_profiles`.
    """
    p_y, p_x = gradient_profiles(residual)
    if edges is None:
        return max(_peak(p_y, None), _peak(p_x, None))
    return max(_peak(p_y, list(edges[0])), _peak(p_x, list(edges[1])))


def window_edges(size: int, train_patch_size: int | None = 128, heads: Sequence[int] = (1, 2, 4, 8)) -> list[int]:
    """Interior edges, in full-resolution pixels, of TAT's published attention windows along an axis.

    Level ``l`` (heads ``h``, map ``size / 2**l`` after padding to a multiple of 8) uses windows of
    ``1.5 * train_patch_size // h`` (as :class:`~custom.networks.blocks.ChannelAttention`) when the map is larger.

    Args:
        size: the slice's length along the axis.
        train_patch_size: the network's training patch size; ``None``: no windows.
        heads: heads per level.

    Returns:
        Sorted edge positions strictly inside ``(0, size)``.
    """
    from custom.networks.blocks.local_windows import window_starts

    padded = size + (-size) % 8
    out: set[int] = set()
    if train_patch_size is None:
        return []
    for level, h in enumerate(heads):
        n, scale = padded // 2**level, 2**level
        window = int(max(train_patch_size // h, 1) * 1.5)
        if n <= window:
            continue
        for s in window_starts(n, window):
            for e in (s, s + window):
                if 0 < e * scale < size:
                    out.add(e * scale)
    return sorted(out)
