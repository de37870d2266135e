"""Task identification and out-of-distribution warnings from TAT's own task representation.

The task representation network (:class:`custom.networks.blocks.TaskRepresentationNetwork`) reduces the bottleneck
features of a slice to one embedding vector (``embed_dim`` values after the global average pool and its MLP) from
which every decoder kernel is generated; the paper shows these vectors clustering by task. That vector
(:meth:`custom.networks.TAT.task_embedding`: encoder and task representation network only) is summarised over the
training set per task (mean and per-dimension standard deviation), and a scan is scored against it:

* slice distance to task t: ``sqrt(mean_j ((z_j - mean_tj) / std_tj) ** 2)`` (a diagonal Mahalanobis distance
  per dimension, so 1 is "one standard deviation away on average"); ``std`` is floored at
  ``STD_FLOOR`` x the task's mean std so that near-constant dimensions do not explode;
* scan distance to t: the median of its slices' distances (2D: the slice's own); ``predicted_task`` is the
  nearest task, ``task_distance`` the distance to it;
* warnings: the predicted task disagrees with the declared (or DICOM) modality, or ``task_distance`` exceeds the
  threshold calibrated on the validation split (:func:`calibrate_threshold`: a percentile of the validation
  slices' distances to their own task).

The embedding, the statistics and the threshold are computed by :mod:`custom.handlers.task_statistics` and live
in the checkpoint under its ``STATS_KEY``; this module scores scans at inference (:class:`TaskCheckd`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from custom.data.datalist import item_name
from custom.handlers.task_statistics import load_task_statistics, task_distances, task_embeddings, task_name
from custom.settings import as_flag
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["check_scan", "TaskCheckd"]

logger = logging.getLogger(__name__)


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
    if declared is not None and task_name(declared) != predicted:
        warnings.append(
            f"the network's task representation says {predicted} (distance {distance:.2f}), "
            f"but the scan is declared {task_name(declared)}"
        )
    threshold = float(stats["threshold"])
    if distance > threshold:
        warnings.append(
            f"task distance {distance:.2f} exceeds the calibrated threshold {threshold:.2f} "
            f"({stats.get('percentile', 99.0):g}th percentile of validation scans): unlike the training data, "
            "review the restoration with care"
        )
    return predicted, distance, warnings


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
                    "or out-of-distribution warnings (compute them with python -m custom.tools.task_statistics).",
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
        name = item_name(d)
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
