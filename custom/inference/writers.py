"""Atomic writers of restored scans: NIfTI like the input NIfTI, a derived DICOM series for DICOM input.

Both write into a temporary name next to the destination and ``os.replace`` it (:mod:`custom.io`), so a crash
never leaves a half-written output, and the outputs get the permissions of the user's umask. An existing output
is never overwritten unless ``overwrite=True`` (then it is replaced atomically).

NIfTI: the input's header and affine are reused (spacing, orientation, qform/sform, units, byte order). Values
are stored in the input's on-disk data type with the input's scaling (``scl_slope`` / ``scl_inter``, which nibabel
keeps on the array proxy, not the loaded header): stored = round((value - inter) / slope). So an unchanged value
comes back to the last stored unit. When the restored values do not fit the stored type with those factors, an
integer type keeps its type with new factors covering the values (logged, never clipped); float types are
stored unscaled.

DICOM: each input file gives one derived file with the same base name, same patient / study / frame of reference
and geometry tags, a new ``SeriesInstanceUID`` and ``SOPInstanceUID`` s, ``ImageType`` DERIVED\\SECONDARY,
``DerivationDescription`` and a ``SourceImageSequence`` pointing at the input instance. The derived dataset is
built afresh from the input's data elements (no command-set group 0000, a new file meta group, nested sequences
rebuilt, big-endian ``OW``/``OL``/``OF``/``OD`` values byte-swapped): it is always written uncompressed, explicit
VR little endian, 16-bit (``BitsStored`` 16), whatever the input's transfer syntax (big endian, deflate, RLE,
JPEG, JPEG 2000...). The input's ``RescaleSlope`` / ``RescaleIntercept`` (per frame for enhanced multi-frame
objects) are kept when they hold the restored values: stored = round((value - intercept) / slope); otherwise the
other pixel representation is tried, then a slope (and intercept) that holds them (logged). PET values are
converted back from SUV to the stored units with the reader's per-slice factors.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from custom.io import atomic_output, atomic_output_dir
from custom.settings import as_flag
from monai.config import KeysCollection
from monai.transforms import MapTransform
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "DERIVATION_DESCRIPTION",
    "nifti_scaling",
    "write_nifti",
    "clean_dataset",
    "derived_dataset",
    "write_dicom_series",
    "SaveRestoredd",
]

DERIVATION_DESCRIPTION = "Restored by TAT (Task-Adaptive Transformer, MICCAI 2025), MONAI bundle"

logger = logging.getLogger(__name__)

# pixel-module elements rebuilt for the derived pixel data (their values depend on the stored encoding)
_PIXEL_TAGS = {
    0x7FE00010,  # PixelData
    0x7FE00008,  # FloatPixelData
    0x7FE00009,  # DoubleFloatPixelData
    0x7FE00001,  # ExtendedOffsetTable
    0x7FE00002,  # ExtendedOffsetTableLengths
    0x00280106,  # SmallestImagePixelValue
    0x00280107,  # LargestImagePixelValue
    0x00280108,  # SmallestPixelValueInSeries
    0x00280109,  # LargestPixelValueInSeries
    0x00280120,  # PixelPaddingValue
    0x00280121,  # PixelPaddingRangeLimit
    0x00280006,  # PlanarConfiguration
    0x00282000,  # ICCProfile
}
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _check_destination(path: str, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path}: output exists; set overwrite=true to replace it.")


def _core_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` without its trailing axes of size 1."""
    out = tuple(int(n) for n in shape)
    while out and out[-1] == 1:
        out = out[:-1]
    return out


