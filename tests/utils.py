"""The one home of the test helpers (as MONAI's own ``tests/utils.py``): tiny network settings, checkpoints, the
bundle CLI runner, tree hashing, NIfTI and DICOM writers, and the tiny synthetic data sets.

Everything is written to temporary folders the caller owns; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import unittest
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import pydicom
import torch
from custom.networks import TAT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    generate_uid,
)

# --- paths and environment -------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
CONFIGS = os.path.join(BUNDLE, "configs")
INFERENCE_CONFIG = os.path.join(CONFIGS, "inference.json")
TRAIN_CONFIG = os.path.join(CONFIGS, "train.json")
META = os.path.join(CONFIGS, "metadata.json")
LOGGING = os.path.join(CONFIGS, "logging.conf")
SETTINGS_DIR = os.path.join(CONFIGS, "modality")
# single-threaded maths in child processes (2-core machines: no oversubscription)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

# --- the tiny network (the bundle's network_def at tiny widths) ------------------------------------------------
# transpose_hw as inference.json and train.json set it
TINY = {"dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "train_patch_size": 32, "transpose_hw": True}
# a smaller task representation network, for the runs that train
TINY_TREN = {"tren_hidden_channels": 8, "tren_embed_dim": 16}


def tiny_overrides(tren: bool = False, patch: bool = True, **extra: object) -> dict[str, object]:
    """Config overrides (``network_def#<arg>``) that make the bundle's network :data:`TINY` (``transpose_hw`` left
    to the configs, so a test fails when a config loses it).

    Args:
        tren: also the smaller task representation network :data:`TINY_TREN`.
        patch: also ``network_def#train_patch_size`` (inference.json sets a number; train.json refers to
            ``@patch_size``, which training runs set instead).
        extra: further config keys (for example ``patch_size``), added as given.

    Returns:
        ``{"network_def#dim": 8, ..., **extra}`` with JSON-friendly lists.
    """
    skip = ("transpose_hw",) if patch else ("transpose_hw", "train_patch_size")
    net = {k: v for k, v in TINY.items() if k not in skip} | (TINY_TREN if tren else {})
    return {f"network_def#{k}": list(v) if isinstance(v, tuple) else v for k, v in net.items()} | extra


def cli_args(overrides: dict[str, object]) -> list[str]:
    """``--key value`` arguments of ``monai.bundle run`` for config overrides (values JSON-encoded)."""
    return [a for k, v in overrides.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


# the tiny network as ``monai.bundle run`` arguments
TINY_OVERRIDES = cli_args(tiny_overrides())
# train.json overrides of the tiny training runs: the tiny network, 32x32 crops, one crop per task, no workers
TINY_TRAINING = tiny_overrides(
    tren=True, patch=False, patch_size=TINY["train_patch_size"], samples_per_task=1, num_workers=0
)


def tiny_tat(**overrides: object) -> TAT:
    """A TAT with the tests' tiny widths (``TINY``) in the class's own orientation (``transpose_hw`` off), updated by
    ``overrides``; default initialisation (task-kernel gates at 0)."""
    args = {k: v for k, v in TINY.items() if k != "transpose_hw"}
    args.update(overrides)
    return TAT(**args)


def tiny_net(seed: int = 0, **overrides: object) -> TAT:
    """The tiny TAT (``TINY`` updated by ``overrides``) with random weights and non-zero task-kernel gates, so the
    generated kernels matter."""
    torch.manual_seed(seed)
    net = TAT(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gate"):
                p.normal_(0, 0.5)
    return net


class ShiftNet(torch.nn.Module):
    """``conv1x1(x) = x + 0.5`` then dropout: exact only in float32 and in eval mode (bfloat16 autocast rounds x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(0.5)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x))


def save_checkpoint(path: str, seed: int = 0) -> TAT:
    """Save ``{"model": state_dict}`` of :func:`tiny_net` like train.json's best-model saver; returns the network."""
    net = tiny_net(seed)
    torch.save({"model": net.state_dict()}, path)
    return net


def save_identity_checkpoint(path: str, seed: int = 0) -> TAT:
    """Save the tiny TAT with its final convolution zeroed: zero residual, so the network is the identity."""
    net = tiny_net(seed)
    with torch.no_grad():
        for p in net.output.parameters():
            p.zero_()
    torch.save({"model": net.state_dict()}, path)
    return net


