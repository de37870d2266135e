"""PNG panel per task: degraded input / restored / target / absolute error, in physical units (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display needed, set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from custom.io import atomic_output  # noqa: E402

__all__ = ["plot_task_panel", "plot_review_panel"]


def plot_task_panel(
    path: str,
    image: np.ndarray,
    pred: np.ndarray,
    label: np.ndarray,
    window: Sequence[float],
    title: str,
    units: str = "",
    input_psnr: float | None = None,
    output_psnr: float | None = None,
    dpi: int = 110,
) -> str:
    """Write a 1 x 4 panel (input, restored, target, |restored - target|) to ``path`` atomically.

    Args:
        path: destination ``.png``.
        image: degraded input slice (H, W) in physical units.
        pred: restored slice (H, W) in physical units.
        label: target slice (H, W) in physical units.
        window: (low, high) display window in physical units (the modality's evaluation window).
        title: figure title (task, scan, slice).
        units: intensity units for the colour bars.
        input_psnr: PSNR of the input slice (dB), shown in its title when given.
        output_psnr: PSNR of the restored slice (dB), shown in its title when given.
        dpi: figure resolution.

    Returns:
        ``path``.

    Raises:
        ValueError: the slices are not 2D arrays of one shape, or the window is not increasing.
    """
    image, pred, label = (np.asarray(a, dtype=np.float32) for a in (image, pred, label))
    if image.ndim != 2 or image.shape != pred.shape or image.shape != label.shape:
        raise ValueError(
            f"{path}: panel needs three 2D slices of one shape, got {image.shape}, {pred.shape}, {label.shape}."
        )
    low, high = float(window[0]), float(window[1])
    if not low < high:
        raise ValueError(f"{path}: display window must be increasing, got {window}.")

    def clip(a: np.ndarray) -> np.ndarray:  # errors measured inside the window, as the metrics are
        return np.clip(a, low, high)

    error = np.abs(clip(pred) - clip(label))
    input_error = np.abs(clip(image) - clip(label))
    err_max = float(np.percentile(input_error, 99.5)) or float(error.max()) or 1.0  # same scale as the input's

    fig, axes = plt.subplots(1, 4, figsize=(14.5, 4.0), constrained_layout=True)

    def tag(name: str, v: float | None) -> str:
        return f"{name} ({v:.2f} dB)" if v is not None else name

    for ax, data, name in zip(
        axes[:3], (image, pred, label), (tag("degraded input", input_psnr), tag("restored", output_psnr), "target")
    ):
        im = ax.imshow(data, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(name)
    fig.colorbar(im, ax=axes[:3].tolist(), shrink=0.8, label=units)
    im_err = axes[3].imshow(error, cmap="magma", vmin=0.0, vmax=err_max, interpolation="nearest")
    axes[3].set_title("|restored - target|")
    fig.colorbar(im_err, ax=axes[3], shrink=0.8, label=units)
    return _save_panel(fig, axes, title, path, dpi)


def plot_review_panel(
    path: str,
    image: np.ndarray,
    restored: np.ndarray,
    difference: np.ndarray,
    consistent: np.ndarray,
    window: Sequence[float],
    title: str,
    units: str = "",
    psnr: dict[str, float] | None = None,
    dpi: int = 110,
) -> str:
    """Write a 1 x 4 review panel (input, restored, restored - input, data-consistent restored) atomically.

    Args:
        path: destination ``.png``.
        image: degraded input slice (H, W), physical units.
        restored: restored slice (H, W).
        difference: ``restored - image`` (H, W), shown on a symmetric diverging scale.
        consistent: the k-space data-consistent restored slice (H, W).
        window: (low, high) display window of the three images.
        title: figure title.
        units: intensity units for the colour bars.
        psnr: optional PSNR (dB) per panel name (``input``, ``restored``, ``consistent``), shown in the titles.
        dpi: figure resolution.

    Returns:
        ``path``.

    Raises:
        ValueError: the slices are not 2D arrays of one shape, or the window is not increasing.
    """
    arrays = [np.asarray(a, dtype=np.float32) for a in (image, restored, difference, consistent)]
    if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"{path}: review panel needs four 2D slices of one shape, got {[a.shape for a in arrays]}.")
    low, high = float(window[0]), float(window[1])
    if not low < high:
        raise ValueError(f"{path}: display window must be increasing, got {window}.")
    psnr = psnr or {}

    def tag(name: str, key: str) -> str:
        return f"{name} ({psnr[key]:.2f} dB)" if key in psnr else name

    fig, axes = plt.subplots(1, 4, figsize=(14.5, 4.0), constrained_layout=True)
    names = (tag("degraded input", "input"), tag("restored", "restored"), "", tag("data-consistent", "consistent"))
    for ax, data, name in zip(axes[[0, 1, 3]], arrays[:2] + arrays[3:], names[:2] + names[3:]):
        im = ax.imshow(data, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(name)
    fig.colorbar(im, ax=axes[[0, 1, 3]].tolist(), shrink=0.8, label=units)
    scale = float(np.percentile(np.abs(arrays[2]), 99.5)) or float(np.abs(arrays[2]).max()) or 1.0
    im_diff = axes[2].imshow(arrays[2], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
    axes[2].set_title("restored - input")
    fig.colorbar(im_diff, ax=axes[2], shrink=0.8, label=units)
    return _save_panel(fig, axes, title, path, dpi)


def _save_panel(fig: Any, axes: Any, title: str, path: str, dpi: int) -> str:
    """Hide the axes' ticks, title the figure and write it as PNG atomically (the figure is closed either way)."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
