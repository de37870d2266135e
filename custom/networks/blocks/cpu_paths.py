"""When a forward may leave the plain ops for the no-graph CPU paths (row strips, oneDNN's fused convolution and
matrix product): one home for the conditions, which every block checks the same way, for the lookup of oneDNN's ops
and for reading the CPU's identity from ``/proc/cpuinfo``."""

from __future__ import annotations

import platform
from collections.abc import Callable

import torch

__all__ = ["cpu_field", "cpu_model", "graph_capture", "no_graph_on_cpu", "onednn_float32", "onednn_op"]


def onednn_op(name: str) -> Callable[..., torch.Tensor] | None:
    """oneDNN's op ``torch.ops.mkldnn.<name>``.

    The fused ops (``_convolution_pointwise``, ``_linear_pointwise``) are what PyTorch's own compiler (inductor) calls
    on the CPU; they are not part of the stable API, so their presence is checked and the plain ops are the fallback.

    Args:
        name: the op's name.

    Returns:
        The op, or ``None`` in a build without oneDNN or without that op.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return None


def cpu_field(name: str) -> str:
    """A field of the first CPU in ``/proc/cpuinfo``.

    Args:
        name: the field (``vendor_id``, ``model name``, ...; x86 names: ARM kernels use others).

    Returns:
        Its value, or ``""`` where there is no such file (off Linux) or field.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name, for benchmark reports.

    Returns:
        ``/proc/cpuinfo``'s ``model name`` (Linux, x86), else :func:`platform.processor`, else
        :func:`platform.machine` (``"AMD EPYC 9555"``, ``"arm"``, ``"x86_64"``).
    """
    return cpu_field("model name") or platform.processor() or platform.machine()


def graph_capture() -> bool:
    """Whether a graph is being captured: tracing, scripting, compiling or exporting (``torch.export``, ONNX). Such
    graphs must hold the plain ops, and data-dependent checks must not run."""
    return bool(
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def no_graph_on_cpu(x: torch.Tensor) -> bool:
    """Whether a forward of ``x`` may take the no-graph CPU paths.

    Args:
        x: the input of the forward.

    Returns:
        True when no gradients are kept (grad mode off, ``x`` not requiring them), ``x`` is on the CPU and no graph is
        being captured (:func:`graph_capture`).
    """
    if x.requires_grad or torch.is_grad_enabled() or x.device.type != "cpu":
        return False
    return not graph_capture()


def onednn_float32(x: torch.Tensor, *operands: torch.Tensor | None) -> bool:
    """Whether ``x`` and ``operands`` may go to one of oneDNN's float32 ops directly.

    Args:
        x: the map (or matrix) the op reads.
        operands: its weights and bias (``None`` entries are skipped).

    Returns:
        True for :func:`no_graph_on_cpu`, oneDNN enabled, CPU autocast off and every tensor float32.
    """
    if not no_graph_on_cpu(x) or not torch.backends.mkldnn.enabled or torch.is_autocast_enabled("cpu"):
        return False
    return all(t.dtype == torch.float32 for t in (x, *operands) if t is not None)
