"""The one reading layer: MONAI's ``NibabelReader`` / ``PydicomReader`` plus the rules TAT needs, for every workflow.

Training and validation (:mod:`custom.data.slicing`), evaluation, inference (:class:`custom.inference.LoadScand`)
and the data-list validator all read through this module, so they accept and refuse exactly the same inputs.
Each rule lives in one place:

* **NIfTI** (:class:`NiftiReader`, a ``NibabelReader``; :func:`nifti_image`): header checked before any voxel is
  read (empty, corrupt, non-positive or more than :data:`custom.data.limits.MAX_VOXELS` voxels, an uncompressed file shorter than
  declared); complex, RGB and other non-scalar voxel types refused; a ``.nii.gz`` is decompressed to its end once
  so that a failing gzip CRC or a truncated stream is an error (:func:`verify_gzip`); ``scl_slope`` /
  ``scl_inter`` are applied (physical values) and the on-disk type and scaling are carried in the meta data
  (``source_dtype``, ``source_scl_slope``, ``source_scl_inter``) for the writer; NaN / inf refused. The affine the
  header gives (sform, else qform, else pixdim) must be finite and non-degenerate (:func:`check_nifti_affine`), an
  infinite ``scl_slope`` is refused (nibabel would read it as no scaling).
  MONAI's header repair (``correct_nifti_header_if_necessary``: an sform whose spacing disagrees with pixdim is
  replaced by the qform) changes the loaded image's affine only, with a warning naming the file; the cached image
  keeps the file's header, which the writers reuse unchanged.
* **DICOM** (:class:`DicomReader`, a ``PydicomReader``; :func:`dicom_series`): a series is the DICOM files of a
  folder (or a given list) with one ``SeriesInstanceUID``; a file is DICOM by its suffix, its ``DICM`` prefix or, without
  the preamble (older archives), by starting like a data set (:func:`bare_dicom`), read in the encoding it was written in
  (uncompressed pixel data only: compressed data needs the missing file meta header); slices are sorted along the slice normal
  (``ImagePositionPatient`` projected on the cross product of ``ImageOrientationPatient``), else by
  ``InstanceNumber``; two slices at one position are refused (duplicate), a step larger than 1.5 x the smallest
  step is refused (missing slice), as are slices of different size, spacing or orientation, more than
  :data:`custom.data.limits.MAX_VOXELS` voxels, colour / multi-frame images, a pixel data length that does not match ``Rows`` x
  ``Columns`` x ``BitsAllocated``, float pixel data (7FE0,0008/0009: the derived series could not hold it),
  ``ImageOrientationPatient`` vectors that are not unit length and orthogonal (1e-3), non-finite geometry, a zero
  or negative ``PixelSpacing``, 32-bit integers a float32 cannot hold exactly (also in NIfTI:
  :func:`exact_in_float32`, the values are checked, not the type), ``RescaleSlope`` 0 and a Modality LUT.
  Geometry and rescale tags are read at the top level or, for enhanced images, in the functional groups. Headers
  are read once per file and cached (keyed by path, size and modification time); the pixel data of a slice is
  read on demand, so a training item that needs one slice of a 300-slice series decodes one file and re-reads no
  header.
* **PET** (``Modality`` PT): converted to body-weight SUV,
  ``SUV = value [Bq/ml] * PatientWeight [kg] * 1000 [g/kg] / dose [Bq]``, with
  ``dose = RadionuclideTotalDose * 2 ** (-(t_ref - t_inj) / RadionuclideHalfLife)`` when ``DecayCorrection``
  (0054,1102) is ``START`` and ``dose = RadionuclideTotalDose`` when it is ``ADMIN``; ``t_inj`` from
  ``RadiopharmaceuticalStartDateTime`` (0018,1078) or ``RadiopharmaceuticalStartTime`` (0018,1072),
  the injection date being ``t_ref``'s date (a day earlier when the time is after ``t_ref``: injected before
  midnight); ``t_ref`` is ONE time per series (:func:`pet_reference_time`): ``SeriesDate/SeriesTime``
  (0008,0021/0031), else the earliest ``AcquisitionDate/AcquisitionTime`` of the series' slices; a missing reference
  is refused naming these tags, and ``t_ref - t_inj`` below 0 or above 24 h is refused. ``Units`` GML is SUV
  already. PET that cannot become SUV (``Units`` CNTS, BQML without ``PatientWeight``, dose, half-life or
  times, ``DecayCorrection`` NONE) is refused naming the missing tags, unless the user declares the units
  (``pet_units="SUV"``: the rescaled values are SUV).
* **Modality**: the one alias table is :data:`custom.settings.MODALITY_ALIASES`; ``meta["modality"]`` is the
  task modality or "", ``meta["dicom_modality"]`` the raw tag (so ``OT`` is reported as unsupported, not
  missing).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from custom.data.limits import MAX_VOXELS, finite_values
from custom.settings import MODALITY_ALIASES, canonical_modality
from monai.data import NibabelReader, PydicomReader
from monai.transforms import LoadImage
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

__all__ = [
    "DICOM_TO_MODALITY",
    "PET_UNITS",
    "pet_suv_factor",
    "pet_reference_time",
    "DicomReader",
    "NiftiReader",
    "DicomSeries",
    "exact_in_float32",
    "bare_dicom",
    "is_dicom",
    "is_nifti",
    "is_series_candidate",
    "check_nifti_affine",
    "clear_caches",
    "nifti_image",
    "nifti_source_meta",
    "verify_gzip",
    "read_dicom_header",
    "dicom_series",
    "modality_error",
    "load_image",
]

logger = logging.getLogger(__name__)

DICOM_TO_MODALITY = MODALITY_ALIASES  # the one alias table (kept under its old name for imports)
PET_UNITS = ("SUV",)  # units a user may declare for PET that cannot be converted (pet_units)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_OTHER_IMAGE_SUFFIXES = (".mgz", ".nrrd", ".mha", ".mhd", ".bin", ".png", ".jpg", ".json", ".txt")  # never DICOM
# raw voxels and their headers: DICOM only with the DICM prefix (archives name Part 10 files .img / .raw), never as a
# bare data set (raw voxels can begin like one)
_RAW_SUFFIXES = (".raw", ".zraw", ".img", ".hdr", ".rec", ".par", ".npy", ".npz")
_POSITION_TOL = 1e-3  # mm: two slices closer than this along the normal are duplicates
_GAP_FACTOR = 1.5  # a step larger than this times the smallest step is a missing slice
_MAX_HALF_LIVES = 64  # PET decay from injection to the reference time: more is a wrong half-life or time (1e-19 left)
_DEGENERATE = 1e-6  # |det| of the affine's columns scaled to unit length below this: no 3D placement of the voxels
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.realpath(path), int(st.st_size), int(st.st_mtime_ns)


class _Cache:
    """Small thread-safe LRU cache keyed by (realpath, size, mtime) so a changed file is read again."""

    def __init__(self, size: int) -> None:
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


_HEADERS = _Cache(100_000)  # DICOM headers (pixel data deferred, i.e. left on disk)
_GZIP_OK = _Cache(10_000)  # .nii.gz files whose whole stream (CRC, length) was checked
_SERIES = _Cache(2_000)  # checked series: tuple of file keys -> DicomSeries
_NIFTI = _Cache(10_000)  # checked NIfTI headers (nibabel images, voxels on disk)


def clear_caches() -> None:
    """Forget the cached headers, gzip checks and series (they are keyed by file version, so this is only
    needed to measure reads or to free memory)."""
    for cache in (_HEADERS, _GZIP_OK, _SERIES, _NIFTI):
        with cache.lock:
            cache.data.clear()


# ----------------------------------------------------------------------------------------------------------- sniffing
def is_nifti(path: str | os.PathLike) -> bool:
    """True for a ``.nii`` / ``.nii.gz`` file name."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


