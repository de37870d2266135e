"""Export TAT for serving: ``torch.export`` (ExportedProgram), ONNX and TorchScript (traced per serving size).

* :func:`export_program` / :func:`save_exported_program`: one ExportedProgram, the forward-looking format
  (TorchScript is deprecated since torch 2.11), with a dynamic batch and, where the attention is global
  (:func:`global_attention_limit`), a dynamic height and width; loads with ``torch.export.load`` without ``custom``.
* :func:`export_onnx`: ONNX at a fixed height and width (local windows included) with a dynamic batch axis; pads in
  a wrapper with constant indices and registers a ``movedim`` without negative ``Transpose`` perms, which the
  exporter's shape inference and onnxruntime cannot handle (:func:`fix_negative_transpose_perms` as a safety net).
* :func:`serving_module` / :class:`ServingNetwork` / :func:`save_torchscript`: one trace per serving size behind a
  scripted :class:`SizeDispatcher` that runs any batch one sample at a time and refuses other sizes (a trace freezes
  the padding and the window grid). ``torch.jit.script`` of the network itself is not supported.

While tracing or exporting, the dynamic depthwise conv runs as a sum of shifted taps, so no shape holds the batch
size. What each format does and does not do, with the measured agreement to eager: the Export section of
``bundle/docs/README.md`` (pinned by ``tests/inference/test_export.py`` and ``test_export_program.py``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Dict, List

import torch
import torch.nn as nn
from custom.io import atomic_output
from custom.networks.blocks.attention import ChannelAttention

__all__ = [
    "export_program",
    "save_exported_program",
    "global_attention_limit",
    "trace_network",
    "SizeDispatcher",
    "serving_module",
    "save_torchscript",
    "ServingNetwork",
    "fix_negative_transpose_perms",
    "export_onnx",
]

ATOL = 1e-4
MAX_EXPORT_SIZE = 8192
"""Largest height and width of a dynamic-size ExportedProgram when the attention is global at every size."""


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (B, C, H, W) with positive sizes, got {tuple(input_shape)}.")
    return shape


def global_attention_limit(network: nn.Module) -> int | None:
    """The largest input height / width (a multiple of 8) at which every attention block of ``network`` is global.

    Measured with forward pre-hooks on one 16 x 16 pass: a block with a window of ``w`` that sees a feature map
    ``s`` times smaller than the input switches to local windows above ``w * s``.

    Args:
        network: the network (``in_channels`` attribute, else 1 channel).

    Returns:
        the limit, or ``None`` when no block uses local windows (global attention at every size).
    """
    probe = 16
    limits: list[int] = []

    def hook(module: nn.Module, args: tuple) -> None:
        window = getattr(module, "window", None)
        if window is not None and getattr(module, "window_mode", "published") != "global":
            scale = probe // int(args[0].shape[-1])
            limits.append(int(window) * scale // 8 * 8)

    handles = [m.register_forward_pre_hook(hook) for m in network.modules() if isinstance(m, ChannelAttention)]
    device = next(iter(network.parameters()), torch.empty(0)).device
    c = int(getattr(network, "in_channels", 1))
    try:
        with torch.no_grad():
            network.eval()(torch.rand(1, c, probe, probe, device=device))
    finally:
        for h in handles:
            h.remove()
    return min(limits) if limits else None


def export_program(
    network: nn.Module,
    input_shape: Sequence[int],
    dynamic_batch: bool = True,
    dynamic_size: bool = True,
    max_batch: int = 1024,
    verify: bool = True,
) -> torch.export.ExportedProgram:
    """Export ``network`` (eval mode) with ``torch.export`` into one ExportedProgram.

    Args:
        network: the network.
        input_shape: ``(B, C, H, W)`` of the example input; H and W multiples of 8 (pad first, as the inference
            workflow does). With dynamic axes only the example's size, not a fixed serving size.
        dynamic_batch: batch sizes 1 to ``max_batch`` instead of ``B`` only.
        dynamic_size: heights and widths that are multiples of 8 from 16 up to :func:`global_attention_limit`
            (or :data:`MAX_EXPORT_SIZE`) instead of ``H x W`` only.
        max_batch: the largest batch of a dynamic batch axis.
        verify: run the program and the eager network on random inputs (at the example shape, and at another
            batch size and size where those are dynamic) and raise if they differ by more than 1e-4.

    Returns:
        the ExportedProgram (``program.module()(x)`` runs it; :func:`save_exported_program` writes it).

    Raises:
        ValueError: bad ``input_shape``; dynamic sizes asked at a size where the attention uses local windows;
            the export failed or differs from eager. The message says what to change.
    """
    b, c, h, w = _check_shape(input_shape)
    multiple = int(getattr(network, "size_multiple", 8))
    if h % multiple or w % multiple:
        raise ValueError(
            f"input_shape {tuple(input_shape)}: height and width must be multiples of {multiple} "
            "(pad the slice first, as the inference workflow does)."
        )
    network = network.eval()
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=max(int(max_batch), b))
    limit = None
    if dynamic_size:
        if min(h, w) < 2 * multiple:
            raise ValueError(
                f"dynamic sizes need an example of at least {2 * multiple} x {2 * multiple}, got {h} x {w}."
            )
        limit = global_attention_limit(network)
        if limit is not None and max(h, w) > limit:
            raise ValueError(
                f"at {h} x {w} the attention uses local windows (global up to {limit} x {limit}), which fix the "
                "size: export with dynamic_size=False for this size, or with window_mode='global' "
                "(network.set_window_mode('global')) for any size."
            )
        top = (limit or MAX_EXPORT_SIZE) // multiple
        dims[2] = multiple * torch.export.Dim("height_blocks", min=2, max=top)
        dims[3] = multiple * torch.export.Dim("width_blocks", min=2, max=top)
    device = next(iter(network.parameters()), torch.empty(0)).device
    # torch.export fixes an axis whose example size is 1: trace a dynamic batch with at least 2 samples
    example_b = max(b, 2) if dynamic_batch else b
    example = torch.rand(example_b, c, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            program = torch.export.export(network, (example,), dynamic_shapes=(dims,) if dims else None)
    except Exception as e:  # torch.export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise ValueError(
            f"torch.export at {(b, c, h, w)} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})."
        ) from e
    if verify:
        shapes = [(b, c, h, w)]
        if dynamic_batch:
            shapes.append((example_b + 1, c, h, w))
        if dynamic_size:
            h2 = h + multiple if limit is None or h + multiple <= limit else h - multiple
            shapes.append((1, c, max(h2, 2 * multiple), w))
        module = program.module()
        for seed, shape in enumerate(shapes, 1):
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)).to(device)
            with torch.no_grad():
                diff = float((module(x) - network(x)).abs().max())
            if not diff <= ATOL:
                raise ValueError(f"the ExportedProgram differs from eager by {diff:.3g} at {shape}.")
    return program


def save_exported_program(program: torch.export.ExportedProgram, path: str | os.PathLike) -> str:
    """``torch.export.save`` written atomically (nothing at ``path`` unless the whole file was written).

    Args:
        program: from :func:`export_program`.
        path: destination, conventionally ``.pt2``; ``torch.export.load(path).module()`` runs it without ``custom``.

    Returns:
        the path written.
    """
    with atomic_output(path) as tmp:
        torch.export.save(program, tmp)
    return os.fspath(path)


def trace_network(network: nn.Module, input_shape: Sequence[int], verify: bool = True) -> torch.jit.ScriptModule:
    """Trace ``network`` (eval mode) at one input shape; the result is exact at that shape only.

    Args:
        network: the network.
        input_shape: ``(B, C, H, W)``: the serving shape (batch size included).
        verify: run the traced and the eager network on a random input (not the traced one) and raise if they
            differ by more than 1e-4 (replaces ``torch.jit.trace``'s own check, which traces twice).

    Returns:
        the traced module.

    Raises:
        ValueError: bad ``input_shape``, or the traced model differs from eager.
    """
    shape = _check_shape(input_shape)
    network = network.eval()
    device = next(iter(network.parameters()), torch.empty(0)).device
    x, probe = (torch.rand(*shape, generator=torch.Generator().manual_seed(s)).to(device) for s in (0, 1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network, x, check_trace=False)
        if verify:  # on another input than the traced one
            diff = float((traced(probe) - network(probe)).abs().max())
            if not diff <= ATOL:
                raise ValueError(f"the model traced at {shape} differs from eager by {diff:.3g} at that shape.")
    return traced


class SizeDispatcher(nn.Module):
    """Scriptable front of several traced models, one per served ``(H, W)`` (each traced at batch 1).

    ``forward`` picks the traced model by the input's height and width and runs the batch one sample at a
    time, so any batch size gives the eager result; any other size raises, naming the served sizes.

    Args:
        models: ``"HxW"`` -> traced module.
        in_channels: input channels the models were traced with.
    """

    def __init__(self, models: Dict[str, nn.Module], in_channels: int) -> None:
        super().__init__()
        self.models = nn.ModuleDict(models)
        self.in_channels = int(in_channels)
        self.served = ", ".join(models)
        self.sizes: List[List[int]] = [[int(v) for v in k.split("x")] for k in models]

    @torch.jit.export
    def served_sizes(self) -> List[List[int]]:
        """The ``[H, W]`` sizes this module serves."""
        return self.sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] == 0 or x.shape[1] != self.in_channels:
            raise ValueError(
                "expects a non-empty (B, " + str(self.in_channels) + ", H, W) batch, got shape " + str(x.shape)
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the input holds NaN or Inf values; clean or mask the image first.")
        key = str(x.shape[2]) + "x" + str(x.shape[3])
        outs: List[torch.Tensor] = []
        for name, model in self.models.items():
            if name == key:
                for i in range(x.shape[0]):
                    outs.append(model(x[i : i + 1]))
        if len(outs) == 0:
            raise ValueError(
                "no model for H x W = "
                + key
                + ": this TorchScript file serves "
                + self.served
                + " only (export it again with that size in the serving sizes, or use the eager network)."
            )
        return torch.cat(outs, 0)


def _check_sizes(sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    out = []
    for size in sizes:
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise ValueError(f"each serving size must be [H, W] with positive values, got {list(size)}.")
        hw = (int(size[0]), int(size[1]))
        if hw not in out:
            out.append(hw)
    if not out:
        raise ValueError("give at least one serving size [H, W].")
    return out


def _dispatcher(network: nn.Module, sizes: Sequence[Sequence[int]], in_channels: int | None = None) -> SizeDispatcher:
    c = int(in_channels if in_channels is not None else getattr(network, "in_channels", 1))
    models = {f"{h}x{w}": trace_network(network, (1, c, h, w)) for h, w in _check_sizes(sizes)}
    return SizeDispatcher(models, c)


def serving_module(
    network: nn.Module, sizes: Sequence[Sequence[int]], in_channels: int | None = None
) -> torch.jit.ScriptModule:
    """Trace ``network`` once per serving size and script a :class:`SizeDispatcher` over them.

    Args:
        network: the network (put in eval mode).
        sizes: the ``[H, W]`` sizes to serve, e.g. ``[[512, 512], [256, 256]]``.
        in_channels: input channels; defaults to ``network.in_channels`` (else 1).

    Returns:
        the scripted module: exact at the served sizes for any batch size, an error at other sizes.

    Raises:
        ValueError: bad ``sizes``, or a traced model differs from eager (:func:`trace_network`).
    """
    return torch.jit.script(_dispatcher(network, sizes, in_channels))


def save_torchscript(
    module: torch.jit.ScriptModule, path: str | os.PathLike, extra_files: Dict[str, str] | None = None
) -> str:
    """``torch.jit.save`` written atomically (nothing at ``path`` unless the whole file was written).

    Args:
        module: a scripted or traced module.
        path: destination ``.ts`` file.
        extra_files: name -> text stored in the archive (as ``ckpt_export`` stores the metadata and configs).

    Returns:
        the path written.
    """
    with atomic_output(path) as tmp:
        torch.jit.save(module, tmp, _extra_files=dict(extra_files or {}))
    return os.fspath(path)


class ServingNetwork(nn.Module):
    """Bundle-config wrapper that ``torch.jit.script`` (what ``monai.bundle ckpt_export`` runs) turns into a
    :func:`serving_module` over ``sizes``.

    Loading a checkpoint into it loads the wrapped network (same state-dict keys as ``network_def``), and its
    ``forward`` is the network's, so ``ckpt_export`` needs no other change::

        python -m monai.bundle ckpt_export serving_network \\
            --config_file "['configs/inference.json','configs/export.json']" --serving_sizes "[[512,512]]" ...

    Args:
        network: the network (``@network_def``).
        sizes: the ``[H, W]`` sizes to serve.
    """

    def __init__(self, network: nn.Module, sizes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.network = network
        self.sizes = _check_sizes(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load the wrapped network's weights: any checkpoint layout training writes, read as the bundle's loader
        does (:func:`custom.networks.checkpoint.checkpoint_weights`: a bare state dict, ``{"model": ...}``, or
        latest.pt's EMA weights)."""
        from custom.networks.checkpoint import checkpoint_weights

        return self.network.load_state_dict(checkpoint_weights(state_dict, "checkpoint"), strict=strict, assign=assign)

    def __prepare_scriptable__(self) -> SizeDispatcher:
        return _dispatcher(self.network, self.sizes)


def fix_negative_transpose_perms(model: Any) -> int:
    """Rewrite negative ``perm`` entries of ONNX ``Transpose`` nodes (``p -> p % rank``) in place.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        the number of nodes changed.
    """
    changed = 0
    for node in model.graph.node:
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


def _movedim_symbolic() -> Any:
    """``aten::movedim`` -> ONNX ``Transpose`` with non-negative ``perm`` (torch's own keeps negative dims)."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "t", "t")
    def movedim(g: Any, self: Any, source: torch.Tensor, destination: torch.Tensor) -> Any:
        rank = symbolic_helper._get_tensor_rank(self)
        if rank is None:
            raise ValueError("movedim of a tensor of unknown rank")
        src = [int(s) % rank for s in source.view(-1).tolist()]
        dst = [int(d) % rank for d in destination.view(-1).tolist()]
        perm = [-1] * rank
        for s, d in zip(src, dst):
            perm[d] = s
        rest = iter([i for i in range(rank) if i not in src])
        perm = [p if p >= 0 else next(rest) for p in perm]
        if perm == list(range(rank)):
            return self
        return g.op("Transpose", self, perm_i=perm)

    return movedim


@contextlib.contextmanager
def _onnx_movedim_fix(opset_version: int) -> Iterator[None]:
    torch.onnx.register_custom_op_symbolic("aten::movedim", _movedim_symbolic(), opset_version)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::movedim", opset_version)


class _Padded(nn.Module):
    """Pad to a multiple of ``multiple`` as the network does (bottom/right; reflect, or replicate where the
    image is smaller than the padding), run the network, crop back.

    The padding is a gather with constant indices, so the exporter knows the padded shape (``F.pad`` with
    reflect/replicate goes through ops whose output shape the exporter leaves unknown).
    """

    def __init__(self, network: nn.Module, h: int, w: int, multiple: int) -> None:
        super().__init__()
        self.network = network
        self.h, self.w = h, w
        pad_h, pad_w = (-h) % multiple, (-w) % multiple
        reflect = pad_h < h and pad_w < w

        def index(n: int, p: int) -> torch.Tensor:
            tail = [n - 2 - i for i in range(p)] if reflect else [n - 1] * p
            return torch.tensor(list(range(n)) + tail, dtype=torch.long)

        self.register_buffer("rows", index(h, pad_h), persistent=False)
        self.register_buffer("cols", index(w, pad_w), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.index_select(2, self.rows).index_select(3, self.cols)
        return self.network(x)[..., : self.h, : self.w]


def export_onnx(
    network: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    opset_version: int = 17,
    dynamic_batch: bool = True,
) -> str:
    """Export to ONNX at one input height and width (input ``image``, output ``pred``), written atomically.

    Local windows and sizes that need padding are supported (module docstring); height and width are fixed,
    the batch axis is dynamic unless ``dynamic_batch=False``.

    Args:
        network: the network (put in eval mode).
        path: destination ``.onnx`` file.
        input_shape: ``(B, C, H, W)``; ``B`` is only the example's batch size when ``dynamic_batch``.
        opset_version: ONNX opset.
        dynamic_batch: declare axis 0 of ``image`` and ``pred`` as a symbolic ``batch`` dimension.

    Returns:
        the path written.

    Raises:
        ValueError: bad ``input_shape`` or the export failed; the message says why. Nothing is left at ``path``.
    """
    import onnx

    shape = _check_shape(input_shape)
    network = network.eval()
    module: nn.Module = network
    multiple = int(getattr(network, "size_multiple", 1))
    device = next(iter(network.parameters()), torch.empty(0)).device
    if shape[2] % multiple or shape[3] % multiple:
        module = _Padded(network, shape[2], shape[3], multiple).to(device).eval()
    with atomic_output(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings(), _onnx_movedim_fix(opset_version):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    (torch.rand(*shape, device=device),),
                    tmp,
                    dynamo=False,
                    input_names=["image"],
                    output_names=["pred"],
                    opset_version=opset_version,
                    dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}} if dynamic_batch else None,
                )
            except Exception as e:  # exporter errors are of many types
                raise ValueError(
                    f"{os.fspath(path)}: ONNX export at {shape} failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300]})."
                ) from e
        model = onnx.load(tmp)
        if fix_negative_transpose_perms(model):
            onnx.save(model, tmp)
    return os.fspath(path)
