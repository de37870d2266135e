"""Read and write speed of the inference I/O layer on one DICOM series (a benchmark, not a test).

Writes a synthetic CT series (``--size`` x ``--size`` x ``--slices``, uint16 with RescaleIntercept -1024), then
times (1) reading it the way inference does (:func:`custom.inference.load_dicom_series`: headers, sort, pixel
data, HU) and (2) writing its derived series (:func:`custom.inference.write_dicom_series`), and counts how many
times each file was opened by ``pydicom.dcmread`` in each phase (the target of issue 12: every header read at
most once; the writer reads none). No network runs: this measures I/O only.

    python benchmarks/inference_io.py                      # 512 x 512 x 300
    python benchmarks/inference_io.py --slices 40 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pydicom
from custom.inference import load_dicom_series, write_dicom_series
from custom.networks.blocks.cpu_paths import cpu_model
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(folder: str, n: int, size: int, seed: int = 0) -> list[str]:
    """An axial CT series, ``size`` x ``size`` x ``n``, uint16 stored with RescaleIntercept -1024."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Mark", "BENCH", "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0.0, 0.0, 1.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 4095, (size, size), dtype=np.uint16).tobytes()
        paths.append(os.path.join(folder, f"im{k:04d}.dcm"))
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@contextmanager
def count_reads() -> Iterator[collections.Counter]:
    """Count ``pydicom.dcmread`` calls per file (every module that calls ``pydicom.dcmread`` goes through it)."""
    counts: collections.Counter = collections.Counter()
    real = pydicom.dcmread

    def counting(fp: Any, *args: Any, **kwargs: Any) -> Any:
        counts[os.path.realpath(os.fspath(fp)) if isinstance(fp, (str, os.PathLike)) else repr(fp)] += 1
        return real(fp, *args, **kwargs)

    pydicom.dcmread = counting
    try:
        yield counts
    finally:
        pydicom.dcmread = real


def run(size: int, slices: int) -> dict[str, Any]:
    """Write the series, time read and write; returns the figures."""
    with tempfile.TemporaryDirectory() as d:
        folder = os.path.join(d, "series")
        files = write_ct_series(folder, slices, size)
        with count_reads() as reads:
            start = time.perf_counter()
            values, info = load_dicom_series(files, folder)
            read_s = time.perf_counter() - start
        read_counts = [reads.get(os.path.realpath(f), 0) for f in files]
        with count_reads() as writes:
            start = time.perf_counter()
            write_dicom_series(values, info["datasets"], info["files"], os.path.join(d, "out"), info["suv_factors"])
            write_s = time.perf_counter() - start
        out_bytes = sum(os.path.getsize(os.path.join(d, "out", f)) for f in os.listdir(os.path.join(d, "out")))
    return {
        "shape": [size, size, slices],
        "read_seconds": round(read_s, 3),
        "write_seconds": round(write_s, 3),
        "read_slices_per_s": round(slices / read_s, 1),
        "write_slices_per_s": round(slices / write_s, 1),
        "dcmread_per_file_while_reading": {"min": min(read_counts), "max": max(read_counts)},
        "dcmread_calls_while_writing": int(sum(writes.values())),
        "written_MB": round(out_bytes / 2**20, 1),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "values": {"min": float(np.min(values)), "max": float(np.max(values))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    result = run(args.size, args.slices)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
