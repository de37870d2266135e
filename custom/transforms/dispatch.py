"""Apply a different transform per modality, e.g. the matching degradation simulator for clean-only data."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from custom.data.readers import DICOM_TO_MODALITY
from custom.transforms.intensity import item_name
from monai.transforms import Transform

__all__ = ["ModalityDispatchd"]


class ModalityDispatchd(Transform):
    """Run ``transforms[item[modality_key]]`` on the item (a dict transform, e.g. a simulator).

    Example (clean-only data: make the degraded ``image`` from the clean ``label`` per modality)::

        ModalityDispatchd({"CT": SimulateLowDoseCTd(i0=5e5), "PET": SimulateLowCountPETd(dose_fraction=1 / 12),
                           "MRI": KSpaceTruncated(factor=4)}, skip_if_present="image")

    Args:
        transforms: modality name (CT, PET, MRI; DICOM MR/PT accepted) -> callable taking and returning the item dict.
        modality_key: item key of the modality name.
        skip_if_present: leave items that already have this key unchanged (paired items in a mixed list);
            None always applies the transform.

    Raises:
        ValueError: the item's modality has no transform (the message names the file).
    """

    def __init__(
        self,
        transforms: Mapping[str, Callable[[dict], dict]],
        modality_key: str = "modality",
        skip_if_present: str | None = "image",
    ) -> None:
        self.transforms = {DICOM_TO_MODALITY.get(k.upper(), k.upper()): t for k, t in transforms.items()}
        self.modality_key = modality_key
        self.skip_if_present = skip_if_present

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.skip_if_present is not None and d.get(self.skip_if_present) is not None:
            return d
        name = str(d.get(self.modality_key, "")).upper()
        name = DICOM_TO_MODALITY.get(name, name)
        if name not in self.transforms:
            where = item_name(d, "label") if "label" in d else "item"
            raise ValueError(
                f"{where}: no transform for modality {d.get(self.modality_key)!r} " f"(have {sorted(self.transforms)})."
            )
        return dict(self.transforms[name](d))