def nifti_scaling(reference: Any) -> tuple[float, float]:
    """The scale factors a loaded NIfTI image applies to its stored values (physical = stored * slope + inter).

    nibabel moves ``scl_slope`` / ``scl_inter`` from the loaded header (where they read NaN) to the array proxy;
    this reads the proxy first, then the header; missing, NaN or zero slope means no scaling (NIfTI rule).

    Args:
        reference: a nibabel image.

    Returns:
        (slope, inter).
    """
    slope = getattr(reference.dataobj, "slope", None)
    inter = getattr(reference.dataobj, "inter", None)
    if slope is None:
        slope, inter = reference.header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def write_nifti(
    values: np.ndarray,
    reference: nib.Nifti1Image,
    path: str,
    overwrite: bool = False,
    dtype: np.dtype | None = None,
    scaling: tuple[float, float] | None = None,
    description: str = "",
) -> str:
    """Write ``values`` (physical units, the reference's voxel grid) atomically with the reference's header.

    Args:
        values: array with the reference's shape (a trailing axis of size 1 may be missing).
        reference: the input image (nibabel, as loaded).
        path: destination (``.nii`` or ``.nii.gz``).
        overwrite: replace an existing file.
        dtype: on-disk type to write (default: the reference's, with its byte order).
        scaling: (slope, inter) to store with (default: the reference's, :func:`nifti_scaling`).
        description: header ``descrip`` (e.g. the scan's warnings; cut to 79 bytes); empty keeps the input's.

    Returns:
        the path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: the shape does not match the reference, or non-finite values.
    """
    _check_destination(path, overwrite)
    shape = tuple(reference.shape)
    values = np.asarray(values)
    if _core_shape(values.shape) != _core_shape(shape):  # same size in another layout would scramble the voxels
        raise ValueError(f"{path}: restored shape {values.shape} does not match the input's {shape}.")
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: non-finite restored values (NaN or inf); nothing written.")
    values = values.reshape(shape).astype(np.float64)
    dtype = np.dtype(reference.get_data_dtype() if dtype is None else dtype)
    slope, inter = nifti_scaling(reference) if scaling is None else (float(scaling[0]), float(scaling[1]))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        stored = np.rint((values - inter) / slope)
        if stored.size and (stored.min() < info.min or stored.max() > info.max):
            lo, hi = float(values.min()), float(values.max())
            slope = (hi - lo) / (float(info.max) - float(info.min)) if hi > lo else 1.0
            inter = lo - float(info.min) * slope
            logger.warning(
                "%s: restored values [%g, %g] do not fit %s with the input's scaling; stored with scl_slope %g, "
                "scl_inter %g instead.",
                path,
                lo,
                hi,
                dtype,
                slope,
                inter,
            )
            stored = np.rint((values - inter) / slope)
        data = np.clip(stored, info.min, info.max).astype(dtype)
    elif dtype == np.bool_:
        data, slope, inter = values > 0.5, 1.0, 0.0
    else:  # floats and others: the values themselves, unscaled
        data, slope, inter = values.astype(dtype), 1.0, 0.0
    header = reference.header.copy()
    klass = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    # a NIfTI reference (NIfTI-1 / 2, pairs: their headers derive from Nifti1Header): no affine, so nibabel keeps the
    # header's sform / qform (codes included) as they are; given one, it rewrites them whenever they differ from it
    # (NaN in the header, an affine repaired on reading) and the output would no longer lie where the input lies.
    # Another format's header (MGH, Analyze) has no sform / qform to keep: its affine is written into them.
    keep = isinstance(reference.header, nib.Nifti1Header)
    img = klass(data, None if keep else reference.affine, header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(slope, inter)  # after construction (the constructor resets them): no rescaling
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return path


def _is_big_endian(ds: Dataset) -> bool:
    encoding = getattr(ds, "original_encoding", None)
    if encoding is not None and encoding[1] is not None:
        return not encoding[1]
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "")) == pydicom.uid.ExplicitVRBigEndian


def clean_dataset(ds: Dataset, drop: Sequence[int] = (), big_endian: bool | None = None) -> Dataset:
    """A new dataset holding ``ds``'s data elements, free of its encoding.

    Leaves out the command set (group 0000), the file meta group (0002), trailing padding (FFFC,FFFC) and the
    tags in ``drop``; rebuilds nested sequence items the same way; byte-swaps ``OW``/``OL``/``OF``/``OD``/``OV``
    values read from a big-endian file. The result can be written with any transfer syntax.

    Args:
        ds: the source dataset (not modified).
        drop: tags (ints) to leave out at the top level.
        big_endian: the source's byte order (default: from its original encoding / transfer syntax).

    Returns:
        a new ``pydicom.Dataset`` without ``file_meta``.
    """
    swap = _is_big_endian(ds) if big_endian is None else big_endian
    skip = {int(t) for t in drop}
    out = Dataset()
    for elem in ds:  # iterating converts raw elements with the source's encoding
        tag = int(elem.tag)
        if elem.tag.group in (0x0000, 0x0002) or tag in skip or tag == 0xFFFCFFFC:
            continue
        if elem.VR == "SQ":
            items = [clean_dataset(item, big_endian=swap) for item in (elem.value or [])]
            out.add(DataElement(elem.tag, "SQ", DicomSequence(items)))
            continue
        value = copy.deepcopy(elem.value)
        width = _SWAP_WIDTH.get(str(elem.VR))
        if swap and width and isinstance(value, (bytes, bytearray)) and len(value) % width == 0:
            value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        try:
            out.add(DataElement(elem.tag, elem.VR, value))
        except (ValueError, TypeError, OverflowError):
            # a value pydicom read with a warning but cannot encode again (e.g. DS 'x.y'): its text, written as is
            text = "\\".join(map(str, value)) if isinstance(value, (list, tuple, MultiValue)) else str(value)
            raw = text.encode("latin-1", "replace")
            raw += b" " * (len(raw) % 2)
            logger.warning("%s: invalid %s value %r kept as it was", elem.keyword or elem.tag, elem.VR, text)
            out[elem.tag] = RawDataElement(elem.tag, elem.VR, len(raw), raw, 0, False, True)
    return out


