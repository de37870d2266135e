"""Reading the authors' ``*.bin`` training patches: pickles of a tensor, through a restricted unpickler.

The released data set stores each training patch as ``pickle.dump(tensor, f)`` of a float tensor of shape
(1, 256, 256) in physical units. A pickle can name any Python callable, so such a file is never given to
``pickle.load``: :class:`RestrictedUnpickler` admits only the globals that rebuild a torch tensor or a numpy
array and refuses every other one with a ``ValueError`` naming the file and the global, before anything runs.

A plain pickle of a CPU tensor (any torch since 1.x) calls ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, OrderedDict())`` with ``storage = torch.storage._load_from_bytes(data)``, where
``data`` is a nested legacy ``torch.save`` of the storage. torch's own ``_load_from_bytes`` would unpickle
``data`` without restriction; here it is replaced by ``torch.load(data, weights_only=True, map_location="cpu")``,
which is restricted too, and must return a storage. A numpy array pickles as
``numpy._core.multiarray._reconstruct`` (``numpy.core`` before numpy 2) with ``numpy.ndarray`` and ``numpy.dtype``.

:class:`PickledTensorReader` is a MONAI ``ImageReader`` for these files (``LoadImage(reader=PickledTensorReader())``).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from custom.data.limits import MAX_VOXELS, finite_values
from monai.data import ImageReader, MetaTensor
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["PICKLE_SUFFIX", "RestrictedUnpickler", "load_pickled_array", "PickledTensorReader", "load_pickled_image"]

PICKLE_SUFFIX = ".bin"


def _storage_from_bytes(data: bytes) -> torch.storage.TypedStorage:
    """Safe replacement of ``torch.storage._load_from_bytes``: the nested storage pickle, weights-only.

    Only a storage is returned: a nested tensor (a view of any size and stride, rebuilt by ``torch.load``) would
    bypass :func:`_rebuild_tensor`'s layout checks and the voxel limit (e.g. one zero broadcast to 10^10 voxels).
    """
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"storage data of type {type(data).__name__}, expected bytes")
    storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"nested torch.save data holds a {type(storage).__name__}, expected a storage")
    return storage


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(type(v) is int for v in value):
        raise pickle.UnpicklingError(f"{what} {value!r} is not a tuple of integers")
    return tuple(value)


def _check_voxels(shape: tuple[int, ...]) -> int:
    """Number of elements of ``shape``; refuses negative sizes and more than :data:`MAX_VOXELS`."""
    if any(n < 0 for n in shape):
        raise pickle.UnpicklingError(f"negative size in shape {shape}")
    numel = math.prod(shape)
    if numel > MAX_VOXELS:
        raise pickle.UnpicklingError(f"{numel:.3g} voxels, larger than the limit of {MAX_VOXELS:.3g} voxels")
    return numel


def _rebuild_tensor(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for a plain tensor only: a storage, no hooks, no extra attributes.

    The view must lie inside the storage and hold no more elements than the storage (non-negative strides, no
    stride-0 broadcast of a small storage into a huge array), at most :data:`MAX_VOXELS` elements.

    Raises:
        pickle.UnpicklingError: anything else.
    """
    if not isinstance(storage, torch.storage.TypedStorage) or backward_hooks or metadata:
        raise pickle.UnpicklingError("not a plain tensor (storage, hooks or attributes of another kind)")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride) or min(stride, default=0) < 0:
        raise pickle.UnpicklingError(f"invalid tensor layout (offset {storage_offset!r}, size {size}, stride {stride})")
    numel, available = _check_voxels(size), storage._size()
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if numel else 0
    if numel > available or extent > available:
        raise pickle.UnpicklingError(
            f"tensor of size {size} (stride {stride}, offset {storage_offset}) does not fit its storage of "
            f"{available} elements"
        )
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


class _NdarrayType:
    """What the pickle's ``numpy.ndarray`` global becomes: a token for ``_reconstruct``, not callable (calling
    ``numpy.ndarray(shape, dtype)`` directly would hand out uninitialised memory)."""

    __slots__ = ()


_NDARRAY = _NdarrayType()
_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_DTYPE_CODES = frozenset(np.dtype(c).str.lstrip("<>|=") for c in np.typecodes["AllInteger"] + np.typecodes["Float"])


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's ``_reconstruct(ndarray, (0,), b"b")``: the empty array that ``BUILD`` then fills."""
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError("not a plain numpy array")
    return _NP_RECONSTRUCT(np.ndarray, (0,), dtype_code)


