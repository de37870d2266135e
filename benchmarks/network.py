"""Speed and memory of the TAT network on this machine (a benchmark, not a test).

Prints, for each slice size, eval-mode seconds per slice (median of ``--repeats``), the achieved GFLOP/s
(FLOPs counted by ``torch.utils.flop_counter``), the machine's own float32 matmul GFLOP/s measured in
the same run, and training-step seconds and peak memory (max RSS on CPU, max allocated on CUDA) at a
given batch of 128x128 crops with and without gradient checkpointing. Each training configuration runs
in its own process so that peak memory is its own.

    python benchmarks/network.py                 # 128 and 256, training steps at batch 3 and 12
    python benchmarks/network.py --large         # adds 512
    python benchmarks/network.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
from custom.networks import TAT
from custom.networks.blocks.cpu_paths import cpu_model, onednn_op
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(device: torch.device, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, 5, device) / 1e9


def no_graph_flop_formulas() -> dict[Any, Any]:
    """FLOP formulas for the ops of the no-graph path that ``FlopCounterMode`` does not know: the in-place GEMMs
    (``addmm_``, ``baddbmm_``), oneDNN's convolution with a fused GELU (``mkldnn._convolution_pointwise``) and its
    matrix product (``mkldnn._linear_pointwise``, taken on CPUs not made by Intel)."""
    from torch.utils.flop_counter import conv_flop_count

    def gemm(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(a_shape) * b_shape[-1]

    def fused_conv(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)

    def onednn_linear(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape) * w_shape[0]

    formulas: dict[Any, Any] = {torch.ops.aten.addmm_: gemm, torch.ops.aten.baddbmm_: gemm}
    for name, formula in (("_convolution_pointwise", fused_conv), ("_linear_pointwise", onednn_linear)):
        op = onednn_op(name)
        if op is not None:
            formulas[op] = formula
    return formulas


def eval_figures(model: TAT, size: int, repeats: int, device: torch.device) -> dict:
    x = torch.rand(1, 1, size, size, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False, custom_mapping=no_graph_flop_formulas()) as counter:
            model(x)
        seconds = timed(lambda: model(x), repeats, device)
    flops = counter.get_total_flops()
    return {"size": size, "seconds": seconds, "gflop": flops / 1e9, "gflops_per_s": flops / seconds / 1e9}


def train_child(batch: int, use_checkpoint: bool, steps: int, device: torch.device) -> dict:
    """One configuration of training steps (run in a subprocess by the parent)."""
    model = TAT(use_checkpoint=use_checkpoint).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    x = torch.rand(batch, 1, 128, 128, device=device)
    y = torch.rand(batch, 1, 128, 128, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (model(x) - y).abs().mean().backward()
        opt.step()

    seconds = timed(step, steps, device)
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"batch": batch, "checkpointing": use_checkpoint, "step_seconds": seconds, "peak_gb": peak_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--large", action="store_true", help="also 512x512 slices")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train_batches", type=int, nargs="*", default=[3, 12])
    parser.add_argument("--train_steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--_child", nargs=2, metavar=("BATCH", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args._child:
        result = train_child(int(args._child[0]), args._child[1] == "1", args.train_steps, device)
        print(json.dumps(result))
        return

    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {device}")
    print(f"float32 matmul: {matmul_gflops(device):.1f} GFLOP/s")
    model = TAT().to(device).eval()
    sizes = [128, 256] + ([512] if args.large else [])
    print(f"{'size':>6} {'s/slice':>9} {'GFLOP':>8} {'GFLOP/s':>9}")
    for size in sizes:
        r = eval_figures(model, size, args.repeats, device)
        print(f"{r['size']:>6} {r['seconds']:>9.3f} {r['gflop']:>8.1f} {r['gflops_per_s']:>9.1f}")
    del model
    print(f"{'batch':>6} {'ckpt':>5} {'s/step':>8} {'peak GB':>8}   (training steps @128x128)")
    for batch in args.train_batches:
        for ckpt in (False, True):
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--train_steps",
                str(args.train_steps),
                "--_child",
                str(batch),
                "1" if ckpt else "0",
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                why = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode} (killed: out of memory?)"]
                print(f"{batch:>6} {str(ckpt):>5}   failed: {why[0]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{batch:>6} {str(ckpt):>5} {r['step_seconds']:>8.2f} {r['peak_gb']:>8.2f}")


if __name__ == "__main__":
    main()
