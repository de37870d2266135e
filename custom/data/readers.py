"""Image reading: MONAI's loaders plus the DICOM details TAT needs (HU rescale, PET SUV, Modality tag).

NIfTI files (``.nii``, ``.nii.gz``) are read by MONAI's ``NibabelReader``; DICOM files and DICOM series
(a folder of slices) by :class:`DicomReader`, a MONAI ``PydicomReader`` that

* applies ``RescaleSlope`` (0028,1053) and ``RescaleIntercept`` (0028,1052) per slice (HU for CT),
* converts PET (``Modality`` (0008,0060) = ``PT``, ``Units`` (0054,1001) = ``BQML``) to body-weight SUV:

  ``SUV = value [Bq/ml] * PatientWeight [kg] * 1000 [g/kg] / dose [Bq]``, with
  ``dose = RadionuclideTotalDose * 2 ** (-(t_ref - t_inj) / RadionuclideHalfLife)`` when
  ``DecayCorrection`` (0054,1102) is ``START`` (decay of the injected dose to the series start),
  and ``dose = RadionuclideTotalDose`` when it is ``ADMIN``. Tags: ``PatientWeight`` (0010,1030);
  in ``RadiopharmaceuticalInformationSequence`` (0054,0016): ``RadionuclideTotalDose`` (0018,1074, Bq),
  ``RadionuclideHalfLife`` (0018,1075, s), ``RadiopharmaceuticalStartDateTime`` (0018,1078) or
  ``RadiopharmaceuticalStartTime`` (0018,1072); ``t_ref`` = ``SeriesDate/SeriesTime`` (0008,0021/0031),
  else ``AcquisitionTime`` (0008,0032). Values already in ``GML`` (g/ml, i.e. SUV) are kept. Without the
  tags the values are left in their stored units and ``meta["suv_factor"]`` is absent,
* stores the DICOM modality in ``meta["modality"]`` (``CT``, ``PET``, ``MRI``) so that
  :class:`ModalityFromMetad` can fill an item's modality when the data list does not give it.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage, MapTransform

__all__ = [
    "DICOM_TO_MODALITY",
    "MAX_VOXELS",
    "suv_factor",
    "DicomReader",
    "ModalityFromMetad",
    "is_dicom",
    "check_nifti_header",
    "dicom_series_files",
    "load_image",
]

DICOM_TO_MODALITY = {"CT": "CT", "PT": "PET", "PET": "PET", "MR": "MRI", "MRI": "MRI"}
MAX_VOXELS = 2**30  # 4 GiB as float32: a header declaring more is refused before any voxel is read
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _parse_time(date: str | None, time: str | None) -> _dt.datetime | None:
    if not time:
        return None
    time = str(time).split(".")[0].ljust(6, "0")[:6]
    date = str(date) if date else "19000101"
    try:
        return _dt.datetime.strptime(date[:8] + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def suv_factor(ds: Any) -> float | None:
    """Body-weight SUV scale factor of a PET DICOM dataset (multiply rescaled Bq/ml values by it).

    Args:
        ds: a ``pydicom.Dataset`` of a PET slice.

    Returns:
        the factor, 1.0 when the values are already SUV (``Units`` = ``GML``), or None when a tag needed
        by the formula (module docstring) is missing or not positive.
    """
    units = str(getattr(ds, "Units", "")).upper()
    if units == "GML":
        return 1.0
    if units not in ("BQML", ""):
        return None
    weight = float(getattr(ds, "PatientWeight", 0) or 0)
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    if weight <= 0 or not seq:
        return None
    info = seq[0]
    dose = float(getattr(info, "RadionuclideTotalDose", 0) or 0)
    half_life = float(getattr(info, "RadionuclideHalfLife", 0) or 0)
    if dose <= 0:
        return None
    decay = str(getattr(ds, "DecayCorrection", "START")).upper()
    if decay == "START":
        if half_life <= 0:
            return None
        start_dt = getattr(info, "RadiopharmaceuticalStartDateTime", None)
        t_inj = _parse_time(str(start_dt)[:8], str(start_dt)[8:]) if start_dt else None
        if t_inj is None:
            t_inj = _parse_time(getattr(ds, "SeriesDate", None), getattr(info, "RadiopharmaceuticalStartTime", None))
        t_ref = _parse_time(getattr(ds, "SeriesDate", None), getattr(ds, "SeriesTime", None))
        t_ref = t_ref or _parse_time(getattr(ds, "AcquisitionDate", None), getattr(ds, "AcquisitionTime", None))
        if t_inj is None or t_ref is None:
            return None
        elapsed = (t_ref - t_inj).total_seconds()
        dose = dose * 2.0 ** (-elapsed / half_life)
    return weight * 1000.0 / dose


class DicomReader(PydicomReader):
    """MONAI ``PydicomReader`` that also converts PET to SUV and records the modality in the meta data.

    Use it as ``LoadImaged(keys, reader=DicomReader)`` (or ``reader="$custom.data.DicomReader"`` in a
    config) for DICOM files and series folders. Rescale slope/intercept are applied by ``PydicomReader``.

    Args:
        suv: convert PET slices to body-weight SUV when the tags allow it (see module docstring).
        kwargs: forwarded to ``monai.data.PydicomReader`` (e.g. ``swap_ij``, ``prune_metadata``).
    """

    def __init__(self, suv: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suv = suv

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        data = super()._get_array_data(img, filename)
        if self.suv and str(getattr(img, "Modality", "")).upper() == "PT":
            factor = suv_factor(img)
            if factor is not None:
                data = np.asarray(data, dtype=np.float32) * np.float32(factor)
        return data

    def _get_meta_dict(self, img: Any) -> dict:
        meta = super()._get_meta_dict(img)
        dicom_modality = str(getattr(img, "Modality", "")).upper()
        if dicom_modality:
            meta["modality"] = DICOM_TO_MODALITY.get(dicom_modality, dicom_modality)
        if self.suv and dicom_modality == "PT":
            factor = suv_factor(img)
            if factor is not None:
                meta["suv_factor"] = factor
        return meta


class ModalityFromMetad(MapTransform):
    """Fill ``data[modality_key]`` from the image meta data (DICOM ``Modality`` tag) when it is not given.

    Args:
        keys: image key(s) whose meta data is consulted, first match wins (e.g. ``"label"``).
        modality_key: item key of the modality name.
        allow_missing_keys: don't raise if an image key is absent.

    Raises:
        ValueError: the item has no modality and no image carries a modality tag (the message names the file).
    """

    def __init__(self, keys: KeysCollection, modality_key: str = "modality", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.modality_key):
            d[self.modality_key] = DICOM_TO_MODALITY.get(str(d[self.modality_key]).upper(), d[self.modality_key])
            return d
        names = []
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {}) or {}
            names.append(str(meta.get("filename_or_obj", key)))
            if meta.get("modality"):
                d[self.modality_key] = meta["modality"]
                return d
        raise ValueError(f"{', '.join(names) or 'item'}: no modality in the data list and no DICOM Modality tag.")


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a DICOM series folder or a DICOM file (by suffix or by the DICM preamble)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    if path.lower().endswith((".dcm", ".dicom", ".ima")):
        return True
    if path.lower().endswith((".nii", ".nii.gz", ".mgz", ".nrrd", ".mha", ".mhd")):
        return False
    try:
        return bool(pydicom.misc.is_dicom(path))
    except OSError:
        return False


def check_nifti_header(path: str | os.PathLike, max_voxels: int = MAX_VOXELS) -> tuple[int, ...]:
    """Read and sanity-check a NIfTI header without reading the voxels.

    Args:
        path: the ``.nii``/``.nii.gz`` file.
        max_voxels: largest accepted number of voxels (protects memory from absurd declared dimensions).

    Returns:
        the declared shape.

    Raises:
        ValueError: empty file, unparsable/corrupt header, non-positive or too large dimensions, or an uncompressed
            file shorter than its header declares (the message names the file and the problem).
    """
    import nibabel as nib  # local: nibabel is only needed for NIfTI

    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a NIfTI image.")
    try:
        nii = nib.load(path)
        shape = tuple(int(s) for s in nii.shape)
        itemsize = np.dtype(nii.get_data_dtype()).itemsize
        offset = int(nii.header.get("vox_offset", 0) or 0)
    except Exception as e:  # nibabel raises several types for a corrupt header or a non-gzip .gz
        raise ValueError(
            f"{path}: unreadable NIfTI header, corrupt or not a NIfTI file ({type(e).__name__}: {e})."
        ) from e
    if not shape or min(shape) <= 0:
        raise ValueError(f"{path}: invalid image dimensions {shape} in the NIfTI header.")
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > max_voxels:
        raise ValueError(
            f"{path}: header declares shape {shape} ({voxels:.3g} voxels), larger than the limit of {max_voxels:.3g} "
            "voxels; refusing to allocate it (corrupt header?)."
        )
    if not path.lower().endswith(".gz") and size < offset + voxels * itemsize:
        raise ValueError(
            f"{path}: truncated NIfTI file ({size} bytes, the header declares {offset + voxels * itemsize})."
        )
    return shape


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """Files of a DICOM series folder ordered by InstanceNumber, after checking the series (headers only).

    Non-DICOM files are skipped, as MONAI's ``PydicomReader`` does.

    Args:
        folder: the series folder.

    Returns:
        the image files in slice order.

    Raises:
        ValueError: no DICOM file, more than one ``SeriesInstanceUID``, a file without pixel data (e.g. a
            structured report), or missing slices (a gap in ``InstanceNumber`` or in the slice positions along
            the slice normal). The message names the folder and the offending files.
    """
    folder = os.fspath(folder)
    entries = []
    for name in sorted(os.listdir(folder)):
        f = os.path.join(folder, name)
        if not os.path.isfile(f):
            continue
        try:
            ds = pydicom.dcmread(f, defer_size=1024)  # large values (pixel data) stay on disk, their tags are seen
        except Exception:  # not a DICOM file
            continue
        entries.append((f, ds))
    if not entries:
        raise ValueError(f"{folder}: no DICOM file in the series folder.")
    series = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in entries})
    if len(series) > 1:
        raise ValueError(
            f"{folder}: mixed series, {len(series)} SeriesInstanceUIDs in one folder ({', '.join(series)}); "
            "put each series in its own folder."
        )
    no_pixels = [
        f
        for f, ds in entries
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds
    ]
    if no_pixels:
        ds = dict(entries)[no_pixels[0]]
        raise ValueError(
            f"{folder}: no pixel data in {os.path.basename(no_pixels[0])} (Modality "
            f"{getattr(ds, 'Modality', '?')}, SOP class {getattr(ds, 'SOPClassUID', '?')}): not an image"
            + (f" ({len(no_pixels)} such files)." if len(no_pixels) > 1 else ".")
        )
    entries.sort(key=lambda e: int(getattr(e[1], "InstanceNumber", 0) or 0))
    numbers = [int(getattr(ds, "InstanceNumber", 0) or 0) for _, ds in entries]
    if len(entries) > 1 and all(numbers) and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        raise ValueError(
            f"{folder}: missing slice(s), InstanceNumber {gaps[:10]} absent "
            f"(have {len(numbers)} of {numbers[-1] - numbers[0] + 1})."
        )
    positions = [getattr(ds, "ImagePositionPatient", None) for _, ds in entries]
    orientation = getattr(entries[0][1], "ImageOrientationPatient", None)
    if len(entries) > 2 and orientation is not None and all(p is not None for p in positions):
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        steps = np.diff(sorted(float(np.dot(normal, np.asarray(p, float))) for p in positions))
        if steps.size and np.median(steps) > 0 and np.max(steps) > 1.5 * np.median(steps):
            raise ValueError(
                f"{folder}: missing slice(s), slice spacing jumps from {np.median(steps):.3g} to "
                f"{np.max(steps):.3g} mm (ImagePositionPatient)."
            )
    return [f for f, _ in entries]


def load_image(path: str | os.PathLike, dicom_suv: bool = True) -> Any:
    """Read one image (NIfTI file, DICOM file or DICOM series folder) with MONAI's ``LoadImage``.

    Args:
        path: the file or folder.
        dicom_suv: convert PET DICOM to SUV (:class:`DicomReader`).

    Returns:
        a ``MetaTensor`` without channel axis, shape (H, W) or (H, W, D), with ``filename_or_obj`` in its meta.

    Raises:
        ValueError: missing, empty, corrupt, truncated or oversized file, or a bad DICOM series (see
            :func:`check_nifti_header`, :func:`dicom_series_files`); the message names the file and the problem.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found.")
    dicom = is_dicom(path)
    if os.path.isdir(path):
        dicom_series_files(path)  # clear errors for empty, mixed, pixel-less or incomplete series
    elif not dicom and path.lower().endswith(_NIFTI_SUFFIXES):
        check_nifti_header(path)  # clear errors for empty, corrupt, huge or truncated files, before any allocation
    elif os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (0 bytes).")
    reader = DicomReader(suv=dicom_suv) if dicom else NibabelReader()
    try:
        return LoadImage(reader=reader, image_only=True)(path)
    except EOFError as e:
        raise ValueError(f"{path}: truncated compressed file, unreadable image ({e}).") from e
    except Exception as e:  # readers raise many exception types
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e}).") from e
