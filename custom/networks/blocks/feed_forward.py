"""Gated-Dconv feed-forward network (GDFN, Restormer) with an optional task-adaptive depthwise conv."""

from __future__ import annotations

import torch
import torch.nn as nn
from custom.networks.blocks.cpu_paths import no_graph_on_cpu
from custom.networks.blocks.dynamic_conv import DepthwiseConv, _zero_padded
from custom.networks.blocks.pointwise import pointwise_conv, uses_onednn
from monai.networks.layers.factories import Conv

__all__ = ["GatedFeedForward", "ffn_hidden_channels", "map_itemsize"]


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

    @property
    def padded_hidden(self) -> int:
        """Hidden channels of each half as computed without a graph: ``hidden`` padded with zero channels to a
        multiple of 16 (faster GEMM and depthwise kernels; published widths are odd: 127, 255, ...)."""
        hidden = self.project_out.in_channels
        return hidden + (-hidden) % 16

    def forward(self, x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: ``(B, C, *spatial)``.
            kernel: generated depthwise kernel ``(B, 2 * hidden, 3, ..., 3)`` for a dynamic block, else ``None``.

        Returns:
            ``(B, C, *spatial)``.
        """
        hidden = self.project_out.in_channels
        pad = self.padded_hidden - hidden
        w_out = _zero_padded(self.project_out.weight.flatten(1), pad, 1)
        rows = _strip_rows(x, hidden + pad)
        weights = self._half_weights(hidden, pad)
        if rows is None:
            return pointwise_conv(self._gated(x, kernel, hidden, pad, weights), w_out, self.project_out.bias)
        # no graph and a large map: row strips (with the depthwise conv's halo rows) one sample at a time (a sample of
        # a channels-last batch is contiguous), so that no hidden-size map of the whole image is allocated (large
        # allocations are fresh pages from the OS each time: page faults cost about as much as the GEMMs at
        # 256 x 256); the values are those of the whole-map path up to float rounding
        halo = self.dwconv.kernel_size // 2
        size = x.shape[2]
        out = None
        for s in range(x.shape[0]):
            one = slice(s, s + 1)
            k = None if kernel is None else kernel[one]
            for r0 in range(0, size, rows):
                r1 = min(size, r0 + rows)
                a0, a1 = max(0, r0 - halo), min(size, r1 + halo)
                gated = self._gated(x[one, :, a0:a1], k, hidden, pad, weights)[:, :, r0 - a0 : r1 - a0]
                piece = pointwise_conv(gated, w_out, self.project_out.bias)
                if out is None:  # channels-last, in the dtype of the pieces (the autocast dtype under autocast)
                    out = piece.new_empty((x.shape[0], *x.shape[2:], piece.shape[1])).movedim(-1, 1)
                out[one, :, r0:r1] = piece
        return out

    def _gated(
        self,
        x: torch.Tensor,
        kernel: torch.Tensor | None,
        hidden: int,
        pad: int,
        weights: list[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    ) -> torch.Tensor:
        """``gelu(x1) * x2`` of ``x`` ``(B, C, *S)``: ``(B, hidden + pad, *S)``, the last ``pad`` channels 0.

        The two halves are separate tensors (1x1 conv rows and depthwise kernels split), each contiguous: the GELU
        runs with the first half's depthwise conv and the second half's result is multiplied into it (see
        :class:`~custom.networks.blocks.DepthwiseConv`). Each half is padded with zero channels to a multiple of 16
        (published widths are odd: 127, 255, ...); the padded channels are exactly 0 and meet zero columns of
        project_out. ``weights`` are those of :meth:`_half_weights` (computed here when ``None``).
        """
        # separate halves: a channel half of one channels-last tensor is strided, several times slower for the
        # elementwise steps on CPU; multiples of 16 channels: faster GEMM and depthwise kernels
        (w1, b1), (w2, b2) = self._half_weights(hidden, pad) if weights is None else weights
        x1 = self.dwconv(pointwise_conv(x, w1, b1), kernel, slice(0, hidden), pad, gelu=True)
        return self.dwconv(pointwise_conv(x, w2, b2), kernel, slice(hidden, 2 * hidden), pad, multiply=x1)

    def _half_weights(self, hidden: int, pad: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """project_in's ``(hidden + pad, C)`` matrix and bias of each half, zero-padded by ``pad`` rows."""
        w_in = self.project_in.weight.flatten(1)
        b_in = self.project_in.bias
        return [
            (_zero_padded(w_in[part], pad), None if b_in is None else _zero_padded(b_in[part], pad))
            for part in (slice(0, hidden), slice(hidden, 2 * hidden))
        ]

    def residual_in_strips_(
        self, y: torch.Tensor, norm: nn.Module, kernel: torch.Tensor | None, rows: int
    ) -> torch.Tensor:
        """``y + self(norm(y), kernel)`` written into ``y`` (no graph; 2D), in row strips of ``rows`` rows.

        Each strip's layer norm (its rows and the depthwise conv's halo) is computed before the previous strip's
        result is added into ``y``, so every strip sees the input values; the result is accumulated straight into
        ``y``'s rows (project_out as a GEMM adding into them) and no map of the whole image is allocated. Within a
        strip the hidden channels go in groups of :data:`GROUP_CHANNELS` (1x1 conv rows, depthwise kernels, GELU and
        product, then the group's columns of project_out added up): the depthwise conv is several times faster per
        value on a narrow map (its three input rows stay in L2). Equal to ``y + self(norm(y), kernel)`` up to float
        rounding.

        Args:
            y: ``(B, C, H, W)``, channels-last in memory; overwritten with the result.
            norm: the block's layer norm before the feed-forward.
            kernel: generated depthwise kernel ``(B, 2 * hidden, 3, 3)`` for a dynamic block, else ``None``.
            rows: rows per strip (at least 1; strips thinner than the depthwise conv's halo are widened to it, since
                a later strip's halo would reach rows already written).

        Returns:
            ``y``.
        """
        hidden = self.project_out.in_channels
        pad = self.padded_hidden - hidden
        w_in = self.project_in.weight.flatten(1)
        b_in = self.project_in.bias
        w_out = self.project_out.weight.flatten(1)
        groups = []  # per group of hidden channels: the two halves' (channels, project_in rows, bias), project_out
        for g0 in range(0, hidden, GROUP_CHANNELS):
            g1 = min(hidden, g0 + GROUP_CHANNELS)
            gpad = pad if g1 == hidden else 0
            halves = []
            for part in (slice(g0, g1), slice(hidden + g0, hidden + g1)):
                b = None if b_in is None else _zero_padded(b_in[part], gpad)
                halves.append((part, _zero_padded(w_in[part], gpad), b))
            groups.append((halves, gpad, _zero_padded(w_out[:, g0:g1], gpad, 1)))
        halo = self.dwconv.kernel_size // 2
        # the next strip's layer norm is read before this strip is written, the one after only once it is: its halo
        # must not reach this strip's rows
        rows = max(rows, halo)
        size = y.shape[2]
        starts = list(range(0, size, rows))

        def normed_strip(r0: int) -> tuple[torch.Tensor, int]:
            a0 = max(0, r0 - halo)
            return norm(y[:, :, a0 : min(size, r0 + rows + halo)]), a0

        following = normed_strip(0)
        for i, r0 in enumerate(starts):
            r1 = min(size, r0 + rows)
            normed, a0 = following
            # the next strip's halo holds this strip's last rows: read them before they are written
            following = normed_strip(starts[i + 1]) if i + 1 < len(starts) else following
            target = y[:, :, r0:r1]
            for halves, gpad, w in groups:
                gated = None
                for part, w_half, b_half in halves:
                    pre = pointwise_conv(normed, w_half, b_half)
                    gated = self.dwconv(pre, kernel, part, gpad, gelu=gated is None, multiply=gated)
                _add_pointwise(target, gated[:, :, r0 - a0 : r1 - a0], w)
            if self.project_out.bias is not None:
                target.add_(self.project_out.bias.reshape(1, -1, 1, 1))
        return y


def _add_pointwise(acc: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``acc += pointwise_conv(x, weight)`` (``acc`` may be a view: the values are written into it).

    Args:
        acc: ``(B, C_out, *S)``.
        x: ``(B, C_in, *S)``.
        weight: ``(C_out, C_in)``.

    Returns:
        ``acc``.
    """
    flat_acc, flat_x = acc.movedim(1, -1), x.movedim(1, -1)
    # one GEMM accumulating into acc; under autocast x comes in the autocast dtype: its product (autocast) is added
    # into acc, which keeps its dtype
    same = flat_x.dtype == flat_acc.dtype == weight.dtype
    if same and uses_onednn(flat_x, weight, None):  # oneDNN's product, then added: faster than MKL's addmm_
        return acc.add_(pointwise_conv(x, weight))
    if same and flat_acc.is_contiguous() and flat_x.is_contiguous():
        flat_acc.view(-1, flat_acc.shape[-1]).addmm_(flat_x.reshape(-1, flat_x.shape[-1]), weight.t())
        return acc
    return acc.add_(pointwise_conv(x, weight))


GROUP_CHANNELS = 128
"""Hidden channels per group in the feed-forward's row strips (see :meth:`GatedFeedForward.residual_in_strips_`)."""

STRIP_BYTES = 4 * 2**20
"""Largest hidden map (bytes) the feed-forward allocates without a graph; larger maps go in row strips, sample by
sample: in a block's strips a map holds one half of one channel group, in the feed-forward's own strips all the hidden
channels of one half."""


def map_itemsize(x: torch.Tensor) -> int:
    """Bytes per value of the maps computed from ``x``: the autocast dtype's under autocast, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type).itemsize
    return x.element_size()


def _strip_rows(x: torch.Tensor, channels: int) -> int | None:
    """Rows per strip of one sample for a no-graph forward of ``x`` with ``channels`` hidden channels, ``None`` for
    the whole map (a graph, tracing or compiling, another device than the CPU, or one sample's map in one strip)."""
    if not no_graph_on_cpu(x) or x.dim() < 3 or x.shape[0] == 0:
        return None
    row_bytes = x[0, :1, :1].numel() * channels * map_itemsize(x)  # one row (slab in 3D) of one sample
    rows = max(4, STRIP_BYTES // max(row_bytes, 1))
    return None if rows >= x.shape[2] else rows
