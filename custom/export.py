"""Export TAT for serving: TorchScript by tracing (``monai.bundle ckpt_export``) and ONNX, with the limits found.

Findings (torch 2.13, see the Export section of ``bundle/docs/README.md``):

* ``torch.jit.script`` fails: the dims-generic code is not TorchScript (first error: the star-unpacked list
  ``[0, *dims[2:], 1]`` in ``custom/networks/blocks/layer_norm.py``; window and padding code is Python on sizes).
* ``torch.jit.trace`` is exact at the traced input shape only: padding to a multiple of 8, the local-window
  grid and the per-sample dynamic convolution (batch folded into ``groups``) are frozen, so another height,
  width **or batch size** raises or gives wrong values. Export one TorchScript file per serving shape
  (batch 1, the scanner's slice size), e.g. ``ckpt_export ... --use_trace True --input_shape "[1, 1, 512, 512]"``.
* ONNX (``torch.onnx.export(dynamo=False)``; the dynamo exporter needs ``onnxscript``) has the same fixed shape
  and two more limits: the exporter writes ``Transpose`` nodes with negative ``perm`` entries that onnxruntime
  rejects (:func:`fix_negative_transpose_perms` repairs them), and the local-window merge (``index_add_`` with
  repeated indices) cannot be exported, so ONNX works only where attention is global: slices up to
  ``1.5 * train_patch_size`` per side (192 for the published model). Sizes that need padding (not multiples
  of 8) fail too ("convolution for kernel of unknown shape": the padded shape reaches the generated kernels
  as unknown): export at a multiple of 8 and pad/crop outside the model.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence

import torch

__all__ = ["trace_network", "fix_negative_transpose_perms", "export_onnx"]


def trace_network(network: torch.nn.Module, input_shape: Sequence[int]) -> torch.jit.ScriptModule:
    """Trace ``network`` (eval mode) at one input shape; the result is exact at that shape only.

    Args:
        network: the network.
        input_shape: ``(1, C, H, W)``: the serving shape.

    Returns:
        the traced module.
    """
    network = network.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(network, torch.rand(*input_shape))


def fix_negative_transpose_perms(model: object) -> int:
    """Rewrite negative ``perm`` entries of ONNX ``Transpose`` nodes (``p -> p % rank``) in place.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        the number of nodes changed.
    """
    changed = 0
    for node in model.graph.node:  # type: ignore[attr-defined]
        if node.op_type != "Transpose":
            continue
        for attr in node.attribute:
            if attr.name == "perm" and any(p < 0 for p in attr.ints):
                rank = len(attr.ints)
                fixed = [p % rank for p in attr.ints]
                del attr.ints[:]
                attr.ints.extend(fixed)
                changed += 1
    return changed


def export_onnx(network: torch.nn.Module, path: str | os.PathLike, input_shape: Sequence[int],
                opset_version: int = 17) -> str:
    """Export to ONNX at one input shape (inputs ``image``, output ``pred``), written atomically.

    Args:
        network: the network.
        path: destination ``.onnx`` file.
        input_shape: ``(1, C, H, W)``; H and W multiples of 8, at most ``1.5 * train_patch_size`` (module docstring).
        opset_version: ONNX opset.

    Returns:
        the path written.

    Raises:
        ValueError: the export failed (e.g. a size where local windows are active); the message says why.
    """
    import onnx

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(network.eval(), (torch.rand(*input_shape),), tmp, dynamo=False,
                                  input_names=["image"], output_names=["pred"], opset_version=opset_version)
            except Exception as e:  # exporter errors are of many types
                raise ValueError(f"{path}: ONNX export at {tuple(input_shape)} failed ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]}); ONNX needs H and W multiples of 8 and at most 1.5x "
                                 "train_patch_size: local windows and padding cannot be exported.") from e
        model = onnx.load(tmp)
        fix_negative_transpose_perms(model)
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
