"""Task identification and out-of-distribution warnings from TAT's own task representation.

The task representation network (:class:`custom.networks.blocks.TaskRepresentationNetwork`) reduces the bottleneck
features of a slice to one embedding vector (``embed_dim`` values after the global average pool and its MLP) from
which every decoder kernel is generated; the paper shows these vectors clustering by task. This module reads that
vector without changing the network or its outputs (a forward hook on the MLP, registered for one call and
removed; the forward pass stops right there, so the decoder is not run), summarises the training set per task
(mean and per-dimension standard deviation), and scores a scan against it:

* slice distance to task t: ``sqrt(mean_j ((z_j - mean_tj) / std_tj) ** 2)`` (a diagonal Mahalanobis distance
  per dimension, so 1 is "one standard deviation away on average"); ``std`` is floored at
  ``STD_FLOOR`` x the task's mean std so that near-constant dimensions do not explode;
* scan distance to t: the median of its slices' distances (2D: the slice's own); ``predicted_task`` is the
  nearest task, ``task_distance`` the distance to it;
* warnings: the predicted task disagrees with the declared (or DICOM) modality, or ``task_distance`` exceeds the
  threshold calibrated on the validation split (:func:`calibrate_threshold`: a percentile of the validation
  slices' distances to their own task).

The statistics live in the checkpoint under :data:`STATS_KEY` (see :mod:`custom.handlers.task_statistics`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.transforms.data_consistency import as_flag
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "STATS_KEY",
    "STD_FLOOR",
    "task_embeddings",
    "fit_task_statistics",
    "task_distances",
    "calibrate_threshold",
    "check_scan",
    "load_task_statistics",
    "TaskCheckd",
]

logger = logging.getLogger(__name__)

STATS_KEY = "task_statistics"
STD_FLOOR = 0.1
_ALIASES = {"MR": "MRI", "PT": "PET"}


class _Stop(Exception):
    """Raised by the embedding hook to end the forward pass once the embedding is known."""


def task_embeddings(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The task embedding of every slice, read from TAT's task representation network.

    Args:
        network: a task-adaptive :class:`custom.networks.TAT` (its ``task_kernels.mlp`` is hooked for the call).
        images: ``(N, 1, H, W)`` slices normalised to the network's range [0, 1] (on any device).
        batch_size: slices per forward pass.

    Returns:
        float32 ``(N, embed_dim)`` on the CPU.

    Raises:
        ValueError: the network has no task representation network (``task_adaptive=False``), or bad input.
    """
    tren = getattr(network, "task_kernels", None)
    if tren is None or not hasattr(tren, "mlp"):
        raise ValueError("the network has no task representation network (task_adaptive=False): no task embedding.")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) batch of slices, got {tuple(images.shape)}.")
    device = next(network.parameters()).device
    found: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        found.append(output.detach().float().cpu())
        raise _Stop

    handle = tren.mlp.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                try:
                    network(images[i : i + batch_size].to(device=device, dtype=torch.float32))
                except _Stop:
                    pass
    finally:
        handle.remove()
    if len(found) != (images.shape[0] + batch_size - 1) // batch_size:
        raise ValueError("the network's forward pass did not reach its task representation network.")
    return torch.cat(found)


def _task_name(modality: Any) -> str:
    name = str(modality).upper()
    return _ALIASES.get(name, name)