def _dtype(code: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype(code, align, copy)`` for a numeric code, always a copy (``BUILD`` on numpy's shared float32
    descriptor would change it for the whole process)."""
    if not isinstance(code, str) or code not in _DTYPE_CODES:
        raise pickle.UnpicklingError(f"refused dtype {code!r}, expected real numbers")
    return np.dtype(code, align=bool(align), copy=True)


# (module, name) -> the object the restricted unpickler hands out for it
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
}


def _build_array(arr: np.ndarray, state: Any) -> None:
    """``ndarray.__setstate__`` after checking ``state = (version, shape, dtype, fortran, data bytes)``."""
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)):
        raise pickle.UnpicklingError("numpy array state of an unknown form")
    _, shape, dtype, _, data = state
    shape = _int_tuple(shape, "shape")
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy array of dtype {dtype}, expected real numbers")
    numel = _check_voxels(shape)
    if not isinstance(data, bytes) or len(data) != numel * dtype.itemsize:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise pickle.UnpicklingError(
            f"numpy array {shape} of {dtype} needs {numel * dtype.itemsize} data bytes, got {got}"
        )
    arr.__setstate__(state)


def _build_dtype(dt: np.dtype, state: Any) -> None:
    """``dtype.__setstate__`` for a plain numeric descriptor (byte order only, no fields or sub-arrays)."""
    if not (
        isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=") and state[2:5] == (None,) * 3
    ):
        raise pickle.UnpicklingError("numpy dtype state of an unknown form")
    dt.__setstate__(state)
    if dt.kind not in "fiu" or dt.fields is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"dtype {dt} is not a real number type")


class RestrictedUnpickler(pickle._Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only what rebuilds a tensor or an array.

    Admitted globals: ``torch._utils._rebuild_tensor_v2`` (a plain tensor inside its storage, no hooks or
    attributes), ``torch.storage._load_from_bytes`` (replaced by a weights-only ``torch.load`` of a storage),
    ``collections.OrderedDict``, numpy's ``_reconstruct`` (of an empty array only), ``numpy.ndarray`` (as a
    token for ``_reconstruct``, not callable) and ``numpy.dtype`` (numeric, always a fresh copy). The ``BUILD``
    opcode (``__setstate__`` / attribute assignment) is admitted only on the numpy array or dtype being
    reconstructed, with checked state (an array's data bytes must match its shape), so a pickle cannot change
    the objects above for later reads. Persistent ids (``torch.save`` files) are refused. This is Python's own
    pure-Python unpickler (``pickle._Unpickler``): the C one's opcodes cannot be overridden.

    Args:
        file: binary file object to read from.
        name: file name used in error messages.

    Raises:
        ValueError: (from ``find_class``) the pickle names any other global.
        pickle.UnpicklingError: (from ``load``) a refused ``BUILD``, layout or persistent id.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, name: str = "<pickle>") -> None:
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        """Return the admitted object for ``module.name``.

        Raises:
            ValueError: ``module.name`` is not admitted (nothing is imported or called).
        """
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ValueError(
                f"{self.name}: refused to unpickle global '{module}.{name}': a .bin file may only hold a pickled "
                "tensor or array (this file would run other code; it was not loaded)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (a ``torch.save`` zip or legacy file, not a plain pickle)."""
        raise pickle.UnpicklingError("persistent id (a torch.save file, not a plain pickle)")

    def load_build(self) -> None:
        """``BUILD`` on the array or dtype being reconstructed only (see the class docstring)."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _build_array(inst, state)
        elif isinstance(inst, np.dtype):
            _build_dtype(inst, state)
        else:
            raise pickle.UnpicklingError(f"refused to set the state of a {type(inst).__name__} (BUILD)")

    dispatch[pickle.BUILD[0]] = load_build


def load_pickled_array(path: str | os.PathLike) -> np.ndarray:
    """Read a pickled tensor or numpy array with :class:`RestrictedUnpickler`.

    Args:
        path: the ``.bin`` file.

    Returns:
        a float32 numpy array (a new copy), in the shape it was pickled with, e.g. (1, 256, 256).

    Raises:
        ValueError: missing, empty or truncated file, a refused global, an object that is not a tensor or array,
            a non-numeric dtype, a tensor that does not fit its storage, more than ``MAX_VOXELS`` voxels, NaN /
            inf, floats beyond the float32 range or integers float32 cannot hold exactly; the message names the
            file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a pickled tensor.")
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, name=path).load()
    except ValueError as e:
        if path in str(e):
            raise
        raise ValueError(f"{path}: unreadable pickled tensor ({e}).") from e
    except Exception as e:  # pickle and torch raise many types for a corrupt or truncated stream
        raise ValueError(f"{path}: unreadable pickled tensor ({type(e).__name__}: {e}).") from e
    if isinstance(obj, torch.Tensor):
        if obj.is_complex() or obj.dtype == torch.bool:
            raise ValueError(f"{path}: pickled tensor of dtype {obj.dtype}, expected real numbers.")
        obj = obj.detach()
        src = obj.to(torch.float32).numpy() if obj.dtype in (torch.float16, torch.bfloat16) else obj.numpy()
    elif isinstance(obj, np.ndarray):
        src = obj
    else:
        raise ValueError(f"{path}: the pickle holds a {type(obj).__name__}, expected a tensor or an array.")
    if src.dtype.kind not in "fiu":
        raise ValueError(f"{path}: pickled array of dtype {src.dtype}, expected real numbers.")
    return _as_float32(src, path)


