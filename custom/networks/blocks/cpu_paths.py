"""When a forward may leave the plain ops for the no-graph CPU paths (row strips, oneDNN's fused convolution and
matrix product): one home for the conditions, which every block checks the same way."""

from __future__ import annotations

import torch

__all__ = ["graph_capture", "no_graph_on_cpu", "onednn_float32"]


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
