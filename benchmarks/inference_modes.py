"""Inference modes side by side: accuracy, seams and speed for one checkpoint (a benchmark, not a test).

For each inference mode (``published``, ``global``, ``sliding``, ``blended``; see ``custom/inference/modes.py``)
and compute dtype (float32, and bfloat16 / float16 autocast with ``--bf16`` / ``--fp16``):

- the demo test split (``DEMO_DIR/data/datalist.json``, ``test``): PSNR / SSIM per task with the published
  protocol (physical units, evaluation window), the seam score (``custom/metrics/seam.py``: the residual's
  gradient averaged along rows / columns, peak at the published window edges over the median; mean over the
  slices that have window edges) and seconds per slice (the inferer call, batch 1);
- 512 x 512 CT slices: 2 x 2 mosaics of the test split's 256 x 256 CT pairs (degraded and clean alike, flipped
  copies; :func:`ct_512`): PSNR / SSIM / seam / seconds per slice;
- a whole 512 x 512 x D CT volume (``--depth``, default 64, the first 512 x 512 degraded mosaic, shifted by a
  few pixels from slice to slice, int16 HU): NIfTI read, normalise, restore ``--slice_batch`` slices per forward
  pass, denormalise, NIfTI write, as slices per second end to end.

The network is the demo's (``custom.tools.demo.DEMO_OVERRIDES`` on ``train.json``, weights ``DEMO_DIR/models/model.pt``)
as written by ``make demo`` or ``python -m custom.tools.demo --output_dir DEMO_DIR``; ``--network published`` times
the whole-volume run of the published-size network instead (random weights: no accuracy columns). ``--quick`` runs
the whole path on a tiny random network and small synthetic slices in seconds (the test suite's smoke test).

    python benchmarks/inference_modes.py --demo_dir demo_output --bf16 --output modes.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.inference import INFERENCE_MODES, mode_inferer, network_window_mode
from custom.inference.restore import normalise, restore
from custom.metrics.physical import PhysicalUnitMetrics
from custom.metrics.seam import seam_score, window_edges
from custom.networks.blocks.cpu_paths import cpu_model
from custom.networks.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "bundle", "configs")

Item = dict[str, Any]  # modality, task, image / label (1, H, W) physical units, name


def demo_network(demo_dir: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The demo's TAT with its trained weights, and its settings (``train_patch_size``, ``heads``, ``patch_size``).

    Raises:
        ValueError: no checkpoint under ``demo_dir/models``.
    """
    from custom.tools.demo import DEMO_OVERRIDES
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "train.json"))
    parser["bundle_root"] = os.path.join(REPO, "bundle")
    for key, value in DEMO_OVERRIDES.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    load_checkpoint(net, os.path.join(demo_dir, "models", "model.pt"))
    info = {"train_patch_size": int(parser["patch_size"]), "heads": list(parser["network_def"]["heads"])}
    return net.eval(), info


def quick_network() -> tuple[torch.nn.Module, dict[str, Any]]:
    """A tiny random TAT (training size 32) for the smoke path."""
    from custom.networks import TAT

    torch.manual_seed(0)
    net = TAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, train_patch_size=32).eval()
    return net, {"train_patch_size": 32, "heads": [1, 2, 4, 8]}


def published_network() -> tuple[torch.nn.Module, dict[str, Any]]:
    """The published-size TAT (41.7 M parameters, bundle orientation) with its random initial weights: for the
    whole-volume speed only (its outputs mean nothing, so the accuracy columns are left out)."""
    from custom.networks import TAT

    torch.manual_seed(0)
    return TAT(transpose_hw=True).eval(), {"train_patch_size": 128, "heads": [1, 2, 4, 8]}


def modality_settings() -> dict[str, dict[str, Any]]:
    from custom.settings import load_modality_settings

    return load_modality_settings(os.path.join(CONFIGS, "modality"))


