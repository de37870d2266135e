"""Tiny synthetic NIfTI and DICOM inputs for the reading-layer tests (written to temporary folders)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

SOP_CLASS = {"CT": CTImageStorage, "PT": PositronEmissionTomographyImageStorage, "MR": "1.2.840.10008.5.1.4.1.1.4"}


def save_scaled_nifti(
    path: str, raw: np.ndarray, slope: float = 1.0, inter: float = 0.0, affine: np.ndarray | None = None
) -> str:
    """Write ``raw`` with its own dtype and the given ``scl_slope``/``scl_inter`` (stored values, not physical)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = nib.Nifti1Header(endianness=">" if raw.dtype.byteorder == ">" else "<")
    img = nib.Nifti1Image(raw, np.eye(4) if affine is None else affine, header)
    img.header.set_data_dtype(raw.dtype)
    img.header.set_slope_inter(slope, inter)
    # nibabel writes the array as stored values when the header carries the scaling and the dtype matches
    nib.save(img, path)
    return path


def dicom_slice(
    path: str,
    pixels: np.ndarray,
    z: float = 0.0,
    series: str | None = None,
    study: str | None = None,
    modality: str = "CT",
    syntax: str = ExplicitVRLittleEndian,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing: Sequence[float] = (1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0),
    instance: int = 1,
    slope: float | None = 1.0,
    inter: float | None = 0.0,
    bits_stored: int | None = None,
    **tags: object,
) -> str:
    """Write one grey-level DICOM slice (``pixels`` stored as given: int16 -> signed, uint16/uint8 -> unsigned).

    The slice lies at ``origin + z * normal`` of ``orientation``; extra ``tags`` are set verbatim (a value None
    deletes the tag).
    """
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    sop = SOP_CLASS.get(modality, "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = (
        ExplicitVRLittleEndian if syntax not in (ImplicitVRLittleEndian, ExplicitVRBigEndian) else syntax
    )
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = modality
    ds.PatientID = "SYNTH"
    ds.InstanceNumber = instance
    iop = np.asarray(orientation, float)
    normal = np.cross(iop[:3], iop[3:])
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in (origin[0], origin[1], 0.0) + z * normal]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored or bits, (bits_stored or bits) - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if slope is not None:
        ds.RescaleSlope = f"{slope:.10g}"[:16]
    if inter is not None:
        ds.RescaleIntercept = f"{inter:.10g}"[:16]
    for name, value in tags.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">" if big else "<")).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        ds.compress(syntax)  # RLE / JPEG 2000 ... through pydicom's encoders
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=not big, enforce_file_format=True)
    return path


def dicom_series_folder(folder: str, volume: np.ndarray, positions: Sequence[float] | None = None, **kw: object) -> str:
    """Write ``volume`` (Rows, Columns, n) as a series, slice k at ``positions[k]`` (default k) along the normal."""
    series, study = generate_uid(), generate_uid()
    n = volume.shape[-1]
    positions = list(range(n)) if positions is None else list(positions)
    for k in range(n):
        dicom_slice(
            os.path.join(folder, f"slice{k:03d}.dcm"),
            volume[..., k],
            z=float(positions[k]),
            series=series,
            study=study,
            instance=k + 1,
            **kw,
        )
    return folder


def pet_tags(
    units: str = "BQML",
    weight: float | None = 70.0,
    dose: float | None = 3.5e8,
    half_life: float | None = 6586.2,
    decay: str | None = "START",
    start: str | None = "100000",
    series_time: str | None = "110000",
) -> dict[str, object]:
    """Tags of a PET slice for :func:`dicom_slice` (a value None leaves the tag out)."""
    info = Dataset()
    if dose is not None:
        info.RadionuclideTotalDose = dose
    if half_life is not None:
        info.RadionuclideHalfLife = half_life
    if start is not None:
        info.RadiopharmaceuticalStartTime = start
    tags: dict[str, object] = {"Units": units, "SeriesDate": "20200101"}
    if weight is not None:
        tags["PatientWeight"] = weight
    if decay is not None:
        tags["DecayCorrection"] = decay
    if series_time is not None:
        tags["SeriesTime"] = series_time
    tags["RadiopharmaceuticalInformationSequence"] = DicomSequence([info])
    return tags
