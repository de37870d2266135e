"""3D volumes -> 2D axial slices for the 2D network, without loading every volume at once.

:func:`expand_slices` turns each data-list item into one item per slice (adding ``slice_index``), reading
only image headers (nibabel; DICOM headers once per file, cached), never the voxels. The transform chain then loads the
item's slice (:class:`LoadSliced`: only that slice is read from disk). Wrap the result in a MONAI
``PersistentDataset`` (or ``CacheDataset`` for small data) so loading runs once per slice.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.data.limits import finite_values
from custom.data.readers import (
    DicomReader,
    dicom_series,
    exact_in_float32,
    is_dicom,
    is_nifti,
    load_image,
    nifti_image,
    nifti_source_meta,
)
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["num_slices", "expand_slices", "LoadSliced", "load_slice", "spatial_shape"]


def spatial_shape(shape: Sequence[int], path: str) -> tuple[int, ...]:
    """The 2D or 3D spatial shape of an image (trailing singleton axes beyond the third dropped).

    Raises:
        ValueError: 1D, or 4D and more with a non-singleton extra axis (the message names the file).
    """
    dims = [int(s) for s in shape]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if not 2 <= len(dims) <= 3:
        raise ValueError(f"{path}: expected a 2D or 3D image, got shape {tuple(int(s) for s in shape)}.")
    return tuple(dims)


def num_slices(path: str | os.PathLike, axis: int = 2) -> int:
    """Number of slices along a spatial ``axis`` from the file header only (2D images count as 1).

    Args:
        path: NIfTI file, DICOM file or DICOM series folder.
        axis: spatial axis (2 = axial for RAS-oriented NIfTI and for DICOM series stacks).

    Returns:
        the slice count.

    Raises:
        ValueError: unreadable file, missing path, unsupported file type, or a DICOM series with ``axis`` other
            than 2 (the message names it); the same header checks as :func:`custom.data.load_image` (one reading
            layer, headers cached).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found.")
    if os.path.isdir(path) or (is_dicom(path) and not is_nifti(path)):
        series = dicom_series(path)  # headers only, read once and cached; checks series, gaps, pixel format
        if axis != 2 and os.path.isdir(path):  # as load_slice: a series folder is only sliced along its stack
            raise ValueError(f"{path}: a DICOM series can only be sliced along axis 2.")
        return len(series.files) if axis == 2 else 1
    if is_nifti(path):
        spatial = list(spatial_shape(nifti_image(path).shape, path))  # header (+ gzip CRC): voxels stay on disk
        return int(spatial[axis]) if len(spatial) > axis else 1
    if path.lower().endswith(".bin"):
        return 1  # a pickled 2D training patch (custom/data/pickled.py)
    # what load_image / load_slice cannot read is refused here, before training (not counted as one slice)
    raise ValueError(f"{path}: unsupported file type (expected .nii, .nii.gz or DICOM).")


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

    Raises:
        ValueError: ``stride`` not a positive integer (it used to be taken as 1), or a :func:`num_slices` error.
    """
    try:
        valid = not isinstance(stride, bool) and int(stride) == stride and stride >= 1
    except (TypeError, ValueError, OverflowError):  # None, text, inf
        valid = False
    if not valid:
        raise ValueError(f"expand_slices: stride must be a positive integer (every stride-th slice), got {stride!r}.")
    out: list[dict[str, Any]] = []
    for item in items:
        n = num_slices(item[key], axis)
        out.extend({**item, index_key: i} for i in range(0, n, int(stride)))
    return out


def load_slice(path: str | os.PathLike, index: int, axis: int = 2, pet_units: str | None = None) -> MetaTensor:
    """Read one 2D slice of an image file without reading the rest of the volume.

    Args:
        path: NIfTI file (sliced through nibabel's array proxy after :func:`custom.data.readers.nifti_image`'s
            checks), DICOM series folder (only slice ``index`` of :func:`custom.data.readers.dicom_series` is
            decoded, rescaled and SUV-converted by :class:`DicomReader`; the headers come from the cache), or a 2D
            image (``index`` must be 0).
        index: slice index along ``axis``.
        axis: spatial axis (DICOM series: only 2).
        pet_units: declared PET units (``"SUV"``) for PET that cannot be converted to SUV.

    Returns:
        (H, W) float32 ``MetaTensor`` with ``filename_or_obj``, ``slice_index`` and the slice's affine in its meta
        data; equal to slice ``index`` of ``load_image(path)``.

    Raises:
        ValueError: missing or unreadable file, or index out of range (the message names the file).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found.")
    if os.path.isdir(path):
        if axis != 2:
            raise ValueError(f"{path}: a DICOM series can only be sliced along axis 2.")
        series = dicom_series(path)
        if not 0 <= index < len(series.files):
            raise ValueError(f"{path}: slice index {index} out of range for {len(series.files)} slices.")
        reader = DicomReader(pet_units=pet_units)
        arr, meta = reader.get_data(reader.read_series(series, index))
        img = MetaTensor(torch.as_tensor(np.asarray(arr, dtype=np.float32)), meta=meta)
        img.meta["filename_or_obj"] = path
    elif is_nifti(path) and not is_dicom(path):
        nii = nifti_image(path)  # empty, corrupt, huge, truncated, CRC, complex / RGB: clear error
        shape = spatial_shape(nii.shape, path)
        if len(shape) < 3:
            img = load_image(path, pet_units=pet_units)
            if index != 0:
                raise ValueError(f"{path}: slice index {index} out of range for 1 slice.")
        else:
            if not 0 <= index < shape[axis]:
                raise ValueError(f"{path}: slice index {index} out of range for {shape[axis]} slices.")
            sl = [slice(None)] * len(nii.shape)
            sl[axis] = index
            for k in range(3, len(nii.shape)):  # trailing singleton axes
                sl[k] = 0
            try:
                arr = np.asarray(nii.dataobj[tuple(sl)])  # reads this slab only, scaling applied
            except Exception as e:
                raise ValueError(f"{path}: unreadable NIfTI voxel data ({type(e).__name__}: {e}).") from e
            arr = np.array(finite_values(exact_in_float32(arr, path), path), dtype=np.float32)
            affine = nii.affine.copy()
            affine[:3, 3] += affine[:3, axis] * index  # origin of the slice
            meta = {"filename_or_obj": path, "pixdim": np.asarray(nii.header["pixdim"]).copy()}
            meta.update(nifti_source_meta(nii))
            img = MetaTensor(torch.as_tensor(arr), affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)
    else:  # one DICOM file (multi-frame ones are refused) or one .bin patch: a 2D image, one slice
        img = load_image(path, pet_units=pet_units)
        if index != 0:
            raise ValueError(f"{path}: slice index {index} out of range for 1 slice.")
    img.meta["slice_index"] = int(index)
    return img


class LoadSliced(MapTransform):
    """Load only the slice ``data[index_key]`` of each key's file (see :func:`load_slice`).

    Follow with ``EnsureChannelFirstd(keys, channel_dim="no_channel")``.

    Args:
        keys: keys holding file paths (e.g. ``["image", "label"]``).
        index_key: item key of the slice index (from :func:`expand_slices`; 0 when absent).
        axis: spatial slicing axis.
        pet_units: declared PET units (``"SUV"``) for PET that cannot be converted to SUV.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: missing or unreadable file, or index out of range (the message names the file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        index_key: str = "slice_index",
        axis: int = 2,
        allow_missing_keys: bool = False,
        pet_units: str | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key = index_key
        self.axis = axis
        self.pet_units = pet_units

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        index = int(d.get(self.index_key, 0))
        for key in self.key_iterator(d):
            d[key] = load_slice(d[key], index, self.axis, self.pet_units)
        return d
