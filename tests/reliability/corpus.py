"""Generated corpus of malformed and hostile inputs (nothing binary is committed).

:func:`make_corpus` writes each case under ``root`` and returns ``{name: Case}``; every case is one data-list
item (``image``/``label`` paths relative to ``root``, ``modality``) plus the text its error must contain.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.utils import dicom_series_folder, dicom_slice, nifti_with_header, save_nifti, save_scaled_nifti

SHAPE = (40, 40, 3)
# every case make_corpus writes
NAMES = [
    "zero_byte",
    "truncated_gz",
    "truncated_nii",
    "corrupt_header",
    "absurd_shape",
    "huge_dims",
    "four_d",
    "one_d",
    "nan_voxels",
    "inf_voxels",
    "shape_mismatch",
    "unknown_modality",
    "missing_modality",
    "missing_file",
    "not_nifti",
    "dicom_mixed_series",
    "dicom_missing_slice",
    "dicom_empty",
    "dicom_no_pixels",
    "dicom_non_image",
    "dicom_garbage",
    "complex_nifti",
    "rgb_nifti",
    "gzip_crc",
    "nan_geometry",
    "dicom_rescale_slope_zero",
    "dicom_bits_mismatch",
    "dicom_rgb",
    "pet_counts",
    "pet_no_weight",
    "dicom_duplicate_slice",
]


@dataclass
class Case:
    """One corpus entry: the data-list item, the file the error must name, and the problem words."""

    item: dict
    culprit: str  # path (relative to root) the message must name
    problem: str  # lower-case text the message must contain
    extra: dict = field(default_factory=dict)


def _raw(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _bytes_of_nifti(path: str, arr: np.ndarray) -> bytes:
    """Bytes of a valid NIfTI file (written to ``path``, read back, removed)."""
    save_nifti(path, arr)
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    return data


def _patch(path: str, edits: dict[int, bytes]) -> str:
    with open(path, "r+b") as f:
        for offset, data in edits.items():
            f.seek(offset)
            f.write(data)
    return path


def _clean(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1000, 1000, SHAPE).astype(np.float32)


def _dicom_slice(
    path: str,
    z: int,
    series: str,
    study: str,
    pixels: bool = True,
    modality: str = "CT",
    sop_class: str | None = None,
    frame: str | None = None,
) -> None:
    raw = np.arange(40 * 40, dtype=np.int16).reshape(40, 40) + z if pixels else None
    dicom_slice(
        path,
        raw,
        z=float(z),
        series=series,
        study=study,
        frame=frame,
        modality=modality,
        sop_class=sop_class,
        instance=z + 1,
        slope=1.0,
        inter=-1024.0,
        PatientID="RELIABILITY",
    )


def _series(folder: str, slices: list[int], series: str | list[str] | None = None, **kw) -> str:
    study, frame = generate_uid(), generate_uid()
    uids = series if isinstance(series, list) else [series or generate_uid()] * len(slices)
    for z, uid in zip(slices, uids):
        _dicom_slice(os.path.join(folder, f"slice{z:03d}.dcm"), z, uid, study, frame=frame, **kw)
    return folder


def make_corpus(root: str) -> dict[str, Case]:
    """Write the corpus under ``root``; valid partners are real, so each case has exactly one problem."""
    r = lambda *p: os.path.join(root, *p)  # noqa: E731
    cases: dict[str, Case] = {}

    def pair(
        name: str,
        image: str,
        problem: str,
        modality: str | None = "CT",
        label: str | None = None,
        culprit: str | None = None,
    ) -> None:
        label = label or save_nifti(r(name, "label.nii.gz"), _clean())
        item = {"image": os.path.relpath(image, root), "label": os.path.relpath(label, root)}
        if modality is not None:
            item["modality"] = modality
        cases[name] = Case(item, os.path.relpath(culprit or image, root), problem)

    good = _clean()
    # --- NIfTI ---
    pair("zero_byte", _raw(r("zero_byte", "image.nii.gz"), b""), "empty file")
    full = _bytes_of_nifti(r("truncated_gz", "full.nii.gz"), good)
    pair("truncated_gz", _raw(r("truncated_gz", "image.nii.gz"), full[: len(full) // 2]), "truncated")
    full = _bytes_of_nifti(r("truncated_nii", "full.nii"), good)
    pair("truncated_nii", _raw(r("truncated_nii", "image.nii"), full[: 352 + 100]), "truncated")
    # sizeof_hdr (must be 348) and the magic "n+1" overwritten
    p = _patch(save_nifti(r("corrupt_header", "image.nii"), good), {0: b"\xde\xad\xbe\xef", 344: b"XXXX"})
    pair("corrupt_header", p, "corrupt")
    p = _patch(save_nifti(r("absurd_shape", "image.nii"), good), {42: np.int16(-5).tobytes()})  # dim[1] = -5
    pair("absurd_shape", p, "invalid image dimensions")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))  # declares ~100 TB of voxels, the file holds a few bytes
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    pair(
        "huge_dims", _raw(r("huge_dims", "image.nii.gz"), gzip.compress(hdr.binaryblock + b"\x00" * 68)), "larger than"
    )
    pair(
        "four_d",
        save_nifti(r("four_d", "image.nii.gz"), np.zeros((40, 40, 3, 2))),
        "2d or 3d",
        label=save_nifti(r("four_d", "label.nii.gz"), np.zeros((40, 40, 3, 2))),
    )
    cases["four_d"].culprit = cases["four_d"].item["label"]
    pair(
        "one_d",
        save_nifti(r("one_d", "image.nii.gz"), np.zeros((40,))),
        "2d or 3d",
        label=save_nifti(r("one_d", "label.nii.gz"), np.zeros((40,))),
    )
    cases["one_d"].culprit = cases["one_d"].item["label"]
    bad = good.copy()
    bad[3, 4, 1] = np.nan
    pair("nan_voxels", save_nifti(r("nan_voxels", "image.nii.gz"), bad), "non-finite")
    bad = good.copy()
    bad[5, 5, 0] = np.inf
    pair("inf_voxels", save_nifti(r("inf_voxels", "image.nii.gz"), bad), "non-finite")
    pair("shape_mismatch", save_nifti(r("shape_mismatch", "image.nii.gz"), np.zeros((32, 40, 3))), "shape mismatch")
    pair(
        "unknown_modality",
        save_nifti(r("unknown_modality", "image.nii.gz"), good),
        "unknown modality",
        modality="XR",
        culprit=r("unknown_modality", "label.nii.gz"),
    )
    pair(
        "missing_modality",
        save_nifti(r("missing_modality", "image.nii.gz"), good),
        "no 'modality'",
        modality=None,
        culprit=r("missing_modality", "label.nii.gz"),
    )
    pair("missing_file", r("missing_file", "image.nii.gz"), "not found")
    pair("not_nifti", _raw(r("not_nifti", "image.nii.gz"), b"<html>404</html>"), "not a nifti")

    # --- DICOM series folders (label = a valid 3-slice series) ---
    def dpair(name: str, image: str, problem: str) -> None:
        label = _series(r(name, "label"), [0, 1, 2])
        pair(name, image, problem, label=label)

    s1, s2 = generate_uid(), generate_uid()
    dpair(
        "dicom_mixed_series", _series(r("dicom_mixed_series", "image"), [0, 1, 2], series=[s1, s1, s2]), "mixed series"
    )
    dpair("dicom_missing_slice", _series(r("dicom_missing_slice", "image"), [0, 1, 3]), "missing slice")
    os.makedirs(r("dicom_empty", "image"))
    dpair("dicom_empty", r("dicom_empty", "image"), "no dicom file")
    dpair("dicom_no_pixels", _series(r("dicom_no_pixels", "image"), [0, 1, 2], pixels=False), "no pixel data")
    folder = r("dicom_non_image", "image")  # a structured report, no image at all
    os.makedirs(folder)
    _dicom_slice(
        os.path.join(folder, "report.dcm"),
        0,
        generate_uid(),
        generate_uid(),
        pixels=False,
        modality="SR",
        sop_class="1.2.840.10008.5.1.4.1.1.88.11",
    )
    dpair("dicom_non_image", folder, "not an image")
    folder = r("dicom_garbage", "image")
    for z in range(3):
        _raw(os.path.join(folder, f"slice{z}.dcm"), b"\x00" * 200 + b"not dicom")
    dpair("dicom_garbage", folder, "unreadable dicom file")

    # --- silent-corruption classes (issue 12): each must be refused, naming the file and the problem ---
    arr = good.astype(np.complex64) * (1 + 1j)
    os.makedirs(r("complex_nifti"), exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), r("complex_nifti", "image.nii.gz"))
    pair("complex_nifti", r("complex_nifti", "image.nii.gz"), "complex voxel type")
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    os.makedirs(r("rgb_nifti"), exist_ok=True)
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), r("rgb_nifti", "image.nii.gz"))
    pair("rgb_nifti", r("rgb_nifti", "image.nii.gz"), "rgb / vector voxel type")
    data = bytearray(_bytes_of_nifti(r("gzip_crc", "full.nii.gz"), good))
    data[-8] ^= 0xFF  # the CRC32 of the gzip trailer
    pair("gzip_crc", _raw(r("gzip_crc", "image.nii.gz"), bytes(data)), "crc")
    # an sform (code 1) holding NaN: the voxels cannot be placed, and a restored file would carry the NaN
    nan_sform = nifti_with_header(r("nan_geometry", "image.nii"), good, np.eye(4), srow_x=[np.nan, 0, 0, 0])
    pair("nan_geometry", nan_sform, "invalid nifti geometry")

    def edited(name: str, edit, culprit_index: int = 1) -> None:
        folder = _series(r(name, "image"), [0, 1, 2])
        path = os.path.join(folder, f"slice{culprit_index:03d}.dcm")
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
        label = _series(r(name, "label"), [0, 1, 2])
        pair(name, folder, cases_problem[name], label=label, culprit=path)

    def pet(ds, **drop) -> None:
        ds.Modality, ds.Units, ds.DecayCorrection, ds.PatientWeight = "PT", "BQML", "ADMIN", 70
        info = Dataset()
        info.RadionuclideTotalDose = 3.5e8
        ds.RadiopharmaceuticalInformationSequence = [info]
        for tag in drop:
            delattr(ds, tag)

    cases_problem = {
        "dicom_rescale_slope_zero": "rescaleslope 0",
        "dicom_bits_mismatch": "bitsallocated 8 does not match",
        "dicom_rgb": "colour image",
        "pet_counts": "units cnts",
        "pet_no_weight": "patientweight (0010,1030)",
    }
    edited("dicom_rescale_slope_zero", lambda ds: setattr(ds, "RescaleSlope", "0"))

    def eight_bit(ds) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7

    edited("dicom_bits_mismatch", eight_bit)

    def colour(ds) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    edited("dicom_rgb", colour)

    def counts(ds) -> None:
        pet(ds)
        ds.Units = "CNTS"

    edited("pet_counts", counts)
    edited("pet_no_weight", lambda ds: pet(ds, PatientWeight=True))
    for name in ("pet_counts", "pet_no_weight"):  # every slice is PET; the culprit is the first in order
        folder = r(name, "image")
        for z in (0, 2):
            path = os.path.join(folder, f"slice{z:03d}.dcm")
            ds = pydicom.dcmread(path)
            counts(ds) if name == "pet_counts" else pet(ds, PatientWeight=True)
            ds.save_as(path)
        cases[name].culprit = os.path.relpath(os.path.join(folder, "slice000.dcm"), root)
        cases[name].item["modality"] = "PET"
    folder = _series(r("dicom_duplicate_slice", "image"), [0, 1, 2])
    ds = pydicom.dcmread(os.path.join(folder, "slice002.dcm"))
    ds.ImagePositionPatient = [0.0, 0.0, 1.0]
    ds.save_as(os.path.join(folder, "slice002.dcm"))
    dpair("dicom_duplicate_slice", folder, "duplicate slice")
    return cases


def make_valid_corpus(root: str) -> dict[str, str]:
    """Valid inputs that a careless reader corrupts (scaled integers, big-endian, oblique shuffled series, a symlink
    to a series folder): name -> path. Both the validator and inference must accept them."""
    rng = np.random.default_rng(3)
    out = {
        "scaled_uint8": save_scaled_nifti(
            os.path.join(root, "scaled_uint8.nii.gz"), rng.integers(0, 255, SHAPE).astype(np.uint8), 16.0, -1024.0
        ),
        "scaled_int16_big_endian": save_scaled_nifti(
            os.path.join(root, "scaled_be.nii"), rng.integers(-900, 900, SHAPE).astype(">i2"), 2.0, -5.0
        ),
        "dicom_unsigned_rescaled": dicom_series_folder(
            os.path.join(root, "unsigned"), rng.integers(0, 4000, SHAPE).astype(np.uint16), slope=0.5, inter=-1024.0
        ),
        "dicom_shuffled_positions": dicom_series_folder(
            os.path.join(root, "shuffled"), rng.integers(-900, 900, SHAPE).astype(np.int16), positions=[2.0, 0.0, 1.0]
        ),
    }
    os.symlink(out["dicom_unsigned_rescaled"], os.path.join(root, "linked_series"))
    out["dicom_symlinked_series"] = os.path.join(root, "linked_series")
    return out


def make_empty_tree(root: str) -> dict[str, str]:
    """Data-set roots for the datalist ``build`` command: empty, modality without cases, missing partner."""
    out = {"empty_root": os.path.join(root, "empty_root")}
    os.makedirs(out["empty_root"])
    out["empty_modality"] = os.path.join(root, "empty_modality")
    os.makedirs(os.path.join(out["empty_modality"], "CT", "label"))
    os.makedirs(os.path.join(out["empty_modality"], "CT", "image"))
    out["missing_partner"] = os.path.join(root, "missing_partner")
    save_nifti(os.path.join(out["missing_partner"], "CT", "label", "case01.nii.gz"), _clean())
    save_nifti(os.path.join(out["missing_partner"], "CT", "image", "case02.nii.gz"), _clean())
    return out


def copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst)
