"""3D volumes -> 2D axial slices for the 2D network, without loading every volume at once.

:func:`expand_slices` turns each data-list item into one item per slice (adding ``slice_index``), reading
only image headers (nibabel) or counting DICOM files, never the voxels. The transform chain then loads the
item's volume, and :class:`SelectSliced` keeps the one slice. Wrap the result in a MONAI
``PersistentDataset`` (or ``CacheDataset`` for small data) so the load-and-slice prefix runs once per slice:
memory then holds one volume per worker at a time, not the whole data set.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["num_slices", "expand_slices", "SelectSliced"]


def num_slices(path: str | os.PathLike, axis: int = 2) -> int:
    """Number of slices along a spatial ``axis`` from the file header only (2D images count as 1).

    Args:
        path: NIfTI file, DICOM file or DICOM series folder.
        axis: spatial axis (2 = axial for RAS-oriented NIfTI and for DICOM series stacks).

    Returns:
        the slice count.

    Raises:
        ValueError: unreadable file or missing path (the message names it).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = [f for f in glob.glob(os.path.join(path, "*")) if os.path.isfile(f)]
        if not files:
            raise ValueError(f"{path}: empty DICOM series folder.")
        return len(files) if axis == 2 else 1
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found.")
    if path.endswith((".nii", ".nii.gz", ".mgz", ".img", ".hdr")):
        try:
            shape = nib.load(path).shape  # header only: the voxel data stays on disk
        except Exception as e:  # nibabel raises several types
            raise ValueError(f"{path}: unreadable image ({e}).") from e
        spatial = [s for s in shape[:3]]
        return int(spatial[axis]) if len(spatial) > axis else 1
    return 1  # single DICOM file or 2D image


def expand_slices(
    items: Sequence[Mapping[str, Any]],
    key: str = "label",
    axis: int = 2,
    index_key: str = "slice_index",
    stride: int = 1,
) -> list[dict[str, Any]]:
    """One item per slice of each volume (2D items are kept once, with index 0).

    Args:
        items: data-list items with file paths (``image``, ``label``, ...).
        key: key whose file is inspected for the slice count (the partner must have the same shape;
            :func:`custom.data.validate_datalist` checks it).
        axis: spatial slicing axis.
        index_key: key receiving the slice index.
        stride: keep every ``stride``-th slice.

    Returns:
        a new list of new dicts (the input items are not modified).
    """
    out: list[dict[str, Any]] = []
    for item in items:
        n = num_slices(item[key], axis)
        out.extend({**item, index_key: i} for i in range(0, n, max(1, int(stride))))
    return out


class SelectSliced(MapTransform):
    """Keep one 2D slice of channel-first 3D images: (C, H, W, D) -> (C, H, W); 2D images pass through.

    Args:
        keys: image keys (all sliced at the same index, e.g. ``["image", "label"]``).
        index_key: item key holding the slice index (from :func:`expand_slices`).
        axis: spatial axis to slice (0, 1 or 2; the channel axis is not counted).
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: index out of range (the message names the file).
    """

    def __init__(
        self, keys: KeysCollection, index_key: str = "slice_index", axis: int = 2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key = index_key
        self.axis = axis

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        index = int(d.get(self.index_key, 0))
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim <= 3:  # (C, H, W): already 2D
                continue
            n = img.shape[1 + self.axis]
            if not 0 <= index < n:
                name = getattr(img, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{name}: slice index {index} out of range for {n} slices.")
            sl = [slice(None)] * img.ndim
            sl[1 + self.axis] = index
            d[key] = img[tuple(sl)]  # MetaTensor keeps its meta data; a view, the volume itself is not modified
        return d
