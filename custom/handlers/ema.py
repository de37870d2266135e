"""Exponential moving average (EMA) of a network's weights as an ignite handler, checkpointable."""

from __future__ import annotations

import copy
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch import nn

__all__ = ["ModelEMA", "ema_decay"]

WARMUPS = ("none", "power", "torch_ema")


def ema_decay(
    num_updates: int, decay: float, warmup: str = "power", power: float = 2.0 / 3.0, inv_gamma: float = 1.0
) -> float:
    """Effective decay of the ``num_updates``-th EMA update (0-based: the first update has ``num_updates = 0``).

    Args:
        num_updates: EMA updates done before this one.
        decay: the target (maximum) decay, e.g. 0.999.
        warmup: ``"none"``: always ``decay``; ``"power"`` (ema-pytorch): ``min(decay, 1 - (1 + n / inv_gamma)
            ** -power)``, which reaches 0.999 after about 31.6k steps for ``power=2/3`` (the figure quoted for the
            published TAT training); ``"torch_ema"``: ``min(decay, (1 + n) / (10 + n))``.
        power: exponent of the ``"power"`` warm-up.
        inv_gamma: step scale of the ``"power"`` warm-up.

    Returns:
        the decay in [0, decay].

    Raises:
        ValueError: unknown ``warmup``.
    """
    if warmup == "none":
        return decay
    if warmup == "power":
        return max(0.0, min(decay, 1.0 - (1.0 + num_updates / inv_gamma) ** -power))
    if warmup == "torch_ema":
        return min(decay, (1.0 + num_updates) / (10.0 + num_updates))
    raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}.")


class ModelEMA:
    """Keeps ``ema_model``, an exponential moving average of ``network``'s parameters, updated after every
    optimiser step (see :meth:`attach`; optionally every ``update_every`` iterations)::

        ema = d * ema + (1 - d) * param,   d = ema_decay(n, decay, warmup)

    Buffers are copied. ``ema_model`` is a deep copy of the unwrapped network (``DistributedDataParallel`` /
    ``DataParallel`` ``.module``), in eval mode and without gradients: give it to the evaluator and to the best-model
    checkpoint. ``state_dict``/``load_state_dict`` cover the EMA weights and the update count so the EMA is
    resumed exactly.

    Args:
        network: the trained network (possibly wrapped in DDP).
        decay: target decay. Defaults to 0.999 (TAT).
        warmup: decay warm-up, see :func:`ema_decay`. Defaults to ``"power"``.
        power: exponent of the ``"power"`` warm-up. Defaults to 2/3.
        inv_gamma: step scale of the ``"power"`` warm-up. Defaults to 1.
        update_every: update every this many iterations. Defaults to 1.

    Raises:
        ValueError: decay outside [0, 1), unknown warm-up or ``update_every < 1``.
    """

    def __init__(
        self,
        network: nn.Module,
        decay: float = 0.999,
        warmup: str = "power",
        power: float = 2.0 / 3.0,
        inv_gamma: float = 1.0,
        update_every: int = 1,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}.")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}.")
        self.network = network
        self.decay = decay
        self.warmup = warmup
        self.power = power
        self.inv_gamma = inv_gamma
        self.update_every = update_every
        self.num_updates = 0
        self.ema_model = copy.deepcopy(self._unwrap(network)).eval().requires_grad_(False)

    @staticmethod
    def _unwrap(network: nn.Module) -> nn.Module:
        return (
            network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
        )

    def current_decay(self) -> float:
        """Decay used by the next update."""
        return ema_decay(self.num_updates, self.decay, self.warmup, self.power, self.inv_gamma)

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step from the network's current weights."""
        d = self.current_decay()
        source = self._unwrap(self.network)
        ema_params = list(self.ema_model.parameters())
        params = [p.detach() for p in source.parameters()]
        if len(ema_params) != len(params):
            raise ValueError("the EMA model and the network no longer have the same parameters.")
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - d)
        for e_buf, buf in zip(self.ema_model.buffers(), source.buffers()):
            e_buf.copy_(buf)
        self.num_updates += 1

    def __call__(self, engine: Engine) -> None:
        """Ignite callback: update the EMA (every ``update_every`` iterations)."""
        if engine.state.iteration % self.update_every == 0:
            self.update()

    def attach(self, engine: Engine) -> None:
        """Register the update right after the optimiser step: on MONAI's ``IterationEvents.MODEL_COMPLETED`` when the
        engine has it (MONAI workflows; fired inside the iteration, so before any ``ITERATION_COMPLETED`` handler
        such as an iteration-level ``ValidationHandler``, whatever the attach order), else on
        ``Events.ITERATION_COMPLETED``.

        Args:
            engine: the trainer.
        """
        event = (
            IterationEvents.MODEL_COMPLETED
            if engine.has_registered_events(IterationEvents.MODEL_COMPLETED)
            else (Events.ITERATION_COMPLETED)
        )
        if not engine.has_event_handler(self, event):
            engine.add_event_handler(event, self)

    def state_dict(self) -> dict[str, Any]:
        """Returns: ``{"ema_model": ema weights, "num_updates": scalar tensor}`` (tensors only: loadable with
        ``torch.load(weights_only=True)``)."""
        return {"ema_model": self.ema_model.state_dict(), "num_updates": torch.tensor(self.num_updates)}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Restore the EMA weights and update count.

        Args:
            state_dict: output of :meth:`state_dict`.
            strict: passed to ``nn.Module.load_state_dict``.
        """
        self.ema_model.load_state_dict(state_dict["ema_model"], strict=strict)
        self.num_updates = int(state_dict["num_updates"])
