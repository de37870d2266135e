"""Atomic writers of restored scans: NIfTI like the input NIfTI, a derived DICOM series for DICOM input.

Both write into a temporary name next to the destination and ``os.replace`` it, so a crash never leaves a
half-written output. An existing output is never overwritten unless ``overwrite=True`` (then it is replaced
atomically); an output path equal to an input file is refused.

NIfTI: the input's header and affine are reused (spacing, orientation, qform/sform, units). Values are cast
back to the input's on-disk data type: integers are rounded and clipped to the type's range; when the input
stored scaled integers (``scl_slope``), nibabel picks new scale factors for the restored values.

DICOM: every input slice gives one derived slice with the same file name, same patient/study/frame of
reference and geometry tags (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
``SliceThickness``...), a new ``SeriesInstanceUID`` and ``SOPInstanceUID`` s, ``ImageType`` DERIVED\\SECONDARY,
``DerivationDescription`` and a ``SourceImageSequence`` pointing at the input slice. Pixels are written
uncompressed as 16-bit integers with the input's pixel representation; the input's ``RescaleSlope`` /
``RescaleIntercept`` are kept when they hold the restored values, else the slope is enlarged to hold them
(values below the representable minimum are clipped). PET values are converted back from SUV to the stored
units.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.transforms import MapTransform
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from custom.io import atomic_output, fsync_path

__all__ = ["DERIVATION_DESCRIPTION", "cast_to_dtype", "write_nifti", "write_dicom_series", "SaveRestoredd"]

DERIVATION_DESCRIPTION = "Restored by TAT (Task-Adaptive Transformer, MICCAI 2025), MONAI bundle"


def cast_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to ``dtype``: integers rounded and clipped to the type's range, floats cast directly."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return values > 0.5
    return values.astype(dtype)


def _check_destination(path: str, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path}: output exists; set overwrite=true to replace it.")


def write_nifti(values: np.ndarray, reference: nib.Nifti1Image, path: str, overwrite: bool = False) -> str:
    """Write ``values`` (physical units, the reference's voxel grid) atomically with the reference's header.

    Args:
        values: array with the reference's shape (a trailing axis of size 1 may be missing).
        reference: the input image (nibabel).
        path: destination (``.nii`` or ``.nii.gz``).
        overwrite: replace an existing file.

    Returns:
        the path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: the shape does not match the reference.
    """
    _check_destination(path, overwrite)
    shape = tuple(reference.shape)
    if int(np.prod(values.shape)) != int(np.prod(shape)):
        raise ValueError(f"{path}: restored shape {values.shape} does not match the input's {shape}.")
    values = np.asarray(values).reshape(shape)
    header = reference.header.copy()
    dtype = header.get_data_dtype()
    slope, inter = header.get_slope_inter()
    scaled = slope is not None and (slope != 1 or (inter or 0) != 0)
    if scaled and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # physical range the stored type held with the input's scale factors
        bounds = sorted((info.min * slope + (inter or 0), info.max * slope + (inter or 0)))
        data = np.clip(values, *bounds).astype(np.float32)  # nibabel rescales into ``dtype`` on save
    else:
        data = cast_to_dtype(values, dtype)
        header.set_slope_inter(1.0, 0.0)
    klass = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    img = klass(data, reference.affine, header)
    img.set_data_dtype(dtype)
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return path


def _stored_range(ds: Dataset) -> tuple[int, int]:
    return (-32768, 32767) if int(getattr(ds, "PixelRepresentation", 0)) == 1 else (0, 65535)


def _derived_slice(ds: Dataset, values: np.ndarray, series_uid: str, now: _dt.datetime) -> Dataset:
    out = copy.deepcopy(ds)
    lo, hi = _stored_range(ds)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    vmax = float(values.max()) if values.size else 0.0
    if slope > 0 and (vmax - inter) / slope > hi:  # enlarge the slope so the maximum fits
        slope = (vmax - inter) / hi
    raw = np.clip(np.rint((values.astype(np.float64) - inter) / slope), lo, hi)
    raw = raw.astype(np.int16 if lo < 0 else np.uint16)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or slope != 1.0:
        out.RescaleSlope = f"{slope:.10g}"[:16]
        out.RescaleIntercept = f"{inter:.10g}"[:16]
    out.BitsAllocated, out.BitsStored, out.HighBit = 16, 16, 15
    out.PixelRepresentation = 1 if lo < 0 else 0
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = getattr(ds, "PhotometricInterpretation", "MONOCHROME2")
    for tag in (
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "PixelPaddingValue",
        "WindowCenter",
        "WindowWidth",
        "FloatPixelData",
        "DoubleFloatPixelData",
    ):
        if tag in out:
            delattr(out, tag)
    out.PixelData = raw.tobytes()
    out["PixelData"].VR = "OW"
    image_type = list(getattr(ds, "ImageType", [])) or ["DERIVED", "SECONDARY"]
    out.ImageType = ["DERIVED", "SECONDARY"] + [str(v) for v in image_type[2:]]
    out.DerivationDescription = DERIVATION_DESCRIPTION
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    out.SourceImageSequence = [source]
    out.SeriesInstanceUID = series_uid
    out.SOPInstanceUID = generate_uid()
    out.SeriesDescription = (str(getattr(ds, "SeriesDescription", "")) + " TAT restored").strip()[:64]
    if "SeriesNumber" in ds and ds.SeriesNumber is not None and str(ds.SeriesNumber) != "":
        out.SeriesNumber = int(ds.SeriesNumber) + 1000
    out.InstanceCreationDate = now.strftime("%Y%m%d")
    out.InstanceCreationTime = now.strftime("%H%M%S")
    meta = (
        copy.deepcopy(ds.file_meta) if getattr(ds, "file_meta", None) is not None else pydicom.dataset.FileMetaDataset()
    )
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta = meta
    return out


def write_dicom_series(
    values: np.ndarray,
    datasets: list[Dataset],
    files: list[str],
    path: str,
    suv_factors: list[float] | None = None,
    single_file: bool = False,
    overwrite: bool = False,
) -> str:
    """Write a derived DICOM series (one file per input slice) atomically.

    Args:
        values: restored volume in physical units, ``(Rows, Columns)`` or ``(Rows, Columns, n)`` in ``datasets`` order.
        datasets: the input slices (pydicom datasets, sorted as the volume).
        files: the input file paths (same order); output files keep their base names.
        path: destination folder, or the destination file when ``single_file``.
        suv_factors: per-slice factor that converted stored units to SUV (the values are divided by it).
        single_file: write one file at ``path`` (for a single-file input) instead of a folder.
        overwrite: replace an existing output.

    Returns:
        the path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: the volume does not match the number or size of the slices.
    """
    _check_destination(path, overwrite)
    vol = values[..., None] if values.ndim == 2 else values
    if vol.shape[-1] != len(datasets) or (single_file and len(datasets) != 1):
        raise ValueError(f"{path}: {vol.shape[-1]} restored slices for {len(datasets)} input slices.")
    factors = suv_factors or [1.0] * len(datasets)
    series_uid, now = generate_uid(), _dt.datetime.now()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".tmp_", dir=parent)
    try:
        for k, (ds, src) in enumerate(zip(datasets, files)):
            if tuple(vol.shape[:2]) != (int(ds.Rows), int(ds.Columns)):
                raise ValueError(f"{src}: restored slice {vol.shape[:2]} does not match {ds.Rows}x{ds.Columns}.")
            out = _derived_slice(ds, vol[..., k] / factors[k], series_uid, now)
            out.save_as(os.path.join(tmp_dir, os.path.basename(src)), enforce_file_format=True)
            fsync_path(os.path.join(tmp_dir, os.path.basename(src)))
        result = os.path.join(tmp_dir, os.path.basename(files[0])) if single_file else tmp_dir
        old = None
        if os.path.lexists(path):  # overwrite: move the old output aside, then swap in the new one
            old = tempfile.mkdtemp(prefix=".old_", dir=parent)
            os.replace(path, os.path.join(old, "x"))
        os.replace(result, path)
        fsync_path(parent, directory=True)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


class SaveRestoredd(MapTransform):
    """Write ``d[key]`` (restored, physical units) to ``d["output"]`` in the input's format.

    NIfTI input -> :func:`write_nifti`; DICOM input -> :func:`write_dicom_series` (a folder for a series, a file
    for a single DICOM file). Uses ``d["scan_info"]`` from :class:`custom.inference.LoadScand`. MONAI's
    ``SaveImaged`` is not used because it neither writes atomically nor writes DICOM.

    Args:
        keys: the restored image key (one), ``(1, H, W[, D])``.
        overwrite: replace existing outputs (default: refuse, the scan is reported as skipped).

    Raises:
        FileExistsError: output exists and ``overwrite`` is False.
        ValueError: shape mismatch (names the file).
    """

    def __init__(self, keys: KeysCollection, overwrite: bool = False) -> None:
        super().__init__(keys)
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        info = d["scan_info"]
        for key in self.key_iterator(d):
            values = np.asarray(d[key].detach().cpu().numpy() if hasattr(d[key], "detach") else d[key])[0]
            if d.get("kind") == "nifti":
                write_nifti(values, info["nifti"], d["output"], self.overwrite)
            else:
                single = not os.path.isdir(str(d.get("source", "")))
                write_dicom_series(
                    values,
                    info["datasets"],
                    info["files"],
                    d["output"],
                    info.get("suv_factors"),
                    single_file=single,
                    overwrite=self.overwrite,
                )
        return d