def fit_task_statistics(embeddings: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Per-task mean and floored per-dimension standard deviation of training embeddings.

    Args:
        embeddings: task name (CT, PET, MRI) -> ``(N_t, D)`` embeddings of its training slices (N_t >= 2).

    Returns:
        ``{"tasks": [names], "mean": (T, D), "std": (T, D), "count": [N_t]}`` (float32 CPU tensors; no
        threshold yet, see :func:`calibrate_threshold`).

    Raises:
        ValueError: no task, a task with fewer than 2 slices, or different widths.
    """
    if not embeddings:
        raise ValueError("no training embeddings: the data list's training split holds no slice.")
    tasks = sorted(_task_name(t) for t in embeddings)
    by_name = {_task_name(t): torch.as_tensor(z, dtype=torch.float64) for t, z in embeddings.items()}
    widths = {int(z.shape[-1]) for z in by_name.values()}
    if len(widths) != 1 or any(z.dim() != 2 for z in by_name.values()):
        raise ValueError(f"embeddings must all be (N, D) with one D, got {[tuple(z.shape) for z in by_name.values()]}.")
    small = [t for t in tasks if by_name[t].shape[0] < 2]
    if small:
        raise ValueError(f"task statistics need at least 2 training slices per task; {small} have fewer.")
    mean = torch.stack([by_name[t].mean(0) for t in tasks])
    # pooled within-task variance per dimension (shared by the tasks: stable with few slices per task)
    within = torch.cat([by_name[t] - mean[i] for i, t in enumerate(tasks)])
    dof = max(int(within.shape[0]) - len(tasks), 1)
    std = (within.pow(2).sum(0) / dof).sqrt()
    std = torch.maximum(std, STD_FLOOR * std.mean().clamp_min(1e-12)).expand_as(mean).clone()
    return {
        "tasks": tasks,
        "mean": mean.float(),
        "std": std.float(),
        "count": [int(by_name[t].shape[0]) for t in tasks],
    }


def task_distances(embeddings: torch.Tensor, stats: Mapping[str, Any]) -> torch.Tensor:
    """Distance of every embedding to every task (see the module docstring).

    Args:
        embeddings: ``(N, D)``.
        stats: output of :func:`fit_task_statistics`.

    Returns:
        float32 ``(N, T)``, columns in ``stats["tasks"]`` order.

    Raises:
        ValueError: ``D`` differs from the statistics'.
    """
    z = torch.as_tensor(embeddings, dtype=torch.float64)
    mean = torch.as_tensor(stats["mean"], dtype=torch.float64)
    std = torch.as_tensor(stats["std"], dtype=torch.float64)
    if z.dim() != 2 or z.shape[1] != mean.shape[1]:
        raise ValueError(
            f"embeddings {tuple(z.shape)} do not match the task statistics' width {mean.shape[1]} "
            "(statistics of another network?)."
        )
    return ((z[:, None, :] - mean[None]) / std[None]).pow(2).mean(-1).sqrt().float()


def calibrate_threshold(
    stats: Mapping[str, Any], embeddings: Mapping[str, torch.Tensor], percentile: float = 99.0, where: str = ""
) -> dict[str, Any]:
    """Add the out-of-distribution threshold: ``percentile`` of the validation slices' distances to their task.

    Args:
        stats: output of :func:`fit_task_statistics`.
        embeddings: task name -> ``(N_t, D)`` validation embeddings (every task of ``stats`` needs one slice).
        percentile: in (0, 100]; 99 lets about 1 % of in-distribution slices through as a false alarm.
        where: data list name for the error message.

    Returns:
        a copy of ``stats`` with ``threshold`` (float), ``percentile`` and ``validation_count`` (per task).

    Raises:
        ValueError: no validation slice for a task, or a percentile outside (0, 100].
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}.")
    by_name = {_task_name(t): torch.as_tensor(z) for t, z in embeddings.items() if len(z)}
    missing = [t for t in stats["tasks"] if t not in by_name]
    prefix = f"{where}: " if where else ""
    if missing:
        raise ValueError(
            f"{prefix}no validation data for task(s) {missing}: the distance threshold is calibrated on the "
            "'validation' split; add validation scans of every task to the data list."
        )
    own = [task_distances(by_name[t], stats)[:, i] for i, t in enumerate(stats["tasks"])]
    threshold = float(np.percentile(torch.cat(own).numpy(), percentile))
    return {
        **dict(stats),
        "threshold": threshold,
        "percentile": float(percentile),
        "validation_count": [int(len(by_name[t])) for t in stats["tasks"]],
    }


def check_scan(
    embeddings: torch.Tensor, stats: Mapping[str, Any], declared: str | None
) -> tuple[str, float, list[str]]:
    """Predicted task, distance and warnings of one scan from its slices' embeddings.

    Args:
        embeddings: ``(S, D)``, one row per slice.
        stats: statistics with ``threshold`` (:func:`calibrate_threshold`).
        declared: the scan's declared or DICOM modality (CT, PET, MRI; MR/PT accepted), or None.

    Returns:
        (predicted task, median slice distance to it, warnings; empty when all is well).
    """
    dist = task_distances(embeddings, stats).median(0).values  # (T,)
    best = int(dist.argmin())
    predicted, distance = str(stats["tasks"][best]), float(dist[best])
    warnings = []
    if declared is not None and _task_name(declared) != predicted:
        warnings.append(
            f"the network's task representation says {predicted} (distance {distance:.2f}), "
            f"but the scan is declared {_task_name(declared)}"
        )
    threshold = float(stats["threshold"])
    if distance > threshold:
        warnings.append(
            f"task distance {distance:.2f} exceeds the calibrated threshold {threshold:.2f} "
            f"({stats.get('percentile', 99.0):g}th percentile of validation scans): unlike the training data, "
            "review the restoration with care"
        )
    return predicted, distance, warnings