def assert_state_equal(case: unittest.TestCase, a: object, b: object, where: str = "") -> None:
    """Nested state (dicts, lists, tensors, numbers) equal exactly, naming the first differing path."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        case.assertEqual(sorted(map(str, a)), sorted(map(str, b)), where)
        for k in a:
            assert_state_equal(case, a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        case.assertEqual(len(a), len(b), where)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(case, x, y, f"{where}[{i}]")
    else:
        case.assertEqual(a, b, where)


def assert_close_to(
    case: unittest.TestCase, actual: float, expected: float, rel: float = 1e-6, abs_tol: float = 1e-12, msg=None
) -> None:
    """``actual`` within ``max(rel * |expected|, abs_tol)`` of ``expected`` (the tolerance of ``pytest.approx``)."""
    tol = max(rel * abs(expected), abs_tol)
    case.assertLessEqual(abs(actual - expected), tol, msg or f"{actual} != {expected} within {tol}")


# --- running the bundle -----------------------------------------------------------------------------------------
def run_cli(*args: str, cwd: str = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` single-threaded; never raises on failure."""
    return run_module("monai.bundle", *args, cwd=cwd, timeout=timeout)


def run_module(*args: str, cwd: str = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` single-threaded (from the repository root by default); never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def tree_hashes(root: str, metadata: bool = False) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), to prove a tree untouched.

    Args:
        root: folder to walk.
        metadata: also the file's mode and modification time (so rewriting equal bytes counts as a change).
    """
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if metadata:
                st = os.stat(path)
                digest = f"{digest}:{oct(st.st_mode)}:{st.st_mtime_ns}"
            out[os.path.relpath(path, root)] = digest
    return out


class FreshReadersCase(unittest.TestCase):
    """A test case with a temporary folder ``self.tmp`` and the readers' header caches cleared before and after
    (files rewritten under one name within a second would otherwise be served from the cache)."""

    def setUp(self) -> None:
        from custom.data.readers import clear_caches

        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.tmp = folder.name
        clear_caches()
        self.addCleanup(clear_caches)


# --- NIfTI ------------------------------------------------------------------------------------------------------
def save_nifti(path: str | os.PathLike, arr: np.ndarray, spacing: float = 1.0) -> str:
    """Write ``arr`` as float32 NIfTI (creating folders) with in-plane ``spacing``; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), affine), path)
    return path


def save_scaled_nifti(
    path: str, raw: np.ndarray, slope: float = 1.0, inter: float = 0.0, affine: np.ndarray | None = None
) -> str:
    """Write ``raw`` with its own dtype and byte order and the given ``scl_slope``/``scl_inter`` (stored values)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = nib.Nifti1Header(endianness=">" if raw.dtype.byteorder == ">" else "<")
    img = nib.Nifti1Image(raw, np.eye(4) if affine is None else affine, header)
    img.header.set_data_dtype(raw.dtype)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return path


def nifti_with_header(path: str, arr: np.ndarray, affine: np.ndarray, **fields: object) -> str:
    """Write ``arr`` (its own dtype) with sform and qform both ``affine`` (codes 1), then overwrite the header
    ``fields`` in the file as given (nibabel's save would repair or recompute them: NaN, zeros, a pixdim that disagrees
    with the sform); ``.nii`` only. Returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_sform(affine, 1)
    img.header.set_qform(affine, 1)
    nib.save(img, path)
    with open(path, "rb") as f:
        header = nib.Nifti1Header.from_fileobj(f, check=False)
    for name, value in fields.items():
        header[name] = value
    with open(path, "r+b") as f:
        f.write(header.binaryblock)
    return path


def make_tree(root: str, modalities: dict[str, int], shape: tuple[int, ...] = (16, 12, 3)) -> None:
    """``root/<MOD>/{image,label}/caseNN.nii.gz`` with random content, ``n`` cases per modality."""
    rng = np.random.default_rng(0)
    for modality, n in modalities.items():
        for i in range(n):
            clean = rng.uniform(0, 100, size=shape)
            save_nifti(os.path.join(root, modality, "label", f"case{i:02d}.nii.gz"), clean)
            save_nifti(os.path.join(root, modality, "image", f"case{i:02d}.nii.gz"), clean + rng.normal(size=shape))


# --- DICOM ------------------------------------------------------------------------------------------------------
SOP_CLASS = {"CT": CTImageStorage, "PT": PositronEmissionTomographyImageStorage, "MR": "1.2.840.10008.5.1.4.1.1.4"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    z: float = 0.0,
    series: str | None = None,
    study: str | None = None,
    frame: str | None = None,
    modality: str = "CT",
    sop_class: str | None = None,
    syntax: str = ExplicitVRLittleEndian,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing: Sequence[float] = (1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0),
    thickness: float = 1.0,
    instance: int = 1,
    slope: float | None = 1.0,
    inter: float | None = 0.0,
    bits_stored: int | None = None,
    **tags: object,
) -> Dataset:
    """One grey-level DICOM slice as a dataset with file meta (not written).

    Args:
        pixels: stored values (Rows, Columns): int16/int8 -> signed, uint16/uint8 -> unsigned; None: no image
            (no geometry, no pixel module, as a report or a header-only file).
        z: position along the normal of ``orientation``; the slice lies at ``(origin, 0) + z * normal``.
        series, study, frame: UIDs (generated when None).
        modality: the Modality tag; ``sop_class`` defaults to its storage class (secondary capture otherwise).
        syntax: transfer syntax; compressed ones (RLE, JPEG 2000 ...) through pydicom's encoders.
        orientation, spacing, origin, thickness: geometry (ImageOrientationPatient, PixelSpacing, ...).
        instance: InstanceNumber.
        slope, inter: RescaleSlope / RescaleIntercept (None leaves the tag out).
        bits_stored: BitsStored (default: all allocated bits).
        tags: further tags set verbatim (a value None deletes the tag).
    """
    sop = sop_class or SOP_CLASS.get(modality, SECONDARY_CAPTURE)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = (
        syntax if syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian) else ExplicitVRLittleEndian
    )
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Test^Phantom", "TAT001"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.FrameOfReferenceUID = frame or generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, instance
    if pixels is not None:
        pixels = np.asarray(pixels)
        iop = np.asarray(orientation, float)
        normal = np.cross(iop[:3], iop[3:])
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.array([origin[0], origin[1], 0.0]) + z * normal]
        ds.PixelSpacing, ds.SliceThickness = [float(v) for v in spacing], thickness
        ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored or bits, (bits_stored or bits) - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if slope is not None:
            ds.RescaleSlope = f"{slope:.10g}"[:16]
        if inter is not None:
            ds.RescaleIntercept = f"{inter:.10g}"[:16]
        big = syntax == ExplicitVRBigEndian
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">" if big else "<")).tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    for name, value in tags.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    if pixels is not None and syntax in GDCM_ENCODED:
        return _gdcm_transcode(ds, syntax)
    if pixels is not None and syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        # pydicom's own RLE encoder: GDCM's (preferred by pydicom once installed) aborts the process on some slices
        ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "")
    return ds


# transfer syntaxes pydicom cannot encode, written by GDCM (python-gdcm, the decoder the package installs for them)
# (JPEG 2000 too: OpenJPEG through pydicom refuses slices as small as the tests')
GDCM_ENCODED = (
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.50",
)


def _gdcm_transcode(ds: Dataset, syntax: str) -> Dataset:
    """``ds`` re-encoded by GDCM in ``syntax`` (JPEG Lossless SV1 / Process 14, JPEG-LS or JPEG 2000 lossless, JPEG
    baseline)."""
    import gdcm

    target = {
        "1.2.840.10008.1.2.4.70": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        "1.2.840.10008.1.2.4.57": gdcm.TransferSyntax.JPEGLosslessProcess14,
        "1.2.840.10008.1.2.4.80": gdcm.TransferSyntax.JPEGLSLossless,
        "1.2.840.10008.1.2.4.90": gdcm.TransferSyntax.JPEG2000Lossless,
        "1.2.840.10008.1.2.4.50": gdcm.TransferSyntax.JPEGBaselineProcess1,  # lossy, 8-bit
    }[syntax]
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.dcm"), os.path.join(d, "out.dcm")
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        if not reader.Read():
            raise RuntimeError("GDCM cannot read the uncompressed test slice")
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM cannot encode the test slice in {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM cannot write the test slice")
        return pydicom.dcmread(dst)


def dicom_slice(path: str, pixels: np.ndarray | None, **kw: object) -> str:
    """Write :func:`dicom_dataset` ``(pixels, **kw)`` to ``path`` (creating folders); returns the path."""
    ds = dicom_dataset(pixels, **kw)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_series_folder(
    folder: str,
    volume: np.ndarray,
    positions: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    instances: Sequence[int] | None = None,
    **kw: object,
) -> str:
    """Write ``volume`` (Rows, Columns, n) as one series (one study, one frame of reference) in ``folder``.

    Args:
        folder: output folder.
        volume: stored values, slice k is ``volume[..., k]``.
        positions: slice k at ``positions[k]`` along the normal (default k).
        names: file names (default ``sliceNNN.dcm``).
        instances: InstanceNumber per slice (default k + 1).
        kw: the rest of :func:`dicom_dataset`'s arguments, the same for every slice.

    Returns:
        ``folder``.
    """
    n = volume.shape[-1]
    uids = {key: kw.pop(key, None) or generate_uid() for key in ("series", "study", "frame")}
    positions = list(range(n)) if positions is None else list(positions)
    names = [f"slice{k:03d}.dcm" for k in range(n)] if names is None else list(names)
    instances = [k + 1 for k in range(n)] if instances is None else list(instances)
    for k in range(n):
        dicom_slice(
            os.path.join(folder, names[k]), volume[..., k], z=float(positions[k]), instance=instances[k], **uids, **kw
        )
    return folder


def write_ct_series(folder: str, n: int = 4, rows: int = 20, cols: int = 24, seed: int = 0) -> list[str]:
    """A small clinical-looking CT series: 12-bit unsigned stored values, intercept -1024, 2.5 mm axial slices,
    instance numbers reversed and file names out of slice order on purpose.

    Returns:
        the file paths, slice k (from the lowest position) first.
    """
    rng = np.random.default_rng(seed)
    hu = np.where(rng.random((rows, cols, n)) > 0.5, 40.0, -900.0) + rng.normal(0, 30, (rows, cols, n))
    names = [f"slice_{(k * 7) % n:03d}.dcm" for k in range(n)]
    dicom_series_folder(
        folder,
        np.clip(hu + 1024, 0, 4095).astype(np.uint16),
        positions=[40.0 + 2.5 * k for k in range(n)],
        names=names,
        instances=[n - k for k in range(n)],
        origin=(-12.5, -30.0),
        spacing=(0.7, 0.8),
        thickness=2.5,
        bits_stored=12,
        slope=1,
        inter=-1024,
        SeriesNumber=3,
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
    )
    return [os.path.join(folder, name) for name in names]


def read_series(folder: str) -> list[pydicom.Dataset]:
    """All DICOM files of a folder, sorted by position along z."""
    files = [pydicom.dcmread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    return sorted(files, key=lambda d: float(d.ImagePositionPatient[2]))


def pet_tags(
    units: str = "BQML",
    weight: float | None = 70.0,
    dose: float | None = 3.5e8,
    half_life: float | None = 6586.2,
    decay: str | None = "START",
    start: str | None = "100000",
    series_time: str | None = "110000",
) -> dict[str, object]:
    """Tags of a PET slice for :func:`dicom_dataset` (a value None leaves the tag out): F-18, 70 kg, 350 MBq
    injected at 10:00, series at 11:00 on 2020-01-01."""
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


# --- tiny synthetic data sets -----------------------------------------------------------------------------------
# physical-unit intensity models: (background, foreground, noise of the degraded image)
MODELS = {"CT": (-1000.0, 60.0, 40.0), "PET": (0.0, 8.0, 1.5), "MRI": (0.0, 1500.0, 150.0)}
TASKS = {"CT": "low_dose_ct", "PET": "low_count_pet", "MRI": "mri_super_resolution"}


def _write_datalist(root: str, lists: dict) -> str:
    path = os.path.join(root, "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(lists, f, indent=1)
    return path


def _disk_volume(rng: np.random.Generator, modality: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    bg, fg, noise = MODELS[modality]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.empty(shape, np.float32)
    for z in range(shape[2]):
        cy, cx, r = (
            rng.uniform(0.3, 0.7) * shape[0],
            rng.uniform(0.3, 0.7) * shape[1],
            rng.uniform(0.2, 0.35) * shape[0],
        )
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        label[..., z] = np.where(disk, fg * (1 + 0.3 * np.sin(xx / 3.0)), bg)
    image = label + rng.normal(0, noise, shape).astype(np.float32)
    return image, label


def make_dataset(
    root: str, n_train: int = 2, n_val: int = 1, shape: tuple[int, int, int] = (40, 40, 3), seed: int = 0
) -> str:
    """Training/validation volume pairs of the three modalities (a disk per slice) and ``root/datalist.json``.

    Files: ``root/<MOD>/<split>_<i>_{image,label}.nii.gz``, ``n_train``/``n_val`` per modality.

    Returns:
        the datalist path.
    """
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {"training": [], "validation": []}
    for modality in MODELS:
        for split, count in (("training", n_train), ("validation", n_val)):
            for i in range(count):
                image, label = _disk_volume(rng, modality, shape)
                names = {}
                for kind, arr in (("image", image), ("label", label)):
                    rel = f"{modality}/{split}_{i}_{kind}.nii.gz"
                    os.makedirs(os.path.join(root, modality), exist_ok=True)
                    nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(root, rel))
                    names[kind] = rel
                lists[split].append({**names, "modality": modality, "task": TASKS[modality]})
    return _write_datalist(root, lists)


def _disk_pair(rng: np.random.Generator, modality: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    bg, fg, noise = MODELS[modality]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx, r = 0.5 * shape[0], 0.45 * shape[1], 0.3 * shape[0]
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
    label2d = np.where(disk, fg * (1 + 0.3 * np.sin(xx / 3.0)), bg).astype(np.float32)
    label = (
        label2d
        if len(shape) == 2
        else np.repeat(label2d[..., None], shape[2], axis=2) * (1 + 0.1 * np.arange(shape[2], dtype=np.float32))
    )
    image = (label + rng.normal(0, noise, label.shape)).astype(np.float32)
    return image, label


def make_tiny_dataset(root: str, size: int = 32, seed: int = 0) -> str:
    """2D pairs with training/validation/test splits and ``root/datalist.json``; returns the datalist path.

    Splits: training 2 and validation 1 2D pairs per modality; test 1 2D pair per modality plus one 3D MRI volume
    of 3 slices (``mri/test_vol_*``).
    """
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {"training": [], "validation": [], "test": []}
    plan = [
        (m, s, i, (size, size))
        for m in MODELS
        for s, n in (("training", 2), ("validation", 1), ("test", 1))
        for i in range(n)
    ] + [("MRI", "test", "vol", (size, size, 3))]
    for modality, split, i, shape in plan:
        image, label = _disk_pair(rng, modality, shape)
        item = {"modality": modality, "task": TASKS[modality]}
        for kind, arr in (("image", image), ("label", label)):
            rel = f"{modality.lower()}/{split}_{i}_{kind}.nii.gz"
            os.makedirs(os.path.join(root, modality.lower()), exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(root, rel))
            item[kind] = rel
        lists[split].append(item)
    return _write_datalist(root, lists)


def task_slice(modality: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One degraded input slice that looks like its modality, in physical units: CT body with bone ring and
    noise (HU), PET hot spots with Poisson-like noise (SUV), k-space-truncated MRI (scanner units)."""
    from custom.transforms import kspace_truncate

    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = 0.5 + rng.uniform(-0.06, 0.06, 2)
    a, b = rng.uniform(0.28, 0.38, 2)
    r = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2
    body = r < 1
    if modality == "CT":
        img = np.where(body, 40.0, -1000.0) + np.where((r > 0.75) & body, 900.0, 0.0)
        return (img + rng.normal(0, 60, img.shape)).astype(np.float32)
    if modality == "PET":
        img = np.where(body, 1.0, 0.0)
        for _ in range(3):
            hy, hx = rng.uniform(0.35, 0.65, 2)
            img = img + 8.0 * (((yy - hy) ** 2 + (xx - hx) ** 2) < 0.004)
        return np.maximum(img + rng.normal(0, 0.6, img.shape) * np.sqrt(img + 0.1), 0).astype(np.float32)
    img = np.where(body, 900.0 + 500.0 * np.sin(12 * xx + rng.uniform(0, 6)), 0.0)
    return kspace_truncate(img[None], 4.0)[0].numpy().astype(np.float32)


def make_task_dataset(root: str, counts: dict | None = None, size: int = 32, seed: int = 0) -> str:
    """2D NIfTI inputs of :func:`task_slice` (labels = inputs: only the inputs matter) and ``root/datalist.json``.

    Args:
        root: output folder.
        counts: slices per split (default training 6, validation 3, test 2 per task).
        size: slice side.
        seed: random seed.

    Returns:
        the data list path.
    """
    counts = counts or {"training": 6, "validation": 3, "test": 2}
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {split: [] for split in counts}
    for modality in ("CT", "PET", "MRI"):
        os.makedirs(os.path.join(root, modality.lower()), exist_ok=True)
        for split, n in counts.items():
            for i in range(n):
                rel = f"{modality.lower()}/{split}_{i}.nii.gz"
                nib.save(nib.Nifti1Image(task_slice(modality, rng, size), np.eye(4)), os.path.join(root, rel))
                lists[split].append({"image": rel, "label": rel, "modality": modality})
    return _write_datalist(root, lists)


# --- the authors' released data layout --------------------------------------------------------------------------
# ``root/{PET,CT,MRI}/{train,validation,test}/{LQ,HQ}/``: training patches ``pickle.dump(torch_tensor, f)`` of a
# (1, S, S) float tensor in physical units, validation and test slices ``SimpleITK.WriteImage(
# SimpleITK.GetImageFromArray(2d_float_array), path)`` (.nii); shapes scale the published ones down (MRI 256 x 256,
# CT 512 x 512, PET 192 x 400).
REFERENCE_SLICE_SHAPES = {"MRI": (32, 32), "CT": (48, 48), "PET": (24, 40)}
REFERENCE_PATCH = 40


def _reference_pair(rng: np.random.Generator, modality: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    bg, fg, noise = MODELS[modality]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx, r = rng.uniform(0.4, 0.6) * shape[0], rng.uniform(0.4, 0.6) * shape[1], 0.3 * min(shape)
    hq = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r**2, fg * (1 + 0.3 * np.sin(xx / 3.0)), bg).astype(np.float32)
    lq = (hq + rng.normal(0, noise, shape)).astype(np.float32)
    return lq, hq


def write_bin(path: str, array: np.ndarray) -> None:
    """The authors' training-patch writer: ``pickle.dump`` of a float tensor (1, H, W)."""
    with open(path, "wb") as f:
        pickle.dump(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None], f)


def write_nii(path: str, array: np.ndarray) -> None:
    """The authors' slice writer: SimpleITK from a 2D float array."""
    import SimpleITK

    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.asarray(array, dtype=np.float32)), path)


def make_reference_dataset(
    root: str, counts: tuple[int, int, int] = (3, 2, 2), tasks: tuple[str, ...] = ("PET", "CT", "MRI"), seed: int = 0
) -> dict[str, dict[str, list[str]]]:
    """A tiny copy of the authors' released data set, written the way their code writes it.

    Args:
        root: output folder.
        counts: files per task in train, validation, test.
        tasks: task folders to write.
        seed: random seed.

    Returns:
        ``{task: {split folder: [LQ file paths, sorted]}}``.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, list[str]]] = {}
    for task in tasks:
        written[task] = {}
        for split, n in zip(("train", "validation", "test"), counts):
            for kind in ("LQ", "HQ"):
                os.makedirs(os.path.join(root, task, split, kind), exist_ok=True)
            files = []
            for i in range(n):
                if split == "train":
                    lq, hq = _reference_pair(rng, task, (REFERENCE_PATCH, REFERENCE_PATCH))
                    name, writer = f"{task.lower()}_{i:03d}.bin", write_bin
                else:
                    lq, hq = _reference_pair(rng, task, REFERENCE_SLICE_SHAPES[task])
                    name, writer = f"{task.lower()}_{split}_{i:03d}.nii", write_nii
                writer(os.path.join(root, task, split, "LQ", name), lq)
                writer(os.path.join(root, task, split, "HQ", name), hq)
                files.append(os.path.join(root, task, split, "LQ", name))
            written[task][split] = sorted(files)
    return written
