"""MONAI's supervised trainer for a loss that sees the input as well as the prediction and the target (TAT loss
balancing), with its non-finite loss and gradient guards as handlers on MONAI's iteration events."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from custom.settings import as_flag
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["TaskAdaptiveTrainer", "InputAwareLoss", "FiniteLossGuard", "FiniteGradientGuard", "batch_sources"]


def batch_sources(batchdata: Any, keys: Sequence[str] = (Keys.IMAGE, Keys.LABEL)) -> list[str]:
    """Source file names of a collated batch (from MetaTensor ``filename_or_obj`` metadata), for error messages.

    Args:
        batchdata: the collated batch dict (``engine.state.batch`` during an iteration).
        keys: keys whose metadata to read.

    Returns:
        the distinct file names found, in order (empty when the batch carries no metadata).
    """
    names: list[str] = []
    if not isinstance(batchdata, Mapping):
        return names
    for key in keys:
        meta = getattr(batchdata.get(key), "meta", None)
        files = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
        for f in [files] if isinstance(files, str) else list(files or []):
            if str(f) not in names:
                names.append(str(f))
    return names


def _where(engine: SupervisedTrainer) -> tuple[str, str]:
    """``("at iteration I (epoch E)", "file, file, ...")``: where a guard stopped, for its message."""
    files = batch_sources(engine.state.batch) or ["<no file metadata in the batch>"]
    return f"at iteration {engine.state.iteration} (epoch {engine.state.epoch})", ", ".join(files)


class InputAwareLoss:
    """``loss(inputs, preds, targets)`` called where MONAI's ``SupervisedTrainer`` calls ``loss_function(preds,
    targets)``: the inputs are the ``CommonKeys.IMAGE`` entry that ``SupervisedTrainer._iteration`` puts in
    ``engine.state.output`` before the forward pass.

    Per call it also puts in ``engine.state.output`` the batch entries named in ``info_keys`` (for per-task
    logging) and, when the loss returns ``(loss, details)`` (``TaskAdaptiveBalancedLoss(return_details=True)``),
    ``details["weight"]`` and ``details["sigma"]`` as ``"loss_weight"`` and ``"sigma"``; and it sets a module loss
    to training mode, as MONAI does the network.

    Args:
        loss: callable ``(inputs, preds, targets)`` returning a loss tensor or ``(loss, details)``.
        engine: the trainer whose state the call reads.
        info_keys: batch entries copied into the output when present.
    """

    def __init__(
        self,
        loss: Callable[..., Any],
        engine: SupervisedTrainer,
        info_keys: Sequence[str] = ("modality", "task"),
        task_contrast: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        task_contrast_weight: float = 0.0,
        task_key: str = "modality",
    ) -> None:
        if task_contrast_weight < 0:
            raise ValueError(f"task_contrast_weight must be >= 0, got {task_contrast_weight}.")
        if task_contrast_weight > 0 and task_contrast is None:
            raise ValueError("task_contrast_weight > 0 needs a task_contrast loss (e.g. SupervisedContrastiveLoss).")
        self.loss = loss
        self.engine = engine
        self.info_keys = tuple(info_keys)
        self.task_contrast = task_contrast
        self.task_contrast_weight = float(task_contrast_weight)
        self.task_key = task_key

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Returns: the loss tensor (``SupervisedTrainer`` takes its mean)."""
        output = self.engine.state.output
        batch = self.engine.state.batch
        if isinstance(batch, Mapping):
            output.update({k: batch[k] for k in self.info_keys if k in batch})
        if isinstance(self.loss, torch.nn.Module):
            self.loss.train()
        result = self.loss(output[Keys.IMAGE], preds, targets)
        if isinstance(result, tuple):
            result, details = result
            output["loss_weight"] = details["weight"]
            output["sigma"] = details["sigma"]
        if self.task_contrast_weight > 0:
            contrast = self._task_contrast(output[Keys.IMAGE], batch)
            output["task_contrast"] = contrast.detach()
            result = result + self.task_contrast_weight * contrast
        return result

    def _task_contrast(self, inputs: torch.Tensor, batch: Any) -> torch.Tensor:
        """The task-contrast term of a batch: the network's task embedding of ``inputs`` scored with the batch's
        task labels (``batch[task_key]``).

        Raises:
            ValueError: the batch has no task labels, or the network no task embedding.
        """
        tasks = batch.get(self.task_key) if isinstance(batch, Mapping) else None
        if tasks is None:
            raise ValueError(
                f"task_contrast_weight > 0 needs the task of every training sample: the batch has no "
                f"'{self.task_key}' entry (the bundle's data lists give each item a 'modality')."
            )
        network = getattr(self.engine.network, "module", self.engine.network)  # DistributedDataParallel
        if not callable(getattr(network, "task_embedding", None)):
            raise ValueError(
                f"task_contrast_weight > 0 needs a TAT network; {type(network).__name__} has no task_embedding."
            )
        return self.task_contrast(network.task_embedding(inputs), tasks)


