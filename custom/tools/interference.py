"""Task-interference probe: per-layer cosine similarity between the tasks' gradients on shared parameters.

TAT's motivation (MICCAI 2025) is that CT, PET and MRI restoration pull shared weights in conflicting directions.
For a checkpoint, this command takes a few training batches of each task, accumulates each task's gradient of the
restoration L1 loss, groups the parameters by layer (the first ``depth`` components of their names, e.g.
``encoder_level1.0`` = one transformer block) and writes, per layer and per task pair, the cosine similarity of the
two tasks' gradients (1: aligned, 0: orthogonal, < 0: conflicting), as a CSV and a heat-map PNG::

    python -m custom.tools.interference --checkpoint models/model.pt --datalist /data/datalist.json \\
        --output_dir eval/interference [--bundle_root BUNDLE] [--config_file BUNDLE/configs/train.json] \\
        [--batches 4] [--override '{"network_def#dim": 8}']

``--bundle_root`` defaults to the bundle shipped with the package (:func:`custom.settings.packaged_bundle`, found
when the command runs, from any working folder) and ``--config_file`` to its ``configs/train.json``.

The network, the data list expansion and the training transforms (random paired crops) come from the bundle config,
so the probe sees what training sees.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.io import atomic_output
from custom.networks.checkpoint import load_checkpoint
from custom.settings import packaged_bundle
from torch import nn

__all__ = ["resolve_config", "group_name", "task_gradients", "pairwise_cosine", "write_csv", "plot_heatmap", "main"]


def resolve_config(config_file: str | None, bundle_root: str | None) -> tuple[str, str]:
    """The probe's training config and bundle root, resolved when the command runs (never from the working folder).

    Args:
        config_file: ``--config_file``; None: ``BUNDLE_ROOT/configs/train.json``.
        bundle_root: ``--bundle_root``; None: the config file's parent's parent when ``config_file`` is given,
            else the bundle shipped with the package (:func:`custom.settings.packaged_bundle`).

    Returns:
        (absolute config file, absolute bundle root).

    Raises:
        FileNotFoundError: the config file does not exist, or neither option is given and the package carries no
            bundle (the message names the path looked at).
    """
    if config_file is None:
        if bundle_root is None:
            config = packaged_bundle("configs", "train.json")  # raises, naming the missing path
            return str(config), str(config.parent.parent)
        config_file = os.path.join(bundle_root, "configs", "train.json")
    config_file = os.path.abspath(config_file)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file}: training config not found (pass --config_file or --bundle_root).")
    root = bundle_root if bundle_root is not None else os.path.dirname(os.path.dirname(config_file))
    return config_file, os.path.abspath(root)


def group_name(param_name: str, depth: int = 2) -> str:
    """Layer a parameter belongs to: the first ``depth`` components of its module path.

    Args:
        param_name: e.g. ``"encoder_level1.0.attn.qkv.weight"``.
        depth: number of module-path components kept.

    Returns:
        e.g. ``"encoder_level1.0"`` (``"output"`` for ``"output.weight"``).
    """
    parts = param_name.split(".")[:-1] or param_name.split(".")
    return ".".join(parts[: max(1, depth)])


def task_gradients(
    network: nn.Module, batches: Mapping[str, Sequence[tuple[torch.Tensor, torch.Tensor]]], depth: int = 2
) -> dict[str, dict[str, torch.Tensor]]:
    """Accumulated gradient of the L1 restoration loss per task, flattened per layer.

    Args:
        network: the restoration network (its ``.grad`` fields are overwritten).
        batches: task name -> list of ``(input, target)`` batches, each (B, 1, H, W).
        depth: layer grouping depth, see :func:`group_name`.

    Returns:
        task -> layer -> 1D gradient vector (concatenation of the layer's parameter gradients).

    Raises:
        ValueError: when a task has no batch.
    """
    params = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for task, task_batches in batches.items():
        if not task_batches:
            raise ValueError(f"task {task}: no batch to probe.")
        network.zero_grad(set_to_none=True)
        for x, y in task_batches:
            (network(x) - y).abs().mean().backward()
        layers: dict[str, list[torch.Tensor]] = {}
        for name, p in params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            layers.setdefault(group_name(name, depth), []).append(g.detach().flatten().double())
        out[task] = {layer: torch.cat(gs) for layer, gs in layers.items()}
    network.zero_grad(set_to_none=True)
    return out


def pairwise_cosine(grads: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[list[str], list[str], np.ndarray]:
    """Cosine similarity of every task pair's gradients in every layer.

    Args:
        grads: output of :func:`task_gradients`.

    Returns:
        ``(layers, pairs, matrix)``: layer names, pair names (``"CT-PET"``...) and a (layers, pairs) array; NaN where a
        gradient is zero (layer unused by a task).
    """
    tasks = sorted(grads)
    layers = list(next(iter(grads.values())))
    pairs = list(itertools.combinations(tasks, 2))
    matrix = np.full((len(layers), len(pairs)), np.nan)
    for i, layer in enumerate(layers):
        for j, (a, b) in enumerate(pairs):
            ga, gb = grads[a][layer], grads[b][layer]
            denom = ga.norm() * gb.norm()
            if denom > 0:
                matrix[i, j] = float(ga @ gb / denom)
    return layers, [f"{a}-{b}" for a, b in pairs], matrix


def write_csv(
    path: str, layers: Sequence[str], pairs: Sequence[str], matrix: np.ndarray, sizes: Mapping[str, int]
) -> None:
    """Write ``layer, num_params, <pair>...`` rows plus a parameter-weighted ``mean`` row.

    Args:
        path: output CSV file (written atomically: a failed write leaves no partial file).
        layers: layer names.
        pairs: task-pair names.
        matrix: (layers, pairs) cosine similarities.
        sizes: layer -> number of parameters.
    """
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "num_params", *pairs])
        for layer, row in zip(layers, matrix):
            writer.writerow([layer, sizes[layer], *(f"{v:.6f}" for v in row)])
        w = np.array([sizes[layer] for layer in layers], dtype=float)
        means = [np.nansum(col * w) / w[~np.isnan(col)].sum() if (~np.isnan(col)).any() else np.nan for col in matrix.T]
        writer.writerow(["mean", int(w.sum()), *(f"{v:.6f}" for v in means)])


def plot_heatmap(path: str, layers: Sequence[str], pairs: Sequence[str], matrix: np.ndarray) -> None:
    """Save a (layers x pairs) heat map of the cosine similarities, diverging colours in [-1, 1].

    Args:
        path: output PNG file (written atomically).
        layers: row labels.
        pairs: column labels.
        matrix: (layers, pairs) values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.0 + 1.2 * len(pairs), 1.0 + 0.25 * len(layers)))
    im = ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(pairs)), pairs)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_title("Task gradient cosine similarity")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)


