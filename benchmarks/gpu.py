"""TAT on one GPU in one short run (under 5 minutes on a current data-centre GPU): speed, memory, agreement with CPU.

1. Inference: slices per second at 512 x 512 (batch ``--batch``) for every inference mode (``published``,
   ``global``, ``blended``, ``sliding``) in float32, bfloat16 and float16 autocast (AMP), published network;
   whether every output is finite and, per autocast dtype, its max absolute difference from the mode's float32
   output (the run fails on a non-finite output).
2. Training: ``--steps`` AdamW steps at the published batch (12 x 1 x 128 x 128), L1 loss, AMP (bfloat16, or
   float16 with a GradScaler, CUDA only) and channels-last input; seconds per step and peak memory (the run fails on a
   non-finite loss).
3. Agreement: the float32 outputs on the device against the same network on the CPU at 256 x 256 for every
   mode (TF32 off for this check); max absolute difference on the [0, 1] scale against ``--tolerance``
   (default 1e-4, stated in the output; the CPU float32 golden tests hold 4e-5 against the authors' code).

Weights are random unless ``--checkpoint`` (speed does not depend on them; the agreement check is as strict
either way). ``--device cpu --quick`` runs every step with a tiny network at small sizes in seconds: the smoke
test the suite runs, since the project's machines have no GPU.

    python benchmarks/gpu.py                       # cuda:0, published network
    python benchmarks/gpu.py --device cpu --quick  # smoke path
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from custom.inference import INFERENCE_MODES, mode_inferer, network_window_mode
from custom.networks import TAT
from custom.networks.blocks.cpu_paths import cpu_model

DTYPES = {"float32": None, "bfloat16": "bfloat16", "float16": "float16"}
QUICK = {"dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "train_patch_size": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up, and the warm-up's result."""
    first = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the process' peak so far


def build(args: argparse.Namespace) -> TAT:
    torch.manual_seed(0)
    net = TAT(**QUICK) if args.quick else TAT()
    if args.checkpoint:
        from custom.networks.checkpoint import load_checkpoint

        load_checkpoint(net, args.checkpoint)
    return net.eval()


def inference_speed(net: TAT, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Slices per second per mode and dtype at ``args.size``, with the outputs' finiteness and distance to float32."""
    x = torch.rand(args.batch, 1, args.size, args.size, device=device)
    roi = net.encoder_level1[0].attn.window
    roi = 128 if roi is None else int(roi / 1.5)
    rows = []
    for mode in INFERENCE_MODES:
        net.set_window_mode(network_window_mode(mode))
        reference = None  # the mode's float32 output
        for name, dtype in DTYPES.items():
            inferer = mode_inferer(mode, slice_batch_size=args.batch, roi_size=roi, autocast_dtype=dtype)
            try:
                with torch.no_grad():
                    seconds, out = _timed(lambda: inferer(x, net), args.repeats, device)
                row = {"mode": mode, "dtype": name, "slices_per_s": args.batch / seconds}
                row["finite"] = bool(torch.isfinite(out).all())
                if dtype is None:
                    reference = out
                elif reference is not None:  # on the [0, 1] input scale
                    row["max_abs_diff_vs_float32"] = (out.float() - reference).abs().max().item()
                rows.append(row)
            except RuntimeError as e:  # a dtype this device / build cannot autocast: reported, not hidden
                rows.append({"mode": mode, "dtype": name, "error": str(e).splitlines()[0]})
            print(json.dumps(rows[-1]), flush=True)
    net.set_window_mode("published")
    return rows


def _train(net: TAT, name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``args.steps`` AdamW steps of a copy of ``net`` with AMP ``name`` (its own scope, freed on return)."""
    model = TAT(**QUICK) if args.quick else TAT()
    model.load_state_dict(net.state_dict())
    model = model.to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    dtype = getattr(torch, name)
    scaler = torch.amp.GradScaler(device.type, enabled=name == "float16")
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(args.train_batch, 1, args.train_size, args.train_size, generator=g)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1).to(device)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=dtype):
            loss = (model(x) - y).abs().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    losses = [step()]
    seconds, _ = _timed(lambda: losses.append(step()), max(args.steps - 1, 1), device)
    return {
        "amp": name,
        "batch": list(x.shape),
        "s_per_step": seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "loss_first_last": [losses[0], losses[-1]],
        "finite": all(math.isfinite(v) for v in losses),
    }


def training_speed(net: TAT, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Seconds per AdamW step and peak memory at the published batch, AMP bf16 / fp16, channels-last."""
    rows: list[dict[str, Any]] = []
    for name in ("bfloat16", "float16"):
        if name == "float16" and device.type != "cuda":
            rows.append({"amp": name, "skipped": "float16 AMP training (GradScaler) is a CUDA recipe; not run on CPU"})
        else:
            try:
                rows.append(_train(net, name, args, device))
            except RuntimeError as e:  # e.g. out of memory: reported, not hidden
                rows.append({"amp": name, "error": str(e).splitlines()[0]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def agreement(net: TAT, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Max |device - CPU| of float32 outputs per mode (TF32 off)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cpu_net = TAT(**QUICK) if args.quick else TAT()
    cpu_net.load_state_dict({k: v.cpu() for k, v in net.state_dict().items()})
    cpu_net.eval()
    x = torch.rand(2, 1, args.check_size, args.check_size, generator=torch.Generator().manual_seed(1))
    roi = 32 if args.quick else 128
    rows = []
    for mode in INFERENCE_MODES:
        for n in (net, cpu_net):
            n.set_window_mode(network_window_mode(mode))
        inferer = mode_inferer(mode, slice_batch_size=2, roi_size=roi)
        with torch.no_grad():
            diff = (inferer(x.to(device), net).cpu() - inferer(x, cpu_net)).abs().max().item()
        rows.append({"mode": mode, "max_abs_diff": diff, "tolerance": args.tolerance, "ok": diff <= args.tolerance})
        print(json.dumps(rows[-1]), flush=True)
    net.set_window_mode("published")
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--quick", action="store_true", help="tiny network, small sizes (smoke test, any device)")
    p.add_argument("--checkpoint", default=None, help="weights for TAT() (default: random)")
    p.add_argument("--size", type=int, default=512, help="inference slice size")
    p.add_argument("--batch", type=int, default=8, help="slices per inference forward pass")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="training steps per AMP dtype")
    p.add_argument("--train_batch", type=int, default=12)
    p.add_argument("--train_size", type=int, default=128)
    p.add_argument("--check_size", type=int, default=256, help="slice size of the device / CPU agreement check")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats, args.steps = 64, 2, 1, 2
        args.train_batch, args.train_size, args.check_size = 2, 32, 64
    if min(args.size, args.batch, args.repeats, args.steps, args.train_batch, args.train_size, args.check_size) < 1:
        p.error("sizes, batches, repeats and steps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{args.device}: no CUDA device here; use --device cpu --quick for the smoke path.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    net = build(args).to(device)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "network": "quick (tiny)" if args.quick else "TAT() published",
        "inference": inference_speed(net, args, device),
        "training": training_speed(net, args, device),
        "agreement": agreement(net, args, device),
    }
    results["seconds"] = time.perf_counter() - start
    print(json.dumps({k: results[k] for k in ("date", "device", "seconds")}))
    if args.output:
        from custom.io import write_json_atomic

        write_json_atomic(args.output, results)
    finite = all(r.get("finite", True) for r in results["inference"] + results["training"])
    return 0 if finite and all(r["ok"] for r in results["agreement"]) else 1


if __name__ == "__main__":
    sys.exit(main())
