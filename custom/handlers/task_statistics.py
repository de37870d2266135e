"""Per-task statistics of TAT's task embedding, stored in the checkpoint (end of training, or on demand).

The statistics (per-task mean / standard deviation of the embedding over the training split, and a distance
threshold calibrated on the validation split) are what inference uses to
name each scan's task and to warn about scans unlike the training data. They belong to the weights they were
computed with, so both the handler and the command load the checkpoint's own weights into a copy of the network
and write the statistics back into that checkpoint (atomically, under ``"task_statistics"``).

* in training: :class:`TaskStatisticsHandler` (``train.json`` ``train#handlers``), at ``Events.COMPLETED``, for the
  best checkpoint ``model.pt``;
* for an existing checkpoint: ``python -m custom.tools.task_statistics`` (:mod:`custom.tools.task_statistics`).

Here too the core the inference check scores scans with (:mod:`custom.inference.task_check`): the task embedding
read from the network (:func:`task_embeddings`), the per-task statistics (:func:`fit_task_statistics`), the
distances (:func:`task_distances`) and the calibrated threshold (:func:`calibrate_threshold`).
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.data.datalist import load_datalist
from custom.data.slicing import LoadSliced, expand_slices
from custom.io import atomic_output
from custom.networks.checkpoint import is_state_dict, load_checkpoint, read_checkpoint
from custom.settings import MODALITY_ALIASES, as_flag
from custom.transforms.intensity import ModalityNormalized
from ignite.engine import Engine, Events
from monai.transforms import EnsureChannelFirstd

__all__ = [
    "STATS_KEY",
    "STD_FLOOR",
    "task_name",
    "task_embeddings",
    "fit_task_statistics",
    "task_distances",
    "calibrate_threshold",
    "load_task_statistics",
    "split_embeddings",
    "compute_task_statistics",
    "store_task_statistics",
    "checkpoint_network",
    "TaskStatisticsHandler",
]

logger = logging.getLogger(__name__)

STATS_KEY = "task_statistics"
STD_FLOOR = 0.1


def task_embeddings(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The task embedding of every slice, read from TAT's task representation network.

    Computed by :meth:`custom.networks.TAT.task_embedding` (encoder and task representation network only, no
    hooks), so other threads may run the same network meanwhile.

    Args:
        network: a task-adaptive :class:`custom.networks.TAT` (not modified).
        images: ``(N, 1, H, W)`` slices normalised to the network's range [0, 1] (on any device).
        batch_size: slices per pass.

    Returns:
        float32 ``(N, embed_dim)`` on the CPU.

    Raises:
        ValueError: the network has no task representation network (``task_adaptive=False``), is not a TAT, or bad
            input.
    """
    if not callable(getattr(network, "task_embedding", None)):
        raise ValueError(f"task embeddings need a TAT network; {type(network).__name__} has no task_embedding.")
    if getattr(network, "task_kernels", None) is None:
        raise ValueError("the network has no task representation network (task_adaptive=False): no task embedding.")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) batch of slices, got {tuple(images.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = next(network.parameters()).device
    found: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(device=device, dtype=torch.float32)
            found.append(network.task_embedding(x).float().cpu())
    return torch.cat(found)


def task_name(modality: Any) -> str:
    """The task of a modality name (upper case; aliases of :data:`custom.settings.MODALITY_ALIASES` resolved)."""
    name = str(modality).upper()
    return MODALITY_ALIASES.get(name, name)


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
    tasks = sorted(task_name(t) for t in embeddings)
    by_name = {task_name(t): torch.as_tensor(z, dtype=torch.float64) for t, z in embeddings.items()}
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
    by_name = {task_name(t): torch.as_tensor(z) for t, z in embeddings.items() if len(z)}
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


def load_task_statistics(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The task statistics stored in a checkpoint, or None when it has none (or none with a threshold).

    Args:
        checkpoint: ``.pt`` file (read by the one checkpoint loader, :func:`custom.networks.checkpoint.read_checkpoint`).

    Raises:
        ValueError: missing file, or one that cannot be read safely as a weights-only checkpoint.
    """
    ckpt = read_checkpoint(checkpoint)
    stats = ckpt.get(STATS_KEY) if isinstance(ckpt, Mapping) else None
    if not isinstance(stats, Mapping) or "threshold" not in stats:
        return None
    return dict(stats)


def split_embeddings(
    network: torch.nn.Module,
    datalist: str,
    split: str,
    settings: Mapping[str, Any],
    modalities: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Task embeddings of every slice of the degraded inputs (``image``) of one data-list split.

    Args:
        network: a task-adaptive TAT (eval mode).
        datalist: data-list json (:func:`custom.data.load_datalist`).
        split: ``training``, ``validation`` or ``test``.
        settings: modality settings (:func:`custom.settings.load_modality_settings`).
        modalities: tasks to keep (default: all).

    Returns:
        task name -> ``(N_t, D)``; a split without items gives ``{}``.

    Raises:
        ValueError: unreadable data list or slice (the message names it), missing split.
    """
    keep = None if modalities is None else {task_name(m) for m in modalities}
    items = [it for it in load_datalist(datalist, split) if keep is None or task_name(it.get("modality", "")) in keep]
    # called one by one, not through Compose: it re-raises their ValueErrors (which name the file) as RuntimeError
    steps = (
        LoadSliced(keys="image", axis=2),
        EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
        ModalityNormalized(keys="image", settings=settings),
    )
    found: dict[str, list[torch.Tensor]] = {}
    for item in expand_slices(items, key="image", axis=2):
        d = item
        for step in steps:
            d = step(d)
        task = task_name(d["modality"])
        x = torch.as_tensor(d["image"].as_tensor() if hasattr(d["image"], "as_tensor") else d["image"])
        found.setdefault(task, []).append(task_embeddings(network, x[None].float(), 1))
    return {t: torch.cat(z) for t, z in found.items()}


def compute_task_statistics(
    network: torch.nn.Module,
    datalist: str,
    settings: Mapping[str, Any],
    percentile: float = 99.0,
    modalities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Training-split statistics and validation-split threshold of ``network``'s task embedding.

    Args:
        network: the network whose weights the statistics describe.
        datalist: data-list json with ``training`` and ``validation`` splits.
        settings: modality settings.
        percentile: threshold percentile of in-task validation distances.
        modalities: tasks to keep (default: all in the data list).

    Returns:
        the statistics (:func:`calibrate_threshold`).

    Raises:
        ValueError: no training or validation data (for some task), unreadable data.
    """
    train = split_embeddings(network, datalist, "training", settings, modalities)
    if not train:
        raise ValueError(f"{datalist}: no training slices: task statistics need the 'training' split.")
    try:
        val = split_embeddings(network, datalist, "validation", settings, modalities)
    except ValueError as e:
        if "no 'validation' split" not in str(e):
            raise
        val = {}
    if not val:
        raise ValueError(
            f"{datalist}: no validation data: the task-distance threshold is calibrated on the 'validation' split; "
            "add validation scans to the data list."
        )
    stats = fit_task_statistics(train)
    stats = calibrate_threshold(stats, val, percentile, where=datalist)
    logger.info(
        "task statistics: tasks %s, training slices %s, validation slices %s, threshold %.3f (%gth percentile)",
        stats["tasks"],
        stats["count"],
        stats["validation_count"],
        stats["threshold"],
        percentile,
    )
    return stats


def store_task_statistics(checkpoint: str, stats: Mapping[str, Any], model_key: str = "model") -> None:
    """Add (or replace) ``stats`` under ``"task_statistics"`` in ``checkpoint``, written atomically.

    A bare state dict (what the bundle's best-model saver writes for its single ``model`` entry) becomes
    ``{model_key: state dict, "task_statistics": ...}``, the layout every loader of the bundle accepts
    (MONAI's ``CheckpointLoader`` with ``load_dict={"model": ...}``, :func:`custom.inference.restore`).

    Raises:
        ValueError: the file is not a weights-only checkpoint dict.
    """
    ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{checkpoint}: not a checkpoint dict (got {type(ckpt).__name__}).")
    if is_state_dict(ckpt):
        ckpt = {model_key: ckpt}
    ckpt[STATS_KEY] = dict(stats)
    with atomic_output(checkpoint) as tmp:
        torch.save(ckpt, tmp)


def checkpoint_network(network: torch.nn.Module, checkpoint: str, model_key: str = "model") -> torch.nn.Module:
    """A copy of ``network`` (CPU, eval) holding the weights of ``checkpoint``, read by the bundle's one loader
    (:func:`custom.networks.checkpoint.load_checkpoint`: ``checkpoint[model_key]``, a bare state dict, or the EMA
    weights of a training checkpoint).

    Raises:
        ValueError: unreadable checkpoint, no weights in it, or weights of another architecture.
    """
    return load_checkpoint(copy.deepcopy(network).cpu(), checkpoint, model_key=model_key).eval()


class TaskStatisticsHandler:
    """At the end of training, compute the task statistics of ``checkpoint``'s weights and store them in it.

    Args:
        network: the trained network (its architecture is copied; the weights come from ``checkpoint``).
        checkpoint: the checkpoint to describe and update (``model.pt``, the best EMA weights).
        datalist: data list with ``training`` and ``validation`` splits.
        settings: modality settings.
        percentile: threshold percentile of in-task validation distances.
        modalities: tasks trained (default: all in the data list).
        enabled: attach at all.
        model_key: key of the weights in the checkpoint.

    Raises:
        ValueError: (calling it directly) no validation data, or a missing checkpoint; at the end of training the
            same problems are logged as errors instead, naming the command that computes the statistics later.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoint: str,
        datalist: str,
        settings: Mapping[str, Any],
        percentile: float = 99.0,
        modalities: Sequence[str] | None = None,
        enabled: bool = True,
        model_key: str = "model",
    ) -> None:
        self.network = network
        self.checkpoint = checkpoint
        self.datalist = datalist
        self.settings = settings
        self.percentile = percentile
        self.modalities = modalities
        self.enabled = as_flag(enabled, "task_statistics")
        self.model_key = model_key

    def attach(self, engine: Engine) -> None:
        """Run :meth:`__call__` at ``Events.COMPLETED`` of ``engine`` (when enabled).

        A data list without validation data is reported now (warning), not only at the end of training.
        """
        if not self.enabled:
            return
        try:
            validation = load_datalist(self.datalist, "validation")
        except ValueError as e:
            validation, reason = [], str(e)
        else:
            reason = f"{self.datalist}: the 'validation' split is empty"
        if not validation:
            logger.warning(
                "%s: the task statistics at the end of training need validation data to calibrate their threshold.",
                reason,
            )
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _completed(self, engine: Engine) -> None:
        """End of training: a failure is logged as an error, not raised, so the trained checkpoint stays usable."""
        try:
            self(engine)
        except ValueError as e:
            logger.error(
                "task statistics NOT stored: %s Compute them later with python -m custom.tools.task_statistics "
                "--checkpoint %s --datalist DATALIST%s.",
                e,
                shlex.quote(str(self.checkpoint)),
                "" if self.model_key == "model" else f" --model_key {shlex.quote(str(self.model_key))}",
            )

    def __call__(self, engine: Engine | None = None) -> None:
        if not os.path.isfile(self.checkpoint):
            raise ValueError(
                f"{self.checkpoint}: no checkpoint to store the task statistics in (did a validation run?)."
            )
        net = checkpoint_network(self.network, self.checkpoint, self.model_key)
        stats = compute_task_statistics(net, self.datalist, self.settings, self.percentile, self.modalities)
        store_task_statistics(self.checkpoint, stats, self.model_key)
        logger.info("task statistics stored in %s", self.checkpoint)