def _as_float32(src: np.ndarray, path: str) -> np.ndarray:
    """A float32 copy of ``src`` holding the same values, refusing what float32 cannot hold.

    Raises:
        ValueError: NaN / inf, floats beyond the float32 range, or integers float32 cannot hold exactly (e.g.
            16777217, beyond 2**24); the wording is the NIfTI reader's (:func:`custom.data.limits.finite_values`).
    """
    finite_values(src, path)
    arr = np.array(src, dtype=np.float32)
    if src.dtype.kind in "iu" and src.dtype.itemsize > 2:
        back = arr.astype(np.float64)
        info = np.iinfo(src.dtype)
        in_range = (back >= float(info.min)) & (back < float(info.max))
        exact = in_range & (np.where(in_range, back, 0).astype(src.dtype) == src)
        if not exact.all():
            bad = src[~exact].flat[0]
            raise ValueError(f"{path}: integer values such as {bad} cannot be held exactly in float32 (beyond 2**24).")
    return arr


class PickledTensorReader(ImageReader):
    """MONAI ``ImageReader`` for ``.bin`` files holding a pickled 2D image, (1, H, W) or (H, W).

    The leading singleton axis is a channel and is dropped (``original_channel_dim`` = ``"no_channel"``, as for
    NIfTI slices). With ``reverse_indexing`` (default) the two spatial axes are swapped, as MONAI's ITK and PIL
    readers do: the authors' tensors are in ``SimpleITK.GetArrayFromImage`` order (row, column), and MONAI's
    NIfTI readers return a SimpleITK-written slice in index order (column, row), so a ``.bin`` patch and a ``.nii``
    slice of the same array come out identical. The affine is the identity (the files carry no geometry).

    Args:
        reverse_indexing: swap the two spatial axes (see above). Defaults to True.

    Raises:
        ValueError: (from ``read``/``get_data``) see :func:`load_pickled_array`; or a shape other than (H, W) or
            (1, H, W).
    """

    def __init__(self, reverse_indexing: bool = True) -> None:
        super().__init__()
        self.reverse_indexing = reverse_indexing

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every file name ends with ``.bin``."""
        return is_supported_format(filename, [PICKLE_SUFFIX.lstrip(".")])

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read one file (or several, stacked later as channels).

        Returns:
            a (H, W) float32 array per file, or a list of them.
        """
        images = []
        for name in ensure_tuple(data):
            arr = load_pickled_array(name)
            if arr.ndim == 3 and arr.shape[0] == 1:
                arr = arr[0]
            if arr.ndim != 2 or min(arr.shape) < 1:
                raise ValueError(
                    f"{os.fspath(name)}: pickled tensor of shape {arr.shape}, expected (1, H, W) or (H, W)."
                )
            images.append(np.ascontiguousarray(arr.T) if self.reverse_indexing else arr)
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array and meta data (``spatial_shape``, identity ``affine``, ``no_channel``) of what ``read`` returned.

        Returns:
            (array, meta): (H, W), or (N, H, W) for N files.
        """
        arrays = list(img) if isinstance(img, (list, tuple)) else [img]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"pickled images of different shapes {sorted(shapes)} cannot be stacked.")
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.AFFINE: np.eye(4),
            MetaKeys.ORIGINAL_AFFINE: np.eye(4),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(arrays) == 1 else 0,
        }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta


def load_pickled_image(path: str | os.PathLike, reverse_indexing: bool = True) -> MetaTensor:
    """Read one ``.bin`` file with :class:`PickledTensorReader` alone.

    ``LoadImage`` is not used: when its reader fails it tries every other registered reader on the file, and a
    refused pickle must stop at the refusal.

    Args:
        path: the ``.bin`` file.
        reverse_indexing: see :class:`PickledTensorReader`.

    Returns:
        a (H, W) float32 ``MetaTensor`` (no channel axis) with ``filename_or_obj`` in its meta data.

    Raises:
        ValueError: see :class:`PickledTensorReader`; the message names the file.
    """
    path = os.fspath(path)
    reader = PickledTensorReader(reverse_indexing=reverse_indexing)
    arr, meta = reader.get_data(reader.read(path))
    meta["filename_or_obj"] = path
    meta[MetaKeys.AFFINE] = torch.as_tensor(meta[MetaKeys.AFFINE], dtype=torch.float64)
    return MetaTensor(torch.from_numpy(arr), meta=meta)
