"""TAT: Task-Adaptive Transformer for all-in-one medical image restoration (assembly only)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from custom.networks.blocks import (
    ChannelAttention,
    Downsample,
    TaskKernels,
    TaskRepresentationNetwork,
    TransformerBlock,
    Upsample,
    ffn_hidden_channels,
)
from custom.networks.blocks.attention import check_window_mode
from custom.networks.blocks.cpu_paths import graph_capture, no_graph_on_cpu
from custom.networks.blocks.pointwise import pointwise_conv
from monai.networks.layers.factories import Conv
from torch.utils.checkpoint import checkpoint

__all__ = ["TAT"]


def _counts(name: str, values: Sequence[object], least: int) -> tuple[int, ...]:
    """``values`` as ints (numpy integers too), each at least ``least``.

    Raises:
        ValueError: a value that is not an integer (``1.5``, ``"2"``, ``None``) or is below ``least``, naming ``name``.
    """
    try:
        counts = tuple(operator.index(v) for v in values)
    except TypeError:
        raise ValueError(f"{name} must be integers, got {tuple(values)}.") from None
    if min(counts) < least:
        raise ValueError(f"{name} must each be at least {least}, got {counts}.")
    return counts


class TAT(nn.Module):
    """Task-Adaptive Transformer (TAT) for blind all-in-one medical image restoration.

    One network restores low-dose PET, low-dose CT and low-resolution MRI without a task label: a task
    representation network reads the bottleneck features and generates, per sample, the depthwise
    kernels of every decoder level (``K_b = W + gate * G_b``, gates start at 0). The backbone is a
    Restormer U-shape with a global residual (``output = net(x) + x``).

    Z. Yang et al., "TAT: Task-Adaptive Transformer for All-in-One Medical Image Restoration",
    MICCAI 2025. Backbone: S. W. Zamir et al., "Restormer", CVPR 2022, arXiv:2111.09881.

    Any spatial size is accepted: sizes not divisible by 8 are padded (reflect, at the bottom/right;
    replicate where the image is smaller than the padding) and the output is cropped back. When a
    feature map is larger than 1.5x its training size, attention runs in overlapping local windows
    (see :class:`~custom.networks.blocks.ChannelAttention`); each sample of a batch gets the same output
    as when run alone.

    Args:
        spatial_dims: number of spatial dimensions; only 2 (as published) is supported.
        in_channels: input channels.
        out_channels: output channels; the global residual is added when equal to ``in_channels``.
        dim: channels of level 1; levels 2-4 have ``2 * dim``, ``4 * dim``, ``8 * dim``.
        num_blocks: transformer blocks at levels 1-4 (encoder 1-3, latent 4; decoders mirror 1-3), each at least 1.
        num_refinement_blocks: refinement blocks after decoder level 1 (0 or more).
        heads: attention heads at levels 1-4 (each at least 1).
        ffn_expansion_factor: hidden width factor of the gated feed-forward.
        bias: bias in the convs of the transformer blocks.
        layer_norm_type: ``"WithBias"`` (published) or ``"BiasFree"``.
        train_patch_size: training patch size; a block's training size is ``train_patch_size // heads``
            of its level (the published rule, equal to the level's size for heads (1, 2, 4, 8)), its
            window 1.5x that. ``None`` disables local windows (global attention at every size).
        task_adaptive: generate task kernels for the decoder (published). ``False`` is the ablation with
            static decoder depthwise convs and no generator.
        use_checkpoint: gradient checkpointing of every transformer block while gradients are enabled
            (less memory, about a third more compute in training).
        tren_hidden_channels: width of the task representation network's conv trunk.
        tren_embed_dim: width of the task embedding.
        window_mode: how attention treats maps larger than its window: ``"published"`` (the published
            equal-weight mean of overlapping windows, exact reproduction), ``"global"`` (no windows) or
            ``"blended"`` (windows mixed with smooth weights, no jump at window edges). Changeable later with
            :meth:`set_window_mode`; training at the training size is the same in every mode.
        transpose_hw: swap H and W at the input and back at the output, so that the layers see a slice in the
            (row, column) order of the SimpleITK arrays the published code trains and tests on, while MONAI's
            readers (and so this bundle's) give (column, row). The network is not transpose-equivariant, so a
            checkpoint converted from the published code needs it; the bundle's configs set it, the class
            default (and the golden tests, which feed the published code's own arrays) leave it off.

    Raises:
        ValueError: unsupported ``spatial_dims``, wrong number of levels, block or head counts that are not
            integers, a level without blocks or heads, a negative ``num_refinement_blocks``, non-divisible widths,
            unknown ``window_mode``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layer_norm_type: str = "WithBias",
        train_patch_size: int | None = 128,
        task_adaptive: bool = True,
        use_checkpoint: bool = False,
        tren_hidden_channels: int = 64,
        tren_embed_dim: int = 256,
        window_mode: str = "published",
        transpose_hw: bool = False,
    ) -> None:
        super().__init__()
        check_window_mode(window_mode)
        self.transpose_hw = bool(transpose_hw)
        if spatial_dims != 2:
            raise ValueError(f"TAT is 2D as published: spatial_dims must be 2, got {spatial_dims}.")
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 levels, got {tuple(num_blocks)} and {tuple(heads)}.")
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be even and >= 2, got {dim}.")
        num_blocks = _counts("num_blocks", num_blocks, 1)
        heads = _counts("heads", heads, 1)
        (num_refinement_blocks,) = _counts("num_refinement_blocks", [num_refinement_blocks], 0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_checkpoint = use_checkpoint
        widths = [dim * 2**i for i in range(4)]  # levels 1-4
        dec_widths = {"latent": widths[3], "level3": widths[2], "level2": widths[1], "level1": widths[1]}
        dec_heads = {"latent": heads[3], "level3": heads[2], "level2": heads[1], "level1": heads[0]}

        def train_size(level_heads: int) -> int | None:
            return None if train_patch_size is None else max(train_patch_size // level_heads, 1)

        def blocks(n: int, width: int, n_heads: int, dynamic: bool) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(
                    width,
                    n_heads,
                    ffn_expansion_factor,
                    bias,
                    layer_norm_type,
                    spatial_dims,
                    dynamic=dynamic,
                    train_size=train_size(n_heads),
                    window_mode=window_mode,
                )
                for _ in range(n)
            )

        conv = Conv[Conv.CONV, spatial_dims]
        self.patch_embed = conv(in_channels, dim, kernel_size=3, padding=1, bias=bias)
        self.encoder_level1 = blocks(num_blocks[0], widths[0], heads[0], False)
        self.down1_2 = Downsample(widths[0], spatial_dims)
        self.encoder_level2 = blocks(num_blocks[1], widths[1], heads[1], False)
        self.down2_3 = Downsample(widths[1], spatial_dims)
        self.encoder_level3 = blocks(num_blocks[2], widths[2], heads[2], False)
        self.down3_4 = Downsample(widths[2], spatial_dims)

        self.task_kernels: TaskRepresentationNetwork | None = None
        if task_adaptive:
            kernel_channels = {
                level: (3 * w, 2 * ffn_hidden_channels(w, ffn_expansion_factor)) for level, w in dec_widths.items()
            }
            self.task_kernels = TaskRepresentationNetwork(
                widths[3], kernel_channels, spatial_dims, 4, tren_hidden_channels, tren_embed_dim
            )
        self.latent = blocks(num_blocks[3], widths[3], dec_heads["latent"], task_adaptive)
        self.up4_3 = Upsample(widths[3], spatial_dims)
        self.reduce_chan_level3 = conv(widths[3], widths[2], kernel_size=1, bias=bias)
        self.decoder_level3 = blocks(num_blocks[2], widths[2], dec_heads["level3"], task_adaptive)
        self.up3_2 = Upsample(widths[2], spatial_dims)
        self.reduce_chan_level2 = conv(widths[2], widths[1], kernel_size=1, bias=bias)
        self.decoder_level2 = blocks(num_blocks[1], widths[1], dec_heads["level2"], task_adaptive)
        self.up2_1 = Upsample(widths[1], spatial_dims)
        self.decoder_level1 = blocks(num_blocks[0], widths[1], dec_heads["level1"], task_adaptive)
        self.refinement = blocks(num_refinement_blocks, widths[1], dec_heads["level1"], task_adaptive)
        self.reduce_final = nn.Sequential(
            conv(widths[0] + 2 * widths[1], dim, kernel_size=3, padding=1, bias=bias),
            nn.GELU(),
            conv(dim, dim, kernel_size=1, bias=bias),
        )
        self.output = conv(dim, out_channels, kernel_size=3, padding=1, bias=bias)
        self.size_multiple = 2**3

    @property
    def window_mode(self) -> str:
        """The attention window mode of the blocks (see ``window_mode`` of the constructor)."""
        modes = {m.window_mode for m in self.modules() if isinstance(m, ChannelAttention)}
        return modes.pop() if len(modes) == 1 else "mixed"

    def set_window_mode(self, mode: str) -> TAT:
        """Set the attention window mode of every block (weights unchanged); not to be called inside ``forward``.

        Args:
            mode: ``"published"``, ``"global"`` or ``"blended"``.

        Returns:
            ``self``.

        Raises:
            ValueError: unknown ``mode``, listing the valid ones.
        """
        check_window_mode(mode)
        for m in self.modules():
            if isinstance(m, ChannelAttention):
                m.window_mode = mode
        return self

    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor, kernels: TaskKernels | None) -> torch.Tensor:
        for blk in blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(blk, x, kernels, use_reentrant=False)
            else:
                x = blk(x, kernels)
        return x

    def check_input(self, x: torch.Tensor) -> None:
        """Validate a batch before the forward pass.

        Raises:
            ValueError: not ``(B, in_channels, H, W)``, empty, or with NaN/Inf values.
        """
        if x.dim() != 4:
            raise ValueError(f"TAT expects a 4D batch (B, C, H, W), got shape {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"TAT expects {self.in_channels} input channel(s), got {x.shape[1]} ({tuple(x.shape)}).")
        if x.numel() == 0:
            raise ValueError(f"TAT got an empty batch of shape {tuple(x.shape)}.")
        if not torch.isfinite(x).all():
            raise ValueError("TAT input holds NaN or Inf values; clean or mask the image first.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore a batch.

        Args:
            x: ``(B, in_channels, H, W)`` degraded images, intensities mapped to [0, 1].

        Returns:
            ``(B, out_channels, H, W)`` restored images.

        Raises:
            ValueError: see :meth:`check_input`.
        """
        if not graph_capture():
            self.check_input(x)
        if self.transpose_hw:
            return self._restore(x.transpose(-1, -2)).transpose(-1, -2).contiguous()
        return self._restore(x)

    def task_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The task representation network's embedding of each image (what the paper shows clustering by task),
        computed by the encoder and the task representation network only (no decoder, no hooks). With gradients
        enabled, they reach the task representation network only, as in :meth:`forward`.

        Args:
            x: ``(B, in_channels, H, W)`` degraded images, intensities mapped to [0, 1].

        Returns:
            ``(B, tren_embed_dim)``.

        Raises:
            ValueError: the network has no task representation network (``task_adaptive=False``), or see
                :meth:`check_input`.
        """
        if self.task_kernels is None:
            raise ValueError("the network has no task representation network (task_adaptive=False): no task embedding.")
        self.check_input(x)
        if self.transpose_hw:
            x = x.transpose(-1, -2)
        # the task representation network's input is detached (as in forward): no encoder graph to keep
        with torch.no_grad():
            latent = self._encode(self._pad(x))[-1]
        return self.task_kernels.embed(latent)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad ``(B, C, H, W)`` at the bottom / right to multiples of :attr:`size_multiple` (reflect, or replicate
        where the padding is not smaller than the side)."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return x

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder levels 1-3 and the bottleneck (``enc1``, ``enc2``, ``enc3``, ``latent``) of a padded batch."""
        # channels-last activations: the depthwise and 1x1 convs are several times faster on CPU, and the
        # layer norms and attention read the channels-last view without copies. The layout is set on the
        # embedded features: a 1-channel input is already "channels-last", and the convs would keep the
        # default layout from there. Every later block preserves it.
        enc1 = self.patch_embed(x).contiguous(memory_format=torch.channels_last)
        enc1 = self._blocks(self.encoder_level1, enc1, None)
        enc2 = self._blocks(self.encoder_level2, self.down1_2(enc1), None)
        enc3 = self._blocks(self.encoder_level3, self.down2_3(enc2), None)
        return enc1, enc2, enc3, self.down3_4(enc3)

    def _reduce_final(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``reduce_final(cat(maps, 1))``. Without a graph on the CPU, the first conv runs on each map with its block
        of input channels and the results are added up, so the concatenation (240 channels at full size, published)
        is never allocated, and the GELU and the 1x1 conv run as functions (the layers' forward hooks do not fire on
        this path); with a graph (training), under autocast or while exporting it is the plain module.

        Args:
            maps: ``(B, C_i, H, W)`` maps whose channels add up to ``reduce_final``'s input channels.

        Returns:
            ``(B, dim, H, W)``.
        """
        if not all(map(no_graph_on_cpu, maps)) or torch.is_autocast_enabled(maps[0].device.type):
            return self.reduce_final(torch.cat(list(maps), 1))
        first, last = self.reduce_final[0], self.reduce_final[2]
        out = None
        start = 0
        for m in maps:
            stop = start + m.shape[1]
            bias = first.bias if out is None else None
            # a contiguous block of the weight: oneDNN's convolution is about a third slower on a strided one
            part = first._conv_forward(m, first.weight[:, start:stop].contiguous(), bias)
            out = part if out is None else out.add_(part)
            start = stop
        # the final 1x1 conv as one GEMM (oneDNN's 1x1 path ran at a fifth of the GEMM's speed at 256 x 256)
        return pointwise_conv(torch.ops.aten.gelu_(out), last.weight, last.bias)

    def _restore(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` on a checked ``(B, in_channels, H, W)`` batch in the layers' own (H, W) order."""
        h, w = x.shape[-2:]
        x = self._pad(x)
        enc1, enc2, enc3, latent = self._encode(x)
        kernels: dict[str, TaskKernels] = {} if self.task_kernels is None else self.task_kernels(latent)
        latent = self._blocks(self.latent, latent, kernels.get("latent"))

        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self._blocks(self.decoder_level3, dec3, kernels.get("level3"))
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self._blocks(self.decoder_level2, dec2, kernels.get("level2"))
        dec1 = torch.cat([self.up2_1(dec2), enc1], 1)
        dec1 = self._blocks(self.decoder_level1, dec1, kernels.get("level1"))
        refined = self._blocks(self.refinement, dec1, kernels.get("level1"))

        out = self.output(self._reduce_final((enc1, dec1, refined)))
        if self.out_channels == self.in_channels:
            out = out + x
        return out[..., :h, :w]
