"""Multi-Dconv head transposed attention (MDTA, Restormer) with an optional task-adaptive depthwise conv."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn
from custom.networks.blocks.dynamic_conv import DepthwiseConv
from custom.networks.blocks.local_windows import blend_weights, window_starts, window_tiles
from custom.networks.blocks.pointwise import linear, pointwise_conv, uses_onednn
from monai.networks.layers.factories import Conv

__all__ = ["ChannelAttention", "channel_attention", "WINDOW_MODES", "check_window_mode"]

WINDOW_MODES = ("published", "global", "blended")
"""How the attention treats feature maps larger than its window: the published equal-weight mean of the
overlapping windows (``"published"``, jumps at window edges), one global attention (``"global"``), or the
windows' attention matrices blended with smooth weights that vanish at the window edges (``"blended"``)."""


def check_window_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`WINDOW_MODES`.

    Raises:
        ValueError: any other value, listing the valid ones.
    """
    if mode not in WINDOW_MODES:
        raise ValueError(f"attention window mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}.")
    return mode


def _over_axis(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """Contract axis ``axis`` of ``x`` (length m) with ``matrix`` of shape ``(m, n)``; the result has n there."""
    # one GEMM: x.movedim(axis, -1) @ matrix would broadcast into a batch of tiny (m x n) products
    return torch.tensordot(x, matrix, dims=([axis], [0])).movedim(-1, axis)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``device_type`` (nothing to disable where it has no autocast: "meta")."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _tile_statistics(fq: torch.Tensor, fk: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head ``q^T k`` and the squared L2 norms of every q and k channel, summed over the voxels of a tile.

    Under float16 autocast or for float16 maps (a half-precision model) the sums are computed in float32: sums over
    thousands of voxels exceed float16's range (65504) where the normalised attention does not (the published code
    normalises q and k first); bfloat16 has float32's range and stays as it is.

    Args:
        fq: ``(B, P, C)`` q of the tile's P voxels.
        fk: ``(B, P, C)`` k.
        num_heads: h; divides C.

    Returns:
        ``(gram, squares)``: ``(B, h, C/h, C/h)`` and ``(B, 2C)`` (q's channels, then k's); float32 in the float16
        cases above.
    """
    device = fq.device.type
    autocast16 = (
        torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
        and torch.get_autocast_dtype(device) == torch.float16
    )
    if fq.dtype == torch.float16 or autocast16:
        with _autocast_off(device):
            wide = torch.promote_types(fq.dtype, torch.float32)
            return _tile_statistics(fq.to(wide), fk.to(wide), num_heads)
    dh = fq.shape[-1] // num_heads
    q = fq.unflatten(-1, (num_heads, dh)).transpose(1, 2)  # (B, h, P, C/h), views
    k = fk.unflatten(-1, (num_heads, dh)).transpose(1, 2)
    # the squared norms as a sum over the voxel axis with the channels contiguous: vectorised on CPU, unlike
    # linalg.vector_norm over the strided voxel axis; x * x rather than x.square(), a pow kernel that is slower
    return q.transpose(-2, -1) @ k, torch.cat([(fq * fq).sum(1), (fk * fk).sum(1)], -1)


