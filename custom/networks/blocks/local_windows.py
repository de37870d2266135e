"""Test-time local windows (TLC) as pure functions.

"Run an operation in overlapping windows and average where they overlap", in factored form:

- :func:`window_tiles`: the form used by the channel attention (the tests check it against the literal
  definition, copying every window out and adding it back). The window edges cut each axis into
  tiles that are either wholly inside or wholly outside every window, so per-window sums of per-voxel terms
  are sums of per-tile sums, and "mean over the covering windows" is one small matrix per axis. Nothing is
  copied per window; the work is proportional to the image, not to the total window area (2.25x the image at
  256 x 256 with 192-pixel windows).

:func:`blend_weights` gives smooth per-window weights (a partition of unity that falls to zero at every window
edge), used by the ``"blended"`` attention windows instead of the published equal-weight mean.
"""

from __future__ import annotations

import math

import torch

__all__ = ["window_starts", "window_tiles", "blend_weights"]


def window_starts(size: int, window: int) -> list[int]:
    """Start offsets of the overlapping windows along one axis (the published rule).

    ``k = min(size, window)``; ``n = ceil(size / k)`` windows; stride ``ceil((size - k) / (n - 1))``
    (``k`` when ``n == 1``); starts ``0, stride, 2 * stride, ...``, the last one moved back so that it ends
    exactly at the border.

    Args:
        size: length of the axis.
        window: nominal window length.

    Returns:
        The start offsets, ascending; each window covers ``[start, start + min(size, window))``.

    Raises:
        ValueError: ``size`` or ``window`` not positive.
    """
    if size < 1 or window < 1:
        raise ValueError(f"size and window must be positive, got size={size}, window={window}.")
    k = min(size, window)
    n = -(-size // k)
    stride = k if n == 1 else -(-(size - k) // (n - 1))
    starts: list[int] = []
    i = 0
    while i < size:
        if i + k >= size:
            starts.append(size - k)
            break
        starts.append(i)
        i += stride
    return starts


def window_tiles(size: int, window: int) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Tiles of one axis cut at every window edge, and which windows cover which tiles.

    Args:
        size: length of the axis.
        window: nominal window length (windows as in :func:`window_starts`).

    Returns:
        ``(tiles, coverage)``: ``tiles`` the ``(start, end)`` of each tile, ascending, covering ``[0, size)``;
        ``coverage[w][t]`` is 1 if window ``w`` contains tile ``t``, else 0 (a tile is never partly in a window).

    Raises:
        ValueError: ``size`` or ``window`` not positive.
    """
    starts = window_starts(size, window)
    k = min(size, window)
    bounds = sorted({0, size, *starts, *(s + k for s in starts)})
    tiles = list(zip(bounds[:-1], bounds[1:]))
    coverage = [[int(s <= a and e <= s + k) for a, e in tiles] for s in starts]
    return tiles, coverage


def blend_weights(
    size: int, window: int, sigma_scale: float = 0.125, device: torch.device | None = None
) -> torch.Tensor:
    """Smooth weights of the overlapping windows along one axis, summing to 1 at every position.

    Window ``w`` (as in :func:`window_starts`, length ``k = min(size, window)``) gets
    ``g(p) = exp(-d^2 / (2 s^2)) - exp(-(k/2)^2 / (2 s^2))`` with ``d`` the distance of pixel centre ``p`` from
    the window centre and ``s = sigma_scale * k``: a Gaussian shifted to reach 0 half a pixel outside the window,
    so it is positive inside and continuous across the window edge. The weights are ``g_w / sum_w' g_w'``.
    In 2D the product of the per-axis weights is the normalised product of the per-axis Gaussians (the sum
    over the window grid factorises), so the weights of a window grid are separable.

    Args:
        size: length of the axis.
        window: nominal window length.
        sigma_scale: Gaussian width as a fraction of the window length, in (0, 10].
        device: device of the result.

    Returns:
        ``(n_windows, k)`` float32: the weight of each window at each of its ``k`` pixels.

    Raises:
        ValueError: ``size`` or ``window`` not positive, or ``sigma_scale`` out of (0, 10].
    """
    if not 0 < sigma_scale <= 10:
        raise ValueError(f"sigma_scale must be in (0, 10], got {sigma_scale}.")
    starts = window_starts(size, window)
    k = min(size, window)
    sigma = sigma_scale * k
    # float64 on the CPU (some devices have no float64), rounded once to float32 and moved to ``device``
    d = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2)) - math.exp(-((k / 2) ** 2) / (2 * sigma**2))
    total = torch.zeros(size, dtype=torch.float64)
    for s in starts:
        total[s : s + k] += g
    return torch.stack([g / total[s : s + k] for s in starts]).float().to(device)