_VRS = frozenset(vr.value.encode() for vr in pydicom.valuerep.VR if len(vr.value) == 2)
_LONG_VRS = frozenset(vr.value.encode() for vr in pydicom.valuerep.EXPLICIT_VR_LENGTH_32)
_BARE_ELEMENTS = 6  # elements walked by bare_dicom


def bare_dicom(path: str | os.PathLike) -> bool:
    """Whether the file is laid out like a DICOM data set written without the 128-byte preamble and ``DICM`` prefix
    (older archives and some exports), little endian.

    The first element must be of group 0002 or 0008 (element number below 0100); then the first
    :data:`_BARE_ELEMENTS` elements are walked: tags ascending, no item tags (group FFFE) or odd group below 0008,
    explicit VRs from DICOM's list (group 0002 always explicit; the data set's encoding taken from its first element),
    even lengths that end inside the file (an undefined length, a sequence or encapsulated pixel data, ends the walk
    after the first element). Raw voxel files that begin with small numbers pass the first test by chance, not the
    walk. Files from writers that break these rules (odd lengths) are not recognised without a preamble.

    Args:
        path: the file.

    Returns:
        True for such a file (False for a file that cannot be read).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            return _walk_elements(f, size)
    except OSError:
        return False


def _walk_elements(f: Any, size: int) -> bool:
    """The element walk of :func:`bare_dicom` over the open file ``f`` of ``size`` bytes."""
    pos, last, explicit = 0, -1, None
    for k in range(_BARE_ELEMENTS):
        if pos == size and k > 0:
            return True
        f.seek(pos)
        head = f.read(12)
        if len(head) < 8:
            return False
        group, element = struct.unpack("<HH", head[:4])
        if k == 0 and (group not in (0x0002, 0x0008) or element > 0x00FF):
            return False
        tag = group << 16 | element
        if tag <= last or group == 0xFFFE or (group % 2 and group < 8):
            return False
        if group != 0x0002 and explicit is None:  # the data set's encoding: from its first element
            explicit = head[4:6] in _VRS
        if group == 0x0002 or explicit:
            vr = head[4:6]
            if vr not in _VRS:
                return False
            if vr in _LONG_VRS:
                if len(head) < 12:
                    return False
                length, header = struct.unpack("<I", head[8:12])[0], 12
            else:
                length, header = struct.unpack("<H", head[6:8])[0], 8
        else:
            length, header = struct.unpack("<I", head[4:8])[0], 8
        if length == 0xFFFFFFFF:
            return k > 0
        if length % 2 or pos + header + length > size:
            return False
        pos, last = pos + header + length, tag
    return True


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a DICOM series folder or a DICOM file (by suffix, by the DICM preamble or as a data set without it,
    :func:`bare_dicom`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    if is_nifti(path) or path.lower().endswith(_OTHER_IMAGE_SUFFIXES):
        return False
    try:
        if pydicom.misc.is_dicom(path):
            return True
    except OSError:
        return False
    return not path.lower().endswith(_RAW_SUFFIXES) and bare_dicom(path)


def is_series_candidate(path: str | os.PathLike) -> bool:
    """True for a file that belongs to a DICOM series folder's scan: a DICOM file (suffix or preamble) that is not
    hidden and not a ``DICOMDIR`` index. The one rule for the readers, the validator and scan discovery."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if name.startswith(".") or name.upper() == "DICOMDIR" or not os.path.isfile(path):
        return False
    return is_dicom(path)


# -------------------------------------------------------------------------------------------------------------- NIfTI
def verify_gzip(path: str | os.PathLike) -> None:
    """Decompress a gzip file to its end (CRC and length checked), once per file version.

    nibabel reads only the bytes the voxels need, so a damaged trailer or a truncated stream would go unnoticed.

    Raises:
        ValueError: truncated stream, CRC / length mismatch or corrupt data (the message names the file).
    """
    path = os.fspath(path)
    key = _file_key(path)
    if _GZIP_OK.get(key):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except EOFError as e:
        raise ValueError(f"{path}: truncated compressed file, the gzip stream ends early ({e}).") from e
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise ValueError(f"{path}: corrupt compressed file, gzip CRC or data check failed ({e}).") from e
    _GZIP_OK.put(key, True)


def nifti_image(path: str | os.PathLike, max_voxels: int = MAX_VOXELS, verify: bool = True) -> Any:
    """Open a NIfTI file (header only) after the checks of the module docstring.

    Args:
        path: the ``.nii``/``.nii.gz`` file.
        max_voxels: largest accepted number of voxels.
        verify: also check the whole gzip stream of a ``.nii.gz`` (:func:`verify_gzip`).

    Returns:
        the nibabel image (voxels still on disk, scaling in its array proxy).

    Raises:
        ValueError: missing, empty, corrupt, truncated, oversized, complex / RGB / non-scalar (names the file).
    """
    import nibabel as nib  # local: nibabel is only needed for NIfTI

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found.")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a NIfTI image.")
    key = (_file_key(path), int(max_voxels))
    cached = _NIFTI.get(key)
    if cached is not None:  # this file version's header was read and checked already
        if verify and path.lower().endswith(".gz"):
            verify_gzip(path)
        return cached
    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(img.get_data_dtype())
        offset = int(getattr(img.dataobj, "offset", 0) or 0)  # the loaded header's vox_offset reads 0
    except Exception as e:  # nibabel raises several types for a corrupt header or a non-gzip .gz
        raise ValueError(
            f"{path}: unreadable NIfTI header, corrupt or not a NIfTI file ({type(e).__name__}: {e})."
        ) from e
    if not shape or min(shape) <= 0:
        raise ValueError(f"{path}: invalid image dimensions {shape} in the NIfTI header.")
    if dtype.kind == "c":
        raise ValueError(f"{path}: complex voxel type {dtype} is not supported; only real scalar images are.")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ValueError(f"{path}: RGB / vector voxel type {dtype} is not supported; only real scalar images are.")
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > max_voxels:
        raise ValueError(
            f"{path}: header declares shape {shape} ({voxels:.3g} voxels), larger than the limit of {max_voxels:.3g} "
            "voxels; refusing to allocate it (corrupt header?)."
        )
    if not path.lower().endswith(".gz") and size < offset + voxels * dtype.itemsize:
        raise ValueError(
            f"{path}: truncated NIfTI file ({size} bytes, the header declares {offset + voxels * dtype.itemsize})."
        )
    check_nifti_affine(img, path)
    _check_raw_slope(img, path)
    _NIFTI.put(key, img)
    if verify and path.lower().endswith(".gz"):
        verify_gzip(path)
    return img


