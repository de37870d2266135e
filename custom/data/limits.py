"""Limits and value checks every image reader of the bundle applies (NIfTI, DICOM, the authors' pickled patches).

Below both :mod:`custom.data.readers` and :mod:`custom.data.pickled`, so that neither imports the other for them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_VOXELS", "finite_values"]

MAX_VOXELS = 2**31  # 8 GiB as float32: a header declaring more is refused before any voxel is read


def finite_values(data: np.ndarray, path: str) -> np.ndarray:
    """Refuse NaN / inf, and values a float32 image cannot hold (e.g. an absurd scale factor).

    Args:
        data: the image values (any shape; checked, not changed).
        path: file name used in the message.

    Returns:
        ``data`` itself.

    Raises:
        ValueError: non-finite values, or float64 values beyond the float32 range; the message names ``path``.
    """
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError(f"{path}: non-finite values (NaN or inf) in the image.")
    if data.dtype.kind == "f" and data.size and data.dtype.itemsize > 4:
        peak = float(np.abs(data).max())
        if peak > float(np.finfo(np.float32).max):
            raise ValueError(f"{path}: values up to {peak:.3g} exceed the float32 range (scale factors corrupt?).")
    return data
