"""Paired random crop: the same training-patch window in the degraded input and the clean target."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from custom.data.datalist import key_name
from monai.config import KeysCollection
from monai.transforms import RandSpatialCropd, SpatialPad

__all__ = ["PairedRandCropd"]


class PairedRandCropd(RandSpatialCropd):
    """Crop one random ``roi_size`` window, the same in every key (MONAI ``RandSpatialCropd``, fixed size).

    Before cropping it checks that all keys share one spatial shape (a mismatched pair would be cropped at
    different anatomy) and pads images smaller than the patch (after normalisation 0 is the bottom of the
    clip range: air for CT, background for PET and MRI).

    Args:
        keys: image keys cropped together, e.g. ``["image", "label"]``; arrays (C, H, W[, D]).
        roi_size: patch size (published TAT: 128).
        pad_mode: ``numpy.pad`` mode for images smaller than ``roi_size``; None leaves them smaller.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: the keys' spatial shapes differ (the message names the files).
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int = 128,
        pad_mode: str | None = "constant",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, roi_size=roi_size, random_center=True, random_size=False, allow_missing_keys=allow_missing_keys
        )
        self.roi_size = roi_size
        self.pad = SpatialPad(roi_size, mode=pad_mode) if pad_mode else None

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        shapes = {k: tuple(d[k].shape[1:]) for k in keys}
        if len(set(shapes.values())) > 1:
            names = ", ".join(f"{key_name(d, k)} {shapes[k]}" for k in keys)
            raise ValueError(f"shape mismatch between paired images: {names}.")
        if self.pad is not None:
            for k in keys:
                d[k] = self.pad(d[k])
        return super().__call__(d, lazy=lazy)
