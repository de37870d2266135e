"""The difference output: what the network changed (restored - input, physical units), written beside the scan.

NIfTI input -> ``<name>_difference.nii[.gz]`` (float32, unscaled, the input's header and affine); DICOM series ->
a derived series in ``<folder>_difference`` (single file: ``<name>_difference.dcm``) with its own series UID,
``SeriesNumber`` + 2000 and " TAT difference (restored - input)" appended to the series description. A
difference image is for review only: zero where the network changed nothing, positive where it added signal.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from custom.data.datalist import item_name
from custom.inference.writers import write_dicom_series, write_nifti
from custom.settings import as_flag
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["DIFFERENCE_SUFFIX", "difference_path", "SaveDifferenced"]

logger = logging.getLogger(__name__)

DIFFERENCE_SUFFIX = "_difference"


def difference_path(output: str) -> str:
    """``out/a.nii.gz`` -> ``out/a_difference.nii.gz``; ``out/series`` -> ``out/series_difference``."""
    folder, name = os.path.split(os.path.normpath(output))
    for ext in (".nii.gz", ".nii", ".dcm", ".DCM"):
        if name.endswith(ext):
            return os.path.join(folder, name[: -len(ext)] + DIFFERENCE_SUFFIX + ext)
    stem, ext = os.path.splitext(name) if os.path.splitext(name)[1] in (".ima", ".IMA") else (name, "")
    return os.path.join(folder, stem + DIFFERENCE_SUFFIX + ext)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


class SaveDifferenced(MapTransform):
    """Write ``d[key] - d[reference_key]`` next to the restored output (see the module docstring).

    Sets ``d["difference"]`` (``(1, H, W[, D])`` float32 tensor) and ``d["difference_output"]`` (its path). Put
    it after the last transform that changes ``d[key]`` (e.g. data consistency) and before
    :class:`custom.inference.SaveRestoredd`, so that a rerun after an interrupted scan finds no restored output:
    an existing difference whose restored scan is missing is from such a run and is replaced.

    Args:
        keys: the restored key (one), physical units.
        reference_key: the input scan in physical units.
        enabled: write it at all (inference option ``difference_output``).
        overwrite: replace an existing difference output.

    Raises:
        ValueError: shapes differ or the input is missing (names the file).
        FileExistsError: the difference output exists (with its restored scan) and ``overwrite`` is False.
    """

    def __init__(
        self, keys: KeysCollection, reference_key: str = "input", enabled: bool = True, overwrite: bool = False
    ) -> None:
        super().__init__(keys)
        self.reference_key = reference_key
        self.enabled = as_flag(enabled, "difference_output")
        self.overwrite = as_flag(overwrite, "overwrite")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        name = item_name(d)
        if self.reference_key not in d:
            raise ValueError(f"{name}: the difference output needs the input scan under '{self.reference_key}'.")
        info = d["scan_info"]
        for key in self.key_iterator(d):
            restored, measured = _numpy(d[key]), _numpy(d[self.reference_key])
            if restored.shape != measured.shape:
                raise ValueError(f"{name}: restored {restored.shape} and input {measured.shape} differ in shape.")
            diff = restored - measured
            path = difference_path(str(d["output"]))
            overwrite = self.overwrite or not os.path.lexists(str(d["output"]))
            if d.get("kind") == "nifti":
                write_nifti(diff[0], info["nifti"], path, overwrite, dtype=np.float32, scaling=(1.0, 0.0))
            else:
                datasets = []
                for ds in info["datasets"]:
                    ds = copy.deepcopy(ds)
                    if str(getattr(ds, "SeriesNumber", "") or "") != "":
                        ds.SeriesNumber = int(ds.SeriesNumber) + 1000  # the writer adds 1000 more
                    datasets.append(ds)
                write_dicom_series(
                    diff[0],
                    datasets,
                    info["files"],
                    path,
                    info.get("suv_factors"),
                    single_file=not os.path.isdir(str(d.get("source", ""))),
                    overwrite=overwrite,
                    series_suffix=" TAT difference (restored - input)",
                )
            d["difference"] = torch.as_tensor(diff, dtype=torch.float32)
            d["difference_output"] = path
            logger.info("%s: difference (restored - input) written to %s", name, path)
        return d
