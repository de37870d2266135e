"""Supervised trainer whose loss sees the input as well as the prediction and the target (TAT loss balancing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["TaskAdaptiveTrainer", "batch_sources"]


def batch_sources(batchdata: Any, keys: Sequence[str] = (Keys.IMAGE, Keys.LABEL)) -> list[str]:
    """Source file names of a collated batch (from MetaTensor ``filename_or_obj`` metadata), for error messages.

    Args:
        batchdata: the collated batch dict as given to ``_iteration``.
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


class TaskAdaptiveTrainer(SupervisedTrainer):
    """:class:`monai.engines.SupervisedTrainer` for losses called as ``loss_function(inputs, preds, targets)``.

    Only ``_iteration`` is overridden, because TAT's task-adaptive loss balancing (MICCAI 2025) needs the
    degraded input next to the prediction and the target. AMP with ``GradScaler``, gradient accumulation, the
    MONAI ``IterationEvents`` and all handlers work as in ``SupervisedTrainer``. ``engine.state.output`` is
    written once per iteration with ``CommonKeys.IMAGE/LABEL/PRED/LOSS`` plus, for per-task logging:

    - the batch entries named in :attr:`info_keys` (``"modality"``, ``"task"``) when present;
    - ``"loss_weight"`` and ``"sigma"`` (per-sample, detached) when the loss returns ``(loss, details)``
      (``TaskAdaptiveBalancedLoss(return_details=True)``).

    The loss may also be a plain callable returning a scalar tensor. A non-finite loss raises
    ``FloatingPointError`` naming the iteration and the batch's source files.
    """

    info_keys: tuple[str, ...] = ("modality", "task")

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One optimisation step.

        Args:
            engine: this trainer.
            batchdata: collated batch dict with at least ``image`` (degraded, B x C x H x W) and ``label``.

        Returns:
            the iteration output dict (see the class docstring).

        Raises:
            ValueError: when ``batchdata`` is None.
            FloatingPointError: when the loss is NaN or infinite.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})

        output: dict[str, Any] = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        if isinstance(batchdata, Mapping):
            output.update({k: batchdata[k] for k in self.info_keys if k in batchdata})
        engine.state.output = output  # written once; the steps below fill it in place

        acc = engine.accumulation_steps
        local_iter = engine.state.iteration - 1
        if engine.state.epoch_length is not None:
            local_iter %= engine.state.epoch_length
        should_zero_grad = local_iter % acc == 0
        should_step = (local_iter + 1) % acc == 0 or (
            engine.state.epoch_length is not None and local_iter + 1 == engine.state.epoch_length
        )

        def _compute_pred_loss() -> None:
            output[Keys.PRED] = engine.inferer(inputs, engine.network, *args, **kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            result = engine.loss_function(inputs, output[Keys.PRED], targets)
            if isinstance(result, tuple):
                result, details = result
                output["loss_weight"] = details["weight"]
                output["sigma"] = details["sigma"]
            output[Keys.LOSS] = result.mean()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.network.train()
        if isinstance(engine.loss_function, torch.nn.Module):
            engine.loss_function.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_scaler = engine.amp and engine.scaler is not None
        if use_scaler:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute_pred_loss()
        else:
            _compute_pred_loss()
        loss = output[Keys.LOSS]
        if not bool(torch.isfinite(loss.detach())):
            files = batch_sources(batchdata) or ["<no file metadata in the batch>"]
            raise FloatingPointError(
                f"non-finite training loss ({float(loss.detach())}) at iteration {engine.state.iteration} "
                f"(epoch {engine.state.epoch}); batch source files: {', '.join(files)}"
            )
        scaled = loss / acc if acc > 1 else loss
        if use_scaler:
            engine.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if use_scaler:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
