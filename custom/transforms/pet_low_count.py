"""Low-count (low-dose) PET simulation: activity -> sinogram -> Poisson counts at a dose fraction -> MLEM.

The activity map (e.g. SUV) is forward projected (scikit-image ``radon``, parallel beam), scaled so that
a full-dose slice collects ``total_counts`` counts, thinned to ``dose_fraction`` of them, Poisson sampled and
reconstructed with ``iterations`` MLEM updates (unfiltered back-projection as the adjoint). The clean
target is the MLEM reconstruction of the noise-free full-dose sinogram with the same iterations, so the
pair differs only by count noise. Attenuation, scatter and randoms are not modelled.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import iradon, radon

__all__ = ["mlem_reconstruct", "simulate_low_count_pet"]


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
        num_angles: projection angles over 180 degrees (default: max(H, W), the rows of the padded square).

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
