"""Training scalars for TensorBoard: loss, learning rate and per-task mean loss weight."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from monai.utils import CommonKeys as Keys
from torch.optim import Optimizer

__all__ = ["TrainingScalarWriter", "per_task_mean"]


def per_task_mean(items: Any, value_key: str, task_key: str = "modality") -> dict[str, float]:
    """Mean of a per-sample scalar per task over a decollated iteration output.

    Args:
        items: ``engine.state.output``: a list of per-sample dicts (or one collated dict).
        value_key: per-sample scalar to average, e.g. ``"loss_weight"``.
        task_key: per-sample task name, e.g. ``"modality"``.

    Returns:
        task name (lower case) -> mean value; empty when the keys are absent.
    """
    if isinstance(items, Mapping):
        values, tasks = items.get(value_key), items.get(task_key)
        if values is None or tasks is None:
            return {}
        items = [{value_key: v, task_key: t} for v, t in zip(torch.as_tensor(values).flatten().tolist(), tasks)]
    sums: dict[str, list[float]] = defaultdict(list)
    for item in items or []:
        if isinstance(item, Mapping) and value_key in item and task_key in item:
            sums[str(item[task_key]).lower()].append(float(torch.as_tensor(item[value_key]).float().mean()))
    return {task: sum(v) / len(v) for task, v in sorted(sums.items())}


class TrainingScalarWriter:
    """``iteration_event_writer`` for :class:`monai.handlers.TensorBoardStatsHandler` writing, at each logged
    iteration: ``train_loss``, ``task_contrast`` (when trained with it), ``lr`` (first parameter group) and
    ``loss_weight/<task>`` (the batch's mean per-sample loss weight of each task, from the ``loss_weight`` entries
    that :class:`custom.engines.TaskAdaptiveTrainer` puts in the output).

    Args:
        optimizer: the training optimiser.
        task_key: per-sample task entry of the output. Defaults to ``"modality"``.
        weight_key: per-sample weight entry. Defaults to ``"loss_weight"``.
    """

    def __init__(self, optimizer: Optimizer, task_key: str = "modality", weight_key: str = "loss_weight") -> None:
        self.optimizer = optimizer
        self.task_key = task_key
        self.weight_key = weight_key

    def __call__(self, engine: Engine, writer: Any) -> None:
        step = engine.state.iteration
        output = engine.state.output
        first = output[0] if isinstance(output, list) and output else output
        if isinstance(first, Mapping) and Keys.LOSS in first:
            writer.add_scalar("train_loss", float(torch.as_tensor(first[Keys.LOSS])), step)
        if isinstance(first, Mapping) and "task_contrast" in first:
            writer.add_scalar("task_contrast", float(torch.as_tensor(first["task_contrast"])), step)
        writer.add_scalar("lr", float(self.optimizer.param_groups[0]["lr"]), step)
        for task, value in per_task_mean(output, self.weight_key, self.task_key).items():
            writer.add_scalar(f"loss_weight/{task}", value, step)