def load_test_split(data_dir: str) -> list[Item]:
    """The ``test`` items of ``data_dir/datalist.json`` as (1, H, W) float tensors in physical units."""
    import nibabel as nib

    with open(os.path.join(data_dir, "datalist.json"), encoding="utf-8") as f:
        datalist = json.load(f)
    items = []
    for entry in datalist["test"]:

        def read(key: str) -> torch.Tensor:
            arr = np.asarray(nib.load(os.path.join(data_dir, entry[key])).get_fdata(), dtype=np.float32)
            return torch.from_numpy(np.squeeze(arr))[None]

        spacing = float(nib.load(os.path.join(data_dir, entry["image"])).header.get_zooms()[0])
        items.append(
            {
                "modality": entry["modality"],
                "task": entry["task"],
                "image": read("image"),
                "label": read("label"),
                "name": os.path.basename(entry["image"]),
                "spacing": spacing,
            }
        )
    return items


def ct_512(items: Sequence[Item]) -> list[Item]:
    """512 x 512 CT slices: mosaics of the 256 x 256 test CT slices (degraded and clean alike, flipped copies).

    The demo's own simulated pairs at their own pixel size, so the noise is the one the network was trained on
    (re-simulating an upsampled slice would take minutes per slice in the FBP simulator). Two mosaics,
    ``[[a, b], [flip(b), flip(a)]]`` and its transpose, from the first two CT slices (one repeated if alone).
    """
    cts = [it for it in items if it["modality"] == "CT" and tuple(it["image"].shape[-2:]) == (256, 256)]
    if not cts:
        return []
    a, b = (cts + cts)[:2]
    out = []
    for k, (first, second) in enumerate(((a, b), (b, a))):

        def mosaic(key: str, first: Item = first, second: Item = second) -> torch.Tensor:
            p, q = first[key], second[key]
            top = torch.cat([p, q], dim=-1)
            bottom = torch.cat([q.flip(-1), p.flip(-1)], dim=-1)
            return torch.cat([top, bottom], dim=-2)

        out.append({**a, "image": mosaic("image"), "label": mosaic("label"), "name": f"ct_mosaic_{k}@512"})
    return out


