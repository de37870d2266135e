"""Inference for TAT: find scans, read them, restore slice by slice, write NIfTI / derived DICOM atomically.

Used by ``bundle/configs/inference.json``; see the Inference section of ``bundle/docs/README.md``.
"""

from __future__ import annotations

from custom.inference.inferer import SliceBatchInferer
from custom.inference.io import LoadScand, load_dicom_series, load_nifti
from custom.inference.modes import INFERENCE_MODES, mode_inferer, network_window_mode
from custom.inference.scans import find_scans
from custom.inference.workflow import CatchFailures, RestorationEvaluator, first_item
from custom.inference.writers import SaveRestoredd, write_dicom_series, write_nifti

__all__ = [
    "find_scans",
    "load_nifti",
    "load_dicom_series",
    "LoadScand",
    "SliceBatchInferer",
    "INFERENCE_MODES",
    "mode_inferer",
    "network_window_mode",
    "SaveRestoredd",
    "write_nifti",
    "write_dicom_series",
    "CatchFailures",
    "first_item",
    "RestorationEvaluator",
]
