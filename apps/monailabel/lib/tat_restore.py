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

import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)


class TATRestore(BasicInferTask):
    def __init__(self, bundle_root: str, override: dict[str, Any] | None = None, modality: str | None = None):
        self.bundle_root = Path(bundle_root).resolve()
        self.override = override or {}
        self.default_modality = modality
        self._parts = None
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
        if self._parts is None:
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config(str(self.bundle_root / "configs" / "inference.json"))
            parser["bundle_root"] = str(self.bundle_root)
            parser["device"] = "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"
            for k, v in self.override.items():
                parser[k] = v
            net = parser.get_parsed_content("network_def")
            state = torch.load(str(self.bundle_root / "models" / "model.pt"), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            net.load_state_dict(state)
            device = parser.get_parsed_content("device")
            self._parts = (
                net.to(device).eval(),
                device,
                parser.get_parsed_content("modality_settings"),
                parser.get_parsed_content("inferer"),
                bool(parser.get("clip_output", False)),
            )
        return self._parts

    @torch.no_grad()
    def __call__(self, request, callbacks=None):
        from custom.inference.io import load_nifti
        from custom.inference.writers import write_nifti
        from custom.transforms import ModalityDenormalized, ModalityNormalized

        begin = time.time()
        modality = request.get("modality") or self.default_modality
        if not modality:
            raise ValueError("TAT restoration needs the modality: pass params {'modality': 'CT'|'PET'|'MRI'}")
        net, device, settings, inferer, clip_output = self._load()
        values, info = load_nifti(request["image"])
        img = torch.as_tensor(values)
        img = img[None] if img.ndim == 3 else img[None, ..., None]
        x = ModalityNormalized(keys="image", settings=settings)({"image": img, "modality": modality})["image"]
        pred = inferer(x[None].to(device), net)[0].float().cpu()
        denormalise = ModalityDenormalized(
            keys="pred", settings=settings, clip=clip_output
        )  # as the bundle's inference
        out = denormalise({"pred": pred, "modality": modality})["pred"]
        out = out.numpy()[0]
        out = out if values.ndim == 3 else out[..., 0]
        fd, path = tempfile.mkstemp(suffix=".nii.gz", prefix="tat_restored_")
        os.close(fd)
        os.unlink(path)
        write_nifti(out, info["nifti"], path, overwrite=True)
        result = {
            "modality": modality,
            "units": settings[modality].get("units", ""),
            "shape": list(out.shape),
            "min": float(out.min()),
            "max": float(out.max()),
            "latency": round(time.time() - begin, 3),
        }
        logger.info(f"TAT restore {request['image']}: {json.dumps(result)}")
        return path, result
