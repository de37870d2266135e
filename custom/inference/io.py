"""Read one scan for inference: the image in physical units plus what the writers need to write it back.

NIfTI: ``nibabel`` (scaling applied), the image object is kept so the output reuses its header and affine.
DICOM series: ``pydicom``; slices sorted along the slice normal (``ImagePositionPatient`` projected on
``ImageOrientationPatient``'s normal, else ``InstanceNumber``), ``RescaleSlope``/``RescaleIntercept`` applied
per slice and PET converted to body-weight SUV with :func:`custom.data.suv_factor` (the same rules as
:class:`custom.data.DicomReader`). Array layout: ``(Rows, Columns)`` for one slice, ``(Rows, Columns, slices)``
for a series; NIfTI keeps its voxel order. 3D scans are restored slice by slice along the last axis.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from custom.data.readers import DICOM_TO_MODALITY, suv_factor

__all__ = ["MAX_VOXELS", "load_nifti", "load_dicom_series", "LoadScand"]

MAX_VOXELS = 2**31  # refuse headers declaring more voxels (8 GiB of float32) before reading any data


def load_nifti(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 2D or 3D NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        (float32 array in physical units, info with ``nifti`` (the nibabel image) and ``dtype``).

    Raises:
        ValueError: unreadable file, not 2D/3D (a trailing axis of size 1 is dropped), or non-finite values.
    """
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for broken files
        raise ValueError(f"{path}: unreadable NIfTI file ({type(e).__name__}: {e}).") from e
    shape = tuple(int(n) for n in img.shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"{path}: invalid image dimensions {shape} in the header.")
    if int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise ValueError(f"{path}: header declares {shape} voxels, larger than the limit of {MAX_VOXELS}.")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated or corrupt data
        raise ValueError(f"{path}: unreadable NIfTI data ({type(e).__name__}: {e}).") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or min(data.shape) < 1:
        raise ValueError(f"{path}: expected a 2D or 3D image, got shape {img.shape}.")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: non-finite values (NaN or inf) in the image.")
    return data, {"nifti": img, "dtype": img.get_data_dtype(), "shape": img.shape}


def _sort_key(ds: Any) -> tuple[float, float]:
    ipp, iop = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
    number = float(getattr(ds, "InstanceNumber", 0) or 0)
    if ipp is None or iop is None:
        return number, number
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return float(np.dot(normal, np.asarray(ipp, float))), number


def load_dicom_series(files: list[str], where: str, suv: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM series (or one file) into a volume in physical units.

    Args:
        files: the series' files.
        where: folder or file name used in error messages.
        suv: convert PET (``Modality`` PT) to body-weight SUV when the tags allow it.

    Returns:
        (float32 array ``(Rows, Columns)`` or ``(Rows, Columns, n)``, info with ``datasets`` (sorted, pixel data
        decoded), ``files`` (same order), ``suv_factors`` (per slice, 1.0 when not converted) and ``modality``).

    Raises:
        ValueError: unreadable file, multi-frame or colour image, slices of different sizes, non-finite values.
    """
    if not files:
        raise ValueError(f"{where}: no DICOM file.")
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as e:  # pydicom raises many types for broken files / missing decoders
            raise ValueError(f"{path}: unreadable DICOM image ({type(e).__name__}: {e}).") from e
        if arr.ndim != 2 or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise ValueError(f"{path}: only single-frame grey-level DICOM is supported, got pixel array {arr.shape}.")
        datasets.append((ds, arr, path))
    if not datasets:
        raise ValueError(f"{where}: no DICOM file.")
    uids = {str(getattr(d, "SeriesInstanceUID", "")) for d, _, _ in datasets}
    if len(uids) > 1:
        raise ValueError(
            f"{where}: mixed series ({len(uids)} SeriesInstanceUIDs in one scan); put each series in "
            "its own folder or list it separately."
        )
    datasets.sort(key=lambda t: _sort_key(t[0]))
    positions = np.array([_sort_key(d)[0] for d, _, _ in datasets])
    if len(positions) > 2 and all(getattr(d, "ImagePositionPatient", None) is not None for d, _, _ in datasets):
        gaps = np.diff(positions)
        step = float(gaps[gaps > 1e-6].min()) if (gaps > 1e-6).any() else 0.0  # the nominal spacing
        if step > 0 and (gaps > 1.5 * step).any():
            raise ValueError(
                f"{where}: missing slice(s): gap of {float(gaps.max()):.3g} mm between slices spaced " f"{step:.3g} mm."
            )
    shapes = {a.shape for _, a, _ in datasets}
    if len(shapes) > 1:
        raise ValueError(f"{where}: slices of different sizes {sorted(shapes)} in one series.")
    slices, factors = [], []
    for ds, arr, _ in datasets:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        values = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
        factor = suv_factor(ds) if suv and str(getattr(ds, "Modality", "")).upper() == "PT" else None
        factors.append(1.0 if factor is None else float(factor))
        slices.append(values * np.float32(factors[-1]))
    data = slices[0] if len(slices) == 1 else np.stack(slices, axis=-1)
    if not np.isfinite(data).all():
        raise ValueError(f"{where}: non-finite values in the DICOM series.")
    tag = str(getattr(datasets[0][0], "Modality", "")).upper()
    return data, {
        "datasets": [d for d, _, _ in datasets],
        "files": [p for _, _, p in datasets],
        "suv_factors": factors,
        "modality": DICOM_TO_MODALITY.get(tag) if tag else None,
    }


class LoadScand(MapTransform):
    """Load the scan of an item from :func:`custom.inference.find_scans` as a channel-first float tensor.

    Sets ``d[key]`` to a ``MetaTensor`` ``(1, H, W)`` or ``(1, H, W, D)`` in physical units (``filename_or_obj``
    in its meta), ``d["scan_info"]`` to the reader's info (used by :class:`custom.inference.SaveRestoredd`) and
    ``d["modality"]`` to the item's modality, else ``default_modality``, else the DICOM ``Modality`` tag.

    Args:
        keys: the image key (one).
        default_modality: modality for items without one (config ``modality``); ``None`` to use the DICOM tag.
        dicom_suv: convert PET DICOM to SUV.

    Raises:
        ValueError: unreadable scan, or no modality known (messages name the file).
    """

    def __init__(self, keys: KeysCollection, default_modality: str | None = None, dicom_suv: bool = True) -> None:
        super().__init__(keys)
        self.default_modality = default_modality
        self.dicom_suv = dicom_suv

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get("error"):
            raise ValueError(d["error"])
        for key in self.key_iterator(d):
            path = str(d[key])
            if d.get("kind") == "nifti":
                array, info = load_nifti(path)
            else:
                files = d["files"] if "files" in d else [path]
                array, info = load_dicom_series(list(files), path, self.dicom_suv)
            modality = d.get("modality") or self.default_modality or info.get("modality")
            if not modality:
                raise ValueError(f"{path}: no modality: set 'modality' (CT, PET or MRI) in the config or data list.")
            d["modality"] = DICOM_TO_MODALITY.get(str(modality).upper(), str(modality))
            d["scan_info"] = info
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], meta={"filename_or_obj": path})
        return d
