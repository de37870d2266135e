"""Per-item deterministic random states, so that simulated degradations can be cached like any
deterministic transform (MONAI's ``CacheDataset``/``PersistentDataset`` stop caching at the first
``Randomizable`` transform; a simulator seeded per item is not one, so its output is computed once)."""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

__all__ = ["item_random_state"]


def item_random_state(
    data: Mapping[Hashable, Any], key: Hashable, seed: int | None, index_key: str = "slice_index"
) -> np.random.RandomState:
    """Random state for one item: fixed by ``seed``, the image's file name and its slice index.

    Args:
        data: the item.
        key: image key whose ``meta["filename_or_obj"]`` identifies the item.
        seed: base seed; None gives a fresh, unseeded state (a new draw at every call).
        index_key: key of the slice index, mixed into the seed when present.

    Returns:
        a ``numpy.random.RandomState``.
    """
    if seed is None:
        return np.random.RandomState()
    meta = getattr(data.get(key), "meta", None)
    name = str(meta.get("filename_or_obj", "")) if isinstance(meta, Mapping) else ""
    ident = f"{name}|{data.get(index_key, '')}".encode()
    return np.random.RandomState((int(seed) + zlib.crc32(ident)) % (2**32))
