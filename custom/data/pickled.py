"""Reading the authors' ``*.bin`` training patches: pickles of a tensor, through a restricted unpickler.

The released data set stores each training patch as ``pickle.dump(tensor, f)`` of a float tensor of shape
(1, 256, 256) in physical units. A pickle can name any Python callable, so such a file is never given to
``pickle.load``: :class:`RestrictedUnpickler` admits only the globals that rebuild a torch tensor or a numpy
array and refuses every other one with a ``ValueError`` naming the file and the global, before anything runs.

A plain pickle of a CPU tensor (any torch since 1.x) calls ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, OrderedDict())`` with ``storage = torch.storage._load_from_bytes(data)``, where
``data`` is a nested legacy ``torch.save`` of the storage. torch's own ``_load_from_bytes`` would unpickle
``data`` without restriction; here it is replaced by ``torch.load(data, weights_only=True, map_location="cpu")``,
which is restricted too. A numpy array pickles as ``numpy._core.multiarray._reconstruct`` (``numpy.core`` before
numpy 2) with ``numpy.ndarray`` and ``numpy.dtype``.

:class:`PickledTensorReader` is a MONAI ``ImageReader`` for these files (``LoadImage(reader=PickledTensorReader())``).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["PICKLE_SUFFIX", "RestrictedUnpickler", "load_pickled_array", "PickledTensorReader", "load_pickled_image"]

PICKLE_SUFFIX = ".bin"


def _storage_from_bytes(data: bytes) -> Any:
    """Safe replacement of ``torch.storage._load_from_bytes``: the nested storage pickle, weights-only."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_tensor(
    storage: Any,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for a plain tensor only: a storage, no hooks, no extra attributes."""
    if not isinstance(storage, torch.storage.TypedStorage) or backward_hooks or metadata:
        raise pickle.UnpicklingError("not a plain tensor (storage, hooks or attributes of another kind)")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())


# (module, name) -> the object the restricted unpickler hands out for it
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only what rebuilds a tensor or an array.

    Admitted: ``torch._utils._rebuild_tensor_v2`` (for a plain tensor: no hooks or attributes),
    ``torch.storage._load_from_bytes`` (replaced by a weights-only ``torch.load``), ``collections.OrderedDict``,
    numpy's ``_reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``. Persistent ids (``torch.save`` files) are
    refused by ``pickle.Unpickler`` itself.

    Args:
        file: binary file object to read from.
        name: file name used in error messages.

    Raises:
        ValueError: (from ``find_class``) the pickle names any other global.
    """

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


def load_pickled_array(path: str | os.PathLike) -> np.ndarray:
    """Read a pickled tensor or numpy array with :class:`RestrictedUnpickler`.

    Args:
        path: the ``.bin`` file.

    Returns:
        a float32 numpy array (a new copy), in the shape it was pickled with, e.g. (1, 256, 256).

    Raises:
        ValueError: missing, empty or truncated file, a refused global, an object that is not a tensor or array,
            a non-numeric dtype, or non-float values that float32 cannot hold; the message names the file.
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
        arr = obj.detach().to(torch.float32).numpy().copy()
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "fiu":
            raise ValueError(f"{path}: pickled array of dtype {obj.dtype}, expected real numbers.")
        arr = np.array(obj, dtype=np.float32)
    else:
        raise ValueError(f"{path}: the pickle holds a {type(obj).__name__}, expected a tensor or an array.")
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
