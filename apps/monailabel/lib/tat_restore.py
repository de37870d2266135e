"""MONAI Label infer task: TAT restoration. The result is an image in physical units (HU / SUV / MR units), not a
label: the task is registered as InferType.OTHERS and writes the restored NIfTI itself (MONAI Label's default writer
and its segmentation post-processing would treat the output as a label map).

The bundle's "Is it real?" options (inference.json keys) are request params, defaults from inference.json (then
``tat_override``, then ``--conf``): ``data_consistency`` (MRI k-space data consistency), ``kspace_factor``,
``data_consistency_mode``, ``task_check`` (``predicted_task``, ``task_distance`` and ``warnings`` in the response's
JSON, warnings logged and written into the NIfTI ``descrip``) and ``difference`` (inference.json's
``difference_output``). Every value is checked by ``Restorer.check_options`` (a bad one is a ValueError naming the
option and its choices, and never reaches the bundle's config parser). MONAI Label's infer response carries one
image (its ``send_response``): with ``difference`` true that image is the difference restored - input (physical
units) instead of the restored scan, and the JSON says ``"image": "difference"``.
All steps run through the bundle's own ``Restorer`` (restore, then the config's postprocessing).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)

# request param -> inference.json option (custom.inference.restore.Restorer.OPTIONS)
REQUEST_OPTIONS = {
    "data_consistency": "data_consistency",
    "kspace_factor": "kspace_factor",
    "data_consistency_mode": "data_consistency_mode",
    "task_check": "task_check",
    "difference": "difference_output",
}


def bundle_defaults(bundle_root: str | os.PathLike) -> dict[str, Any]:
    """The request options' defaults, read from the bundle's configs/inference.json ({} when it is missing)."""
    path = Path(bundle_root) / "configs" / "inference.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    return {param: config[key] for param, key in REQUEST_OPTIONS.items() if key in config}


class TATRestore(BasicInferTask):
    def __init__(
        self,
        bundle_root: str,
        override: dict[str, Any] | None = None,
        modality: str | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        self.bundle_root = Path(bundle_root).resolve()
        self.override = override or {}
        self.default_modality = modality
        unknown = sorted(set(options or {}) - set(REQUEST_OPTIONS))
        if unknown:
            raise ValueError(f"unknown TAT option(s) {unknown}; expected some of {list(REQUEST_OPTIONS)}.")
        from custom.inference.restore import Restorer

        # shown in /info and sent back by clients: inference.json's values, then tat_override's (the Restorer's own
        # defaults), then the app's --conf; checked here so a bad value stops the app at start
        overridden = {param: self.override[key] for param, key in REQUEST_OPTIONS.items() if key in self.override}
        self.defaults = {**bundle_defaults(self.bundle_root), **overridden, **(options or {})}
        Restorer.check_options({REQUEST_OPTIONS[param]: value for param, value in self.defaults.items()})
        self._restorer = None
        super().__init__(
            path=str(self.bundle_root / "models" / "model.pt"),
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description="TAT all-in-one restoration (low-dose CT, low-count PET, MRI x4 SR); returns the restored "
            "image in physical units (or the difference restored - input with params difference true)",
            config={"modality": modality or "", "device": "cpu", **self.defaults},
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

            # outputs go to fresh temporary names this task reserves, so they are replaced
            self._restorer = Restorer.from_bundle(self.bundle_root, overrides={**self.override, "overwrite": True})
        return self._restorer

    def options(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request's options (request params over the defaults) as inference.json options."""
        return {key: request.get(param, self.defaults.get(param)) for param, key in REQUEST_OPTIONS.items()
                if param in request or param in self.defaults}  # fmt: skip

    def __call__(self, request, callbacks=None):
        import torch
        from custom.inference.io import load_nifti

        begin = time.time()
        modality = request.get("modality") or self.default_modality
        if not modality:
            raise ValueError("TAT restoration needs the modality: pass params {'modality': 'CT'|'PET'|'MRI'}")
        from custom.inference.restore import Restorer

        options = Restorer.check_options(self.options(request))  # before anything reaches the bundle's parser
        difference = options.get("difference_output", False)
        restorer = self._load()
        values, info = load_nifti(request["image"])
        item = {"image": torch.from_numpy(values)[None], "modality": modality, "source": str(request["image"])}
        d = restorer.restore_item({**item, "kind": "nifti", "scan_info": info}, options)
        fd, path = tempfile.mkstemp(suffix=".nii.gz", prefix="tat_restored_")
        os.close(fd)
        try:
            d = restorer.write_item({**d, "output": path}, options)  # difference (when on), then restored
        except BaseException:
            os.remove(path)
            raise
        out = d["pred"][0].numpy()
        result = {
            "modality": modality,
            "units": restorer.settings[modality].get("units", "") if modality in restorer.settings else "",
            "shape": list(out.shape),
            "min": float(out.min()),
            "max": float(out.max()),
            "image": "restored",
            "data_consistency": options.get("data_consistency", False),
            "predicted_task": d.get("predicted_task"),
            "task_distance": d.get("task_distance"),
            "warnings": list(d.get("warnings") or []),
            "latency": round(time.time() - begin, 3),
        }
        if difference:  # one image per response: the difference replaces the restored scan
            os.remove(path)
            path = d["difference_output"]
            diff = d["difference"]
            result.update(image="difference", difference_min=float(diff.min()), difference_max=float(diff.max()))
        for w in result["warnings"]:
            logger.warning(f"TAT restore {request['image']}: {w}")
        logger.info(f"TAT restore {request['image']}: {json.dumps(result)}")
        return path, result