def _frames(ds: Dataset) -> int:
    try:
        return max(int(getattr(ds, "NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _pixel_transforms(ds: Dataset, n: int) -> list[Dataset | None]:
    """Per frame: the dataset holding that frame's RescaleSlope / RescaleIntercept (top level, shared or per-frame
    functional group), or None where none is given."""
    per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []) or [])
    shared = list(getattr(ds, "SharedFunctionalGroupsSequence", []) or [])

    def holder(group: Dataset | None) -> Dataset | None:
        seq = getattr(group, "PixelValueTransformationSequence", None) if group is not None else None
        return seq[0] if seq else None

    shared_holder = holder(shared[0]) if shared else None
    out: list[Dataset | None] = []
    for k in range(n):
        h = holder(per_frame[k]) if k < len(per_frame) else None
        h = h or shared_holder
        if h is None and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
            h = ds
        out.append(h)
    return out


def _rescale(holder: Dataset | None, where: str) -> tuple[float, float]:
    if holder is None:
        return 1.0, 0.0
    slope_tag, inter_tag = holder.get("RescaleSlope", None), holder.get("RescaleIntercept", None)
    slope = 1.0 if slope_tag in (None, "") else float(slope_tag)
    inter = 0.0 if inter_tag in (None, "") else float(inter_tag)
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(inter):
        raise ValueError(f"{where}: RescaleSlope {slope} / RescaleIntercept {inter} cannot be inverted.")
    return slope, inter


def _ds_str(x: float) -> str:
    """``x`` as a DS value: 10 significant digits, fewer where a 3-digit exponent needs the room (16 characters)."""
    for digits in range(10, 0, -1):
        text = f"{x:.{digits}g}"
        if len(text) <= 16:
            break
    return text


def derived_dataset(
    ds: Dataset,
    values: np.ndarray,
    series_uid: str,
    now: _dt.datetime,
    where: str = "",
    description: str = "",
    comments: str = "",
    series_suffix: str = " TAT restored",
) -> Dataset:
    """The derived instance of ``ds`` holding ``values`` (physical units, the source's rescale units).

    Args:
        ds: the source instance (any transfer syntax; not modified).
        values: ``(Rows, Columns)``, or ``(Rows, Columns, NumberOfFrames)`` for a multi-frame source.
        series_uid: the derived series' ``SeriesInstanceUID``.
        now: creation time written to ``InstanceCreationDate/Time``.
        where: file name used in messages.
        description: ``DerivationDescription`` (default :data:`DERIVATION_DESCRIPTION`).
        comments: ``ImageComments`` (e.g. the scan's warnings); empty keeps the source's.
        series_suffix: appended to the source's ``SeriesDescription``.

    Returns:
        a new dataset with ``file_meta`` (explicit VR little endian), uncompressed 16-bit pixel data.

    Raises:
        ValueError: values do not match the source's size or frames, are not finite, or cannot be stored with
            the per-frame rescale of a multi-frame source.
    """
    where = where or str(getattr(ds, "filename", "") or "DICOM instance")
    n = _frames(ds)
    vol = values[..., None] if values.ndim == 2 else values
    if vol.shape != (int(ds.Rows), int(ds.Columns), n):
        raise ValueError(f"{where}: restored {vol.shape} does not match {ds.Rows}x{ds.Columns}x{n} frame(s).")
    if not np.isfinite(vol).all():
        raise ValueError(f"{where}: non-finite restored values (NaN or inf); nothing written.")
    vol = vol.astype(np.float64)
    holders = _pixel_transforms(ds, n)
    params = [_rescale(h, where) for h in holders]
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    raw = np.stack([np.rint((vol[..., k] - inter) / slope) for k, (slope, inter) in enumerate(params)], -1)

    def fits(is_signed: bool) -> bool:
        lo, hi = (-32768, 32767) if is_signed else (0, 65535)
        return bool(raw.min() >= lo and raw.max() <= hi)

    new_rescale: tuple[float, float] | None = None
    if not fits(signed):
        if fits(not signed):
            signed = not signed
        elif any(h is not None and h is not ds for h in holders):  # rescale in functional groups: kept as is
            raise ValueError(
                f"{where}: restored values [{vol.min():g}, {vol.max():g}] do not fit 16 bits with the functional-group "
                "rescale of this multi-frame object; nothing written."
            )
        else:
            lo, hi = (-32768, 32767) if signed else (0, 65535)
            slope, inter = params[0]
            vmin, vmax = float(vol.min()), float(vol.max())
            slope = max(slope, (vmax - vmin) / (hi - lo))
            if (vmin - inter) / slope < lo or (vmax - inter) / slope > hi:
                inter = vmin - lo * slope
            new_rescale = (slope, inter)
            logger.warning(
                "%s: restored values [%g, %g] do not fit the input's rescale; stored with RescaleSlope %g, "
                "RescaleIntercept %g.",
                where,
                vmin,
                vmax,
                slope,
                inter,
            )
            raw = np.rint((vol - inter) / slope)
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    raw = np.clip(raw, lo, hi).astype("<i2" if signed else "<u2")

    out = clean_dataset(ds, drop=_PIXEL_TAGS)
    if new_rescale is not None:
        out.RescaleSlope, out.RescaleIntercept = _ds_str(new_rescale[0]), _ds_str(new_rescale[1])
        for seq in ("VOILUTSequence", "ModalityLUTSequence"):  # tied to the old stored values
            if seq in out:
                delattr(out, seq)
    out.BitsAllocated, out.BitsStored, out.HighBit = 16, 16, 15
    out.PixelRepresentation = 1 if signed else 0
    out.SamplesPerPixel = 1
    out.PhotometricInterpretation = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = np.moveaxis(raw, -1, 0)  # (frames, rows, cols)
    out.PixelData = (frames[0] if n == 1 else frames).tobytes()
    out["PixelData"].VR = "OW"
    image_type = getattr(ds, "ImageType", None) or []
    image_type = [image_type] if isinstance(image_type, str) else [str(v) for v in image_type]  # one value: a str
    out.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    out.DerivationDescription = (description or DERIVATION_DESCRIPTION)[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    out.SourceImageSequence = [source]
    out.SeriesInstanceUID = series_uid
    out.SOPInstanceUID = generate_uid()
    out.SeriesDescription = (str(getattr(ds, "SeriesDescription", "")) + series_suffix).strip()[:64]
    if comments:
        out.ImageComments = comments[:10240]
    if str(getattr(ds, "SeriesNumber", "") or "") != "":
        out.SeriesNumber = int(ds.SeriesNumber) + 1000
    out.InstanceCreationDate = now.strftime("%Y%m%d")
    out.InstanceCreationTime = now.strftime("%H%M%S")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = meta
    return out


def write_dicom_series(
    values: np.ndarray,
    datasets: list[Dataset],
    files: list[str],
    path: str,
    suv_factors: Sequence[float] | None = None,
    single_file: bool = False,
    overwrite: bool = False,
    comments: str = "",
    series_suffix: str = " TAT restored",
) -> str:
    """Write a derived DICOM series (one file per input file) atomically.

    Args:
        values: restored volume in physical units, ``(Rows, Columns)`` or ``(Rows, Columns, n)``: the slices of
            ``datasets`` in order, a multi-frame dataset taking ``NumberOfFrames`` consecutive slices.
        datasets: the input instances (pydicom datasets, any transfer syntax, sorted as the volume).
        files: the input file paths (same order); output files keep their base names.
        path: destination folder, or the destination file when ``single_file``.
        suv_factors: per slice (length n), the factor that converted stored units to SUV (values are divided by it).
        single_file: write one file at ``path`` (for a single-file input) instead of a folder.
        overwrite: replace an existing output.
        comments: ``ImageComments`` of every derived instance (e.g. the scan's warnings).
        series_suffix: appended to the source's ``SeriesDescription``.

    Returns:
        the path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: the volume does not match the number or size of the slices, or a factor is not positive.
    """
    _check_destination(path, overwrite)
    vol = np.asarray(values)
    vol = vol[..., None] if vol.ndim == 2 else vol
    counts = [_frames(ds) for ds in datasets]
    if len(files) != len(datasets) or vol.ndim != 3 or vol.shape[-1] != sum(counts):
        raise ValueError(f"{path}: {vol.shape[-1]} restored slices for {sum(counts)} input slice(s)/frame(s).")
    if single_file and len(datasets) != 1:
        raise ValueError(f"{path}: one output file asked for {len(datasets)} input files.")
    if len({os.path.basename(f) for f in files}) != len(files):
        raise ValueError(f"{path}: input files with the same base name; cannot mirror their names.")
    factors = np.asarray(list(suv_factors) if suv_factors is not None else [1.0] * vol.shape[-1], dtype=np.float64)
    if factors.shape != (vol.shape[-1],) or not (np.isfinite(factors) & (factors > 0)).all():
        raise ValueError(f"{path}: need one positive SUV factor per slice, got {factors.tolist()}.")
    series_uid, now = generate_uid(), _dt.datetime.now()
    derived, start = [], 0
    for ds, src, n in zip(datasets, files, counts):
        part = vol[..., start : start + n].astype(np.float64) / factors[start : start + n]
        part = part if n > 1 else part[..., 0]
        out = derived_dataset(ds, part, series_uid, now, where=src, comments=comments, series_suffix=series_suffix)
        derived.append((out, src))
        start += n
    if single_file:
        with atomic_output(path) as tmp:
            pydicom.dcmwrite(tmp, derived[0][0], enforce_file_format=True)
        return path
    with atomic_output_dir(path, overwrite=overwrite) as tmp_dir:
        for out, src in derived:
            pydicom.dcmwrite(os.path.join(tmp_dir, os.path.basename(src)), out, enforce_file_format=True)
    return path


class SaveRestoredd(MapTransform):
    """Write ``d[key]`` (restored, physical units) to ``d["output"]`` in the input's format.

    NIfTI input -> :func:`write_nifti`; DICOM input -> :func:`write_dicom_series` (a folder for a series, a file
    for a single DICOM file). Uses ``d["scan_info"]`` from :class:`custom.inference.LoadScand` (optional keys
    ``source_dtype``, ``source_scl_slope``, ``source_scl_inter`` of the reading layer, see
    /work/notes/io-contract.md, are used first; else the nibabel image's own). MONAI's
    ``SaveImaged`` is not used because it neither writes atomically nor writes DICOM. The item's ``warnings``
    (e.g. from :class:`custom.inference.task_check.TaskCheckd`) go into the NIfTI ``descrip`` / DICOM
    ``ImageComments``.

    Args:
        keys: the restored image key (one), ``(1, H, W[, D])``.
        overwrite: replace existing outputs (default: refuse, the scan is reported as skipped).

    Raises:
        FileExistsError: output exists and ``overwrite`` is False.
        ValueError: shape mismatch (names the file).
    """

    def __init__(self, keys: KeysCollection, overwrite: bool = False) -> None:
        super().__init__(keys)
        self.overwrite = as_flag(overwrite, "overwrite")  # "--overwrite false" arrives as the text 'false'

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        info = d["scan_info"]
        for key in self.key_iterator(d):
            values = np.asarray(d[key].detach().cpu().numpy() if hasattr(d[key], "detach") else d[key])[0]
            note = "TAT warning: " + "; ".join(d["warnings"]) if d.get("warnings") else ""
            if d.get("kind") == "nifti":
                scaling = None
                if info.get("source_scl_slope") is not None:
                    scaling = (float(info["source_scl_slope"]), float(info.get("source_scl_inter") or 0.0))
                write_nifti(
                    values,
                    info["nifti"],
                    d["output"],
                    self.overwrite,
                    dtype=info.get("source_dtype"),
                    scaling=scaling,
                    description=note,
                )
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
                    comments=note,
                )
        return d
