"""Shared helpers of the inference tests: tiny network, checkpoint, CLI runner, test scans."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pydicom
import torch
from custom.networks import TAT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, "bundle")
INFERENCE_CONFIG = os.path.join(BUNDLE, "configs", "inference.json")
# the bundle's network_def at tiny widths (transpose_hw as inference.json and train.json set it)
TINY = {"dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "train_patch_size": 32, "transpose_hw": True}
TINY_OVERRIDES = [
    "--network_def#dim",
    "8",
    "--network_def#num_blocks",
    "[1,1,1,1]",
    "--network_def#num_refinement_blocks",
    "1",
    "--network_def#train_patch_size",
    "32",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def tiny_net(seed: int = 0) -> TAT:
    """The tiny TAT with random weights and non-zero task-kernel gates (so the generated kernels matter)."""
    torch.manual_seed(seed)
    net = TAT(**TINY).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gate"):
                p.normal_(0, 0.5)
    return net


def save_checkpoint(path: str, seed: int = 0) -> TAT:
    """Save ``{"model": state_dict}`` like train.json's best-model saver and return the network."""
    net = tiny_net(seed)
    torch.save({"model": net.state_dict()}, path)
    return net


def run_cli(*args: str, cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` with one thread."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def tree_hashes(root: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def write_ct_series(folder: str, n: int = 4, rows: int = 20, cols: int = 24, seed: int = 0) -> list[str]:
    """Write a small CT series with pydicom (stored unsigned, intercept -1024, oblique-free axial geometry)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Test^Phantom", "TAT001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, n - k  # instance numbers reversed on purpose
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-12.5, -30.0, 40.0 + 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.8], 2.5
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        hu = np.where(rng.random((rows, cols)) > 0.5, 40.0, -900.0) + rng.normal(0, 30, (rows, cols))
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        path = os.path.join(folder, f"slice_{(k * 7) % n:03d}.dcm")  # file names not in slice order
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_series(folder: str) -> list[pydicom.Dataset]:
    """All DICOM files of a folder, sorted by position along z."""
    files = [pydicom.dcmread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    return sorted(files, key=lambda d: float(d.ImagePositionPatient[2]))


def save_identity_checkpoint(path: str, seed: int = 0) -> TAT:
    """Save the tiny TAT with its final convolution zeroed: zero residual, so the network is the identity."""
    net = tiny_net(seed)
    with torch.no_grad():
        for p in net.output.parameters():
            p.zero_()
    torch.save({"model": net.state_dict()}, path)
    return net


def dicom_slice(
    raw: np.ndarray,
    *,
    modality: str = "MR",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.4",
    series_uid: str,
    position: float = 0.0,
    number: int = 1,
    slope: float | None = None,
    inter: float | None = None,
    syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """One grey-level slice with geometry, stored values ``raw`` (int16 -> signed, uint16 -> unsigned)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Fidelity", "TAT002", modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", series_uid, "1.2.3.5"
    ds.SeriesNumber, ds.InstanceNumber = 7, number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(position)]
    ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 3.0
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if raw.dtype == np.int16 else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, inter or 0
    if syntax == pydicom.uid.ExplicitVRBigEndian:
        ds.PixelData = raw.astype(raw.dtype.newbyteorder(">")).tobytes()
        ds["PixelData"].VR = "OW"
    elif syntax == pydicom.uid.RLELossless:
        ds.compress(pydicom.uid.RLELossless, raw)
    else:
        ds.PixelData = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"
    return ds


def write_with_command_set(ds: Dataset, path: str) -> None:
    """Write ``ds`` with command-set elements (group 0000) in its data set, as some clinical exports do
    (``dcmwrite`` refuses to write them, so the file is assembled with ``write_dataset``)."""
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = ds.copy()
    ds.add_new(0x00000002, "UI", ds.SOPClassUID)  # AffectedSOPClassUID
    ds.add_new(0x00000100, "US", 1)  # CommandField
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        fp = DicomFileLike(f)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
        write_dataset(fp, ds)
