"""Per-task statistics of TAT's task embedding, stored in the checkpoint (end of training, or on demand).

The statistics (per-task mean / standard deviation of the embedding over the training split, and a distance
threshold calibrated on the validation split, see :mod:`custom.inference.task_check`) are what inference uses to
name each scan's task and to warn about scans unlike the training data. They belong to the weights they were
computed with, so both the handler and the command load the checkpoint's own weights into a copy of the network
and write the statistics back into that checkpoint (atomically, under ``"task_statistics"``).

* in training: :class:`TaskStatisticsHandler` (``train.json`` ``train#handlers``), at ``Events.COMPLETED``, for the
  best checkpoint ``model.pt``;
* for an existing checkpoint::

    python -m custom.handlers.task_statistics --checkpoint models/model.pt --datalist DATA/datalist.json \\
        [--config_file "['bundle/configs/inference.json', 'overlay.json']"] [--percentile 99]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from custom.data.datalist import load_datalist
from custom.data.settings import load_modality_settings
from custom.data.slicing import LoadSliced, expand_slices
from custom.inference.restore import load_checkpoint
from custom.inference.task_check import STATS_KEY, calibrate_threshold, fit_task_statistics, task_embeddings
from custom.io import atomic_output
from custom.transforms.data_consistency import as_flag
from custom.transforms.intensity import ModalityNormalized
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd

__all__ = [
    "split_embeddings",
    "compute_task_statistics",
    "store_task_statistics",
    "checkpoint_network",
    "TaskStatisticsHandler",
    "main",
]

logger = logging.getLogger(__name__)
_ALIASES = {"MR": "MRI", "PT": "PET"}


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
        settings: modality settings (:func:`custom.data.load_modality_settings`).
        modalities: tasks to keep (default: all).

    Returns:
        task name -> ``(N_t, D)``; a split without items gives ``{}``.

    Raises:
        ValueError: unreadable data list or slice (the message names it), missing split.
    """
    keep = None if modalities is None else {_ALIASES.get(m.upper(), m.upper()) for m in modalities}
    items = [
        it
        for it in load_datalist(datalist, split)
        if keep is None
        or _ALIASES.get(str(it.get("modality", "")).upper(), str(it.get("modality", "")).upper()) in keep
    ]
    load = Compose(
        [
            LoadSliced(keys="image", axis=2),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            ModalityNormalized(keys="image", settings=settings),
        ]
    )
    found: dict[str, list[torch.Tensor]] = {}
    for item in expand_slices(items, key="image", axis=2):
        d = load(item)
        task = _ALIASES.get(str(d["modality"]).upper(), str(d["modality"]).upper())
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
        the statistics (:func:`custom.inference.task_check.calibrate_threshold`).

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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def store_task_statistics(checkpoint: str, stats: Mapping[str, Any], model_key: str = "model") -> None:
    """Add (or replace) ``stats`` under ``"task_statistics"`` in ``checkpoint``, written atomically.

    A bare state dict (what the bundle's best-model saver writes for its single ``model`` entry) becomes
    ``{model_key: state dict, "task_statistics": ...}``, the layout every loader of the bundle accepts
    (MONAI's ``CheckpointLoader`` with ``load_dict={"model": ...}``, :func:`custom.inference.restore`).

    Raises:
        ValueError: the file is not a weights-only checkpoint dict.
    """
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable / unsafe files
        raise ValueError(f"{checkpoint}: cannot be loaded as a weights-only checkpoint ({e}).") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{checkpoint}: not a checkpoint dict (got {type(ckpt).__name__}).")
    if _is_state_dict(ckpt):
        ckpt = {model_key: ckpt}
    ckpt[STATS_KEY] = dict(stats)
    with atomic_output(checkpoint) as tmp:
        torch.save(ckpt, tmp)


def checkpoint_network(network: torch.nn.Module, checkpoint: str, model_key: str = "model") -> torch.nn.Module:
    """A copy of ``network`` (CPU, eval) holding the weights of ``checkpoint``, read by the bundle's one loader
    (:func:`custom.inference.restore.load_checkpoint`: ``checkpoint[model_key]``, a bare state dict, or the EMA
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
                "task statistics NOT stored: %s Compute them later with python -m custom.handlers.task_statistics "
                "--checkpoint %s --datalist DATALIST.",
                e,
                self.checkpoint,
            )

    def __call__(self, engine: Engine | None = None) -> None:
        if not os.path.isfile(self.checkpoint):
            raise ValueError(
                f"{self.checkpoint}: no checkpoint to store the task statistics in (did a validation run?)."
            )
        net = checkpoint_network(self.network, self.checkpoint, self.model_key)
        stats = compute_task_statistics(net, self.datalist, self.settings, self.percentile, self.modalities)
        store_task_statistics(self.checkpoint, stats)
        logger.info("task statistics stored in %s", self.checkpoint)


def _config_files(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        return [str(f) for f in json.loads(text.replace("'", '"'))]
    return [text]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m custom.handlers.task_statistics``: store task statistics in an existing checkpoint."""
    bundle = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bundle"))
    parser = argparse.ArgumentParser(
        prog="python -m custom.handlers.task_statistics", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint with 'model' weights (updated in place)")
    parser.add_argument("--datalist", required=True, help="data list with training and validation splits")
    parser.add_argument(
        "--config_file",
        default=os.path.join(bundle, "configs", "inference.json"),
        help="config(s) defining network_def (a JSON list layers several, e.g. inference.json + the demo overlay)",
    )
    parser.add_argument("--modality_dir", default=os.path.join(bundle, "configs", "modality"))
    parser.add_argument("--percentile", type=float, default=99.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = ConfigParser()
        config.read_config(_config_files(args.config_file))
        network = config.get_parsed_content("network_def")
        net = checkpoint_network(network, args.checkpoint)
        stats = compute_task_statistics(net, args.datalist, load_modality_settings(args.modality_dir), args.percentile)
        store_task_statistics(args.checkpoint, stats)
    except (ValueError, OSError) as e:
        print(f"task statistics failed: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.checkpoint}: task statistics stored (tasks {stats['tasks']}, training slices {stats['count']}, "
        f"validation slices {stats['validation_count']}, threshold {stats['threshold']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
