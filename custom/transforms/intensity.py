"""Per-modality intensity mapping: physical units <-> network range [0, 1].

The ranges are never written here: they come from the modality settings (``bundle/configs/modality/*.json``
read by :func:`custom.settings.load_modality_settings`), passed as the ``settings`` argument.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from custom.data.datalist import key_name
from custom.settings import get_modality_setting
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange
from monai.utils.type_conversion import convert_to_tensor

__all__ = ["ModalityNormalized", "ModalityDenormalized"]


class _ModalityTransform(MapTransform):
    """Shared plumbing: find the item's modality settings and build a MONAI intensity transform per key."""

    def __init__(
        self,
        keys: KeysCollection,
        settings: Mapping[str, Mapping[str, Any]],
        modality_key: str = "modality",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not settings:
            raise ValueError("modality settings are empty: load them with custom.settings.load_modality_settings.")
        self.settings = settings
        self.modality_key = modality_key

    def _where(self, d: Mapping[Hashable, Any]) -> str:
        first = next(iter(self.key_iterator(dict(d))), None)
        return key_name(d, first) if first is not None else "item"

    def _modalities(self, d: Mapping[Hashable, Any]) -> list[Any]:
        """The item's modality, or one per sample for a collated batch (list/tuple of names)."""
        if self.modality_key not in d:
            raise ValueError(
                f"{self._where(d)}: no '{self.modality_key}' entry in the item, cannot pick an intensity range."
            )
        value = d[self.modality_key]
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def _ranges(self, setting: Mapping[str, Any]) -> tuple[float, float, float, float]:
        """(a_min, a_max, b_min, b_max) of ``ScaleIntensityRange`` for one modality."""
        raise NotImplementedError

    def _clip(self) -> bool:
        return True

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        where = self._where(d)
        ranges = [self._ranges(get_modality_setting(self.settings, m, where=where)) for m in self._modalities(d)]
        for key in self.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=True)
            if not bool(torch.isfinite(img).all()):
                raise ValueError(f"{key_name(d, key)}: non-finite values (NaN or inf) in '{key}'.")
            if len(set(ranges)) == 1:
                a_min, a_max, b_min, b_max = ranges[0]
                scaler = ScaleIntensityRange(a_min, a_max, b_min, b_max, clip=self._clip(), dtype=torch.float32)
                d[key] = scaler(img)  # a new tensor: the caller's array is not modified
                continue
            if img.shape[0] != len(ranges):
                raise ValueError(f"{key_name(d, key)}: {len(ranges)} modalities for a batch of {img.shape[0]}.")
            # mixed-modality batch (B, C, ...): one range per sample, broadcast over the other axes
            r = torch.as_tensor(ranges, dtype=torch.float32, device=img.device).reshape(
                len(ranges), 4, *[1] * (img.ndim - 1)
            )
            a_min, a_max, b_min, b_max = r.unbind(1)
            out = (img.float() - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
            d[key] = torch.minimum(torch.maximum(out, b_min), b_max) if self._clip() else out
        return d


class ModalityNormalized(_ModalityTransform):
    """Clip each key to its modality's ``clip_range`` and map it linearly to [0, 1].

    Published TAT normalisation (MICCAI 2025): CT [-1024, 3072] HU, PET [0, 20] SUV, MRI [0, 4095],
    read from the ``settings`` dict (see ``bundle/configs/modality``).

    Args:
        keys: keys of the images to normalise (e.g. ``["image", "label"]``); arrays (C, H, W[, D]), or a batch
            (B, C, H, W) with a list of B modality names.
        settings: modality name -> dict with ``clip_range`` [low, high] in physical units
            (output of :func:`custom.settings.load_modality_settings`).
        modality_key: key of the item's modality name (``"CT"``, ``"PET"``, ``"MRI"``; DICOM ``MR``/``PT`` accepted).
        allow_missing_keys: don't raise if a key is absent.

    Returns:
        (from ``__call__``) a new dict whose images are float32 tensors in [0, 1], same shape.

    Raises:
        ValueError: unknown or missing modality, or non-finite values (the message names the file).
    """

    def _ranges(self, setting: Mapping[str, Any]) -> tuple[float, float, float, float]:
        low, high = setting["clip_range"]
        return float(low), float(high), 0.0, 1.0


class ModalityDenormalized(_ModalityTransform):
    """Inverse of :class:`ModalityNormalized`: map [0, 1] back to physical units (HU, SUV, scanner units).

    By default values are not clipped: a prediction slightly outside [0, 1] maps slightly outside ``clip_range``
    (the metrics apply the published evaluation window themselves). With ``clip=True`` the result is clipped to
    ``clip_range``, the range the network was trained on: no negative SUV or MRI intensity, no CT below -1024 HU
    in a restored scan (what the inference config does).

    Args:
        keys: keys of the images to map back; shape (C, H, W[, D]), or a batch (B, C, H, W) whose
            ``modality`` entry is one name or a list of B names (mixed-modality batches are mapped per sample).
        settings: modality name -> dict with ``clip_range``.
        modality_key: key of the item's modality name.
        allow_missing_keys: don't raise if a key is absent.
        clip: (keyword only) clip the result to ``clip_range``. Defaults to False.

    Raises:
        ValueError: unknown or missing modality, or non-finite values.
    """

    def __init__(self, *args: Any, clip: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clip = bool(clip)

    def _ranges(self, setting: Mapping[str, Any]) -> tuple[float, float, float, float]:
        low, high = setting["clip_range"]
        return 0.0, 1.0, float(low), float(high)

    def _clip(self) -> bool:
        return self.clip
