"""Speed of the published-exact forward pass next to the authors' code, in one run (a benchmark, not a test).

Both networks get identical weights: every tensor of the authors' state dict is filled from its position by a
closed formula (:func:`fill`, the golden tests' kinds: temperatures and layer-norm scales near 1, gates
``lambda_dw`` non-zero so the generated kernels matter, fan-in scaled weights) and converted to this package's
names by ``custom.networks.convert``. Then, per size, the two run alternately (reference, ours, reference, ours,
...) for ``--rounds`` rounds after one warm-up each, in eval mode, float32, batch 1, without gradients, and the
script prints the median and range of the seconds (wall clock, and below each row the process CPU seconds of all
threads, which other jobs on a shared machine disturb less), the speed-up (ratio of the medians, and the range of the
per-round ratios), the largest absolute output difference, the torch version, the thread count, the CPU model
and the date. Ours runs in window mode ``published`` (the published test-time local windows; at 128 x 128 every
level is at its training size, so attention is global there, as published).

The authors' code is not part of this repository: give the path of their ``TAT.py`` (github Yaziwel/TAT, it
needs ``einops``). Without ``--reference`` only our figures are printed.

    python benchmarks/published_speed.py --reference /path/to/TAT.py
    python benchmarks/published_speed.py --reference /path/to/TAT.py --threads 1 --rounds 9 --output speed.json

``--products mkl`` / ``onednn`` forces where our float32 products go (default: this CPU's choice,
``custom.networks.blocks.pointwise.PREFER_ONEDNN``), to compare the two on one machine.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from custom.networks import TAT, convert_reference_state_dict
from custom.networks.blocks import pointwise
from custom.networks.blocks.cpu_paths import cpu_model

__all__ = ["fill", "load_reference", "build_pair", "compare", "main"]


def fill(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic weights for every tensor of ``state``, from its sorted position and index alone.

    ``u = 2 * frac(|sin(12.9898 i + 78.233 j)| * 43758.5453) - 1`` (tensor ``j`` of the sorted keys, value ``i``);
    ``temperature`` and 1-D ``weight``: ``1 + 0.1 u``; ``lambda_dw`` / ``gate``: ``0.2 u``; other 1-D: ``0.02 u``;
    the rest ``u * sqrt(3 / fan_in)`` (fan-in 9 for depthwise kernels).

    Args:
        state: names -> tensors (only shapes and dtypes are read).

    Returns:
        A new dict with the same keys, shapes and dtypes.
    """
    out = {}
    for j, key in enumerate(sorted(state)):
        t = state[key]
        i = torch.arange(t.numel(), dtype=torch.float64)
        u = 2 * torch.frac(torch.abs(torch.sin(12.9898 * i + 78.233 * j)) * 43758.5453) - 1
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "temperature" or (t.dim() == 1 and leaf == "weight"):
            v = 1.0 + 0.1 * u
        elif leaf in ("lambda_dw", "gate"):
            v = 0.2 * u
        elif t.dim() == 1:
            v = 0.02 * u
        else:
            fan_in = 9 if leaf == "dw_kernel" or (t.dim() > 1 and t.shape[1] == 1) else t.numel() // t.shape[0]
            v = u * math.sqrt(3.0 / fan_in)
        out[key] = v.reshape(t.shape).to(t.dtype)
    return out


