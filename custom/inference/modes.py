"""Inference modes: how a slice larger than the training size is restored.

One key, ``inference_mode`` in ``inference.json`` and ``evaluate.json``, picks both the network's attention
window mode (``network_def#window_mode``, via :func:`network_window_mode`) and the inferer
(:func:`mode_inferer`):

- ``"published"``: the published test-time local windows (equal-weight mean of overlapping attention windows,
  1.5x the training size); exact reproduction of the authors' outputs, with jumps at the window edges;
- ``"global"``: one global attention over the whole slice, no windows;
- ``"sliding"``: MONAI's ``SlidingWindowInferer`` over the whole network at the training size (Gaussian
  blending of the overlapping tiles, ``sw_batch_size`` tiles per forward pass);
- ``"blended"``: the published windows' attention matrices mixed with smooth weights that vanish at the
  window edges, so the effective attention is continuous (no seam).
"""

from __future__ import annotations

from collections.abc import Sequence

from custom.inference.inferer import SliceBatchInferer
from monai.inferers import SlidingWindowInferer

__all__ = ["INFERENCE_MODES", "network_window_mode", "mode_inferer"]

INFERENCE_MODES = ("published", "global", "sliding", "blended")
_WINDOW_MODE = {"published": "published", "global": "global", "sliding": "global", "blended": "blended"}


def check_inference_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`INFERENCE_MODES`.

    Raises:
        ValueError: any other value, listing the valid ones.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference_mode must be one of {', '.join(INFERENCE_MODES)}; got {mode!r}.")
    return mode


def network_window_mode(mode: str) -> str:
    """The network's attention window mode for an inference mode (``"sliding"`` tiles are never windowed).

    Args:
        mode: one of :data:`INFERENCE_MODES`.

    Returns:
        ``"published"``, ``"global"`` or ``"blended"`` (``TAT(window_mode=...)``).

    Raises:
        ValueError: unknown ``mode``.
    """
    return _WINDOW_MODE[check_inference_mode(mode)]


def mode_inferer(
    mode: str,
    slice_batch_size: int = 8,
    roi_size: int | Sequence[int] = 128,
    overlap: float = 0.5,
    sw_batch_size: int = 8,
    sigma_scale: float = 0.125,
    autocast_dtype: str | None = None,
) -> SliceBatchInferer:
    """The inferer of an inference mode.

    Args:
        mode: one of :data:`INFERENCE_MODES`.
        slice_batch_size: slices per forward pass (all modes).
        roi_size: ``"sliding"`` only: tile size, the training patch size (an int for square tiles), 8-4096.
        overlap: ``"sliding"`` only: fraction of a tile shared with its neighbour, in [0, 1).
        sw_batch_size: ``"sliding"`` only: tiles per forward pass, >= 1.
        sigma_scale: ``"sliding"`` only: width of the Gaussian tile weights as a fraction of the tile, in (0, 10].
        autocast_dtype: ``None`` (float32, or the caller's autocast), ``"bfloat16"`` or ``"float16"``: see
            :class:`SliceBatchInferer`.

    Returns:
        A :class:`SliceBatchInferer` (with a ``SlidingWindowInferer`` inside for ``"sliding"``).

    Raises:
        ValueError: unknown ``mode``, or a tile size, overlap, tile batch or sigma out of range.
    """
    check_inference_mode(mode)
    inner = None
    if mode == "sliding":
        sizes = [roi_size] * 2 if isinstance(roi_size, int) else list(roi_size)
        if len(sizes) != 2 or not all(isinstance(s, int) and 8 <= s <= 4096 for s in sizes):
            raise ValueError(f"roi_size must be an int (or 2 ints) in [8, 4096], got {roi_size!r}.")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size!r}.")
        if not 0 < sigma_scale <= 10:
            raise ValueError(f"sigma_scale must be in (0, 10], got {sigma_scale!r}.")
        inner = SlidingWindowInferer(
            roi_size=sizes,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=sigma_scale,
            padding_mode="reflect",
        )
    return SliceBatchInferer(slice_batch_size, inner=inner, autocast_dtype=autocast_dtype)