def _window_attention(
    gram: torch.Tensor,
    norms: torch.Tensor,
    axes: Sequence[tuple[list, list]],
    temperature: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-window attention matrices from per-tile statistics.

    Args:
        gram: ``(*tile_grid, B, h, C/h, C/h)`` per-tile ``q k^T``.
        norms: ``(*tile_grid, B, 2, h, C/h)`` per-tile squared norms of q (index 0) and k (index 1).
        axes: per spatial axis, ``(tiles, coverage)`` of :func:`~custom.networks.blocks.local_windows.window_tiles`.
        temperature: ``(h, 1, 1)``.
        dtype: the maps' dtype; the attention comes in the dtype of ``temperature`` and the maps promoted (``None``:
            float32 or wider, the dtype it is computed in).

    Returns:
        ``(*window_grid, B, h, C/h, C/h)`` softmax attention of each window.
    """
    # in float32 or wider, autocast off: the window sums are GEMMs, which autocast would run (and round) in its dtype
    work = torch.promote_types(gram.dtype, torch.float32)
    gram, norms = gram.to(work), norms.to(work)
    with _autocast_off(gram.device.type):
        for axis, (_, coverage) in enumerate(axes):  # per-tile sums -> per-window sums
            if len(coverage) == 1 and len(coverage[0]) == 1:
                continue
            cov = torch.tensor(coverage, dtype=work, device=gram.device)  # (windows, tiles)
            gram, norms = (_over_axis(z, cov.T, axis) for z in (gram, norms))
        norms = norms.sqrt().clamp_min(1e-12)
        q_norm, k_norm = norms.select(-3, 0), norms.select(-3, 1)
        attn = (gram / (q_norm[..., :, None] * k_norm[..., None, :]) * temperature).softmax(dim=-1)
    return attn.to(torch.promote_types(gram.dtype if dtype is None else dtype, temperature.dtype))


def tile_matrices(
    gram: torch.Tensor,
    norms: torch.Tensor,
    axes: Sequence[tuple[list, list]],
    temperature: torch.Tensor,
    project: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The published mean of the covering windows' attention, per tile, optionally with the output conv folded in.

    Args:
        gram: ``(*tile_grid, B, h, C/h, C/h)`` per-tile ``q k^T``.
        norms: ``(*tile_grid, B, 2, h, C/h)`` per-tile squared norms of q (index 0) and k (index 1).
        axes: per spatial axis, ``(tiles, coverage)`` of :func:`~custom.networks.blocks.local_windows.window_tiles`.
        temperature: ``(h, 1, 1)``.
        project: ``(C_out, C)`` output conv, or ``None``.
        dtype: the maps' dtype (see :func:`_window_attention`).

    Returns:
        ``(attn, matrices)``: ``attn`` ``(tiles, B, h, C/h, C/h)`` (tiles in row-major order of the grid) and, with
        ``project``, ``matrices`` ``(tiles, B, C_out, C)`` = ``project @ blockdiag(attn)`` (else ``None``).
    """
    b, num_heads, dh = gram.shape[-4], gram.shape[-3], gram.shape[-1]
    attn = _window_attention(gram, norms, axes, temperature, dtype)
    for axis, (_, coverage) in enumerate(axes):  # per-window attention -> per-tile averaged attention
        if len(coverage) == 1 and len(coverage[0]) == 1:
            continue
        cov = torch.tensor(coverage, dtype=attn.dtype, device=attn.device)  # (windows, tiles)
        attn = _over_axis(attn, cov / cov.sum(0), axis)  # mean over the windows covering a tile
    attn = attn.reshape(-1, b, num_heads, dh, dh)  # (tiles, B, h, C/h, C/h)
    if project is None:
        return attn, None
    # (W blockdiag(A))[o, (head, j)] = sum_i W[o, (head, i)] A[head, i, j]
    c_out = project.shape[0]
    per_head = project.reshape(c_out, num_heads, dh).transpose(0, 1) @ attn  # (tiles, B, h, C_out, C/h)
    return attn, per_head.permute(0, 1, 3, 2, 4).reshape(-1, b, c_out, num_heads * dh)