def _check_raw_slope(img: Any, path: str) -> None:
    """Refuse an infinite ``scl_slope``, which nibabel reads as "no scaling" (as 0 and NaN, which mean that); an
    infinite intercept with a valid slope nibabel refuses itself. Read from the file's own header bytes: the loaded
    header no longer holds the factors.

    Raises:
        ValueError: names the file and the factor.
    """
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as f:
            slope = float(img.header_class.from_fileobj(f, check=False)["scl_slope"])
    except Exception as e:  # read once already by nibabel: only a file changed meanwhile gets here
        raise ValueError(f"{path}: unreadable NIfTI header ({type(e).__name__}: {e}).") from e
    if np.isinf(slope):
        raise ValueError(
            f"{path}: invalid NIfTI scale factor scl_slope {slope} (corrupt header?); nibabel would read the stored "
            "values unscaled."
        )


def _header_source(img: Any) -> str:
    """Which header fields give ``img.affine`` (nibabel's rule: sform, else qform, else pixdim)."""
    header = img.header
    if int(header.get("sform_code", 0)) > 0:
        return "sform (srow_x/y/z)"
    if int(header.get("qform_code", 0)) > 0:
        return "qform (quatern_b/c/d, qoffset_x/y/z, pixdim)"
    return "pixdim"


def check_nifti_affine(img: Any, path: str) -> None:
    """Refuse a NIfTI image whose header affine cannot place the voxels: non-finite, or columns of zero length or
    (near) linearly dependent (the determinant of the columns scaled to unit length below 1e-6; a shear, any spacing
    and either handedness are accepted), as the DICOM reader refuses non-finite or degenerate geometry tags. The
    column of an axis one voxel long (a 2D image's third) may be zero: it moves no voxel.

    Args:
        img: the nibabel image as loaded.
        path: file name used in the message.

    Raises:
        ValueError: names the file, the header fields the affine comes from and the affine.
    """
    try:
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # nibabel computes the qform from a quaternion: an invalid one raises
        raise ValueError(f"{path}: unreadable NIfTI geometry ({type(e).__name__}: {e}).") from e
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: NIfTI header without a 4 x 4 affine (shape {affine.shape}).")
    columns = affine[:3, :3].copy()
    problem = ""
    if not np.isfinite(affine).all():
        problem = "non-finite values (NaN or inf)"
    else:
        norms = np.linalg.norm(columns, axis=0)
        # an axis of one voxel (a 2D image's third axis) never moves a voxel: a zero column there places nothing
        # wrongly, so it is checked as the unit normal of the other two
        shape = tuple(int(n) for n in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
        flat = [i for i in range(3) if shape[i] == 1 and norms[i] == 0]
        if len(flat) == 1:
            normal = np.cross(*(columns[:, j] for j in range(3) if j != flat[0]))
            if np.linalg.norm(normal) > 0:
                columns[:, flat[0]] = normal / np.linalg.norm(normal)
                norms = np.linalg.norm(columns, axis=0)
        if not (norms > 0).all():
            problem = f"an axis of zero length (voxel sizes {np.round(norms, 6).tolist()})"
        elif abs(float(np.linalg.det(columns / norms))) < _DEGENERATE:
            problem = "linearly dependent axes (the voxels span no volume)"
    if problem:
        raise ValueError(
            f"{path}: invalid NIfTI geometry: the affine from the header's {_header_source(img)} has {problem}: "
            f"{np.round(affine[:3], 6).tolist()}; the voxels cannot be placed in space (corrupt header?)."
        )


def _monai_affine(img: Any, path: str) -> Any:
    """``img`` after MONAI's header repair (``correct_nifti_header_if_necessary``), applied to a copy so the cached
    image keeps the file's header; logs a warning naming the file when the repair changed the affine."""
    from monai.data.utils import correct_nifti_header_if_necessary

    copy = type(img)(img.dataobj, img.affine, img.header.copy(), extra=img.extra, file_map=img.file_map)
    fixed = correct_nifti_header_if_necessary(copy)
    if not np.allclose(fixed.affine, img.affine):
        before = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
        after = np.linalg.norm(np.asarray(fixed.affine)[:3, :3], axis=0)
        logger.warning(
            "%s: the header's %s (voxel size %s) disagrees with its pixdim %s; the loaded image's affine follows the "
            "pixdim / qform instead (voxel size %s, MONAI's rule); restored files keep the input's header unchanged.",
            path,
            _header_source(img),
            np.round(before, 6).tolist(),
            np.round(np.asarray(img.header["pixdim"][1:4], dtype=np.float64), 6).tolist(),
            np.round(after, 6).tolist(),
        )
    return fixed


def nifti_source_meta(img: Any) -> dict[str, Any]:
    """On-disk type and scaling of a loaded NIfTI image, for the writer (``source_*`` meta keys).

    nibabel moves ``scl_slope``/``scl_inter`` into the array proxy (the header then reports no scaling), so they
    are taken from the proxy; an unscaled file gives slope 1, intercept 0.
    """
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    return {
        "source_format": "nifti",
        "source_dtype": np.dtype(img.get_data_dtype()).str,  # e.g. "|u1", "<i2", ">f4": np.dtype() reads it
        "source_scl_slope": slope if np.isfinite(slope) and slope != 0 else 1.0,
        "source_scl_inter": inter if np.isfinite(inter) else 0.0,
    }


_FLOAT32_EXACT = 2**24  # every integer of at most this magnitude is a float32


def exact_in_float32(data: np.ndarray, path: str) -> np.ndarray:
    """Refuse integer voxel values that a float32 image cannot hold exactly (magnitude above 2**24 and not a
    float32 value, e.g. 2**31 - 1, which would come back as 2**31). The values are checked, not the type, so an
    ordinary int32 CT image reads.

    Args:
        data: the stored (integer) or physical array.
        path: file name used in the message.

    Returns:
        ``data`` unchanged.

    Raises:
        ValueError: names the file, the number of such values and the first one.
    """
    if data.dtype.kind not in "iu" or data.dtype.itemsize < 4 or not data.size:
        return data
    flat = data.reshape(-1)
    if data.dtype.kind == "i":
        mags = np.abs(flat.astype(np.int64)).view(np.uint64)  # abs(int64 min) wraps to 2**63 as uint64: exact
    else:
        mags = flat.astype(np.uint64)
    big = np.flatnonzero(mags > _FLOAT32_EXACT)
    if not big.size:
        return data
    m = mags[big]
    low = m & (~m + np.uint64(1))  # lowest set bit
    bad = big[(m // low) >= np.uint64(_FLOAT32_EXACT)]  # more than 24 significant bits
    if bad.size:
        raise ValueError(
            f"{path}: {bad.size} integer values a float32 image cannot hold exactly (e.g. {int(flat[bad[0]])}; "
            f"magnitudes above 2**24 = {_FLOAT32_EXACT} need more than 24 significant bits); they would be "
            "rounded silently."
        )
    return data


class NiftiReader(NibabelReader):
    """MONAI ``NibabelReader`` with the NIfTI rules of the module docstring (checks, gzip CRC, source meta)."""

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> Any:
        names = [os.fspath(n) for n in (data if isinstance(data, (list, tuple)) else [data])]
        self.filenames = names
        # the checked header (read once per file version, cached) instead of a second nibabel.load
        images = [_monai_affine(nifti_image(name), name) for name in names]
        return images if len(images) > 1 else images[0]

    def _get_meta_dict(self, img: Any) -> dict:
        meta = super()._get_meta_dict(img)
        meta.update(nifti_source_meta(img))
        return meta

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        try:
            data = np.asanyarray(img.dataobj, order="C")  # scaling applied: physical values
        except Exception as e:  # truncated or corrupt voxel data
            raise ValueError(f"{filename}: unreadable NIfTI voxel data ({type(e).__name__}: {e}).") from e
        return finite_values(exact_in_float32(data, str(filename)), str(filename))


# -------------------------------------------------------------------------------------------------------------- DICOM
def read_dicom_header(path: str | os.PathLike) -> FileDataset:
    """The dataset of a DICOM file with its pixel data left on disk (deferred), read once per file version.

    Raises:
        ValueError: not a readable DICOM file (the message names it).
    """
    path = os.fspath(path)
    key = _file_key(path)
    ds = _HEADERS.get(key)
    if ds is None:
        try:
            try:
                ds = pydicom.dcmread(path, defer_size=4096)
            except InvalidDicomError:  # no preamble and DICM prefix: a bare data set is read as one, nothing else
                if not bare_dicom(path):
                    raise
                ds = pydicom.dcmread(path, defer_size=4096, force=True)
        except Exception as e:  # pydicom raises many types for broken files
            raise ValueError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e}).") from e
        _bare_syntax(ds, path)
        _HEADERS.put(key, ds)
    return ds


def _bare_syntax(ds: FileDataset, path: str) -> None:
    """Give a data set read without a file meta header the transfer syntax it was read in (pydicom found the VR
    encoding and byte order from its first element), so its pixel data can be decoded; uncompressed pixel data only.

    Raises:
        ValueError: encapsulated (compressed) pixel data, whose codec only the missing header names.
    """
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    elem = ds.get_item("PixelData") if "PixelData" in ds else None
    if elem is not None and getattr(elem, "length", None) == 0xFFFFFFFF:
        raise ValueError(
            f"{path}: DICOM data set without a Transfer Syntax UID (0002,0010) (no file meta header, or one without "
            "it) and with compressed (encapsulated) pixel data: the transfer syntax names the codec."
        )
    implicit, little = ds.original_encoding
    meta = ds.file_meta if isinstance(getattr(ds, "file_meta", None), FileMetaDataset) else FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )
    ds.file_meta = meta


