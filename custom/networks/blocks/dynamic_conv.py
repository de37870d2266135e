"""Depthwise convolution whose kernel can be modulated per sample (the task-adaptive conv of TAT)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from custom.networks.blocks.cpu_paths import onednn_float32, onednn_op

__all__ = ["DepthwiseConv"]

_CONV = (F.conv1d, F.conv2d, F.conv3d)


def _zero_padded(t: torch.Tensor, pad: int, dim: int = 0) -> torch.Tensor:
    """``t`` with ``pad`` zero entries appended along ``dim`` (``t`` itself for 0)."""
    if pad == 0:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t, t.new_zeros(shape)], dim)


def _fold(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(1, B*C, *S)``, channels-last in memory (``(*S, B, C)``): the batch in the groups."""
    d = x.dim() - 2
    folded = x.permute(*range(2, d + 2), 0, 1).reshape(*x.shape[2:], x.shape[0] * x.shape[1])  # (*S, B*C)
    return folded.permute(d, *range(d)).unsqueeze(0)


def _unfold(out: torch.Tensor, b: int) -> torch.Tensor:
    """The inverse of :func:`_fold`: ``(1, B*C, *S)`` -> ``(B, C, *S)``."""
    d = out.dim() - 2
    spatial = out.shape[2:]
    out = out[0].permute(*range(1, d + 1), 0).reshape(*spatial, b, out.shape[1] // b)  # (*S, B, C)
    return out.permute(d, d + 1, *range(d))


_FUSED = onednn_op("_convolution_pointwise")
"""oneDNN's convolution with a post-op, or ``None`` without it (see
:func:`~custom.networks.blocks.cpu_paths.onednn_op`)."""


def _gelu_fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``gelu(conv(x))`` may run as oneDNN's convolution with a GELU post-op: the op present, float32 2D maps
    and kernels in a dense layout under :func:`~custom.networks.blocks.cpu_paths.onednn_float32` (no graph on the
    CPU, not while a graph is captured: it must hold the plain ops)."""
    if _FUSED is None or x.dim() != 4 or not onednn_float32(x, weight):
        return False
    return x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()


def _conv(
    conv: Callable[..., torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    groups: int,
    gelu: bool,
) -> torch.Tensor:
    """``conv(x, weight, bias, padding=padding, groups=groups)``, then ``gelu`` (exact erf form) if asked.

    Without a graph on the CPU the GELU runs inside oneDNN's convolution (one pass over the map instead of two; the
    values equal ``F.gelu`` of the plain conv up to float rounding); if that op fails, the plain ops with a warning.

    Args:
        conv: ``F.conv1d`` / ``F.conv2d`` / ``F.conv3d``.
        x: ``(B, C_in, *S)``.
        weight: ``(C_out, C_in / groups, k, ..., k)``.
        bias: ``(C_out,)`` or ``None``.
        padding: zero padding on every side.
        groups: convolution groups.
        gelu: apply GELU to the result.

    Returns:
        ``(B, C_out, *S)`` in ``x``'s memory layout.
    """
    if gelu and _gelu_fusable(x, weight):
        pads, ones = [padding] * (x.dim() - 2), [1] * (x.dim() - 2)
        try:  # algorithm "none": the erf form, as F.gelu's default
            return _FUSED(x, weight, bias, pads, ones, ones, groups, "gelu", [], "none")  # type: ignore[misc]
        except (RuntimeError, TypeError) as e:
            warnings.warn(f"oneDNN's fused convolution + GELU failed ({e}); using the plain ops.", stacklevel=2)
    out = conv(x, weight, bias, padding=padding, groups=groups)
    if not gelu:
        return out
    return F.gelu(out) if out.requires_grad or torch.is_grad_enabled() else torch.ops.aten.gelu_(out)


def _multiplied(out: torch.Tensor, multiply: torch.Tensor | None) -> torch.Tensor:
    """``out * multiply`` (``out`` itself for ``None``), into ``out`` when there is no graph to keep.

    ``out`` is a convolution output of its own; ``multiply`` has its shape.
    """
    if multiply is None:
        return out
    if out.requires_grad or multiply.requires_grad or torch.is_grad_enabled() or multiply.dtype != out.dtype:
        return out * multiply
    return out.mul_(multiply)


class DepthwiseConv(nn.Module):
    """Depthwise convolution with an optional task-adaptive kernel.

    Static (``dynamic=False``): a plain depthwise conv, ``weight`` of shape ``(C, 1, k, ..., k)``.
    Dynamic (``dynamic=True``): the kernel of sample ``b`` is ``K_b = weight + gate * G_b`` where
    ``G_b`` is a generated kernel of shape ``(C, k, ..., k)`` and ``gate`` a learned per-channel scale that
    starts at 0, so training starts from the static conv. Each sample is convolved with its own kernel
    by folding the batch into the groups of one grouped convolution (CondConv).

    Args:
        channels: number of channels C (input = output, one kernel per channel).
        kernel_size: odd kernel size k; padding keeps the spatial size.
        spatial_dims: 1, 2 or 3.
        dynamic: accept a generated kernel in ``forward`` and learn ``gate``.
        bias: add a learned bias (static mode only; the published dynamic conv has none).
        init: init of the static kernel: ``"conv"`` (PyTorch's Conv default, the published encoder),
            ``"normal"`` (standard normal, the published decoder attention) or ``"kaiming"`` (Kaiming normal,
            fan_out, relu, computed on the published ``(1, C, 1, k, k)`` layout, i.e. std ``sqrt(2 / k**d)``: the
            published decoder feed-forward).

    Raises:
        ValueError: invalid ``kernel_size``, ``spatial_dims``, ``init``, or ``bias`` with ``dynamic``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        spatial_dims: int = 2,
        dynamic: bool = False,
        bias: bool = False,
        init: str = "conv",
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if init not in ("conv", "normal", "kaiming"):
            raise ValueError(f"init must be 'conv', 'normal' or 'kaiming', got {init!r}.")
        if dynamic and bias:
            raise ValueError("a dynamic depthwise conv has no bias (as published).")
        self.channels = channels
        self.kernel_size = kernel_size
        self.spatial_dims = spatial_dims
        self.dynamic = dynamic
        self.init = init
        self.weight = nn.Parameter(torch.empty(channels, 1, *(kernel_size,) * spatial_dims))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.gate = nn.Parameter(torch.empty(channels)) if dynamic else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as published: static kernel per ``init``, bias like ``nn.Conv``, gate at 0."""
        if self.init == "normal":
            nn.init.normal_(self.weight)
        elif self.init == "kaiming":
            # Kaiming normal (fan_out, relu) of the published (1, C, 1, k, ..., k) layout: fan_out = k**d.
            nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / self.kernel_size**self.spatial_dims))
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size**self.spatial_dims)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.gate is not None:
            nn.init.zeros_(self.gate)

    def forward(
        self,
        x: torch.Tensor,
        generated: torch.Tensor | None = None,
        part: slice | None = None,
        pad: int = 0,
        gelu: bool = False,
        multiply: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Convolve ``x`` of shape ``(B, C, *spatial)``, or of ``(B, len(part), *spatial)`` for a channel part.

        Args:
            x: input features ``(B, C, *spatial)`` (``C`` the channels of ``part`` when it is given).
            generated: per-sample kernels ``(B, channels, k, ..., k)`` for all ``channels`` of this conv, only for a
                dynamic conv; ``None`` uses the static kernel alone (equivalent to a zero gate).
            part: a contiguous range of this conv's channels (``slice(start, stop)``): ``x`` holds only those and
                only their kernels are applied, so a conv can run on channel groups kept in separate tensors
                (the gated feed-forward's two halves). ``None``: all channels.
            pad: ``x`` has this many extra channels after those of ``part``, convolved with zero kernels (their
                output is 0): the feed-forward pads its halves to a multiple of 16 channels, where the CPU
                kernels are faster.
            gelu: return ``gelu(conv(x))`` (exact erf form); without a graph on the CPU, fused into oneDNN's
                convolution.
            multiply: return ``conv(x) * multiply`` (after ``gelu`` when both are given), a tensor of the output's
                shape; multiplied in place without a graph.

        Returns:
            ``(B, C, *spatial)``.

        Raises:
            ValueError: a generated kernel given to a static conv, or of the wrong shape; ``multiply`` not of the
                output's shape.
        """
        conv = _CONV[self.spatial_dims - 1]
        padding = self.kernel_size // 2
        part = slice(0, self.channels) if part is None else part
        weight = _zero_padded(self.weight[part], pad)
        channels = weight.shape[0]
        b = x.shape[0]
        if multiply is not None and tuple(multiply.shape) != (b, channels, *x.shape[2:]):
            raise ValueError(
                f"multiply must have the output's shape {(b, channels, *x.shape[2:])}, got {tuple(multiply.shape)}."
            )
        if generated is None:
            bias = None if self.bias is None else _zero_padded(self.bias[part], pad)
            return _multiplied(_conv(conv, x, weight, bias, padding, channels, gelu), multiply)
        if self.gate is None:
            raise ValueError("this depthwise conv is static: it takes no generated kernel.")
        expected = (b, self.channels) + (self.kernel_size,) * self.spatial_dims
        if tuple(generated.shape) != expected:
            raise ValueError(f"generated kernel must have shape {expected}, got {tuple(generated.shape)}.")
        generated = _zero_padded(generated[:, part], pad, 1)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            out = self._shifted_taps(x, generated, part, pad)
            return _multiplied(F.gelu(out) if gelu else out, multiply)
        gate = _zero_padded(self.gate[part], pad).reshape((1, -1) + (1,) * (self.spatial_dims + 1))
        kernel = weight.unsqueeze(0) + gate * generated.unsqueeze(2)  # (B, C, 1, k, ..., k)
        kernel = kernel.reshape(b * channels, 1, *kernel.shape[3:])
        if b == 1:  # one sample: a plain depthwise conv with its kernel, in the input's layout
            return _multiplied(_conv(conv, x, kernel, None, padding, channels, gelu), multiply)
        # Fold the batch into the channels, (B, C, *S) -> (1, B*C, *S), keeping the channels-last layout
        # (much faster depthwise kernels on CPU): channels-last memory is (B, *S, C) -> (*S, B, C).
        out = _conv(conv, _fold(x), kernel, None, padding, b * channels, gelu)
        return _multiplied(_unfold(out, b), multiply)

    def _shifted_taps(
        self, x: torch.Tensor, generated: torch.Tensor, part: slice | None = None, pad: int = 0
    ) -> torch.Tensor:
        """The same per-sample convolution as a sum of ``k**d`` shifted, per-sample-weighted copies of ``x``.

        Slower than the grouped conv, but it never folds the batch size into a shape, so a traced or exported
        graph stays valid for any batch size (used only while tracing or exporting: ONNX, ``torch.export``).
        ``generated`` holds the kernels of the channels ``part`` (all of them for ``None``) and ``pad`` zero ones.
        """
        d = self.spatial_dims
        padding = self.kernel_size // 2
        part = slice(0, self.channels) if part is None else part
        gate = _zero_padded(self.gate[part], pad).reshape((1, -1) + (1,) * d)  # type: ignore[index]
        taps = _zero_padded(self.weight[part, 0], pad).unsqueeze(0) + gate * generated  # (B, C, k, ..., k)
        padded = F.pad(x, (padding, padding) * d)
        spatial = x.shape[2:]
        out = torch.zeros_like(x)
        for offset in itertools.product(range(self.kernel_size), repeat=d):
            window = padded[(slice(None), slice(None), *(slice(o, o + s) for o, s in zip(offset, spatial)))]
            out = out + window * taps[(slice(None), slice(None), *offset)].reshape(*taps.shape[:2], *(1,) * d)
        return out

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, dynamic={self.dynamic}, init={self.init!r}"
