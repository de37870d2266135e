"""Read one scan for inference: the image in physical units plus what the writers need to write it back.

Reading goes through the one reading layer, :mod:`custom.data.readers` (MONAI's ``LoadImage`` with
:class:`custom.data.readers.NiftiReader` / :class:`custom.data.readers.DicomReader`), so inference accepts and
refuses exactly what the data-list validator and training accept and refuse: the same NIfTI checks (gzip CRC,
complex / RGB refused, ``scl_slope``/``scl_inter`` applied), the same DICOM series rule (sorted along the slice
normal, one duplicate and gap rule, one size limit), the same PET SUV rule and the same modality alias table.
Array layout: ``(Rows, Columns)`` for one DICOM slice, ``(Rows, Columns, slices)`` for a series; NIfTI keeps its
voxel order. 3D scans are restored slice by slice along the last axis. The item keys handed to the writer are
described in ``custom/inference/writers.py`` (and the reading/writing contract note).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from custom.data.limits import MAX_VOXELS
from custom.data.readers import DicomReader, canonical_modality, dicom_series, load_image, modality_error, nifti_image
from custom.data.slicing import spatial_shape
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["MAX_VOXELS", "load_nifti", "load_dicom_series", "read_scan", "LoadScand"]

_SOURCE_KEYS = ("source_format", "source_dtype", "source_scl_slope", "source_scl_inter")


def _check_spatial(img: Any, where: str) -> Any:
    shape = spatial_shape(img.shape, where)  # 2D or 3D (trailing singleton axes dropped), else a named error
    return img.reshape(shape) if tuple(img.shape) != shape else img


def load_nifti(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 2D or 3D NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        (float32 array in physical units, info with ``nifti`` (the nibabel image), ``dtype``, ``shape`` and the
        on-disk type and scaling ``source_dtype``, ``source_scl_slope``, ``source_scl_inter``).

    Raises:
        ValueError: see :func:`custom.data.load_image`; also not 2D/3D (messages name the file).
    """
    img, info = read_scan({"image": path, "kind": "nifti"})
    return np.asarray(img.numpy(), dtype=np.float32), info


def load_dicom_series(
    files: Sequence[str], where: str, suv: bool = True, pet_units: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM series (or one file) into a volume in physical units.

    Args:
        files: the series' files.
        where: folder or file name used in error messages.
        suv: convert PET (``Modality`` PT) to body-weight SUV (refused when the tags do not allow it).
        pet_units: declared PET units (``"SUV"``) for PET that cannot be converted.

    Returns:
        (float32 array ``(Rows, Columns)`` or ``(Rows, Columns, n)``, info with ``datasets`` (sorted, pixel data
        decoded), ``files`` (same order), ``suv_factors`` (per slice, 1.0 when not converted), ``modality``
        (CT/PET/MRI or None) and ``dicom_modality`` (the tag)).

    Raises:
        ValueError: see :func:`custom.data.readers.dicom_series` and :class:`custom.data.readers.DicomReader`.
    """
    data, info, _ = _read_dicom(list(files), where, suv, pet_units)
    return data, info


_REFERENCED = (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)"))
"""Tags of each source file that the derived series references (``SourceImageSequence``, file meta)."""


def _read_dicom(files: list[str], where: str, suv: bool, pet_units: str | None) -> tuple[np.ndarray, dict, Any]:
    if not files:
        raise ValueError(f"{where}: no DICOM file.")
    series = dicom_series(files[0] if len(files) == 1 else files, where=where)
    for path, header in zip(series.files, series.headers):
        missing = [f"{name} {tag}" for name, tag in _REFERENCED if not str(getattr(header, name, "") or "")]
        if missing:  # refused before restoring: the derived series could not be written
            raise ValueError(
                f"{path}: no {' or '.join(missing)} (an ACR-NEMA file?): the restored series must reference its "
                "source instances; convert the file to DICOM Part 10 first (e.g. dcmtk's dcmconv)."
            )
    reader = DicomReader(suv=suv, pet_units=pet_units, swap_ij=False)
    datasets = reader.read_series(series)
    array, meta = reader.get_data(datasets)
    datasets = datasets if isinstance(datasets, list) else [datasets]
    array = np.asarray(array, dtype=np.float32)
    info = {
        "datasets": datasets,
        "files": list(series.files),
        "suv_factors": [float(f) for f in meta["suv_factors"]],
        "modality": meta.get("modality") or None,
        "dicom_modality": meta.get("dicom_modality") or None,
    }
    return array, info, meta


def read_scan(
    item: Mapping[Hashable, Any], key: str = "image", dicom_suv: bool = True, pet_units: str | None = None
) -> tuple[MetaTensor, dict[str, Any]]:
    """Read the scan of a :func:`custom.inference.find_scans` item.

    Returns:
        (``MetaTensor`` (H, W[, D]) in physical units, ``scan_info`` for the writer).

    Raises:
        ValueError: the scan is refused (the message names the file and the problem).
    """
    path = str(item[key])
    if item.get("kind") == "nifti":
        img = _check_spatial(load_image(path), path)
        nii = nifti_image(path, verify=False)
        info = {"nifti": nii, "dtype": nii.get_data_dtype(), "shape": nii.shape}
        info.update({k: img.meta[k] for k in _SOURCE_KEYS if k in img.meta})
        return img, info
    files = list(item["files"]) if item.get("files") else [path]
    array, info, meta = _read_dicom(files, path, dicom_suv, pet_units)
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta=meta)
    return _check_spatial(img, path), info


class LoadScand(MapTransform):
    """Load the scan of an item from :func:`custom.inference.find_scans` as a channel-first float tensor.

    Sets ``d[key]`` to a ``MetaTensor`` ``(1, H, W)`` or ``(1, H, W, D)`` in physical units (``filename_or_obj``,
    affine, source headers and ``source_*`` keys in its meta), ``d["scan_info"]`` to the reader's info (used by
    :class:`custom.inference.SaveRestoredd`) and ``d["modality"]`` to the item's modality, else
    ``default_modality``, else the DICOM ``Modality`` tag. Items that :func:`custom.inference.find_scans` marks
    with ``skip`` (not a scan) pass through unchanged.

    Args:
        keys: the image key (one).
        default_modality: modality for items without one (config ``modality``); ``None`` to use the DICOM tag.
        dicom_suv: convert PET DICOM to SUV.
        pet_units: declared PET units (``"SUV"``) for PET that cannot be converted to SUV (config ``pet_units``).

    Raises:
        ValueError: unreadable scan, unsupported or unknown modality (messages name the file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        default_modality: str | None = None,
        dicom_suv: bool = True,
        pet_units: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.default_modality = default_modality
        self.dicom_suv = dicom_suv
        self.pet_units = pet_units

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get("skip"):
            return d
        if d.get("error"):
            raise ValueError(d["error"])
        for key in self.key_iterator(d):
            path = str(d[key])
            img, info = read_scan(d, key, self.dicom_suv, self.pet_units)
            given = d.get("modality") or self.default_modality
            if given:
                modality = canonical_modality(given)
                if modality is None:
                    raise ValueError(f"{path}: unknown modality {given!r}, expected one of CT, PET, MRI.")
            else:
                modality = info.get("modality")
                if not modality:
                    raise ValueError(modality_error(path, info.get("dicom_modality")))
            d["modality"] = modality
            d["scan_info"] = info
            img.meta["filename_or_obj"] = path
            d[key] = img[None]
        return d