def _task_batches(
    parser: Any, batches: int, samples_per_task: int, seed: int
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    items = parser.get_parsed_content("train#datalist")
    transform = parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed=seed)
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[dict]] = {}
    for item in items:
        by_task.setdefault(str(item["modality"]).upper(), []).append(item)
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for task, task_items in sorted(by_task.items()):
        chosen = rng.choice(
            len(task_items), size=batches * samples_per_task, replace=len(task_items) < batches * samples_per_task
        )
        samples = [transform(task_items[i]) for i in chosen]
        out[task] = [
            (
                torch.stack([torch.as_tensor(s["image"]) for s in group]),
                torch.stack([torch.as_tensor(s["label"]) for s in group]),
            )
            for group in (samples[b * samples_per_task : (b + 1) * samples_per_task] for b in range(batches))
        ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 (message on stderr) when the training config is not found.
    """
    from monai.bundle import ConfigParser

    ap = argparse.ArgumentParser(
        prog="python -m custom.tools.interference",
        description="Task-interference probe: per-layer cosine similarity between the tasks' gradients on shared "
        "parameters of a checkpoint, written as a CSV and a heat-map PNG.",
    )
    ap.add_argument("--checkpoint", required=True, help="model.pt (best EMA model) or latest.pt")
    ap.add_argument("--datalist", required=True, help="datalist json (the 'training' split is probed)")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--config_file", default=None, help="training config (default: BUNDLE_ROOT/configs/train.json)")
    ap.add_argument(
        "--bundle_root",
        default=None,
        help="bundle folder (default: the config file's parent's parent, else the one shipped with the package)",
    )
    ap.add_argument("--override", default="{}", help="JSON dict of config overrides, e.g. '{\"network_def#dim\": 8}'")
    ap.add_argument("--weights", default="ema", choices=("ema", "network"), help="which weights of a latest.pt")
    ap.add_argument("--batches", type=int, default=4, help="batches per task")
    ap.add_argument("--samples_per_task", type=int, default=4, help="crops per batch")
    ap.add_argument("--depth", type=int, default=2, help="layer grouping depth of parameter names")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.batches < 1 or args.samples_per_task < 1:
        raise ValueError("--batches and --samples_per_task must be >= 1.")

    try:
        config_file, bundle_root = resolve_config(args.config_file, args.bundle_root)
    except FileNotFoundError as e:
        print(f"interference probe failed: {e}", file=sys.stderr)
        return 1

    parser = ConfigParser()
    parser.read_config(config_file)
    parser["bundle_root"] = bundle_root
    parser["datalist"] = os.path.abspath(args.datalist)
    parser["dataset_dir"] = os.path.dirname(os.path.abspath(args.datalist))
    parser.update(json.loads(args.override))

    torch.manual_seed(args.seed)
    network = parser.get_parsed_content("network_def")
    load_checkpoint(network, args.checkpoint, weights=args.weights)
    network.train()
    grads = task_gradients(network, _task_batches(parser, args.batches, args.samples_per_task, args.seed), args.depth)
    layers, pairs, matrix = pairwise_cosine(grads)
    sizes = {layer: int(next(iter(grads.values()))[layer].numel()) for layer in layers}
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv(os.path.join(args.output_dir, "task_interference.csv"), layers, pairs, matrix, sizes)
    plot_heatmap(os.path.join(args.output_dir, "task_interference.png"), layers, pairs, matrix)
    print(
        f"wrote {os.path.join(args.output_dir, 'task_interference.csv')} and .png ({len(layers)} layers, pairs {pairs})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
