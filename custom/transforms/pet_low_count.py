"""Low-count (low-dose) PET simulation: activity -> sinogram -> Poisson counts at a dose fraction -> MLEM.

The activity map (e.g. SUV) is forward projected (scikit-image ``radon``, parallel beam), scaled so that
a full-dose slice collects ``total_counts`` counts, thinned to ``dose_fraction`` of them, Poisson sampled and
reconstructed with ``iterations`` MLEM updates (unfiltered back-projection as the adjoint). The clean
target is the MLEM reconstruction of the noise-free full-dose sinogram with the same iterations, so the
pair differs only by count noise. Attenuation, scatter and randoms are not modelled.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from custom.transforms.seeding import item_random_state
from monai.transforms import MapTransform
from monai.utils.type_conversion import convert_to_dst_type
from skimage.transform import iradon, radon

__all__ = ["mlem_reconstruct", "simulate_low_count_pet", "SimulateLowCountPETd"]


def mlem_reconstruct(sinogram: np.ndarray, theta: np.ndarray, size: int, iterations: int) -> np.ndarray:
    """Maximum-likelihood expectation-maximisation reconstruction of a parallel-beam emission sinogram.

    ``x <- x / A^T 1 * A^T (y / A x)``, A = ``skimage.transform.radon``, A^T = unfiltered ``iradon``.

    Args:
        sinogram: (bins, angles) non-negative counts.
        theta: projection angles in degrees.
        size: output image side.
        iterations: number of MLEM updates (>= 1).

    Returns:
        (size, size) float64 image in the units of ``sinogram`` per unit projection length.
    """
    if iterations < 1:
        raise ValueError(f"mlem_reconstruct: iterations must be >= 1, got {iterations}.")

    def back(s: np.ndarray) -> np.ndarray:
        return iradon(s, theta=theta, output_size=size, filter_name=None, circle=False)

    sens = back(np.ones_like(sinogram))
    sens = np.where(sens > 1e-8 * sens.max(), sens, np.inf)
    x = np.full((size, size), max(float(sinogram.sum()), 1e-12) / (sens[np.isfinite(sens)].size * sinogram.shape[1]))
    x = np.where(np.isfinite(sens), x, 0.0)
    for _ in range(iterations):
        proj = radon(x, theta=theta, circle=False)
        ratio = np.divide(sinogram, proj, out=np.zeros_like(sinogram, dtype=np.float64), where=proj > 1e-12)
        x = x / sens * np.clip(back(ratio), 0.0, None)
    return x


def simulate_low_count_pet(
    activity: np.ndarray,
    dose_fraction: float,
    rng: np.random.RandomState | None = None,
    total_counts: float = 2e6,
    iterations: int = 10,
    num_angles: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a low-count acquisition of one 2D PET slice.

    Args:
        activity: (H, W) non-negative activity in any unit (e.g. SUV); not modified.
        dose_fraction: fraction of the full-dose counts kept, in (0, 1] (published TAT data: 1/12).
        rng: numpy random state for the Poisson draw.
        total_counts: counts collected by the full-dose slice (sets the full-dose noise level).
        iterations: MLEM iterations for both reconstructions.
        num_angles: projection angles over 180 degrees (default: one per image row).

    Returns:
        ``(low_count, reference)``: float32 (H, W) reconstructions in the units of ``activity``; the first
        from Poisson counts at ``dose_fraction``, the second from the noise-free full-dose sinogram.

    Raises:
        ValueError: not 2D, negative or non-finite values, empty slice, or a dose fraction outside (0, 1].
    """
    act = np.asarray(activity, dtype=np.float64)
    if act.ndim != 2:
        raise ValueError(f"simulate_low_count_pet expects a 2D (H, W) slice, got shape {act.shape}.")
    if not np.isfinite(act).all() or (act < 0).any():
        raise ValueError("simulate_low_count_pet: activity must be finite and non-negative.")
    if not 0.0 < dose_fraction <= 1.0:
        raise ValueError(f"simulate_low_count_pet: dose_fraction must be in (0, 1], got {dose_fraction}.")
    rng = rng if rng is not None else np.random.RandomState()
    size = max(act.shape)
    padded = np.zeros((size, size))
    padded[: act.shape[0], : act.shape[1]] = act
    theta = np.linspace(0.0, 180.0, int(num_angles) if num_angles else size, endpoint=False)
    sino = radon(padded, theta=theta, circle=False)
    sino = np.clip(sino, 0.0, None)
    if sino.sum() <= 0:
        raise ValueError("simulate_low_count_pet: the slice has no activity.")
    scale = total_counts / sino.sum()  # counts per unit of projected activity, full dose
    expected = sino * scale * dose_fraction
    counts = rng.poisson(expected).astype(np.float64)
    low = mlem_reconstruct(counts, theta, size, iterations) / (scale * dose_fraction)
    ref = mlem_reconstruct(sino * scale, theta, size, iterations) / scale
    crop = (slice(0, act.shape[0]), slice(0, act.shape[1]))
    return low[crop].astype(np.float32), ref[crop].astype(np.float32)