class FiniteLossGuard:
    """Ignite handler on ``IterationEvents.LOSS_COMPLETED``: a NaN or infinite loss stops training before the
    backward pass.

    Raises:
        FloatingPointError: naming the loss value, the iteration, the epoch and the batch's source files.
    """

    def attach(self, engine: SupervisedTrainer) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        loss = engine.state.output[Keys.LOSS].detach()
        if not bool(torch.isfinite(loss)):
            where, files = _where(engine)
            raise FloatingPointError(f"non-finite training loss ({float(loss)}) {where}; batch source files: {files}")


def _nonfinite_gradient(engine: SupervisedTrainer) -> str | None:
    """Name of the first optimised parameter whose gradient holds inf/NaN, or None when all are finite.

    One fused norm over all gradients on the fast path; names are only looked up when it is not finite.
    """
    params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params or bool(torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in params]))):
        return None
    names = {id(p): f"network.{n}" for n, p in engine.network.named_parameters()}
    loss = getattr(engine.loss_function, "loss", engine.loss_function)
    if isinstance(loss, torch.nn.Module):
        names.update({id(p): f"loss_function.{n}" for n, p in loss.named_parameters()})
    for p in params:
        if not bool(torch.isfinite(p.grad).all()):
            return names.get(id(p), f"unnamed parameter of shape {tuple(p.shape)}")
    return None  # every gradient finite, only their total norm overflowed float32: not an error


class FiniteGradientGuard:
    """Ignite handler on ``IterationEvents.BACKWARD_COMPLETED``: a NaN or infinite gradient stops training before
    the optimiser step, so no weight is corrupted.

    Not checked with AMP: there the ``GradScaler`` skips the step on such gradients and lowers its scale. With
    gradient accumulation it checks after every backward pass: a non-finite gradient stays so until the step, so
    it stops the same runs, at the batch that produced it.

    Raises:
        FloatingPointError: naming the parameter, the (finite) loss, the iteration, the epoch and the batch's
            source files.
    """

    def attach(self, engine: SupervisedTrainer) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        if engine.amp and engine.scaler is not None:
            return
        bad = _nonfinite_gradient(engine)
        if bad is not None:
            where, files = _where(engine)
            raise FloatingPointError(
                f"non-finite gradient of '{bad}' (finite loss {float(engine.state.output[Keys.LOSS].detach()):.6g}) "
                f"{where}, before the optimiser step; batch source files: {files}"
            )


