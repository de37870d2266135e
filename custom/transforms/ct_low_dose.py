"""Low-dose CT simulation: HU -> attenuation -> Radon projection -> Poisson noise at flux I0 -> FBP -> HU.

The clean target is the filtered back-projection of the noise-free sinogram, so a simulated pair differs
only by quantum (dose) noise, not by the blur of the projector/reconstructor. Projection and
reconstruction use scikit-image (``radon`` / ``iradon``, parallel beam, ramp filter).
"""

from __future__ import annotations

import numpy as np
from skimage.transform import iradon, radon

__all__ = ["simulate_low_dose_ct"]


def _angles(num_angles: int | None, size: int) -> np.ndarray:
    n = int(num_angles) if num_angles else int(size)
    return np.linspace(0.0, 180.0, n, endpoint=False)


def simulate_low_dose_ct(
    hu: np.ndarray,
    i0: float,
    rng: np.random.RandomState | None = None,
    mu_water: float = 0.0192,
    pixel_spacing_mm: float = 1.0,
    num_angles: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a low-dose acquisition of one 2D CT slice.

    Attenuation ``mu = mu_water * (1 + HU / 1000)`` (clipped at 0, in 1/mm); line integrals
    ``p = radon(mu) * pixel_spacing_mm``; detected counts ``N ~ Poisson(I0 * exp(-p))`` (zero counts set to
    0.5); ``p_noisy = -log(N / I0)``; both sinograms reconstructed by FBP (ramp filter) and mapped back to HU.

    Args:
        hu: (H, W) slice in Hounsfield units (not modified).
        i0: incident photons per detector bin and view; lower means lower dose (noise std ~ 1/sqrt(I0)).
        rng: numpy random state for the Poisson draw (a fresh one when None).
        mu_water: linear attenuation of water in 1/mm (0.0192 at about 70 keV).
        pixel_spacing_mm: in-plane pixel size in mm (scales the line integrals, so the noise level).
        num_angles: projection angles over 180 degrees (default: max(H, W), the rows of the padded square).

    Returns:
        ``(noisy_hu, clean_hu)``: two float32 (H, W) arrays, the low-dose FBP and the noise-free FBP.

    Raises:
        ValueError: the slice is not 2D, has non-finite values, or ``i0``/spacing are not positive.
    """
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2:
        raise ValueError(f"simulate_low_dose_ct expects a 2D (H, W) slice, got shape {hu.shape}.")
    if not np.isfinite(hu).all():
        raise ValueError("simulate_low_dose_ct: non-finite values in the slice.")
    if i0 <= 0 or pixel_spacing_mm <= 0 or mu_water <= 0:
        raise ValueError(
            f"simulate_low_dose_ct: i0, mu_water, pixel_spacing_mm must be > 0, got {i0}, {mu_water}, "
            f"{pixel_spacing_mm}."
        )
    rng = rng if rng is not None else np.random.RandomState()
    size = max(hu.shape)
    theta = _angles(num_angles, size)
    # a non-square slice goes into the corner of a square of zero attenuation: radon would pad it centred, and the
    # reconstruction (size x size) could then not be cropped back onto the slice's own pixels
    mu = np.zeros((size, size))
    mu[: hu.shape[0], : hu.shape[1]] = np.clip(mu_water * (1.0 + hu / 1000.0), 0.0, None)
    sino = radon(mu, theta=theta, circle=False) * pixel_spacing_mm  # (detector bins, angles)
    counts = rng.poisson(i0 * np.exp(-sino)).astype(np.float64)
    noisy_sino = -np.log(np.maximum(counts, 0.5) / i0)

    def fbp(s: np.ndarray) -> np.ndarray:
        rec = iradon(s / pixel_spacing_mm, theta=theta, output_size=size, filter_name="ramp", circle=False)
        rec = rec[: hu.shape[0], : hu.shape[1]]
        return (1000.0 * (rec / mu_water - 1.0)).astype(np.float32)

    return fbp(noisy_sino), fbp(sino)