def synthetic_items(size: int = 80, n: int = 2) -> list[Item]:
    """Smooth synthetic CT-like slices with noise (for ``--quick``)."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    items = []
    for i in range(n):
        clean = 400 * torch.exp(-(x**2 + y**2) * (2 + i)) - 200
        noisy = clean + 30 * torch.randn(size, size, generator=g)
        items.append({"modality": "CT", "task": "low_dose_ct", "image": noisy[None], "label": clean[None]})
        items[-1]["name"] = f"synthetic_{i}"
    return items


def evaluate(
    net: torch.nn.Module,
    mode: str,
    items: Sequence[Item],
    settings: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
    autocast_dtype: str | None = None,
) -> dict[str, Any]:
    """Restore every item in ``mode``; PSNR / SSIM per task, seam score, seconds per slice.

    Returns:
        ``{"tasks": {task: {"psnr", "ssim", "seam", "n"}}, "psnr", "ssim"`` (means over tasks), ``"seam"``
        (mean over slices with window edges, else ``None``), ``"seam_max_line"`` (mean of the largest line anywhere),
        ``"s_per_slice"`` (median)}.
    """
    net.set_window_mode(network_window_mode(mode))
    inferer = mode_inferer(
        mode, slice_batch_size=1, roi_size=int(info["train_patch_size"]), autocast_dtype=autocast_dtype
    )
    per_task: dict[str, dict[str, list[float]]] = {}
    seams, lines, times = [], [], []
    restore(items[0]["image"], items[0]["modality"], net, inferer, settings)  # warm-up
    for it in items:
        s = settings[it["modality"]]
        start = time.perf_counter()
        out = restore(it["image"], it["modality"], net, inferer, settings)
        times.append(time.perf_counter() - start)
        pred = normalise(out, it["modality"], settings)[None]
        target = normalise(it["label"], it["modality"], settings)[None]
        m = PhysicalUnitMetrics(s["clip_range"], s["eval_window"])(pred, target)
        task = per_task.setdefault(it["task"], {"psnr": [], "ssim": [], "seam": []})
        task["psnr"].append(float(m["psnr"][0]))
        task["ssim"].append(float(m["ssim"][0]))
        residual = (pred - target)[0, 0]
        h, w = residual.shape
        edges = (
            window_edges(h, info["train_patch_size"], info["heads"]),
            window_edges(w, info["train_patch_size"], info["heads"]),
        )
        lines.append(seam_score(residual))
        if edges[0] or edges[1]:
            seams.append(seam_score(residual, edges))
            task["seam"].append(seams[-1])
    tasks = {
        t: {
            "psnr": statistics.mean(v["psnr"]),
            "ssim": statistics.mean(v["ssim"]),
            "seam": statistics.mean(v["seam"]) if v["seam"] else None,
            "n": len(v["psnr"]),
        }
        for t, v in per_task.items()
    }
    return {
        "tasks": tasks,
        "psnr": statistics.mean(v["psnr"] for v in tasks.values()),
        "ssim": statistics.mean(v["ssim"] for v in tasks.values()),
        "seam": statistics.mean(seams) if seams else None,
        "seam_max_line": statistics.mean(lines),
        "s_per_slice": statistics.median(times),
    }


def make_volume(item: Item, depth: int, path: str) -> None:
    """Write a ``(H, W, depth)`` int16 HU NIfTI: ``item``'s noisy slice rolled by a few pixels per slice."""
    import nibabel as nib

    base = item["image"][0].numpy()
    vol = np.stack([np.roll(base, (k % 7) - 3, axis=k % 2) for k in range(depth)], axis=-1)
    img = nib.Nifti1Image(np.round(vol).astype(np.int16), np.diag([0.7, 0.7, 1.0, 1.0]))
    nib.save(img, path)


