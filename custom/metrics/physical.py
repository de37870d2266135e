"""Image-quality metrics in physical units, as published for TAT (MICCAI 2025), on top of MONAI metrics.

Per slice: map the network range [0, 1] back to physical units with the modality's normalisation range, clip
prediction and target to the evaluation window (CT [-160, 240] HU, PET [0, 20], MRI [0, 4095]), and use
``data_range = max - min`` of the clipped target slice. PSNR and SSIM are computed by MONAI's ``PSNRMetric`` /
``SSIMMetric`` after rescaling both images by the target's (min, range), which gives exactly the metrics with that
per-slice data range (PSNR and SSIM are invariant to a common shift and scale of both images and of the data
range). RMSE is MONAI's ``RMSEMetric`` in physical units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import PSNRMetric, RMSEMetric, SSIMMetric

__all__ = ["to_physical", "PhysicalUnitMetrics", "METRIC_NAMES"]

METRIC_NAMES = ("psnr", "ssim", "rmse")


def to_physical(x: torch.Tensor, clip_range: Sequence[float], eval_window: Sequence[float]) -> torch.Tensor:
    """Map [0, 1] network intensities to physical units and clip to the evaluation window.

    Args:
        x: tensor of any shape in network range.
        clip_range: (low, high) physical range that was mapped to [0, 1].
        eval_window: (low, high) evaluation window in physical units.

    Returns:
        tensor of the same shape, in physical units, within ``eval_window``.

    Raises:
        ValueError: when a range is not an increasing pair.
    """
    (lo, hi), (wlo, whi) = (float(v) for v in clip_range), (float(v) for v in eval_window)
    if not (lo < hi and wlo < whi):
        raise ValueError(f"clip_range and eval_window must be increasing pairs, got {clip_range}, {eval_window}.")
    return (x.float() * (hi - lo) + lo).clamp(wlo, whi)


class PhysicalUnitMetrics:
    """Per-sample PSNR, SSIM and RMSE of one modality in physical units (see the module docstring).

    Args:
        clip_range: (low, high) normalisation range of the modality.
        eval_window: (low, high) evaluation window.
        spatial_dims: 2 for slices, 3 for volumes. Defaults to 2.
        win_size: SSIM Gaussian window size. Defaults to 11.
        kernel_sigma: SSIM Gaussian sigma. Defaults to 1.5.
        k1: SSIM constant. Defaults to 0.01.
        k2: SSIM constant. Defaults to 0.03.
        eps: lower bound of the per-slice data range (a constant target slice would give 0). Defaults to 1e-6.
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
        self.clip_range = tuple(float(v) for v in clip_range)
        self.eval_window = tuple(float(v) for v in eval_window)
        self.eps = eps
        self.psnr = PSNRMetric(max_val=1.0, reduction="none")
        self.ssim = SSIMMetric(
            spatial_dims=spatial_dims,
            data_range=1.0,
            kernel_type="gaussian",
            win_size=win_size,
            kernel_sigma=kernel_sigma,
            k1=k1,
            k2=k2,
            reduction="none",
        )
        self.rmse = RMSEMetric(reduction="none")

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            pred: (B, C, *spatial) prediction in [0, 1] network range.
            target: same shape, reference.

        Returns:
            dict ``psnr``/``ssim``/``rmse`` -> (B,) per-sample values (channel-averaged).

        Raises:
            ValueError: when shapes differ.
        """
        if pred.shape != target.shape or pred.ndim < 3:
            raise ValueError(
                f"pred and target must share one (B, C, *spatial) shape, got {pred.shape}, {target.shape}."
            )
        p = to_physical(torch.as_tensor(pred), self.clip_range, self.eval_window)
        t = to_physical(torch.as_tensor(target), self.clip_range, self.eval_window)
        dims = tuple(range(1, t.ndim))
        t_min = t.amin(dim=dims, keepdim=True)
        t_range = (t.amax(dim=dims, keepdim=True) - t_min).clamp_min(self.eps)  # data range of the clipped target
        p_unit, t_unit = (p - t_min) / t_range, (t - t_min) / t_range
        out = {"psnr": self.psnr(p_unit, t_unit), "ssim": self.ssim(p_unit, t_unit), "rmse": self.rmse(p, t)}
        for m in (self.psnr, self.ssim, self.rmse):
            m.reset()  # used as per-sample functions; accumulation is done by the caller
        return {k: torch.as_tensor(v).float().reshape(v.shape[0], -1).mean(dim=1) for k, v in out.items()}
