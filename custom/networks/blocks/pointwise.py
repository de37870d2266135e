"""1x1 convolutions as one matrix product over the channel-last view of a feature map, and that product."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from custom.networks.blocks.cpu_paths import cpu_field, onednn_float32, onednn_op

__all__ = ["PREFER_ONEDNN", "linear", "pointwise_conv", "prefers_onednn", "uses_onednn"]


_LINEAR = onednn_op("_linear_pointwise")
"""oneDNN's matrix product ``x W^T + b``, or ``None`` without it (see
:func:`~custom.networks.blocks.cpu_paths.onednn_op`)."""


def prefers_onednn(vendor: str | None = None) -> bool:
    """Whether the no-graph float32 products should go to oneDNN rather than ``F.linear`` (MKL's GEMM): where MKL
    is torch's BLAS and the CPU is known not to be Intel's, MKL runs its generic code (on an AMD EPYC, Zen 5:
    60-115 GFLOP/s per core at the network's shapes where oneDNN got 175-255; the whole network 1.4-1.5x faster with
    oneDNN). On Intel CPUs MKL's GEMM ran near the core's peak, and an unknown vendor keeps ``F.linear``.

    Args:
        vendor: the CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...; default: ``/proc/cpuinfo``'s).

    Returns:
        True where oneDNN's product should be used.
    """
    vendor = cpu_field("vendor_id") if vendor is None else vendor
    return _LINEAR is not None and torch.backends.mkl.is_available() and vendor not in ("GenuineIntel", "")


PREFER_ONEDNN = prefers_onednn()
""":func:`prefers_onednn` for this machine. Set ``custom.networks.blocks.pointwise.PREFER_ONEDNN`` (the module's
attribute: an imported copy of the name changes nothing) to force either choice, as the tests do."""


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether products of these operands go to oneDNN (:func:`linear` also needs a bias of shape ``(C_out,)``).

    Args:
        x: the map or matrix multiplied.
        weight: the matrix or matrices it is multiplied with.
        bias: the bias, or ``None``.

    Returns:
        True for :data:`PREFER_ONEDNN`, the op present and float32 operands under
        :func:`~custom.networks.blocks.cpu_paths.onednn_float32` (no graph on the CPU, not while a graph is captured:
        it must hold the plain op).
    """
    return PREFER_ONEDNN and _LINEAR is not None and onednn_float32(x, weight, bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, as oneDNN's product where :func:`uses_onednn` (see :data:`PREFER_ONEDNN`).

    The values equal ``F.linear``'s up to float rounding (bit-equal at most shapes).

    Args:
        x: ``(*, C_in)``.
        weight: ``(C_out, C_in)``.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(*, C_out)``.
    """
    # a bias other than (C_out,) (which F.linear broadcasts, oneDNN does not) keeps F.linear
    if uses_onednn(x, weight, bias) and (bias is None or bias.shape == weight.shape[:1]):
        # dense operands: on other strides oneDNN may take a reference kernel (a column block of a weight matrix took
        # 550 ms instead of 0.5 ms); the copies are cheap next to the product
        try:
            b = None if bias is None else bias.contiguous()  # oneDNN reads the bias as packed values
            return _LINEAR(x.contiguous(), weight.contiguous(), b, "none", [], "")  # type: ignore[misc]
        except RuntimeError as e:
            warnings.warn(f"oneDNN's matrix product failed ({e}); using F.linear.", stacklevel=2)
    return F.linear(x, weight, bias)


def pointwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, part: slice | None = None
) -> torch.Tensor:
    """A 1x1 convolution computed as :func:`linear` on ``x.movedim(1, -1)``.

    For a channels-last ``x`` the moved view is contiguous, so this is one GEMM with no layout copy and the
    result is channels-last again; on CPU it is faster than ``F.conv2d``'s 1x1 paths (oneDNN with several
    threads, im2col with one). Any other layout gives the same values (copied as needed).

    Args:
        x: ``(B, C_in, *spatial)``.
        weight: a 1x1 conv weight ``(C_out, C_in, 1, ..., 1)`` or the matrix ``(C_out, C_in)``.
        bias: ``(C_out,)`` or ``None``.
        part: compute only these output channels (``slice(start, stop)``), as if the conv had only their rows.

    Returns:
        ``(B, C_out, *spatial)`` (or ``(B, len(part), *spatial)``), channels-last in memory.
    """
    w = weight.flatten(1)
    if part is not None:
        w = w[part]
        bias = None if bias is None else bias[part]
    moved = x.movedim(1, -1)
    if moved.dim() > 2 and moved.is_contiguous():
        # one 2D GEMM: F.linear on a 4D+ input goes through a batched matmul (about half the speed on CPU)
        out = linear(moved.reshape(-1, moved.shape[-1]), w, bias)
        return out.reshape(*moved.shape[:-1], w.shape[0]).movedim(-1, 1)
    return linear(moved, w, bias).movedim(-1, 1)