def volume_speed(
    net: torch.nn.Module,
    mode: str,
    path: str,
    out_dir: str,
    settings: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
    slice_batch: int,
    autocast_dtype: str | None = None,
) -> dict[str, float]:
    """End-to-end read / restore / write of one volume; ``{"seconds", "slices_per_s"}``."""
    from custom.inference import load_nifti, write_nifti

    net.set_window_mode(network_window_mode(mode))
    inferer = mode_inferer(
        mode, slice_batch_size=slice_batch, roi_size=int(info["train_patch_size"]), autocast_dtype=autocast_dtype
    )
    start = time.perf_counter()
    arr, meta = load_nifti(path)
    out = restore(torch.from_numpy(arr)[None], "CT", net, inferer, settings)
    dest = os.path.join(out_dir, f"restored_{mode}_{autocast_dtype or 'fp32'}.nii.gz")
    write_nifti(out[0].numpy(), meta["nifti"], dest, overwrite=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "slices_per_s": arr.shape[-1] / seconds}


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(results: Mapping[str, Any]) -> str:
    """The README tables of a run."""
    lines = [
        "| mode | dtype | test PSNR (mean of tasks) | test SSIM | CT PSNR | CT seam | s / slice (test) "
        "| 512² CT PSNR | 512² SSIM | 512² seam | s / slice 512² | volume slices/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        t, b, v = row.get("test", {}), row.get("ct512"), row.get("volume")
        ct = t.get("tasks", {}).get("low_dose_ct", {}).get("psnr")
        ct_seam = t.get("tasks", {}).get("low_dose_ct", {}).get("seam")
        lines.append(
            f"| {row['mode']} | {row['dtype']} | {_fmt(t.get('psnr'))} | {_fmt(t.get('ssim'), 4)} | {_fmt(ct)} | "
            f"{_fmt(ct_seam)} | {_fmt(t.get('s_per_slice'), 3)} | {_fmt(b and b['psnr'])} | "
            f"{_fmt(b and b['ssim'], 4)} | {_fmt(b and b['seam'])} | "
            f"{_fmt(b and b['s_per_slice'], 3)} | "
            f"{_fmt(v and v['slices_per_s'])} |"
        )
    return "\n".join(lines)


def compute_dtypes(args: argparse.Namespace) -> list[str | None]:
    """The autocast dtypes to run: ``None`` (float32), then those asked for with ``--bf16`` / ``--fp16``."""
    return [None] + ["bfloat16"] * args.bf16 + ["float16"] * args.fp16


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    settings = modality_settings()
    if args.quick:
        net, info = quick_network()
        test_items, big_items = synthetic_items(80, 2), synthetic_items(96, 1)
    else:
        net, info = demo_network(args.demo_dir) if args.network == "demo" else published_network()
        test_items = load_test_split(os.path.join(args.demo_dir, "data"))
        big_items = ct_512(test_items) if args.large else []
    accuracy = args.network == "demo"
    dtypes = compute_dtypes(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vol_path = os.path.join(tmp, "volume.nii.gz")
        if args.depth and big_items:
            make_volume(big_items[0], args.depth, vol_path)
        for mode in args.modes:
            for dtype in dtypes:
                row: dict[str, Any] = {"mode": mode, "dtype": dtype or "float32"}
                for part, items in (("test", test_items), ("ct512", big_items)):
                    if items and accuracy:
                        row[part] = evaluate(net, mode, items, settings, info, dtype)
                if args.depth and big_items and (dtype is None or mode == args.volume_bf16_mode):
                    row["volume"] = volume_speed(net, mode, vol_path, tmp, settings, info, args.slice_batch, dtype)
                rows.append(row)
                print(f"{mode} {row['dtype']}: {json.dumps({k: v for k, v in row.items() if k != 'mode'})}", flush=True)
    net.set_window_mode("published")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "network": (
            "quick (tiny random)"
            if args.quick
            else os.path.abspath(args.demo_dir) if args.network == "demo" else "published size, random weights"
        ),
        "volume_shape": None if not (args.depth and big_items) else [*big_items[0]["image"].shape[-2:], args.depth],
        "slice_batch": args.slice_batch,
        "rows": rows,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--demo_dir", default="demo_output", help="folder written by make demo / python -m custom.tools.demo"
    )
    p.add_argument("--modes", nargs="+", default=list(INFERENCE_MODES), choices=INFERENCE_MODES)
    p.add_argument("--bf16", action="store_true", help="also bfloat16 autocast")
    p.add_argument("--fp16", action="store_true", help="also float16 autocast")
    p.add_argument("--no_large", dest="large", action="store_false", help="skip the 512 x 512 CT slices and volume")
    p.add_argument("--depth", type=int, default=64, help="slices of the whole-volume run (0: none)")
    p.add_argument(
        "--volume_bf16_mode", default="global", help="the mode whose whole-volume run is repeated in bfloat16"
    )
    p.add_argument("--slice_batch", type=int, default=8, help="slices per forward pass in the volume run")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--network",
        choices=("demo", "published"),
        default="demo",
        help="the demo's trained network, or the published-size one with random weights (whole-volume speed only)",
    )
    p.add_argument("--quick", action="store_true", help="tiny random network and synthetic slices (smoke test)")
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.depth < 0 or args.slice_batch < 1 or args.threads < 1:
        p.error("--depth must be >= 0, --slice_batch and --threads >= 1")
    if args.network == "published" and (args.quick or not args.large or not args.depth):
        p.error("--network published times the whole-volume run only: it needs --depth > 0, no --no_large, no --quick")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print(markdown(results))
    if args.output:
        from custom.io import write_json_atomic

        write_json_atomic(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
