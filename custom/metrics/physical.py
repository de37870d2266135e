"""Image-quality metrics in physical units, computed as the authors' ``evaluation/evaluation_metric.py`` does.

Per slice (TAT, MICCAI 2025; the same protocol as AMIR and Restore-RWKV): map the network range [0, 1] back to
physical units with the modality's normalisation range, clip prediction and target to the evaluation window (CT
[-160, 240] HU, PET [0, 20], MRI [0, 4095]) and take ``L = max - min`` of the clipped target slice. Then

* PSNR = 10 log10(L^2 / MSE) over the whole slice; RMSE = sqrt(MSE), in physical units;
* SSIM on the clipped images in physical units (no shift or rescale first): 11 x 11 Gaussian window (sigma 1.5,
  normalised to sum 1), local means, variances and covariance by convolution with zero padding ``win_size // 2``
  (a same-size map, border pixels included), C1 = (0.01 L)^2, C2 = (0.03 L)^2, SSIM = mean of the map.

SSIM's luminance term is not shift-invariant and a valid-mode map drops the borders, so MONAI's ``SSIMMetric``
(valid mode) cannot give these numbers; the Gaussian filtering uses MONAI's ``separable_filtering`` (zero padding),
which equals the published 2D window (outer product of the normalised 1D Gaussian). Everything is computed in
float64; the published code runs in float32, whose E[x^2] - E[x]^2 cancellation moves SSIM by up to 8e-6 at MRI
levels (2e-6 PET, 5e-7 CT) and PSNR by under 1e-6 dB (measured on the test phantoms), below the 4 decimals of the
published tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import separable_filtering

__all__ = ["to_physical", "gaussian_window", "ssim_zero_padded", "PhysicalUnitMetrics", "METRIC_NAMES"]

METRIC_NAMES = ("psnr", "ssim", "rmse")


def to_physical(x: torch.Tensor, clip_range: Sequence[float], eval_window: Sequence[float]) -> torch.Tensor:
    """Map [0, 1] network intensities to physical units and clip to the evaluation window.

    Args:
        x: tensor of any shape in network range (float64 stays float64, anything else is computed in float32).
        clip_range: (low, high) physical range that was mapped to [0, 1].
        eval_window: (low, high) evaluation window in physical units.

    Returns:
        a new tensor of the same shape, in physical units, within ``eval_window``.

    Raises:
        ValueError: when a range is not an increasing pair.
    """
    (lo, hi), (wlo, whi) = (float(v) for v in clip_range), (float(v) for v in eval_window)
    if not (lo < hi and wlo < whi):
        raise ValueError(f"clip_range and eval_window must be increasing pairs, got {clip_range}, {eval_window}.")
    x = torch.as_tensor(x)
    x = x if x.dtype == torch.float64 else x.float()
    return (x * (hi - lo) + lo).clamp(wlo, whi)


def gaussian_window(win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1D Gaussian ``exp(-(i - win_size // 2)^2 / (2 sigma^2))``, i = 0 .. win_size - 1, float64.

    Args:
        win_size: odd window length. Defaults to 11.
        sigma: standard deviation in pixels. Defaults to 1.5.

    Returns:
        (win_size,) tensor summing to 1.

    Raises:
        ValueError: ``win_size`` not a positive odd integer or ``sigma`` not positive.
    """
    if int(win_size) != win_size or win_size < 1 or win_size % 2 == 0 or not sigma > 0:
        raise ValueError(f"SSIM needs an odd positive win_size and sigma > 0, got {win_size}, {sigma}.")
    x = torch.arange(int(win_size), dtype=torch.float64) - int(win_size) // 2
    g = torch.exp(-(x**2) / (2.0 * float(sigma) ** 2))
    return g / g.sum()


