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


def _nonfinite_gradient(engine: SupervisedTrainer) -> str | None:
    """Name of the first optimised parameter whose gradient holds inf/NaN, or None when all are finite.

    One fused norm over all gradients on the fast path; names are only looked up when it is not finite.
    """
    params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params or bool(torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in params]))):
        return None
    names = {id(p): f"network.{n}" for n, p in engine.network.named_parameters()}
    if isinstance(engine.loss_function, torch.nn.Module):
        names.update({id(p): f"loss_function.{n}" for n, p in engine.loss_function.named_parameters()})
    for p in params:
        if not bool(torch.isfinite(p.grad).all()):
            return names.get(id(p), f"unnamed parameter of shape {tuple(p.shape)}")
    return None  # every gradient finite, only their total norm overflowed float32: not an error


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
    ``FloatingPointError`` naming the iteration and the batch's source files; so does a non-finite gradient
    without AMP (with AMP the ``GradScaler`` skips that step and lowers its scale), before the optimiser step,
    so no weight is corrupted.

    With ``amp=True``, :meth:`state_dict` carries the AMP ``GradScaler`` state (current loss scale and growth
    tracker) under ``"grad_scaler"``, so that a resumed run does not restart from the initial scale of 2**16 and
    skip steps re-learning it. It is restored by :meth:`load_state_dict` during :meth:`run` (the scaler is built
    there; MONAI's ``CheckpointLoader`` loads at ``Events.STARTED``).
    """

    info_keys: tuple[str, ...] = ("modality", "task")
    scaler_key = "grad_scaler"

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

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One optimisation step.

        Args:
            engine: this trainer.
            batchdata: collated batch dict with at least ``image`` (degraded, B x C x H x W) and ``label``.

        Returns:
            the iteration output dict (see the class docstring).

        Raises:
            ValueError: when ``batchdata`` is None.
            FloatingPointError: when the loss, or without AMP a gradient, is NaN or infinite.
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
            if use_scaler:  # the scaler skips the step on inf/NaN gradients and lowers the scale
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                bad = _nonfinite_gradient(engine)
                if bad is not None:
                    files = batch_sources(batchdata) or ["<no file metadata in the batch>"]
                    raise FloatingPointError(
                        f"non-finite gradient of '{bad}' (finite loss {float(loss.detach()):.6g}) at iteration "
                        f"{engine.state.iteration} (epoch {engine.state.epoch}), before the optimiser step; batch "
                        f"source files: {', '.join(files)}"
                    )
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