def load_reference(path: str) -> type[nn.Module]:
    """The ``TAT`` class of the authors' ``TAT.py`` at ``path``.

    Raises:
        ValueError: no such file, it cannot be imported (for instance ``einops`` missing), or it defines no ``TAT``.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--reference {path}: no such file (give the path of the authors' TAT.py).")
    spec = importlib.util.spec_from_file_location("reference_tat", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except ImportError as e:
        raise ValueError(f"--reference {path}: cannot be imported ({e}); it needs einops (pip install einops).") from e
    cls = getattr(module, "TAT", None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(f"--reference {path}: defines no TAT network class.")
    return cls


def build_pair(reference_cls: type[nn.Module] | None) -> tuple[nn.Module, nn.Module | None]:
    """Our published-default TAT and the authors' (or ``None``) in eval mode with identical weights.

    Returns:
        ``(ours, reference)``.
    """
    ours = TAT(window_mode="published").eval()
    if reference_cls is None:
        ours.load_state_dict(fill(ours.state_dict()), strict=True)
        return ours, None
    reference = reference_cls().eval()
    weights = fill(reference.state_dict())
    reference.load_state_dict(weights, strict=True)
    ours.load_state_dict(convert_reference_state_dict(weights, ours), strict=True)
    return ours, reference


def _seconds(fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time: less sensitive to other jobs taking the cores)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def compare(
    ours: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor], torch.Tensor] | None,
    sizes: Sequence[int],
    rounds: int,
    make_input: Callable[[int], torch.Tensor],
) -> list[dict[str, Any]]:
    """Time ``reference`` and ``ours`` alternately at each size.

    Args:
        ours: our network (called under ``torch.no_grad``).
        reference: the authors' network, or ``None`` (ours alone).
        sizes: square slice sizes.
        rounds: timed calls of each network per size (after one warm-up call each).
        make_input: size -> ``(1, 1, size, size)`` input.

    Returns:
        One dict per size: ``size``, ``ours`` / ``reference`` (wall-clock ``median``, ``min``, ``max``, ``seconds``
        list; ``reference`` ``None`` without one), ``speedup`` (ratio of medians), ``speedup_min`` / ``speedup_max``
        (range of the per-round ratios), ``max_abs_diff`` (``None`` without a reference), and the same summaries of
        process CPU seconds as ``ours_cpu`` / ``reference_cpu`` with ``speedup_cpu``.
    """
    rows = []
    with torch.no_grad():
        for size in sizes:
            x = make_input(size)
            out_ours = ours(x)  # warm-up
            out_ref = reference(x) if reference is not None else None
            t_ours, t_ref, c_ours, c_ref = [], [], [], []
            for _ in range(rounds):
                if reference is not None:
                    wall, cpu = _seconds(lambda: reference(x))
                    t_ref.append(wall)
                    c_ref.append(cpu)
                wall, cpu = _seconds(lambda: ours(x))
                t_ours.append(wall)
                c_ours.append(cpu)
            row: dict[str, Any] = {"size": size, "ours": _summary(t_ours), "reference": None}
            row.update(speedup=None, speedup_min=None, speedup_max=None, max_abs_diff=None)
            row.update(ours_cpu=_summary(c_ours), reference_cpu=None, speedup_cpu=None)
            if out_ref is not None:
                ratios = [r / o for r, o in zip(t_ref, t_ours)]
                row["reference"] = _summary(t_ref)
                row["speedup"] = row["reference"]["median"] / row["ours"]["median"]
                row["speedup_min"], row["speedup_max"] = min(ratios), max(ratios)
                row["max_abs_diff"] = (out_ours - out_ref).abs().max().item()
                row["reference_cpu"] = _summary(c_ref)
                row["speedup_cpu"] = row["reference_cpu"]["median"] / row["ours_cpu"]["median"]
            rows.append(row)
    return rows


def _summary(seconds: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "seconds": seconds}


def _image(size: int) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64)
    y, x = torch.meshgrid(r, r, indexing="ij")
    img = 0.5 + 0.3 * torch.sin(x / 7.0) * torch.cos(y / 11.0) + 0.1 * torch.sin((x + 2 * y) / 3.0)
    return img.float()[None, None]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=None, help="path of the authors' TAT.py (github Yaziwel/TAT)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="square slice sizes")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls of each network per size")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--products",
        choices=("auto", "mkl", "onednn"),
        default="auto",
        help="where our float32 products go: this CPU's choice (oneDNN off Intel CPUs), F.linear (MKL) or oneDNN",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if any(s < 8 for s in args.sizes):
        parser.error(f"--sizes must be at least 8 pixels, got {args.sizes}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print it; returns the exit status (2 for a reference that cannot be loaded)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        reference_cls = None if args.reference is None else load_reference(args.reference)
    except ValueError as e:
        print(f"published_speed: {e}", file=sys.stderr)
        return 2
    if args.products == "onednn" and pointwise._LINEAR is None:
        print("published_speed: --products onednn: this torch has no oneDNN product", file=sys.stderr)
        return 2
    previous = pointwise.PREFER_ONEDNN
    if args.products != "auto":
        pointwise.PREFER_ONEDNN = args.products == "onednn"
    products = "oneDNN" if pointwise.PREFER_ONEDNN else "F.linear (MKL)"
    try:
        torch.manual_seed(0)
        ours, reference = build_pair(reference_cls)
        rows = compare(ours, reference, args.sizes, args.rounds, _image)
    finally:
        pointwise.PREFER_ONEDNN = previous
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "rounds": args.rounds,
        "reference": args.reference,
        "products": products,
    }
    print(
        f"{info['date']}  torch {info['torch']}  {info['threads']} thread(s)  {info['cpu']}  products: {info['products']}"
    )
    if reference is None:
        print("reference not given (--reference /path/to/TAT.py): our figures only")
    print(
        f"{'size':>5} {'ours s (median, range)':>26} {'authors s (median, range)':>28} {'speed-up (range)':>20}  max|diff|"
    )
    for r in rows:
        o = r["ours"]
        line = f"{r['size']:>5} {o['median']:>10.4f} ({o['min']:.4f}-{o['max']:.4f})"
        if r["reference"] is not None:
            a = r["reference"]
            line += f" {a['median']:>12.4f} ({a['min']:.4f}-{a['max']:.4f})"
            line += f" {r['speedup']:>9.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})  {r['max_abs_diff']:.2e}"
        print(line)
        o = r["ours_cpu"]
        line = f"{'cpu':>5} {o['median']:>10.4f} ({o['min']:.4f}-{o['max']:.4f})"
        if r["reference_cpu"] is not None:
            a = r["reference_cpu"]
            line += f" {a['median']:>12.4f} ({a['min']:.4f}-{a['max']:.4f}) {r['speedup_cpu']:>9.2f}x"
        print(line)
    if args.output:
        from custom.io import write_json_atomic

        write_json_atomic(args.output, {**info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
