"""Ignite metric reporting PSNR / SSIM / RMSE per task (modality) in physical units, and their means."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from custom.settings import get_modality_setting
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.utils import CommonKeys as Keys
from monai.utils import evenly_divisible_all_gather

from .physical import METRIC_NAMES, PhysicalUnitMetrics

__all__ = ["TaskwiseImageQuality"]


def _per_sample(value: Any, size: int) -> bool:
    """Whether a collated entry holds one element per sample (a 0-d tensor, e.g. a scalar loss, does not)."""
    if isinstance(value, torch.Tensor):
        return value.ndim > 0 and len(value) == size
    return isinstance(value, (list, tuple)) and len(value) == size


def _as_items(data: Any) -> list[Mapping]:
    """Decollated list of per-sample dicts from a (possibly collated) batch/output."""
    if isinstance(data, Mapping):
        size = len(data[Keys.PRED]) if Keys.PRED in data else len(data[Keys.LABEL])
        return [{k: (v[i] if _per_sample(v, size) else v) for k, v in data.items()} for i in range(size)]
    return list(data)


class TaskwiseImageQuality(Metric):
    """PSNR, SSIM and RMSE per task in physical units (TAT evaluation protocol), gathered across ranks.

    Attach it as the evaluator's key metric, e.g. under the name ``"val_mean_psnr"``. At each evaluation it writes
    to ``engine.state.metrics``: ``<name>`` = mean over tasks of the per-task mean PSNR (the key metric),
    ``"<prefix><task>_<metric>"`` for every task seen and metric (task names lower case, e.g. ``val_ct_psnr``) and
    ``"<prefix>mean_<metric>"`` for each metric. Per-sample values are averaged within a task first (mean over the
    task's test slices), then the task means are averaged, so every task weighs the same.

    The task of a sample is read from ``engine.state.batch[<task_key>]`` (the item's modality), the prediction and
    target from ``engine.state.output`` (``pred``/``label``, in [0, 1]); the windows come from ``settings``
    (:func:`custom.settings.load_modality_settings` output: modality -> ``clip_range``, ``eval_window``).

    Args:
        settings: modality settings mapping.
        task_key: batch key holding each sample's modality. Defaults to ``"modality"``.
        key_metric: metric reported under the attach name. Defaults to ``"psnr"``.
        prefix: prefix of the per-task entries. Defaults to ``"val_"``.
        spatial_dims: 2 or 3. Defaults to 2.
        win_size: SSIM Gaussian window (zero padding win_size // 2, same-size map). Defaults to 11 (published).
        kernel_sigma: SSIM Gaussian sigma. Defaults to 1.5 (published).
        device: ignite metric device.
        key_average: how the key metric averages: ``"tasks"`` (mean of the task means) or ``"slices"`` (plain
            mean over every sample, the published model selection; equal when every task has as many samples).

    Raises:
        ValueError: unknown ``key_metric`` or ``key_average``, or empty ``settings``.
    """

    def __init__(
        self,
        settings: Mapping[str, Mapping[str, Any]],
        task_key: str = "modality",
        key_metric: str = "psnr",
        prefix: str = "val_",
        spatial_dims: int = 2,
        win_size: int = 11,
        kernel_sigma: float = 1.5,
        device: str | torch.device = "cpu",
        key_average: str = "tasks",
    ) -> None:
        if key_average not in ("tasks", "slices"):
            raise ValueError(f"key_average must be 'tasks' or 'slices', got {key_average!r}.")
        self.key_average = key_average
        if key_metric not in METRIC_NAMES:
            raise ValueError(f"key_metric must be one of {METRIC_NAMES}, got {key_metric!r}.")
        if not settings:
            raise ValueError("settings are empty: pass custom.settings.load_modality_settings(<modality dir>).")
        self.settings = settings
        self.task_key = task_key
        self.key_metric = key_metric
        self.prefix = prefix
        self.tasks = sorted(str(k).upper() for k in settings)
        self._fns = {
            name: PhysicalUnitMetrics(s["clip_range"], s["eval_window"], spatial_dims, win_size, kernel_sigma)
            for name, s in ((t, get_modality_setting(settings, t)) for t in self.tasks)
        }
        self._rows: list[torch.Tensor] = []
        super().__init__(output_transform=lambda x: x, device=device)

    def reset(self) -> None:
        self._rows = []

    def iteration_completed(self, engine: Engine) -> None:
        """Read task, prediction and target of every sample of the iteration (overrides ignite's, which only sees
        ``engine.state.output``)."""
        outputs = _as_items(engine.state.output)
        batch = _as_items(engine.state.batch) if engine.state.batch is not None else [{}] * len(outputs)
        self.update((outputs, batch))

    def update(self, output: tuple[Sequence[Mapping], Sequence[Mapping]]) -> None:
        """Args:
            output: (per-sample output dicts with ``pred``/``label``, per-sample batch dicts with ``task_key``).

        Raises:
            ValueError: a sample has no task entry or an unknown task.
        """
        outputs, batch = output
        for out, item in zip(outputs, batch):
            task = item.get(self.task_key, out.get(self.task_key))
            if task is None:
                raise ValueError(f"no '{self.task_key}' entry in the evaluation batch: cannot report per-task metrics.")
            name = str(get_modality_setting(self.settings, task)["modality"]).upper()
            values = self._fns[name](torch.as_tensor(out[Keys.PRED])[None], torch.as_tensor(out[Keys.LABEL])[None])
            row = [float(self.tasks.index(name))] + [float(values[m][0]) for m in METRIC_NAMES]
            self._rows.append(torch.tensor(row, dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        """Returns: ``{"<task>_<metric>": task mean, "mean_<metric>": mean over tasks}`` over all ranks' samples."""
        rows = torch.stack(self._rows) if self._rows else torch.zeros((0, 1 + len(METRIC_NAMES)), dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            on_gpu = dist.get_backend() == "nccl"
            rows = rows.cuda() if on_gpu else rows
            rows = evenly_divisible_all_gather(rows, concat=True).cpu()
        result: dict[str, float] = {}
        for m_idx, metric in enumerate(METRIC_NAMES, start=1):
            task_means = []
            for t_idx, task in enumerate(self.tasks):
                values = rows[rows[:, 0] == t_idx, m_idx]
                if len(values):
                    result[f"{task.lower()}_{metric}"] = float(values.mean())
                    task_means.append(result[f"{task.lower()}_{metric}"])
            result[f"mean_{metric}"] = float(sum(task_means) / len(task_means)) if task_means else float("nan")
            if self.key_average == "slices" and metric == self.key_metric:
                result[f"slice_mean_{metric}"] = float(rows[:, m_idx].mean()) if len(rows) else float("nan")
        return result

    def completed(self, engine: Engine, name: str) -> None:
        """Write the key metric under ``name`` and every per-task / mean value under its prefixed name; a task
        without samples this time has no entry (not the one of an earlier evaluation)."""
        result = self.compute()
        for task in self.tasks:
            for metric in METRIC_NAMES:
                engine.state.metrics.pop(f"{self.prefix}{task.lower()}_{metric}", None)
        for key, value in result.items():
            engine.state.metrics[f"{self.prefix}{key}"] = value
        engine.state.metrics[name] = result[f"{'slice_' if self.key_average == 'slices' else ''}mean_{self.key_metric}"]
