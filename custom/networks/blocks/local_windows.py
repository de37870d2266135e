"""Test-time local windows (TLC) as pure functions.

Two equivalent forms of "run an operation in overlapping windows and average where they overlap":

- :func:`partition_windows` / :func:`merge_windows`: the literal definition, copying every window out and
  adding it back (vectorised over batch and windows). Any per-window function can be applied in between.
- :func:`window_tiles`: the factored form used by the channel attention. The window edges cut each axis into
  tiles that are either wholly inside or wholly outside every window, so per-window sums of per-voxel terms
  are sums of per-tile sums, and "mean over the covering windows" is one small matrix per axis. Nothing is
  copied per window; the work is proportional to the image, not to the total window area (2.25x the image at
  256 x 256 with 192-pixel windows).

:func:`blend_weights` gives smooth per-window weights (a partition of unity that falls to zero at every window
edge), used by the ``"blended"`` attention windows instead of the published equal-weight mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["window_starts", "window_tiles", "blend_weights", "partition_windows", "merge_windows"]


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
    d = torch.arange(k, dtype=torch.float64, device=device) - (k - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma**2)) - torch.exp(torch.tensor(-((k / 2) ** 2) / (2 * sigma**2)))
    total = torch.zeros(size, dtype=torch.float64, device=device)
    for s in starts:
        total[s : s + k] += g
    return torch.stack([g / total[s : s + k] for s in starts]).float()


def _axis_index(size: int, window: int, device: torch.device) -> torch.Tensor:
    """``(n, k)`` voxel indices of the windows along one axis."""
    k = min(size, window)
    starts = torch.tensor(window_starts(size, window), device=device)
    return starts[:, None] + torch.arange(k, device=device)


def partition_windows(x: torch.Tensor, window: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Cut ``x`` into overlapping windows.

    Args:
        x: ``(B, C, *spatial)``.
        window: nominal window length per spatial axis.

    Returns:
        ``(patches, index)``: patches of shape ``(B * n_windows, C, *k)`` (channels-last in memory) ordered
        batch-major then row-major over the window grid, and the per-axis ``(n_i, k_i)`` index tensors that
        :func:`merge_windows` takes back.

    Raises:
        ValueError: ``window`` does not give one length per spatial axis.
    """
    spatial = x.shape[2:]
    d = len(spatial)
    if len(window) != d:
        raise ValueError(f"window needs {d} lengths for a {d}D input, got {tuple(window)}.")
    index = [_axis_index(s, w, x.device) for s, w in zip(spatial, window)]
    t = x.movedim(1, -1)  # (B, *spatial, C): a view, contiguous for channels-last input
    for i, idx in enumerate(index):
        t = t.index_select(1 + i, idx.reshape(-1))  # axis i becomes n_i * k_i
    ns = [idx.shape[0] for idx in index]
    ks = [idx.shape[1] for idx in index]
    shape = [x.shape[0]]
    for n, k in zip(ns, ks):
        shape += [n, k]
    t = t.reshape(*shape, x.shape[1])  # (B, n_1, k_1, ..., n_d, k_d, C)
    perm = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]  # (B, n_1..n_d, k_1..k_d, C)
    patches = t.permute(perm).reshape(-1, *ks, x.shape[1])
    return patches.movedim(-1, 1), index


def merge_windows(patches: torch.Tensor, index: Sequence[torch.Tensor], spatial_shape: Sequence[int]) -> torch.Tensor:
    """Put windows back, averaging where they overlap (inverse of :func:`partition_windows` for the identity).

    Args:
        patches: ``(B * n_windows, C, *k)`` as returned by :func:`partition_windows` (possibly transformed).
        index: the per-axis index tensors returned by :func:`partition_windows`.
        spatial_shape: the full spatial shape ``(S_1, ..., S_d)``.

    Returns:
        ``(B, C, *spatial_shape)`` (channels-last in memory): each voxel is the mean of the windows that
        cover it.
    """
    d = len(spatial_shape)
    ns = [idx.shape[0] for idx in index]
    ks = [idx.shape[1] for idx in index]
    c = patches.shape[1]
    n_total = 1
    for n in ns:
        n_total *= n
    b = patches.shape[0] // n_total
    p = patches.movedim(1, -1).reshape(b, *ns, *ks, c)
    perm = [0]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    p = p.permute(*perm, 2 * d + 1)  # (B, n_1, k_1, ..., n_d, k_d, C)
    count: torch.Tensor | None = None
    for i in reversed(range(d)):
        # axes before i are still (n_j, k_j) pairs; axes after it are already merged to full length.
        dim = 1 + 2 * i
        p = p.reshape(*p.shape[:dim], ns[i] * ks[i], *p.shape[dim + 2 :])
        out = p.new_zeros(*p.shape[:dim], spatial_shape[i], *p.shape[dim + 1 :])
        p = out.index_add_(dim, index[i].reshape(-1), p)
        axis_count = torch.zeros(spatial_shape[i], device=p.device, dtype=p.dtype)
        axis_count.index_add_(0, index[i].reshape(-1), torch.ones(ns[i] * ks[i], device=p.device, dtype=p.dtype))
        count = axis_count if count is None else axis_count.reshape(-1, *[1] * count.dim()) * count.unsqueeze(0)
    p = p / count.unsqueeze(-1)  # type: ignore[union-attr]
    return p.movedim(-1, 1)