def ssim_zero_padded(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: torch.Tensor,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM with a same-size map (zero-padded Gaussian filtering), averaged over channels and pixels.

    Args:
        pred: (B, C, *spatial) image, physical units, float64.
        target: same shape.
        data_range: (B,) per-sample L used in C1 = (k1 L)^2, C2 = (k2 L)^2.
        win_size: Gaussian window length (padding ``win_size // 2``). Defaults to 11.
        kernel_sigma: Gaussian sigma. Defaults to 1.5.
        k1: luminance constant. Defaults to 0.01.
        k2: contrast constant. Defaults to 0.03.

    Returns:
        (B,) mean of each sample's SSIM map.
    """
    kernel = gaussian_window(win_size, kernel_sigma).to(pred.device)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return separable_filtering(x, kernel, mode="zeros")

    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p * mu_p
    var_t = blur(target * target) - mu_t * mu_t
    cov = blur(pred * target) - mu_p * mu_t
    shape = (-1,) + (1,) * (pred.ndim - 1)
    c1, c2 = ((k1 * data_range) ** 2).reshape(shape), ((k2 * data_range) ** 2).reshape(shape)
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p * mu_p + mu_t * mu_t + c1) * (var_p + var_t + c2))
    return ssim_map.reshape(ssim_map.shape[0], -1).mean(dim=1)


class PhysicalUnitMetrics:
    """Per-sample PSNR, SSIM and RMSE of one modality in physical units (the published protocol, module docstring).

    Args:
        clip_range: (low, high) normalisation range of the modality.
        eval_window: (low, high) evaluation window.
        spatial_dims: 2 for slices (published), 3 for volumes (the same formula with a 3D window). Defaults to 2.
        win_size: SSIM Gaussian window size. Defaults to 11 (published).
        kernel_sigma: SSIM Gaussian sigma. Defaults to 1.5 (published).
        k1: SSIM constant. Defaults to 0.01 (published).
        k2: SSIM constant. Defaults to 0.03 (published).
        eps: lower bound of the per-slice data range L; only a constant target slice (L = 0, where the published
            code returns -inf / NaN) is affected. Defaults to 1e-6.

    Raises:
        ValueError: a range is not an increasing pair, ``spatial_dims`` is not 1-3, or the SSIM window is invalid.
    """

    def __init__(
        self,
        clip_range: Sequence[float],
        eval_window: Sequence[float],
        spatial_dims: int = 2,
        win_size: int = 11,
        kernel_sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        eps: float = 1e-6,
    ) -> None:
        to_physical(torch.zeros(1), clip_range, eval_window)  # validates the ranges
        gaussian_window(win_size, kernel_sigma)  # validates the window
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.clip_range = tuple(float(v) for v in clip_range)
        self.eval_window = tuple(float(v) for v in eval_window)
        self.spatial_dims = spatial_dims
        self.win_size, self.kernel_sigma, self.k1, self.k2 = int(win_size), float(kernel_sigma), float(k1), float(k2)
        self.eps = eps

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            pred: (B, C, *spatial) prediction in [0, 1] network range, ``spatial_dims`` spatial axes.
            target: same shape, reference.

        Returns:
            dict ``psnr``/``ssim``/``rmse`` -> (B,) float64 per-sample values (MSE and L over channels and pixels,
            SSIM averaged over channels and pixels).

        Raises:
            ValueError: when shapes differ or do not have ``spatial_dims`` spatial axes.
        """
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape or pred.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"pred and target must share one (B, C, *spatial) shape with {self.spatial_dims} spatial axes, "
                f"got {tuple(pred.shape)}, {tuple(target.shape)}."
            )
        p = to_physical(pred.detach().double(), self.clip_range, self.eval_window)
        t = to_physical(target.detach().double(), self.clip_range, self.eval_window)
        t_flat, p_flat = t.reshape(t.shape[0], -1), p.reshape(p.shape[0], -1)
        data_range = (t_flat.amax(dim=1) - t_flat.amin(dim=1)).clamp_min(self.eps)  # L of the clipped target
        mse = ((p_flat - t_flat) ** 2).mean(dim=1)
        ssim = ssim_zero_padded(p, t, data_range, self.win_size, self.kernel_sigma, self.k1, self.k2)
        return {"psnr": 10.0 * torch.log10(data_range**2 / mse), "ssim": ssim, "rmse": mse.sqrt()}