def channel_attention(
    qkv: torch.Tensor | Sequence[torch.Tensor],
    num_heads: int,
    temperature: torch.Tensor,
    window: Sequence[int] | None = None,
    blend: bool = False,
    sigma_scale: float = 0.125,
    project: torch.Tensor | None = None,
    project_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Transposed (channel) self-attention of each sample, globally or in overlapping local windows.

    Per head (``C / num_heads`` channels) and per window, q and k are L2-normalised along the voxel axis and
    ``A = softmax(q k^T * temperature)`` is a ``(C/h, C/h)`` matrix applied to v; with ``window``, each voxel
    gets the mean of the outputs of the windows that cover it (test-time local converter, windows as in
    :func:`~custom.networks.blocks.local_windows.window_starts`), otherwise one window is the whole map.

    Computed in factored form, exactly equal to the per-window definition up to float rounding: the window
    edges cut the map into tiles (:func:`~custom.networks.blocks.local_windows.window_tiles`); the Gram matrix
    ``q k^T`` and the squared norms of a window are sums of per-tile ones, and since ``A`` acts linearly on v
    the mean over covering windows is one averaged ``(C/h, C/h)`` matrix per tile. So nothing is copied per
    window and q k^T is computed once per voxel, not once per covering window. The normalisation is applied
    to the Gram matrix (``A_ij = G_ij / (|q_i| |k_j|)``, norms clamped at 1e-12 as in ``F.normalize``).
    Works on the channels-last view, so a channels-last input needs no layout copies for global attention.

    With ``project`` (the 1x1 output conv ``W`` of the attention block), the output is ``W (A v)`` per voxel,
    computed as ``(W blockdiag(A)) v``: the ``(C_out, C)`` product is formed once per tile, so v is multiplied
    once per voxel (one GEMM instead of the per-head products and the output conv) and the per-head output is
    never written.

    With ``blend=True`` the windows' attention matrices (the same per-window statistics) are mixed per voxel
    with the smooth weights of :func:`~custom.networks.blocks.local_windows.blend_weights` instead of the
    equal-weight mean: ``out(p) = sum_w beta_w(p) A_w v(p)``, with ``beta_w`` falling to 0 at window ``w``'s
    edges, so the effective attention matrix is continuous in ``p`` (no jump at window edges).

    Args:
        qkv: ``(B, 3C, *spatial)``: q, k and v stacked along channels, or the three ``(B, C, *spatial)`` maps
            (``(q, k, v)``, each contiguous: faster products, and no map three times as large).
        num_heads: number of heads h; divides C.
        temperature: ``(h, 1, 1)`` learned scale per head.
        window: window length per spatial axis, or ``None`` for global attention.
        blend: smooth blending of the windows (see above) instead of the published mean.
        sigma_scale: width of the blending weights as a fraction of the window length.
        project: ``(C_out, C)`` matrix applied at every voxel after the attention, or ``None``.
        project_bias: ``(C_out,)`` added after ``project`` (``(C,)`` added to the attention's output without one), or
            ``None``.

    Returns:
        ``(B, C, *spatial)`` (``(B, C_out, *spatial)`` with ``project``), channels-last in memory.

    Raises:
        ValueError: ``window`` does not give one length per spatial axis.
    """
    if isinstance(qkv, torch.Tensor):
        c = qkv.shape[1] // 3
        t = qkv.movedim(1, -1)  # (B, *S, 3C): a view, contiguous for channels-last input
        maps = (t[..., :c], t[..., c : 2 * c], t[..., 2 * c :])
    else:
        maps = tuple(z.movedim(1, -1) for z in qkv)  # each (B, *S, C)
        c = maps[0].shape[-1]
    b, shape = maps[0].shape[0], qkv.shape if isinstance(qkv, torch.Tensor) else qkv[0].shape
    # plain ints for a window grid (traced sizes are tensors: the grid is static); global attention keeps the sizes
    # as they come, so that torch.export keeps height and width dynamic
    spatial = list(shape[2:]) if window is None else [int(s) for s in shape[2:]]
    dh = c // num_heads
    if window is not None and len(window) != len(spatial):
        raise ValueError(f"window needs {len(spatial)} lengths for a {len(spatial)}D input, got {tuple(window)}.")
    axes = [([(0, s)], [[1]]) for s in spatial] if window is None else list(map(window_tiles, spatial, window))
    grid = [len(tiles) for tiles, _ in axes]
    regions, values, grams, squares = [], [], [], []
    for index in itertools.product(*(range(n) for n in grid)):
        region = (slice(None), *(slice(*axes[i][0][j]) for i, j in enumerate(index)))
        tile_shape = maps[0][region].shape[1:-1]
        fq, fk, fv = (z[region].reshape(b, -1, c) for z in maps)  # (B, P, C): a copy only for a strict sub-tile
        gram, square = _tile_statistics(fq, fk, num_heads)
        grams.append(gram)  # (B, h, C/h, C/h)
        squares.append(square)  # (B, 2C)
        regions.append((region, tile_shape))
        values.append(fv)  # (B, P, C)
    gram = torch.stack(grams).reshape(*grid, b, num_heads, dh, dh)
    norms = torch.stack(squares).reshape(*grid, b, 2, num_heads, dh)
    if blend and window is not None:
        attn = _window_attention(gram, norms, axes, temperature, maps[2].dtype)
        out = _blend_windows(maps[2], attn, spatial, window, num_heads, sigma_scale)
        if project is not None:
            return pointwise_conv(out, project, project_bias)
        return out if project_bias is None else out + project_bias.reshape(-1, *(1,) * len(spatial))
    attn, matrices = tile_matrices(gram, norms, axes, temperature, project, maps[2].dtype)
    c_out = c if project is None else project.shape[0]
    outs = []
    for i, v in enumerate(values):
        if matrices is None:
            heads = v.unflatten(-1, (num_heads, dh)).transpose(1, 2)  # (B, h, P, C/h)
            out = (heads @ attn[i].transpose(-2, -1)).transpose(1, 2).reshape(b, -1, c)
        else:
            out = _product(v, matrices[i])  # (B, P, C_out)
        if project_bias is not None:
            out = out + project_bias
        outs.append(out)
    if len(outs) == 1:
        return outs[0].reshape(b, *regions[0][1], c_out).movedim(-1, 1)
    full = outs[0].new_empty((b, *spatial, c_out))
    for (region, tile_shape), out in zip(regions, outs):
        full[region] = out.reshape(b, *tile_shape, c_out)
    return full.movedim(-1, 1)


def _blend_windows(
    v_all: torch.Tensor,
    attn: torch.Tensor,
    spatial: Sequence[int],
    window: Sequence[int],
    num_heads: int,
    sigma_scale: float,
) -> torch.Tensor:
    """``sum_w beta_w(p) A_w v(p)`` over the window grid.

    Args:
        v_all: ``(B, *S, C)`` values (channels-last view).
        attn: ``(*n_windows, B, h, C/h, C/h)`` per-window attention matrices.
        spatial: ``S``.
        window: window length per axis.
        num_heads: h.
        sigma_scale: see :func:`~custom.networks.blocks.local_windows.blend_weights`.

    Returns:
        ``(B, C, *S)``, channels-last in memory.
    """
    b, c = v_all.shape[0], v_all.shape[-1]
    starts = [window_starts(s, w) for s, w in zip(spatial, window)]
    ks = [min(s, w) for s, w in zip(spatial, window)]
    weights = [blend_weights(s, w, sigma_scale, v_all.device).to(v_all.dtype) for s, w in zip(spatial, window)]
    out = v_all.new_zeros((b, *spatial, c))
    for index in itertools.product(*(range(len(st)) for st in starts)):
        region = (slice(None), *(slice(starts[i][j], starts[i][j] + ks[i]) for i, j in enumerate(index)))
        v = v_all[region].reshape(b, -1, num_heads, c // num_heads).transpose(1, 2)  # (B, h, P, C/h)
        o = (v @ attn[index].transpose(-2, -1)).transpose(1, 2).reshape(b, *ks, c)
        w = weights[0][index[0]]
        for i in range(1, len(ks)):
            w = w[..., None] * weights[i][index[i]]
        out[region] += o * w[..., None]
    return out.movedim(-1, 1)


class ChannelAttention(nn.Module):
    """MDTA: 1x1 conv to q, k, v, 3x3 depthwise conv, channel attention per head, 1x1 output conv.

    The depthwise conv is static in the encoder and task-adaptive in the decoder (``dynamic=True``,
    see :class:`DepthwiseConv`). When a feature map is larger than ``1.5 * train_size`` along an axis,
    the attention (not the convs) runs in overlapping local windows of that length and is averaged
    where they overlap (test-time local converter); smaller maps use global attention, as published.
    ``window_mode`` (:data:`WINDOW_MODES`) chooses the published mean, global attention at every size, or
    smoothly blended windows; it is an attribute read (never written) in ``forward``.

    Args:
        dim: channels C.
        num_heads: attention heads; must divide ``dim``.
        bias: bias in the 1x1 convs and the static depthwise conv.
        spatial_dims: number of spatial dimensions.
        dynamic: task-adaptive depthwise conv (decoder) instead of a static one (encoder).
        train_size: spatial size of this block's input during training; ``None`` disables local windows.
        window_mode: ``"published"``, ``"global"`` or ``"blended"``.

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``, ``train_size`` is not positive, or an unknown
            ``window_mode``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = False,
        spatial_dims: int = 2,
        dynamic: bool = False,
        train_size: int | None = None,
        window_mode: str = "published",
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
        self.window_mode = check_window_mode(window_mode)
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
        # q, k and v as three contiguous maps (1x1 conv rows and depthwise kernels split): no map of 3C channels
        # (above glibc's mmap limit at 256 x 256, so fresh pages every call), and contiguous operands for the products
        c = self.qkv.out_channels // 3
        qkv = [
            self.qkv_dwconv(pointwise_conv(x, self.qkv.weight, self.qkv.bias, part), kernel, part)
            for part in (slice(0, c), slice(c, 2 * c), slice(2 * c, 3 * c))
        ]
        window = self.local_window(qkv[0].shape[2:])
        blend = self.window_mode == "blended"
        project = self.project_out.weight.flatten(1)
        return channel_attention(
            qkv, self.num_heads, self.temperature, window, blend, 0.125, project, self.project_out.bias
        )

    def local_window(self, spatial: Sequence[int]) -> list[int] | None:
        """The attention window per axis for a map of size ``spatial``, or ``None`` for global attention."""
        local = self.window is not None and self.window_mode != "global" and any(s > self.window for s in spatial)
        return [self.window] * self.spatial_dims if local else None

    def residual_in_strips(
        self, x: torch.Tensor, norm: nn.Module, kernel: torch.Tensor | None, rows: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x + self(norm(x), kernel)`` without a graph, computed in row strips (2D, ``"published"`` or
        ``"global"`` windows; equal to the whole-map path up to float rounding).

        Two passes over strips of ``rows`` rows: the first computes ``norm``, the qkv conv and the depthwise conv
        of a strip with its halo rows, adds the strip's share to every tile's ``q k^T`` and squared norms, and
        stores v where the output goes; the second replaces v by ``x + (W blockdiag(A_tile)) v`` strip by strip. So
        the only map of the whole image allocated is the output: large maps are fresh pages from the OS on every
        call (page faults), and strips stay in cache. Under autocast the convs and products run in the autocast dtype
        as on the whole-map path, while the Gram matrices and norms are summed over strips in float32 (or ``x``'s
        dtype if wider, also for a half-precision model) and the residual is added in ``x``'s dtype.

        Args:
            x: ``(B, C, H, W)``, channels-last in memory (other layouts work, slower).
            norm: the block's layer norm before the attention.
            kernel: generated depthwise kernel ``(B, 3C, 3, 3)`` for a dynamic block, else ``None``.
            rows: rows per strip (at least 1).
            out: ``(B, H, W, C)`` contiguous tensor of ``x``'s dtype and device to write the result into (a new one
                for ``None``); it must not overlap ``x``.

        Returns:
            ``(B, C, H, W)``, channels-last in memory (``out`` seen as ``(B, C, H, W)`` when given).

        Raises:
            ValueError: blended windows at this size, not a 2D map, or an unusable ``out``.
        """
        if x.dim() != 4:
            raise ValueError(f"row strips need a 2D map (B, C, H, W), got shape {tuple(x.shape)}.")
        b, c, h, w = x.shape
        window = self.local_window((h, w))
        if window is not None and self.window_mode == "blended":
            raise ValueError("row strips compute the published window mean or global attention, not blended windows.")
        heads, dh = self.num_heads, c // self.num_heads
        axes = [([(0, s)], [[1]]) for s in (h, w)] if window is None else list(map(window_tiles, (h, w), window))
        (row_tiles, _), (col_tiles, _) = axes
        grams = [[None] * len(col_tiles) for _ in row_tiles]
        squares = [[None] * len(col_tiles) for _ in row_tiles]
        if out is None:
            out = torch.empty((b, h, w, c), dtype=x.dtype, device=x.device)  # (B, H, W, C): channels-last (B, C, H, W)
        elif out.shape != (b, h, w, c) or not out.is_contiguous() or (out.dtype, out.device) != (x.dtype, x.device):
            raise ValueError(
                f"out must be a contiguous {x.dtype} tensor of shape (B, H, W, C) = {(b, h, w, c)} on {x.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device} (contiguous: {out.is_contiguous()})."
            )
        halo = self.qkv_dwconv.kernel_size // 2
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
            normed = norm(x[:, :, a0:a1])
            # q, k and v as three maps of C channels: the depthwise conv is several times faster per value on C
            # channels than on 3C (its three input rows of 3C channels do not fit in L2 at 256 columns)
            q_all, k_all, v_all = (
                self.qkv_dwconv(pointwise_conv(normed, self.qkv.weight, self.qkv.bias, part), kernel, part)[
                    :, :, r0 - a0 : r1 - a0
                ].movedim(
                    1, -1
                )  # (B, rows, W, C)
                for part in (slice(0, c), slice(c, 2 * c), slice(2 * c, 3 * c))
            )
            out[:, r0:r1] = v_all
            for i, (t0, t1) in enumerate(row_tiles):
                lo, hi = max(t0, r0), min(t1, r1)
                if lo >= hi:
                    continue
                for j, (c0, c1) in enumerate(col_tiles):
                    # (B, P, C): a copy only for a column sub-tile
                    fq, fk = (z[:, lo - r0 : hi - r0, c0:c1].reshape(b, -1, c) for z in (q_all, k_all))
                    # sums over strips in float32 or wider (under autocast the products come in the autocast
                    # dtype, float16 ones in float32; a bf16 model's in bf16): small strip shares are not rounded away
                    gram, sq = _tile_statistics(fq, fk, heads)
                    acc = torch.promote_types(torch.promote_types(x.dtype, gram.dtype), torch.float32)
                    gram, sq = gram.to(acc), sq.to(acc)
                    grams[i][j] = gram if grams[i][j] is None else grams[i][j].add_(gram)
                    squares[i][j] = sq if squares[i][j] is None else squares[i][j].add_(sq)
        grid = (len(row_tiles), len(col_tiles))
        gram = torch.stack([g for row in grams for g in row]).reshape(*grid, b, heads, dh, dh)
        norms = torch.stack([n for row in squares for n in row]).reshape(*grid, b, 2, heads, dh)
        project = self.project_out.weight.flatten(1)
        _, matrices = tile_matrices(gram, norms, axes, self.temperature, project, x.dtype)
        residual = x.movedim(1, -1)  # (B, H, W, C)
        bias = self.project_out.bias
        for i, (t0, t1) in enumerate(row_tiles):
            for r0 in range(t0, t1, rows):
                r1 = min(t1, r0 + rows)
                for j, (c0, c1) in enumerate(col_tiles):
                    m = matrices[i * len(col_tiles) + j].transpose(-2, -1)  # (B, C, C_out)
                    if c1 - c0 == w:  # whole rows: (B, P, C) views, one product per sample
                        v = out[:, r0:r1]
                        _add_product(residual[:, r0:r1].reshape(b, -1, c), v.reshape(b, -1, c), m, bias, v)
                        continue
                    # a column sub-tile: one product per row of the tile, on strided views (no copies in)
                    for s in range(b):
                        v = out[s, r0:r1, c0:c1]  # (rows, columns, C)
                        _add_product(residual[s, r0:r1, c0:c1], v, m[s].expand(r1 - r0, -1, -1), bias, v)
        return out.movedim(-1, 1)


def _product(v: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """``v @ matrices.transpose(-2, -1)``: ``(N, P, C)`` by ``(N, C_out, C)`` -> ``(N, P, C_out)``, one product per
    sample through :func:`~custom.networks.blocks.pointwise.linear` where it takes oneDNN's product."""
    if not uses_onednn(v, matrices, None):
        return v @ matrices.transpose(-2, -1)
    if v.shape[0] == 1:
        return linear(v[0], matrices[0]).unsqueeze(0)
    return torch.stack([linear(v[n], matrices[n]) for n in range(v.shape[0])])


def _add_product(
    residual: torch.Tensor, v: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> None:
    """``out = residual + v @ m (+ bias)``, the sum in ``residual``'s dtype (under autocast the product comes in the
    autocast dtype and is added to the float32 residual, which is not rounded).

    Args:
        residual: ``(N, P, C_out)``.
        v: ``(N, P, C)``; it may be ``out`` itself (it is read before ``out`` is written).
        m: ``(N, C, C_out)``.
        bias: ``(C_out,)`` or ``None``.
        out: ``(N, P, C_out)`` or a view of the same number of elements in that order.
    """
    if uses_onednn(v, m, bias):  # oneDNN's product, then the sum: about twice MKL's baddbmm on an AMD EPYC
        shared = m.shape[0] == 1 or m.stride(0) == 0  # one matrix for all N (a sample, or a sample's rows)
        outs = out.view(residual.shape)
        for n in [slice(None)] if shared else range(v.shape[0]):
            y = linear(v[n].reshape(-1, v.shape[-1]), m[0 if shared else n].t(), bias)
            torch.add(residual[n], y.view(residual[n].shape), out=outs[n])
        return
    if torch.is_autocast_enabled(v.device.type):
        y = torch.bmm(v, m)
        if bias is not None:
            y = y + bias  # autocast dtype + float32 bias: float32 (not rounded), as on the whole-map path
        torch.add(residual, y.view(residual.shape), out=out.view(residual.shape))
        return
    y = torch.baddbmm(residual, v, m)
    out.copy_((y if bias is None else y.add_(bias)).view(out.shape))