class SimulateLowCountPETd(MapTransform):
    """Make a (low-count, full-count) PET pair from a clean activity slice (e.g. SUV).

    Reads ``data[clean_key]`` (C, H, W), writes the low-count MLEM reconstruction to ``data[output_key]``
    and, when ``replace_clean``, the noise-free MLEM reconstruction to ``data[clean_key]`` (new arrays).
    The noise draw is fixed per item (``seed``, file name, slice index): deterministic, so MONAI caches it.

    Args:
        clean_key: key of the clean activity slice (usually ``"label"``).
        output_key: key receiving the low-count slice (usually ``"image"``).
        dose_fraction: kept fraction of the counts (1/4, 1/10, 1/12 as published, 1/20 ...).
        total_counts: full-dose counts per slice (2e6 by default).
        iterations: MLEM iterations.
        num_angles: projection angles (default: one per image row).
        replace_clean: replace the clean slice by the noise-free reconstruction (recommended).
        seed: base seed of the per-item noise draw; None draws new noise at every call.

    Raises:
        ValueError: the slice is not (C, H, W), or has negative/non-finite values.
    """

    def __init__(
        self,
        clean_key: str = "label",
        output_key: str = "image",
        dose_fraction: float = 1.0 / 12.0,
        total_counts: float = 2e6,
        iterations: int = 10,
        num_angles: int | None = None,
        replace_clean: bool = True,
        seed: int | None = 0,
    ) -> None:
        super().__init__(clean_key)
        self.clean_key = clean_key
        self.output_key = output_key
        self.dose_fraction = float(dose_fraction)
        self.total_counts = float(total_counts)
        self.iterations = int(iterations)
        self.num_angles = num_angles
        self.replace_clean = replace_clean
        self.seed = seed

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        clean = d[self.clean_key]
        arr = clean.detach().cpu().numpy() if isinstance(clean, torch.Tensor) else np.asarray(clean)
        if arr.ndim != 3:
            raise ValueError(f"SimulateLowCountPETd: '{self.clean_key}' must be (C, H, W), got shape {arr.shape}.")
        rng = item_random_state(d, self.clean_key, self.seed)
        pairs = [
            simulate_low_count_pet(c, self.dose_fraction, rng, self.total_counts, self.iterations, self.num_angles)
            for c in arr
        ]
        dtype = torch.float32 if isinstance(clean, torch.Tensor) else np.float32
        d[self.output_key] = convert_to_dst_type(np.stack([p[0] for p in pairs]), clean, dtype=dtype)[0]
        if self.replace_clean:
            d[self.clean_key] = convert_to_dst_type(np.stack([p[1] for p in pairs]), clean, dtype=dtype)[0]
        return d
