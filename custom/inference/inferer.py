"""Slice-by-slice inference of a 2D network on 2D images and 3D volumes."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["SliceBatchInferer", "cpu_has_fast", "warn_if_emulated"]

logger = logging.getLogger(__name__)


def cpu_has_fast(dtype: str) -> bool:
    """Whether this CPU has native kernels for ``dtype`` (``"bfloat16"``: AVX512-BF16 / AMX; ``"float16"``:
    AVX512-FP16 / AMX-FP16), as torch.cpu reports it; without them torch emulates the products in software (oneDNN's
    own "bf16 supported" check also says yes for plain AVX512, where bf16 is emulated)."""
    checks = {
        "bfloat16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
        "float16": ("_is_avx512_fp16_supported", "_is_amx_fp16_supported"),
    }[dtype]
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


@functools.cache
def warn_if_emulated(dtype: str) -> None:
    """Log once per process that ``dtype`` autocast on this CPU is emulated, hence slower than float32."""
    if not cpu_has_fast(dtype):
        logger.warning(
            "autocast_dtype %s on a CPU without native %s kernels (%s): torch emulates them, so inference runs "
            "several times SLOWER than float32 here (measured ~10x for the matrix products on an AVX2-only AMD "
            "EPYC); use autocast_dtype null and amp false (float32) on this machine.",
            dtype,
            dtype,
            torch.backends.cpu.get_cpu_capability(),
        )


class SliceBatchInferer(Inferer):
    """Run a 2D network on ``(B, C, H, W)`` batches directly and on ``(B, C, H, W, D)`` volumes slice by slice.

    The D slices (last axis) are folded into the batch and run ``batch_size`` at a time, whole (no tiling:
    the network handles any H, W itself); the output has the input's layout. Unlike MONAI's ``SliceInferer``
    it also accepts 2D input and never tiles a slice.

    Args:
        batch_size: slices per forward pass.
        inner: an inferer run on each ``(N, C, H, W)`` batch instead of calling the network directly (e.g.
            MONAI's ``SlidingWindowInferer``), or ``None``.
        autocast_dtype: ``None`` (the caller's autocast state: float32 unless an ``amp`` switch of the caller
            opened ``torch.autocast``), ``"bfloat16"`` or ``"float16"``: the forward pass runs under
            ``torch.autocast`` of the input's device with that dtype; the output is cast back to the input's dtype
            (faster on CPUs with AMX / AVX512-BF16 and on GPUs; changes the outputs slightly; on a CPU without
            native kernels for it, slower, and a warning says so: :func:`warn_if_emulated`).

    Raises:
        ValueError: ``batch_size`` < 1, an unknown ``autocast_dtype``, or input that is not 4D/5D.
    """

    def __init__(self, batch_size: int = 8, inner: Inferer | None = None, autocast_dtype: str | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast_dtype must be null (float32) or one of {', '.join(AUTOCAST_DTYPES)}; got {autocast_dtype!r}."
            )
        self.batch_size = batch_size
        self.inner = inner
        self.autocast_dtype = autocast_dtype

    def _run(self, x: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """One ``(N, C, H, W)`` batch through ``inner`` or the network, under autocast if asked."""
        dtype = None if self.autocast_dtype is None else AUTOCAST_DTYPES[self.autocast_dtype]
        if dtype is not None and x.device.type == "cpu":
            warn_if_emulated(self.autocast_dtype)
        # no dtype: no context, so that a caller's autocast (the evaluator's / restore()'s amp) stays in force
        context = contextlib.nullcontext() if dtype is None else torch.autocast(device_type=x.device.type, dtype=dtype)
        with context:
            out = network(x, *args, **kwargs) if self.inner is None else self.inner(x, network, *args, **kwargs)
        return out.to(x.dtype)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Restore ``inputs``.

        Args:
            inputs: ``(B, C, H, W)`` or ``(B, C, H, W, D)``.
            network: 2D network ``(N, C, H, W) -> (N, C', H, W)``.
            args: extra positional arguments of ``network``.
            kwargs: extra keyword arguments of ``network``.

        Returns:
            ``(B, C', H, W)`` or ``(B, C', H, W, D)``.
        """
        if inputs.dim() == 4:
            return torch.cat(
                [
                    self._run(inputs[i : i + self.batch_size], network, *args, **kwargs)
                    for i in range(0, inputs.shape[0], self.batch_size)
                ]
            )
        if inputs.dim() != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, D) input, got {tuple(inputs.shape)}.")
        b, c, h, w, d = inputs.shape
        slices = inputs.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        out = self(slices, network, *args, **kwargs)
        return out.reshape(b, d, out.shape[1], h, w).permute(0, 2, 3, 4, 1)
