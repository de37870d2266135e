"""MRI k-space data consistency: keep the k-space the input really measured, let the network fill the rest.

An MRI scan degraded by k-space truncation (the bundle's x4 task, :func:`custom.transforms.kspace_truncate`) has
measured only the central ``round(n / factor)`` frequencies per in-plane axis; everything the network adds there
contradicts the acquisition. :func:`kspace_data_consistency` replaces the restored slice's central block (the
simulator's own mask, :func:`custom.transforms.kspace_center_mask`, including its rounding for sizes the factor
does not divide) by the input's, and goes back to image space.

Phase and magnitude: both slices are real images, so their spectra are complex (Hermitian). The replacement is
done on the complex spectra: phase and magnitude of every measured frequency come from the input. The replaced
set is the simulator's mask plus its point mirror (``f <-> -f``; one extra row / column when the block is even),
so the combined spectrum stays Hermitian and its inverse FFT is real up to rounding. Then ``mode``:

* ``"real"``: that real image. Its central block equals the input's exactly (relative error ~1e-8), but it can
  go negative near the background (MR magnitude images cannot);
* ``"magnitude"``: ``|.|`` of it, as the simulator and magnitude MR reconstruction do: non-negative, but the
  rectified ringing moves the block again (relative error up to ~1e-2 on a poor restoration);
* ``"nonnegative"`` (default): alternating projections (POCS) between the two convex sets "central block equals
  the input's" and "non-negative", ``iterations`` times, ending with the non-negativity step. The input itself
  lies in both sets, so the iteration converges; after 20 iterations the block error is ~1e-10 and the image is
  non-negative.

Figures of the three modes on the demo MRI test slice and a real 3D T1 volume: ``README.md`` ("Is it real?").

When it applies: inputs that truly are k-space truncated on the output grid (zero-filled low-resolution
acquisitions, the published x4 task). When it does not: thick-slice acquisitions (the missing resolution is
through-plane, not in the slice's k-space), images interpolated in image space (bicubic: their central
k-space is attenuated, not measured), any other degradation (noise, motion), and inputs whose magnitude was
post-processed (filters, bias correction). There the "measured" block is not a measurement and replacing it
brings the degradation back.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.data.datalist import item_name
from custom.settings import as_flag
from custom.transforms.mri_resolution import kspace_center_mask
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = ["DC_MODES", "DC_ITERATIONS", "kspace_data_consistency", "kspace_block_error", "DataConsistencyd"]

logger = logging.getLogger(__name__)

DC_MODES = ("nonnegative", "magnitude", "real")
DC_ITERATIONS = 20


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    """Centred 2D spectrum of ``(..., H, W)``."""
    return torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64)), dim=(-2, -1))


def _mask(shape: Sequence[int], factor: float, device: torch.device, symmetric: bool = False) -> torch.Tensor:
    """The simulator's centred mask over (H, W); ``symmetric`` adds its point mirror (frequency f <-> -f)."""
    mask = kspace_center_mask(tuple(int(s) for s in shape), factor)
    if symmetric:  # the DC sits at n // 2: frequency index i mirrors to 2 * (n // 2) - i (mod n)
        h, w = mask.shape
        mask = mask | mask[(2 * (h // 2) - np.arange(h)) % h][:, (2 * (w // 2) - np.arange(w)) % w]
    return torch.as_tensor(mask, device=device)


def _slices_last(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``(C, H, W)`` -> itself; ``(C, H, W, D)`` -> ``(C, D, H, W)`` so the FFT runs over (H, W) per slice."""
    return x if spatial_dims == 2 else x.movedim(-1, 1)


def _check(restored: torch.Tensor, measured: torch.Tensor, factor: float, mode: str) -> int:
    if mode not in DC_MODES:
        raise ValueError(f"data consistency mode must be one of {DC_MODES}, got {mode!r}.")
    if not factor >= 1:
        raise ValueError(f"kspace_factor must be >= 1, got {factor}.")
    if restored.shape != measured.shape:
        raise ValueError(f"restored shape {tuple(restored.shape)} does not match the input's {tuple(measured.shape)}.")
    if restored.dim() not in (3, 4):
        raise ValueError(f"expected a (C, H, W) slice or (C, H, W, D) volume, got shape {tuple(restored.shape)}.")
    return restored.dim() - 1


def kspace_data_consistency(
    restored: np.ndarray | torch.Tensor,
    measured: np.ndarray | torch.Tensor,
    factor: float = 4.0,
    mode: str = "nonnegative",
    iterations: int = DC_ITERATIONS,
) -> torch.Tensor:
    """Replace the central k-space block of every in-plane slice of ``restored`` by ``measured``'s.

    Args:
        restored: ``(C, H, W)`` slice or ``(C, H, W, D)`` volume (slices along the last axis), not modified.
        measured: the input scan, same shape and units.
        factor: per-axis truncation factor of the acquisition (4: central ``round(n / 4)`` frequencies per axis,
            the mask of :func:`custom.transforms.kspace_center_mask`, the simulator's).
        mode: ``"nonnegative"``, ``"magnitude"`` or ``"real"``; see the module docstring.
        iterations: alternating projections of ``"nonnegative"`` (>= 1).

    Returns:
        float32 tensor of ``restored``'s shape. ``measured`` itself is a fixed point (to float rounding) when it
        is non-negative (every mode) or always (``"real"``).

    Raises:
        ValueError: shapes differ, rank not 3/4, factor < 1, unknown mode, iterations < 1.
    """
    r = convert_to_tensor(restored, track_meta=False)
    m = convert_to_tensor(measured, track_meta=False).to(r.device)
    spatial_dims = _check(r, m, factor, mode)
    rs, ms = _slices_last(r, spatial_dims), _slices_last(m, spatial_dims)
    mask = _mask(rs.shape[-2:], factor, rs.device, symmetric=True)
    if iterations < 1:
        raise ValueError(f"data consistency iterations must be >= 1, got {iterations}.")
    km = _spectrum(ms)

    def project(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(torch.fft.ifftshift(torch.where(mask, km, _spectrum(x)), dim=(-2, -1))).real

    if mode == "real":
        out = project(rs)
    elif mode == "magnitude":
        out = project(rs).abs()
    else:
        out = rs.to(torch.float64)
        for _ in range(iterations):
            out = project(out).clamp_min(0)
    out = out.to(torch.float32)
    return out if spatial_dims == 2 else out.movedim(1, -1)


def kspace_block_error(
    image: np.ndarray | torch.Tensor, measured: np.ndarray | torch.Tensor, factor: float = 4.0
) -> float:
    """Relative error of ``image``'s central k-space block against ``measured``'s.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)``.
        measured: same shape.
        factor: the block's truncation factor (simulator mask).

    Returns:
        ``||K_image - K_measured||_2 / ||K_measured||_2`` over the block of every slice (0 when both are zero).

    Raises:
        ValueError: shapes differ or rank not 3/4.
    """
    a = convert_to_tensor(image, track_meta=False)
    b = convert_to_tensor(measured, track_meta=False).to(a.device)
    spatial_dims = _check(a, b, factor, "magnitude")
    ka, kb = _spectrum(_slices_last(a, spatial_dims)), _spectrum(_slices_last(b, spatial_dims))
    mask = _mask(ka.shape[-2:], factor, ka.device)
    ref = float(torch.linalg.vector_norm(kb[..., mask]))
    diff = float(torch.linalg.vector_norm(ka[..., mask] - kb[..., mask]))
    return 0.0 if ref == 0 and diff == 0 else diff / max(ref, 1e-300)


class DataConsistencyd(MapTransform):
    """Apply :func:`kspace_data_consistency` to MRI items: ``d[key]`` (restored) against ``d[reference_key]``.

    Items of other modalities pass unchanged, and the log says so; ``enabled=False`` passes everything
    unchanged (the inference default while the option is measured). A slice size the factor does not divide is
    handled with the simulator's rounding (``round(n / factor)`` frequencies kept), and a warning naming the
    file and the block is logged and appended to ``d["warnings"]``. Use it after
    :class:`custom.transforms.ModalityDenormalized` so both images are in physical units; the result is not
    clipped again (clipping would break the consistency).

    Args:
        keys: restored image key(s), ``(C, H, W)`` or ``(C, H, W, D)``.
        reference_key: key of the input scan in the same units (the un-normalised input).
        factor: per-axis k-space truncation factor of the acquisition.
        mode: ``"nonnegative"``, ``"magnitude"`` or ``"real"`` (see :func:`kspace_data_consistency`).
        enabled: apply it at all.
        modalities: modalities it applies to (MRI; DICOM ``MR`` is accepted).
        modality_key: key of the item's modality.

    Raises:
        ValueError: factor < 1 or unknown mode (at construction); missing reference or shape mismatch (per item).
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "input",
        factor: float = 4.0,
        mode: str = "nonnegative",
        enabled: bool = True,
        modalities: Sequence[str] = ("MRI",),
        modality_key: str = "modality",
    ) -> None:
        super().__init__(keys)
        if mode not in DC_MODES:
            raise ValueError(f"DataConsistencyd: mode must be one of {DC_MODES}, got {mode!r}.")
        if not float(factor) >= 1:
            raise ValueError(f"DataConsistencyd: kspace_factor must be >= 1, got {factor}.")
        self.reference_key = reference_key
        self.factor = float(factor)
        self.mode = mode
        self.enabled = as_flag(enabled, "data_consistency")
        self.modalities = {"MR" if str(m).upper() == "MRI" else str(m).upper() for m in modalities}
        self.modality_key = modality_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        name = item_name(d)
        modality = str(d.get(self.modality_key, "")).upper()
        if ("MR" if modality == "MRI" else modality) not in self.modalities:
            logger.info("data consistency: %s is %s, not MRI: left unchanged.", name, modality or "of unknown modality")
            return d
        if self.reference_key not in d:
            raise ValueError(f"{name}: data consistency needs the input scan under '{self.reference_key}'.")
        for key in self.key_iterator(d):
            restored = d[key]
            shape = tuple(int(s) for s in restored.shape[1:3])
            kept = [max(1, int(round(n / self.factor))) for n in shape]
            if any(n % self.factor for n in shape):
                message = (
                    f"data consistency: slice size {shape[0]}x{shape[1]} is not divisible by kspace_factor "
                    f"{self.factor:g}; kept the central {kept[0]}x{kept[1]} frequencies (the simulator's rounding)"
                )
                logger.warning("%s: %s.", name, message)
                d["warnings"] = [*d.get("warnings", []), message]
            try:
                out = kspace_data_consistency(restored, d[self.reference_key], self.factor, self.mode)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
            d[key] = convert_to_dst_type(out, restored, dtype=torch.float32)[0]
            logger.info(
                "data consistency: %s central %dx%d k-space per slice replaced by the input's (%s).",
                name,
                kept[0],
                kept[1],
                self.mode,
            )
        return d