# the decoder pydicom must use for these transfer syntaxes (see _fresh): never GDCM's, which pydicom would try first
# and which aborts the process on corrupt JPEG 2000 and JPEG baseline headers (python-gdcm 3.2.6). Always pinned: where
# the plugin is missing, pydicom says so and the reader refuses the file by name (no fall back to GDCM)
_DECODER = {
    **dict.fromkeys(JPEG2000TransferSyntaxes, "pylibjpeg"),
    **dict.fromkeys((JPEGBaseline8Bit, JPEGExtended12Bit), "pillow"),
}


def _fresh(ds: FileDataset) -> FileDataset:
    """A new dataset sharing the cached header's elements; reading its pixel data leaves the cache untouched.

    JPEG 2000 pixel data is decoded by pylibjpeg-openjpeg and JPEG baseline / extended by Pillow (required packages):
    pydicom would try GDCM first, whose decoders for these abort the whole process on a corrupt header (measured with
    python-gdcm 3.2.6), where the others raise an error this reader turns into a ValueError naming the file. GDCM
    decodes JPEG Lossless and JPEG-LS, which nothing else installed reads.
    """
    out = FileDataset(ds.filename, dict(ds._dict), preamble=ds.preamble, file_meta=ds.file_meta)
    out.set_original_encoding(*ds.original_encoding, character_encoding=ds.original_character_set)
    syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if syntax in _DECODER and hasattr(out, "pixel_array_options"):  # pydicom >= 3 (MONAI Label's 2.4 env has no GDCM)
        out.pixel_array_options(decoding_plugin=_DECODER[syntax])
    return out


def _tag_value(ds: Any, name: str, default: Any = None) -> Any:
    value = getattr(ds, name, default)
    return default if value is None or value == "" else value


# tags an enhanced (functional-group) image keeps in a frame's or the shared functional groups, not at the top
_FUNCTIONAL_GROUP = {
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "ImagePositionPatient": "PlanePositionSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
}


def _image_tag(ds: Any, name: str, default: Any = None) -> Any:
    """A geometry or rescale tag of a single-frame image: top level, else the per-frame then the shared functional
    groups (enhanced CT / MR / PET store them there; reading only the top level would silently drop them)."""
    value = _tag_value(ds, name, None)
    if value is not None or name not in _FUNCTIONAL_GROUP:
        return default if value is None else value
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = _tag_value(ds, groups, None)
        inner = _tag_value(seq[0], _FUNCTIONAL_GROUP[name], None) if seq else None
        value = _tag_value(inner[0], name, None) if inner else None
        if value is not None:
            return value
    return default


