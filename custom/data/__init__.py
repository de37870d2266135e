"""Data for TAT: data lists, DICOM/NIfTI reading, 3D -> 2D slicing, task-uniform sampling.

See :mod:`custom.data.datalist` for the data set layout and the ``python -m custom.tools.datalist`` command,
:mod:`custom.tools.demo_data` for the built-in demo data set (``python -m custom.tools.demo_data``) and
:mod:`custom.transforms` for the recommended transform chain.
"""

from __future__ import annotations

from custom.data.datalist import (
    PATH_KEYS,
    SPLITS,
    build_datalist,
    item_name,
    key_name,
    load_datalist,
    validate_datalist,
)
from custom.data.readers import DicomReader, is_dicom, load_image
from custom.data.sampler import TaskUniformBatchSampler, task_labels
from custom.data.slicing import LoadSliced, expand_slices, load_slice, num_slices

__all__ = [
    "SPLITS",
    "PATH_KEYS",
    "build_datalist",
    "item_name",
    "key_name",
    "load_datalist",
    "validate_datalist",
    "DicomReader",
    "is_dicom",
    "load_image",
    "TaskUniformBatchSampler",
    "task_labels",
    "LoadSliced",
    "load_slice",
    "expand_slices",
    "num_slices",
]
