"""MONAI Label infer task: TAT restoration. The result is an image in physical units (HU / SUV / MR units), not a
label: the task is registered as InferType.OTHERS and writes the restored NIfTI itself (MONAI Label's default writer
and its segmentation post-processing would treat the output as a label map)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)


class TATRestore(BasicInferTask):
    def __init__(self, bundle_root: str, override: dict[str, Any] | None = None, modality: str | None = None):
        self.bundle_root = Path(bundle_root).resolve()
        self.override = override or {}
        self.default_modality = modality
        self._restorer = None
        super().__init__(
            path=str(self.bundle_root / "models" / "model.pt"),
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description="TAT all-in-one restoration (low-dose CT, low-count PET, MRI x4 SR); returns the restored "
            "image in physical units",
            config={"modality": modality or "", "device": "cpu"},
        )

    def pre_transforms(self, data=None):  # unused: __call__ runs the bundle's own normalisation
        return []

    def post_transforms(self, data=None):  # unused: the restored image is written in physical units
        return []

    def is_valid(self) -> bool:
        return (self.bundle_root / "configs" / "inference.json").is_file() and (
            self.bundle_root / "models" / "model.pt"
        ).is_file()

    def _load(self):
        if self._restorer is None:
            from custom.inference.restore import Restorer

            self._restorer = Restorer.from_bundle(self.bundle_root, overrides=self.override)
        return self._restorer

    def __call__(self, request, callbacks=None):
        from custom.inference.io import load_nifti
        from custom.inference.writers import write_nifti

        begin = time.time()
        modality = request.get("modality") or self.default_modality
        if not modality:
            raise ValueError("TAT restoration needs the modality: pass params {'modality': 'CT'|'PET'|'MRI'}")
        restorer = self._load()
        values, info = load_nifti(request["image"])
        out = restorer(values, modality)  # the bundle's restore(): normalise, infer, denormalise, clip
        fd, path = tempfile.mkstemp(suffix=".nii.gz", prefix="tat_restored_")
        os.close(fd)
        write_nifti(out, info["nifti"], path, overwrite=True)  # atomically replaces the reserved name
        result = {
            "modality": modality,
            "units": restorer.settings[modality].get("units", "") if modality in restorer.settings else "",
            "shape": list(out.shape),
            "min": float(out.min()),
            "max": float(out.max()),
            "latency": round(time.time() - begin, 3),
        }
        logger.info(f"TAT restore {request['image']}: {json.dumps(result)}")
        return path, result