def _parse_time(date: Any, time: Any) -> _dt.datetime | None:
    """A DICOM DA + TM pair (``YYYYMMDD``, ``HHMMSS[.ffffff]``) as a datetime; None when either is absent or bad."""
    if not time or not date:
        return None
    time = str(time).split(".")[0].split("+")[0].split("-")[0].ljust(6, "0")[:6]
    try:
        return _dt.datetime.strptime(str(date)[:8] + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None


_REFERENCE_TAGS = (
    "SeriesDate / SeriesTime (0008,0021 / 0008,0031) or AcquisitionDate / AcquisitionTime (0008,0022 / 0008,0032)"
)


def pet_reference_time(headers: Sequence[Any]) -> tuple[_dt.datetime | None, list[str]]:
    """The one decay reference time of a PET series, the same for all its slices.

    ``SeriesDate`` + ``SeriesTime`` of the series; when either is absent, the earliest ``AcquisitionDate`` (else
    ``SeriesDate``) + ``AcquisitionTime`` over all slices (never each slice's own acquisition time, which would
    give the slices of one ``DecayCorrection`` START series different SUV factors).

    Args:
        headers: the datasets of the series' slices (one dataset for a single file).

    Returns:
        (reference time or None, the missing / unusable tags naming them when None).
    """
    first = headers[0]
    series_date, series_time = _tag_value(first, "SeriesDate", None), _tag_value(first, "SeriesTime", None)
    ref = _parse_time(series_date, series_time)
    if ref is not None:
        return ref, []
    times = [
        _parse_time(_tag_value(ds, "AcquisitionDate", None) or series_date, _tag_value(ds, "AcquisitionTime", None))
        for ds in headers
    ]
    if all(t is not None for t in times):
        return min(times), []
    missing = [
        f"{name} {tag}"
        for name, tag, value in (
            ("SeriesDate", "(0008,0021)", series_date),
            ("SeriesTime", "(0008,0031)", series_time),
            ("AcquisitionDate", "(0008,0022)", _tag_value(first, "AcquisitionDate", None)),
            ("AcquisitionTime", "(0008,0032)", _tag_value(first, "AcquisitionTime", None)),
        )
        if not value
    ]
    detail = f"missing {', '.join(missing)}" if missing else "unparseable date / time values"
    return None, [f"decay reference time: {_REFERENCE_TAGS} ({detail})"]


_UNDATED_LIMIT_S = 12 * 3600.0  # an injection time without a date is taken within the 12 h before the reference


def _injection_elapsed(info: Any, ref: _dt.datetime) -> tuple[float | None, list[str]]:
    """Seconds from injection to the reference time; the injection's date is the reference's date when only
    ``RadiopharmaceuticalStartTime`` is given (a day earlier if that time is after the reference: injection before
    midnight). An elapsed time below 0 or above 24 h is implausible and refused (named); without a date the time
    is ambiguous beyond 12 h (a 12:00 injection before an 11:00 scan is not read as 23 h), and refused too."""
    start = _tag_value(info, "RadiopharmaceuticalStartDateTime", None)
    dated = start is not None and len(str(start)) >= 10
    if dated:
        t_inj = _parse_time(str(start)[:8], str(start)[8:])
        label = f"RadiopharmaceuticalStartDateTime (0018,1078) {start}"
    else:
        time = _tag_value(info, "RadiopharmaceuticalStartTime", None)
        t_inj = _parse_time(ref.strftime("%Y%m%d"), time)
        label = f"RadiopharmaceuticalStartTime (0018,1072) {time}"
    if t_inj is None:
        return None, ["RadiopharmaceuticalStartDateTime (0018,1078) or RadiopharmaceuticalStartTime (0018,1072)"]
    elapsed = (ref - t_inj).total_seconds()
    if elapsed < 0 and not dated:
        elapsed += 86400.0  # injected before midnight, scanned after it
    limit = 86400.0 if dated else _UNDATED_LIMIT_S
    if not 0 <= elapsed <= limit:
        return None, [
            f"implausible time from injection ({label}) to the decay reference ({ref:%Y%m%d %H%M%S}, "
            f"{_REFERENCE_TAGS}): {elapsed / 3600:.2f} h (expected 0 to {limit / 3600:.0f} h"
            + ("" if dated else "; without RadiopharmaceuticalStartDateTime (0018,1078) the day is ambiguous")
            + ")"
        ]
    return elapsed, []


def _suv(ds: Any, reference: tuple[_dt.datetime | None, list[str]] | None = None) -> tuple[float | None, list[str]]:
    """(factor, missing tags / reasons) of a PET dataset; factor None when it cannot be computed.

    ``reference``: the series' :func:`pet_reference_time` (default: that of ``ds`` alone)."""
    units = str(_tag_value(ds, "Units", "")).upper()
    if units == "GML":
        return 1.0, []
    if not units:
        return None, ["Units (0054,1001)"]
    if units != "BQML":
        return None, [f"Units {units} (only BQML or GML can become SUV)"]
    missing = []
    weight = float(_tag_value(ds, "PatientWeight", 0) or 0)
    if not weight > 0:
        missing.append("PatientWeight (0010,1030)")
    seq = _tag_value(ds, "RadiopharmaceuticalInformationSequence", None)
    info = seq[0] if seq else None
    if info is None:
        missing.append("RadiopharmaceuticalInformationSequence (0054,0016)")
    dose = float(_tag_value(info, "RadionuclideTotalDose", 0) or 0) if info is not None else 0.0
    if info is not None and not dose > 0:
        missing.append("RadionuclideTotalDose (0018,1074)")
    decay = str(_tag_value(ds, "DecayCorrection", "")).upper()
    if not decay:
        missing.append("DecayCorrection (0054,1102)")
    elif decay not in ("START", "ADMIN"):
        missing.append(f"DecayCorrection {decay} (only START or ADMIN)")
    factor_dose = dose
    if decay == "START" and info is not None:
        half_life = float(_tag_value(info, "RadionuclideHalfLife", 0) or 0)
        if not half_life > 0:
            missing.append("RadionuclideHalfLife (0018,1075)")
        t_ref, ref_missing = reference if reference is not None else pet_reference_time([ds])
        missing.extend(ref_missing)
        elapsed = None
        if t_ref is not None:
            elapsed, inj_missing = _injection_elapsed(info, t_ref)
            missing.extend(inj_missing)
        if not missing:
            half_lives = elapsed / half_life
            factor_dose = dose * 2.0 ** (-half_lives)
            if half_lives > _MAX_HALF_LIVES:  # no activity left to image (and the factor overflows float32)
                missing.append(
                    f"RadionuclideHalfLife (0018,1075) {half_life:g} s: the reference time is {half_lives:.0f} "
                    f"half-lives ({elapsed:g} s) after the injection, more than {_MAX_HALF_LIVES} (half-life or times "
                    "wrong)"
                )
    factor = weight * 1000.0 / factor_dose if not missing else None
    if factor is not None and not factor <= float(np.finfo(np.float32).max):  # e.g. a dose of 1e-300 Bq
        missing.append(f"RadionuclideTotalDose (0018,1074) {dose:g} Bq (SUV factor {factor:g} out of float32 range)")
    if missing:
        return None, missing
    return factor, []


def pet_suv_factor(
    ds: Any, where: str, pet_units: str | None = None, reference: tuple[_dt.datetime | None, list[str]] | None = None
) -> float:
    """SUV factor of a PET dataset, or the declared units' factor.

    Args:
        ds: a PET slice's dataset.
        where: file name used in the message.
        pet_units: None (convert from the tags) or ``"SUV"`` (the rescaled values are SUV: factor 1).
        reference: the series' :func:`pet_reference_time` (default: that of ``ds`` alone).

    Returns:
        the factor that turns rescaled values into SUV.

    Raises:
        ValueError: unknown ``pet_units``, or the conversion is impossible (names the file and the missing tags).
    """
    if pet_units is not None:
        if str(pet_units).upper() not in PET_UNITS + ("GML",):
            raise ValueError(f"{where}: pet_units {pet_units!r} not understood; expected one of {PET_UNITS} or null.")
        return 1.0
    factor, missing = _suv(ds, reference)
    if factor is None:
        raise ValueError(
            f"{where}: PET cannot be converted to SUV, missing or unusable: {'; '.join(missing)}. If the values are "
            "SUV already, declare it with pet_units='SUV'."
        )
    return float(factor)


def modality_error(where: str, dicom_modality: str | None) -> str:
    """The message for a scan whose modality is unknown: unsupported tag value, or no tag at all."""
    if dicom_modality:
        return (
            f"{where}: unsupported modality {dicom_modality} (DICOM Modality tag); supported: CT, PT, MR. Set "
            "'modality' (CT, PET or MRI) in the config or data list if the image is one of them."
        )
    return f"{where}: no modality: set 'modality' (CT, PET or MRI) in the config or data list."


@dataclass(frozen=True)
class DicomSeries:
    """One checked DICOM series: files sorted along the slice normal and their (pixel-deferred) headers."""

    where: str
    files: tuple[str, ...]
    headers: tuple[Any, ...]
    positions: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        ds = self.headers[0]
        return (int(ds.Rows), int(ds.Columns)) + ((len(self.files),) if len(self.files) > 1 else ())


def _has_pixels(ds: Any) -> bool:
    return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_pixel_header(ds: Any, path: str) -> None:
    """Refuse, from the header, images whose pixels would not read back as one grey-level plane of the right size."""
    if _tag_value(ds, "Rows", None) is None or _tag_value(ds, "Columns", None) is None:
        raise ValueError(f"{path}: pixel data without Rows / Columns (0028,0010 / 0028,0011).")
    spp = int(_tag_value(ds, "SamplesPerPixel", 1))
    photometric = str(_tag_value(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"{path}: colour image (SamplesPerPixel {spp}, PhotometricInterpretation {photometric}); only grey-level "
            "(MONOCHROME) images are supported."
        )
    frames = int(_tag_value(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; use one file per slice.")
    for name, label in (
        ("FloatPixelData", "float pixel data (7FE0,0008)"),
        ("DoubleFloatPixelData", "double float pixel data (7FE0,0009)"),
    ):
        if name in ds:
            raise ValueError(f"{path}: {label} is not supported: the derived series could not hold its values.")
    if "PixelData" not in ds:
        return
    bits = int(_tag_value(ds, "BitsAllocated", 0) or 0)
    stored = int(_tag_value(ds, "BitsStored", bits) or bits)
    if bits not in (8, 16, 32):
        raise ValueError(f"{path}: BitsAllocated {bits} is not supported (8, 16 or 32).")
    if not 0 < stored <= bits:
        raise ValueError(f"{path}: BitsStored {stored} does not fit BitsAllocated {bits}.")
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    elem = ds.get_item("PixelData")
    length = getattr(elem, "length", None)
    if syntax in _NATIVE_SYNTAXES and length not in (None, 0xFFFFFFFF):
        expected = int(ds.Rows) * int(ds.Columns) * bits // 8
        if length not in (expected, expected + 1):
            raise ValueError(
                f"{path}: pixel data holds {length} bytes but Rows x Columns x BitsAllocated/8 = {ds.Rows} x "
                f"{ds.Columns} x {bits}/8 = {expected} bytes (BitsAllocated {bits} does not match the data)."
            )


_GEOMETRY_TOL = 1e-3  # ImageOrientationPatient: |row|, |column| within this of 1, row . column within this of 0


def _check_geometry(ds: Any, path: str) -> None:
    """Refuse geometry tags that would place the voxels wrongly: ``ImageOrientationPatient`` whose row and column
    vectors are not unit length and orthogonal (within :data:`_GEOMETRY_TOL`), non-finite ``ImagePositionPatient`` /
    ``ImageOrientationPatient`` / ``PixelSpacing``, a zero or negative ``PixelSpacing``.

    Raises:
        ValueError: the message names the file, the tag and its value.
    """
    for name, tag, size in (
        ("ImageOrientationPatient", "(0020,0037)", 6),
        ("ImagePositionPatient", "(0020,0032)", 3),
        ("PixelSpacing", "(0028,0030)", 2),
    ):
        value = _image_tag(ds, name, None)
        if value is None:
            continue
        try:
            items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
            vec = np.asarray([float(v) for v in items], float)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: unreadable {name} {tag} {value!r} ({e}).") from e
        if vec.size != size or not np.isfinite(vec).all():
            raise ValueError(f"{path}: invalid {name} {tag} {vec.tolist()}: expected {size} finite numbers.")
        if name == "PixelSpacing" and not (vec > 0).all():
            raise ValueError(f"{path}: invalid {name} {tag} {vec.tolist()}: spacings must be positive.")
        if name == "ImageOrientationPatient":
            row, col = vec[:3], vec[3:]
            norms, dot = (float(np.linalg.norm(row)), float(np.linalg.norm(col))), float(np.dot(row, col))
            if max(abs(n - 1.0) for n in norms) > _GEOMETRY_TOL or abs(dot) > _GEOMETRY_TOL:
                raise ValueError(
                    f"{path}: invalid {name} {tag} {vec.tolist()}: the row and column direction cosines must be unit "
                    f"vectors and orthogonal (lengths {norms[0]:.4g}, {norms[1]:.4g}, dot product {dot:.4g})."
                )


def _check_rescale(ds: Any, path: str) -> tuple[float, float]:
    slope = _image_tag(ds, "RescaleSlope", None)
    inter = _image_tag(ds, "RescaleIntercept", None)
    if slope is None and "ModalityLUTSequence" in ds:
        raise ValueError(
            f"{path}: stored values map to physical units through a Modality LUT (0028,3000), which is not supported "
            "(only RescaleSlope / RescaleIntercept)."
        )
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(inter):
        raise ValueError(
            f"{path}: invalid RescaleSlope {slope:g} / RescaleIntercept {inter:g} (0028,1053/1052): the slope must "
            "be finite and non-zero."
        )
    return slope, inter


def _sort_series(where: str, entries: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], list[float]]:
    """Sort along the slice normal (else InstanceNumber) and apply the one duplicate and gap rule."""
    names = lambda i, j: f"{os.path.basename(entries[i][0])} and {os.path.basename(entries[j][0])}"  # noqa: E731
    if len(entries) == 1:
        return entries, [0.0]
    orientations = [_image_tag(ds, "ImageOrientationPatient", None) for _, ds in entries]
    ipps = [_image_tag(ds, "ImagePositionPatient", None) for _, ds in entries]
    if all(o is not None for o in orientations) and all(p is not None for p in ipps):
        iop = np.asarray(orientations[0], float)
        for (f, _), o in zip(entries, orientations):
            if not np.allclose(np.asarray(o, float), iop, atol=1e-4):
                raise ValueError(f"{where}: slices with different ImageOrientationPatient ({os.path.basename(f)}).")
        normal = np.cross(iop[:3], iop[3:])
        keys = [float(np.dot(normal, np.asarray(p, float))) for p in ipps]
        label = "slice position along the normal (ImagePositionPatient)"
    else:
        numbers = [_tag_value(ds, "InstanceNumber", None) for _, ds in entries]
        if any(n is None for n in numbers):
            raise ValueError(f"{where}: cannot order the slices: neither ImagePositionPatient nor InstanceNumber.")
        keys = [float(n) for n in numbers]
        label = "InstanceNumber"
    order = np.argsort(keys, kind="stable")
    keys_sorted = [keys[i] for i in order]
    steps = np.diff(keys_sorted)
    tol = _POSITION_TOL if label != "InstanceNumber" else 0.5
    dup = np.flatnonzero(steps < tol)
    if dup.size:
        i, j = int(order[dup[0]]), int(order[dup[0] + 1])
        raise ValueError(f"{where}: duplicate slice, {names(i, j)} have the same {label} ({keys[i]:.4g}).")
    step = float(steps.min()) if label != "InstanceNumber" else 1.0
    if (steps > _GAP_FACTOR * step + 1e-6).any():
        raise ValueError(
            f"{where}: missing slice(s): {label} jumps by {float(steps.max()):.4g} between slices spaced {step:.4g}."
        )
    return [entries[i] for i in order], keys_sorted


def dicom_series(source: str | os.PathLike | Sequence[str | os.PathLike], where: str | None = None) -> DicomSeries:
    """Check a DICOM series from its headers (each read once, cached) and sort it.

    Args:
        source: a series folder (its :func:`is_series_candidate` files: other files, e.g. a README, are not part
            of the series; a damaged DICOM file refuses it), one file, or a list of files.
        where: name used in messages (default: the folder or file).

    Returns:
        the :class:`DicomSeries`.

    Raises:
        ValueError: no DICOM file, mixed series, no pixel data, unsupported pixel format, bad rescale, slices of
            different size / spacing / orientation, duplicate or missing slices, too many voxels (names the
            folder and the file).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValueError(f"{path}: file not found.")
        others = 0
        if os.path.isdir(path):
            names = [os.path.join(path, n) for n in sorted(os.listdir(path))]
            files = [f for f in names if is_series_candidate(f)]  # other files are not part of the series
            others = len(names) - len(files)
        else:
            files = [path]
        where = where or path
    else:
        files, others = [os.fspath(f) for f in source], 0
        where = where or (os.path.dirname(files[0]) if files else "series")
    if not files:
        detail = f"{others} other files" if others else "empty folder"
        raise ValueError(f"{where}: no DICOM file in the series folder ({detail}).")
    key = tuple(_file_key(f) for f in files)
    cached = _SERIES.get((where, key))
    if cached is not None:
        return cached
    entries = []
    for f in files:
        if os.path.getsize(f) == 0:
            raise ValueError(f"{f}: empty file (0 bytes).")
        entries.append((f, read_dicom_header(f)))  # a damaged DICOM file refuses the series (no silent drop)
    uids = sorted({str(_tag_value(ds, "SeriesInstanceUID", "")) for _, ds in entries})
    if len(uids) > 1:
        raise ValueError(
            f"{where}: mixed series, {len(uids)} SeriesInstanceUIDs in one folder ({', '.join(uids)}); "
            "put each series in its own folder."
        )
    no_pixels = [(f, ds) for f, ds in entries if not _has_pixels(ds)]
    if no_pixels:
        f, ds = no_pixels[0]
        raise ValueError(
            f"{where}: no pixel data in {os.path.basename(f)} (Modality {_tag_value(ds, 'Modality', '?')}, SOP class "
            f"{_tag_value(ds, 'SOPClassUID', '?')}): not an image"
            + (f" ({len(no_pixels)} such files)." if len(no_pixels) > 1 else ".")
        )
    for f, ds in entries:
        _check_pixel_header(ds, f)
        _check_geometry(ds, f)
        _check_rescale(ds, f)
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for _, ds in entries})
    if len(sizes) > 1:
        raise ValueError(f"{where}: slices of different sizes {sizes} in one series.")
    spacings = [_image_tag(ds, "PixelSpacing", None) for _, ds in entries]
    if any(s is not None for s in spacings) and not all(
        s is not None and np.allclose(np.asarray(s, float), np.asarray(spacings[0], float), rtol=1e-4) for s in spacings
    ):
        raise ValueError(f"{where}: slices with different PixelSpacing in one series.")
    voxels = sizes[0][0] * sizes[0][1] * len(entries)
    if voxels > MAX_VOXELS:
        raise ValueError(f"{where}: {voxels:.3g} voxels, larger than the limit of {MAX_VOXELS:.3g} voxels.")
    entries, positions = _sort_series(where, entries)
    series = DicomSeries(where, tuple(f for f, _ in entries), tuple(ds for _, ds in entries), tuple(positions))
    _SERIES.put((where, key), series)
    return series


class DicomReader(PydicomReader):
    """MONAI ``PydicomReader`` with the series, rescale, PET and modality rules of the module docstring.

    ``read`` takes a series folder, a file or a list of files of one series (a list is one series here, not
    channels); ``get_data`` stacks the slices along the last axis in :func:`dicom_series` order.

    Args:
        suv: convert PET to SUV (refused when impossible, see :func:`pet_suv_factor`).
        pet_units: declared PET units (``"SUV"``) for PET that cannot be converted; None converts from the tags.
        kwargs: forwarded to ``monai.data.PydicomReader`` (e.g. ``swap_ij``).
    """

    def __init__(self, suv: bool = True, pet_units: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suv = suv
        self.pet_units = pet_units
        self.series: DicomSeries | None = None
        self._reference: tuple[Any, Any] | None = None  # (series, its pet_reference_time) of the series read

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return all(is_dicom(n) for n in names)

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> Any:
        names = [os.fspath(n) for n in (data if isinstance(data, (list, tuple)) else [data])]
        series = dicom_series(names[0] if len(names) == 1 else names)
        return self.read_series(series)

    def read_series(self, series: DicomSeries, index: int | None = None) -> Any:
        """Read the pixels of a checked series (all slices, or slice ``index``); headers come from the cache.

        Returns:
            a dataset (one slice) or a list of datasets (``get_data`` input).
        """
        self.series = series
        picks = range(len(series.files)) if index is None else [index]
        datasets = []
        for i in picks:
            ds = _fresh(series.headers[i])
            try:
                arr = ds.pixel_array
            except Exception as e:  # pydicom raises many types for broken pixel data / missing decoders
                raise ValueError(f"{series.files[i]}: unreadable DICOM pixel data ({type(e).__name__}: {e}).") from e
            if arr.ndim != 2:
                raise ValueError(f"{series.files[i]}: expected one grey-level plane, got pixel array {arr.shape}.")
            datasets.append(ds)
        self.filenames = [[series.files[i] for i in picks]] if len(datasets) > 1 else [series.files[picks[0]]]
        self.has_series = len(datasets) > 1
        return datasets if len(datasets) > 1 else datasets[0]

    def _factor(self, img: Any, filename: Any) -> float:
        if self.suv and str(_tag_value(img, "Modality", "")).upper() == "PT":
            owner = self.series if self.series is not None else img
            if self._reference is None or self._reference[0] is not owner:  # once per series, not per slice
                headers = self.series.headers if self.series is not None else [img]
                self._reference = (owner, pet_reference_time(headers))
            return pet_suv_factor(img, str(filename), self.pet_units, self._reference[1])
        return 1.0

    def _get_array_data(self, img: Any, filename: Any) -> np.ndarray:
        slope, inter = _check_rescale(img, str(filename))
        data = exact_in_float32(img.pixel_array, str(filename)).astype(np.float32)
        if slope != 1 or inter != 0:
            data = data * np.float32(slope) + np.float32(inter)
        factor = self._factor(img, filename)
        if factor != 1.0:
            data = data * np.float32(factor)
        return finite_values(data, str(filename))

    def _combine_dicom_series(self, data: Sequence[Any], filenames: Sequence[Any]) -> tuple[np.ndarray, dict]:
        arrays = [self._get_array_data(ds, f) for ds, f in zip(data, filenames)]
        meta = self._get_meta_dict(data[0])
        # no "spacing" here: MONAI's affine reads PixelSpacing (00280030, set above) and the slice step from the first
        # and last positions, then sets "spacing" from the affine
        if _image_tag(data[-1], "ImagePositionPatient", None) is not None:
            meta["lastImagePositionPatient"] = np.asarray(_image_tag(data[-1], "ImagePositionPatient"), dtype=float)
        meta["spatial_shape"] = arrays[0].shape + (len(arrays),)
        self._series_meta(meta, data, filenames)
        # stacked slice-major (contiguous writes), then one transposing copy: ~1.5x faster than np.stack(axis=-1)
        return np.ascontiguousarray(np.stack(arrays, axis=0).transpose(1, 2, 0)), meta

    def _series_meta(self, meta: dict, data: Sequence[Any], filenames: Sequence[Any]) -> None:
        meta["rescale_slopes"] = [_check_rescale(ds, str(f))[0] for ds, f in zip(data, filenames)]
        meta["rescale_intercepts"] = [_check_rescale(ds, str(f))[1] for ds, f in zip(data, filenames)]
        meta["suv_factors"] = [self._factor(ds, f) for ds, f in zip(data, filenames)]
        meta["source_files"] = [str(f) for f in filenames]

    def _get_meta_dict(self, img: Any) -> dict:
        meta = super()._get_meta_dict(img)
        # geometry from the parsed tags (top level or functional groups): MONAI's JSON conversion drops a value it
        # finds invalid (e.g. a DS longer than 16 characters) and would then build an identity affine without a word
        for key, name in (("00200037", "ImageOrientationPatient"), ("00200032", "ImagePositionPatient")):
            value = _image_tag(img, name, None)
            if value is not None:
                meta[key] = {"vr": "DS", "Value": [float(v) for v in value]}
        if _image_tag(img, "PixelSpacing", None) is not None:
            meta["00280030"] = {"vr": "DS", "Value": [float(v) for v in _image_tag(img, "PixelSpacing")]}
        tag = str(_tag_value(img, "Modality", "")).upper()
        meta["dicom_modality"] = tag
        meta["modality"] = canonical_modality(tag) or ""  # "" (not None: MONAI turns None into "none")
        meta["source_format"] = "dicom"
        meta["transfer_syntax"] = str(getattr(getattr(img, "file_meta", None), "TransferSyntaxUID", ""))
        if tag == "PT":
            meta["pet_units"] = str(self.pet_units or _tag_value(img, "Units", ""))
        if not self.has_series:  # a single slice: its own per-slice lists
            self._series_meta(meta, [img], [getattr(img, "filename", "")])
        return meta


_LOADER: LoadImage | None = None


def load_image(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    dicom_suv: bool = True,
    pet_units: str | None = None,
    swap_ij: bool = True,
) -> Any:
    """Read one image (NIfTI file, DICOM file, DICOM series folder or list of one series' files).

    Uses MONAI's ``LoadImage`` with :class:`NiftiReader` / :class:`DicomReader`.

    Args:
        path: the file, folder or list of DICOM files.
        dicom_suv: convert PET DICOM to SUV.
        pet_units: declared PET units (see :func:`pet_suv_factor`).
        swap_ij: DICOM array layout (Columns, Rows[, slices]) as MONAI's default; False gives (Rows, Columns[, ...]).

    Returns:
        a float32 ``MetaTensor`` without channel axis, shape (H, W) or (H, W, D) (other shapes as stored), with
        ``filename_or_obj``, ``affine``, the source headers and the ``source_*`` keys in its meta.

    Raises:
        ValueError: missing, empty, corrupt, truncated, oversized, non-scalar or non-finite image, bad DICOM series or
            PET that cannot become SUV; the message names the file and the problem.
    """
    global _LOADER
    many = isinstance(path, (list, tuple))
    first = os.fspath(path[0]) if many and path else os.fspath(path) if not many else ""
    name = first if not many else os.path.dirname(first) or first
    if not many:
        if not os.path.exists(first):
            raise ValueError(f"{first}: file not found.")
        if first.lower().endswith(".bin"):  # the authors' pickled training patches (custom/data/pickled.py)
            from custom.data.pickled import load_pickled_image

            return load_pickled_image(first)
        if os.path.isfile(first) and os.path.getsize(first) == 0:
            raise ValueError(f"{first}: empty file (0 bytes).")
    if many or is_dicom(first):
        reader: Any = DicomReader(suv=dicom_suv, pet_units=pet_units, swap_ij=swap_ij)
    elif is_nifti(first):
        reader = NiftiReader()
    else:
        raise ValueError(f"{first}: unsupported file type (expected .nii, .nii.gz or DICOM).")
    if _LOADER is None:
        _LOADER = LoadImage(image_only=True, dtype=np.float32)
    try:
        img = _LOADER([os.fspath(p) for p in path] if many else first, reader=reader)
    except ValueError:
        raise
    except EOFError as e:
        raise ValueError(f"{name}: truncated compressed file, unreadable image ({e}).") from e
    except Exception as e:  # readers raise many exception types
        raise ValueError(f"{name}: unreadable image ({type(e).__name__}: {e}).") from e
    img.meta["filename_or_obj"] = name
    return img