class TaskAdaptiveTrainer(SupervisedTrainer):
    """:class:`monai.engines.SupervisedTrainer` for losses called as ``loss_function(inputs, preds, targets)``.

    TAT's task-adaptive loss balancing (MICCAI 2025) needs the degraded input next to the prediction and the
    target: the loss is wrapped in :class:`InputAwareLoss` (``trainer.loss_function.loss`` is the given one), and
    MONAI's own ``_iteration`` runs unchanged (AMP with ``GradScaler``, gradient accumulation, ``IterationEvents``,
    handlers). ``engine.state.output`` holds ``CommonKeys.IMAGE/LABEL/PRED/LOSS`` plus, for per-task logging, the
    batch entries named in :attr:`info_keys` (``"modality"``, ``"task"``) when present and ``"loss_weight"`` and
    ``"sigma"`` when the loss returns ``(loss, details)``. The loss may also return a plain tensor.

    Attached after ``train_handlers``: :class:`FiniteLossGuard` (a non-finite loss raises ``FloatingPointError``
    naming the iteration and the batch's source files) and :class:`FiniteGradientGuard` (so does a non-finite
    gradient without AMP, before the optimiser step).

    With ``amp=True``, :meth:`state_dict` carries the AMP ``GradScaler`` state (current loss scale and growth
    tracker) under ``"grad_scaler"``, so that a resumed run does not restart from the initial scale of 2**16 and
    skip steps re-learning it. It is restored by :meth:`load_state_dict` during :meth:`run` (the scaler is built
    there; MONAI's ``CheckpointLoader`` loads at ``Events.STARTED``).

    Beyond the paper, ``task_contrast_weight > 0`` adds ``task_contrast_weight * task_contrast(z, tasks)`` to the
    loss, ``z`` the network's task embedding of the inputs (``TAT.task_embedding``: its gradient reaches the task
    representation network only) and ``tasks`` the batch's ``"modality"`` entries, e.g.
    :class:`custom.losses.SupervisedContrastiveLoss`: it trains the embedding the task check reads to separate the
    tasks. Its value goes in ``engine.state.output["task_contrast"]``. Off (0) in the published recipe.

    Args:
        args: positional arguments of ``SupervisedTrainer``.
        task_contrast: ``(embeddings (B, D), tasks) -> scalar`` loss, used when ``task_contrast_weight > 0``.
        task_contrast_weight: its weight; 0 (default) computes nothing extra.
        kwargs: keyword arguments of ``SupervisedTrainer``; ``loss_function`` takes ``(inputs, preds, targets)``.

    Raises:
        ValueError: a negative weight, or a positive weight without a ``task_contrast`` loss.
    """

    info_keys: tuple[str, ...] = ("modality", "task")
    scaler_key = "grad_scaler"

    def __init__(
        self,
        *args: Any,
        task_contrast: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
        task_contrast_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if "amp" in kwargs:  # "--amp false" on a command line arrives as the text 'false'
            kwargs["amp"] = as_flag(kwargs["amp"], "amp")
        super().__init__(*args, **kwargs)
        self.loss_function = InputAwareLoss(
            self.loss_function, self, self.info_keys, task_contrast, task_contrast_weight, task_key="modality"
        )
        FiniteLossGuard().attach(self)
        FiniteGradientGuard().attach(self)

    def _active_scaler(self) -> torch.amp.GradScaler | None:
        scaler = getattr(self, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def state_dict(self) -> dict[str, Any]:
        """ignite's engine state (iteration, epoch length, max epochs) plus the AMP scaler state when AMP is on.

        Returns:
            a dict of numbers only (loads with ``torch.load(weights_only=True)``).
        """
        state = dict(super().state_dict())
        scaler = self._active_scaler()
        if scaler is not None:
            state[self.scaler_key] = scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a checkpoint without scaler state (AMP off, older files) is accepted.

        Args:
            state_dict: output of :meth:`state_dict`.

        Raises:
            ValueError: the checkpoint holds a scaler state but this run has AMP on and no scaler yet (call it
                during :meth:`run`, as MONAI's ``CheckpointLoader`` does).
        """
        state = dict(state_dict)
        scaler_state = state.pop(self.scaler_key, None)
        super().load_state_dict(state)
        scaler = self._active_scaler()
        if scaler_state and scaler is not None:
            scaler.load_state_dict(scaler_state)
        elif scaler_state and self.amp and getattr(self, "scaler", None) is None:
            raise ValueError(
                "the AMP GradScaler state can only be restored while the trainer runs (after run() "
                "builds the scaler), e.g. by a CheckpointLoader attached to the trainer."
            )
