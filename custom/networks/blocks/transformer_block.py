"""Restormer transformer block: pre-norm channel attention and gated feed-forward, each with a residual."""

from __future__ import annotations

import torch
import torch.nn as nn
from custom.networks.blocks import feed_forward
from custom.networks.blocks.attention import ChannelAttention
from custom.networks.blocks.cpu_paths import no_graph_on_cpu
from custom.networks.blocks.feed_forward import GatedFeedForward
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from custom.networks.blocks.task_kernels import TaskKernels

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """``x + Attn(LN(x))`` then ``x + FFN(LN(x))``; encoder (static) or decoder (task-adaptive) variant.

    Args:
        dim: channels C.
        num_heads: attention heads.
        ffn_expansion_factor: GDFN hidden width factor.
        bias: bias in the convs.
        layer_norm_type: ``"WithBias"`` or ``"BiasFree"``.
        spatial_dims: number of spatial dimensions.
        dynamic: the depthwise convs take generated kernels (decoder block).
        train_size: training spatial size of this block's input for local windows, ``None`` for none.
        window_mode: attention window mode (see :data:`~custom.networks.blocks.attention.WINDOW_MODES`).

    Raises:
        ValueError: unknown ``layer_norm_type``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layer_norm_type: str = "WithBias",
        spatial_dims: int = 2,
        dynamic: bool = False,
        train_size: int | None = None,
        window_mode: str = "published",
    ) -> None:
        super().__init__()
        if layer_norm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"layer_norm_type must be 'WithBias' or 'BiasFree', got {layer_norm_type!r}.")
        with_bias = layer_norm_type == "WithBias"
        self.norm1 = ChannelLayerNorm(dim, bias=with_bias)
        self.attn = ChannelAttention(dim, num_heads, bias, spatial_dims, dynamic, train_size, window_mode)
        self.norm2 = ChannelLayerNorm(dim, bias=with_bias)
        self.ffn = GatedFeedForward(dim, ffn_expansion_factor, bias, spatial_dims, dynamic)

    def forward(self, x: torch.Tensor, kernels: TaskKernels | None = None) -> torch.Tensor:
        """Args:
            x: ``(B, C, *spatial)``.
            kernels: this level's generated kernels (decoder blocks), ``None`` for static convs.

        Returns:
            ``(B, C, *spatial)``.
        """
        attn_kernel = None if kernels is None else kernels.attn
        ffn_kernel = None if kernels is None else kernels.ffn
        rows = self._strip_rows(x)
        if rows is None and not (x.shape[0] > 1 and self._large(x)):
            return self._whole_map(x, attn_kernel, ffn_kernel)
        # no graph on the CPU and a large map: one sample at a time (a sample of a channels-last batch is contiguous:
        # its strips and 1x1 convs are plain GEMMs, and its task-adaptive convs need no batch folded into the groups;
        # strips sized for one sample keep their halo rows few), each sample's result as alone; in row strips where
        # they apply, the output the only map of the image allocated. Small maps go as a batch (per-sample Python
        # overhead would cost more than the batch's copies).
        b, c, h, w = x.shape
        out = torch.empty((b, h, w, c), dtype=x.dtype, device=x.device)  # channels-last (B, C, H, W)
        for s in range(b):
            one = slice(s, s + 1)
            attn_k = None if attn_kernel is None else attn_kernel[one]
            ffn_k = None if ffn_kernel is None else ffn_kernel[one]
            if rows is None:
                out[one] = self._whole_map(x[one], attn_k, ffn_k).movedim(1, -1)
                continue
            y = self.attn.residual_in_strips(x[one], self.norm1, attn_k, rows[0], out[one])
            self.ffn.residual_in_strips_(y, self.norm2, ffn_k, rows[1])
        return out.movedim(-1, 1)

    def _whole_map(
        self, x: torch.Tensor, attn_kernel: torch.Tensor | None, ffn_kernel: torch.Tensor | None
    ) -> torch.Tensor:
        """The block on the whole ``(B, C, *spatial)`` map at once (the definition; the path with a graph)."""
        x = _residual(x, self.attn(self.norm1(x), attn_kernel))
        return _residual(x, self.ffn(self.norm2(x), ffn_kernel))

    def _large(self, x: torch.Tensor) -> bool:
        """Whether one sample's hidden map of the feed-forward is at least
        :data:`~custom.networks.blocks.feed_forward.STRIP_BYTES` (no graph, CPU)."""
        if not _no_graph_cpu_2d(x):
            return False
        return (
            x.shape[2] * x.shape[3] * self.ffn.padded_hidden * feed_forward.map_itemsize(x) >= feed_forward.STRIP_BYTES
        )

    def _strip_rows(self, x: torch.Tensor) -> tuple[int, int] | None:
        """Rows per strip of the attention and the feed-forward for a no-graph forward of ``x``; ``None`` for the
        whole-map path (a graph, tracing or compiling, not 2D, blended windows, or a map of at most one strip).
        Under autocast too the strips add the residual in ``x``'s dtype."""
        if not _no_graph_cpu_2d(x):
            return None
        if self.attn.window_mode == "blended" and self.attn.local_window(x.shape[2:]) is not None:
            return None
        # bytes per channel of one row of one sample (strips go sample by sample) in the dtype of the branches' maps
        row = x.shape[-1] * feed_forward.map_itemsize(x)
        # the attention's strips hold q, k and v as three maps of C channels each
        attn_rows = max(4, feed_forward.STRIP_BYTES // max(row * self.attn.project_out.in_channels, 1))
        # the feed-forward's strips hold a group of hidden channels at a time
        group = min(self.ffn.padded_hidden, feed_forward.GROUP_CHANNELS)
        ffn_rows = max(4, feed_forward.STRIP_BYTES // max(row * group, 1))
        if min(attn_rows, ffn_rows) >= x.shape[2]:
            return None
        return attn_rows, ffn_rows


def _no_graph_cpu_2d(x: torch.Tensor) -> bool:
    """Whether a forward of ``x`` may take the no-graph CPU paths of the block: a 2D map and :func:`no_graph_on_cpu`."""
    return x.dim() == 4 and no_graph_on_cpu(x)


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``x + branch``; without a graph to keep, added into ``branch`` (a fresh tensor here), so nothing is allocated.

    In place only where that gives the same tensor: same shape, and ``branch`` already of the result's dtype (under
    bf16 autocast the branch is bf16 and the sum float32).
    """
    if x.requires_grad or branch.requires_grad or x.shape != branch.shape or branch.dtype != x.dtype:
        return x + branch
    return branch.add_(x)
