"""Depthwise convolution whose kernel can be modulated per sample (the task-adaptive conv of TAT)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    """``(B, C, *S)`` -> ``(1, B*C, *S)``, channels-last in memory (``(*S, B, C)``): the batch folded into the groups."""
    d = x.dim() - 2
    folded = x.permute(*range(2, d + 2), 0, 1).reshape(*x.shape[2:], x.shape[0] * x.shape[1])  # (*S, B*C)
    return folded.permute(d, *range(d)).unsqueeze(0)


def _unfold(out: torch.Tensor, b: int) -> torch.Tensor:
    """The inverse of :func:`_fold`: ``(1, B*C, *S)`` -> ``(B, C, *S)``."""
    d = out.dim() - 2
    spatial = out.shape[2:]
    out = out[0].permute(*range(1, d + 1), 0).reshape(*spatial, b, out.shape[1] // b)  # (*S, B, C)
    return out.permute(d, d + 1, *range(d))


def _fused_pointwise_conv() -> Callable[..., torch.Tensor] | None:
    """oneDNN's convolution with post-ops (``torch.ops.mkldnn._convolution_pointwise``), or ``None`` without it.

    The op is what PyTorch's own compiler (inductor) calls to fuse a convolution with an elementwise epilogue on the
    CPU; it is not part of the stable API, so its presence is checked and the plain ops are the fallback.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


_FUSED = _fused_pointwise_conv()


class _Epilogue:
    """``gelu`` then ``* multiply`` after a convolution: fused into oneDNN's convolution where it can be, else the
    plain ops (with a graph, under autocast, while exporting, off the CPU, not float32, not 2D, or no oneDNN)."""

    def __init__(self, gelu: bool, multiply: torch.Tensor | None) -> None:
        self.gelu = gelu
        self.multiply = multiply

    def apply(self, out: torch.Tensor) -> torch.Tensor:
        """The epilogue on ``out``, a convolution output of its own (written in place when there is no graph)."""
        in_place = not (out.requires_grad or torch.is_grad_enabled())
        if self.gelu:
            out = torch.ops.aten.gelu_(out) if in_place else F.gelu(out)
        if self.multiply is None:
            return out
        same = in_place and self.multiply.shape == out.shape and self.multiply.dtype == out.dtype
        return out.mul_(self.multiply) if same else out * self.multiply

    def conv(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: int,
        groups: int,
        conv: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """``conv(x, weight, bias, padding=padding, groups=groups)`` followed by the epilogue."""
        if not (self.gelu or self.multiply is not None) or not self._fusable(x, weight):
            return self.apply(conv(x, weight, bias, padding=padding, groups=groups))
        pads, ones = [padding] * (x.dim() - 2), [1] * (x.dim() - 2)
        out = x
        if self.gelu:  # gelu with algorithm "none": the exact erf form, as F.gelu
            out = _FUSED(x, weight, bias, pads, ones, ones, groups, "gelu", [], "none")  # type: ignore[misc]
            if self.multiply is None:
                return out
            return out.mul_(self.multiply)
        fused = _FUSED.binary  # type: ignore[union-attr]
        return fused(x, self.multiply, weight, bias, pads, ones, ones, groups, "mul", None, None, [], None)

    def _fusable(self, x: torch.Tensor, weight: torch.Tensor) -> bool:
        if _FUSED is None or x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if torch.is_grad_enabled() or x.requires_grad or weight.requires_grad:
            return False
        if torch.is_autocast_enabled("cpu") or torch.jit.is_scripting() or torch.jit.is_tracing():
            return False
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            return False
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        if not x.is_contiguous(memory_format=layout):
            return False
        m = self.multiply  # oneDNN reads it in the output's layout: the input's, with the weight's channel count
        expected = (x.shape[0], weight.shape[0], *x.shape[2:])
        return m is None or (m.dtype == x.dtype and m.shape == expected and m.is_contiguous(memory_format=layout))


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
            gelu: return ``gelu(conv(x))`` (exact erf form).
            multiply: return ``conv(x) * multiply`` (same shape as the output; after ``gelu`` if both are given).

        Returns:
            ``(B, C, *spatial)``. Without a graph, in float32 on a CPU with oneDNN, ``gelu`` and ``multiply`` run
            inside the convolution (one pass over the map instead of three; equal up to float rounding).

        Raises:
            ValueError: a generated kernel given to a static conv, or of the wrong shape.
        """
        conv = _CONV[self.spatial_dims - 1]
        padding = self.kernel_size // 2
        part = slice(0, self.channels) if part is None else part
        weight = _zero_padded(self.weight[part], pad)
        channels = weight.shape[0]
        epilogue = _Epilogue(gelu, multiply)
        if generated is None:
            bias = None if self.bias is None else _zero_padded(self.bias[part], pad)
            return epilogue.conv(x, weight, bias, padding, channels, conv)
        if self.gate is None:
            raise ValueError("this depthwise conv is static: it takes no generated kernel.")
        b = x.shape[0]
        expected = (b, self.channels) + (self.kernel_size,) * self.spatial_dims
        if tuple(generated.shape) != expected:
            raise ValueError(f"generated kernel must have shape {expected}, got {tuple(generated.shape)}.")
        generated = _zero_padded(generated[:, part], pad, 1)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return epilogue.apply(self._shifted_taps(x, generated, part, pad))
        gate = _zero_padded(self.gate[part], pad).reshape((1, -1) + (1,) * (self.spatial_dims + 1))
        kernel = weight.unsqueeze(0) + gate * generated.unsqueeze(2)  # (B, C, 1, k, ..., k)
        kernel = kernel.reshape(b * channels, 1, *kernel.shape[3:])
        if b == 1:  # one sample: a plain depthwise conv with its kernel, in the input's layout
            return epilogue.conv(x, kernel, None, padding, channels, conv)
        # Fold the batch into the channels, (B, C, *S) -> (1, B*C, *S), keeping the channels-last layout
        # (much faster depthwise kernels on CPU): channels-last memory is (B, *S, C) -> (*S, B, C).
        if multiply is not None:
            epilogue = _Epilogue(gelu, _fold(multiply))
        out = epilogue.conv(_fold(x), kernel, None, padding, b * channels, conv)
        return _unfold(out, b)

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