def load_task_statistics(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The task statistics stored in a checkpoint, or None when it has none (or none with a threshold).

    Args:
        checkpoint: ``.pt`` file (loaded with ``weights_only=True``).

    Raises:
        ValueError: the file cannot be read as a weights-only checkpoint.
    """
    try:
        ckpt = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable / unsafe files
        raise ValueError(f"{checkpoint}: cannot read the task statistics ({type(e).__name__}: {e}).") from e
    stats = ckpt.get(STATS_KEY) if isinstance(ckpt, Mapping) else None
    if not isinstance(stats, Mapping) or "threshold" not in stats:
        return None
    return dict(stats)


class TaskCheckd(MapTransform):
    """Add ``predicted_task``, ``task_distance`` and ``warnings`` to an inference item.

    Reads the task embedding of every slice of ``d[key]`` (the normalised input scan, ``(1, H, W)`` or
    ``(1, H, W, D)``) with ``network`` and scores it with the statistics of ``checkpoint``
    (:func:`check_scan`); the declared modality is ``d[modality_key]``. Warnings are logged with the file name
    and appended to ``d["warnings"]`` (the writers put them in the NIfTI ``descrip`` / DICOM ``ImageComments``).
    A checkpoint without statistics is warned about once; its scans get ``predicted_task`` and
    ``task_distance`` None and are restored as usual.

    Args:
        keys: the normalised input key (one).
        network: the restoration network (already loaded: the statistics are read at the first item).
        checkpoint: checkpoint file holding the statistics (:data:`STATS_KEY`).
        enabled: run the check at all.
        batch_size: slices per forward pass.
        modality_key: key of the declared modality.
    """

    def __init__(
        self,
        keys: KeysCollection,
        network: torch.nn.Module,
        checkpoint: str | os.PathLike | None,
        enabled: bool = True,
        batch_size: int = 8,
        modality_key: str = "modality",
    ) -> None:
        super().__init__(keys)
        self.network = network
        self.checkpoint = checkpoint
        self.enabled = as_flag(enabled, "task_check")
        self.batch_size = batch_size
        self.modality_key = modality_key
        self._stats: dict[str, Any] | None = None
        self._loaded = False

    def statistics(self) -> dict[str, Any] | None:
        """The checkpoint's statistics (read once; warns once when absent)."""
        if not self._loaded:
            self._loaded = True
            self._stats = None if self.checkpoint is None else load_task_statistics(self.checkpoint)
            if self._stats is None:
                logger.warning(
                    "%s: no task statistics in the checkpoint: scans are restored without task identification "
                    "or out-of-distribution warnings (compute them with python -m custom.handlers.task_statistics).",
                    self.checkpoint,
                )
        return self._stats

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        d.setdefault("warnings", [])
        stats = self.statistics()
        if stats is None:
            d["predicted_task"], d["task_distance"] = None, None
            return d
        name = str(d.get("source", d.get("image", "?")))
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key].as_tensor() if hasattr(d[key], "as_tensor") else d[key])
            slices = x[None] if x.dim() == 3 else x.permute(3, 0, 1, 2)  # (S, C, H, W)
            z = task_embeddings(self.network, slices, self.batch_size)
            predicted, distance, warnings = check_scan(z, stats, d.get(self.modality_key))
            d["predicted_task"], d["task_distance"] = predicted, round(distance, 4)
            for w in warnings:
                logger.warning("%s: %s.", name, w)
            d["warnings"] = [*d["warnings"], *warnings]
        return d

    @staticmethod
    def summary(items: Sequence[Mapping[str, Any]]) -> str:
        """One line per item: ``name: predicted (distance) [warnings]`` (for the demo's summary)."""
        lines = []
        for it in items:
            warn = "; ".join(it.get("warnings") or []) or "no warning"
            dist = it.get("task_distance")
            dist_text = "n/a" if dist is None else f"{dist:.2f}"
            lines.append(f"{it.get('image', '?')}: {it.get('predicted_task')} (distance {dist_text}) {warn}")
        return "\n".join(lines)
