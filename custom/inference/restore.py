"""The one restoration path: network from config + checkpoint, normalise, infer, denormalise, clip.

Used by the bundle's inference (:class:`custom.inference.RestorationEvaluator`), the MONAI Label app
(``apps/monailabel``) and the MONAI Deploy app (``apps/deploy``), so the three give the same values for the same
scan. Images are channel-first in physical units (HU, SUV, MR units): ``(C, H, W)`` for a 2D scan,
``(C, H, W, D)`` for a volume restored slice by slice along the last axis by the inferer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from custom.networks.checkpoint import load_checkpoint
from custom.transforms import ModalityDenormalized, ModalityNormalized

__all__ = ["normalise", "denormalise", "restore", "Restorer"]

logger = logging.getLogger(__name__)


def normalise(image: torch.Tensor, modality: str, settings: Mapping[str, Mapping[str, Any]]) -> torch.Tensor:
    """Physical units -> network range [0, 1] (clipped to the modality's ``clip_range``).

    Args:
        image: ``(C, H, W[, D])`` in physical units.
        modality: ``CT``, ``PET`` or ``MRI`` (DICOM ``PT`` / ``MR`` accepted).
        settings: modality settings (:func:`custom.settings.load_modality_settings`).

    Returns:
        float32 tensor, same shape.

    Raises:
        ValueError: unknown modality or non-finite values.
    """
    return ModalityNormalized(keys="image", settings=settings)({"image": image, "modality": modality})["image"]


def denormalise(
    pred: torch.Tensor, modality: str, settings: Mapping[str, Mapping[str, Any]], clip: bool = True
) -> torch.Tensor:
    """Network range -> physical units, clipped to ``clip_range`` when ``clip``.

    Args:
        pred: ``(C, H, W[, D])`` network output.
        modality: as :func:`normalise`.
        settings: modality settings.
        clip: clip to the modality's ``clip_range``.

    Returns:
        float32 tensor, same shape.

    Raises:
        ValueError: unknown modality or non-finite values.
    """
    return ModalityDenormalized(keys="pred", settings=settings, clip=clip)({"pred": pred, "modality": modality})["pred"]


def restore(
    image: torch.Tensor,
    modality: str,
    network: torch.nn.Module,
    inferer: Any,
    settings: Mapping[str, Mapping[str, Any]],
    clip: bool = True,
    device: torch.device | str | None = None,
    amp: bool = False,
    return_normalised: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Restore one scan: normalise, ``inferer(x, network)`` without gradients, denormalise, clip.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)`` in physical units (not modified).
        modality: ``CT``, ``PET`` or ``MRI``.
        network: the restoration network (put in eval mode).
        inferer: e.g. :class:`custom.inference.SliceBatchInferer` (called with ``(1, C, H, W[, D])``).
        settings: modality settings.
        clip: clip the result to the modality's ``clip_range`` (the bundle's ``clip_output``).
        device: where the network runs (default: the network's device).
        amp: autocast the forward pass.
        return_normalised: also return the normalised input (CPU).

    Returns:
        the restored image ``(C', H, W[, D])``, float32 on the CPU, physical units; with ``return_normalised``,
        ``(restored, normalised input)``.

    Raises:
        ValueError: unknown modality, non-finite input or output (the message names the source file if known).
    """
    if device is None:
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
    x = normalise(image, modality, settings)
    network.eval()
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, enabled=amp):
        pred = inferer(torch.as_tensor(x)[None].to(device), network)
    out = denormalise(pred[0].float().cpu(), modality, settings, clip)
    return (out, x) if return_normalised else out


class Restorer:
    """A network, its settings and inferer built once from a bundle config; :meth:`__call__` restores arrays.

    Args:
        network: the loaded network.
        settings: modality settings.
        inferer: the config's inferer.
        clip: clip outputs to ``clip_range``.
        device: where the network runs.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        settings: Mapping[str, Mapping[str, Any]],
        inferer: Any,
        clip: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        self.network = network.to(device).eval()
        self.settings = settings
        self.inferer = inferer
        self.clip = bool(clip)
        self.device = torch.device(device)

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        config_file: str | os.PathLike | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> Restorer:
        """Build from a bundle: ``network_def``, ``modality_settings``, ``inferer`` and ``clip_output`` of its
        inference config, weights from ``checkpoint``.

        Args:
            bundle_root: the bundle folder.
            checkpoint: weights (default ``<bundle_root>/models/model.pt``).
            config_file: config (default ``<bundle_root>/configs/inference.json``).
            overrides: config ids -> values applied after reading (e.g. ``{"network_def#dim": 8}``).
            device: default: CUDA if available, else CPU.

        Returns:
            the restorer.

        Raises:
            ValueError: missing config or checkpoint, or a checkpoint that does not match the network.
        """
        from monai.bundle import ConfigParser

        root = os.path.abspath(os.fspath(bundle_root))
        config = os.fspath(config_file or os.path.join(root, "configs", "inference.json"))
        if not os.path.isfile(config):
            raise ValueError(f"{config}: inference config not found.")
        parser = ConfigParser()
        parser.read_config(config)
        parser["bundle_root"] = root
        for key, value in (overrides or {}).items():
            parser[key] = value
        if device is None:
            device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        network = parser.get_parsed_content("network_def")
        load_checkpoint(network, checkpoint or os.path.join(root, "models", "model.pt"))
        return cls(
            network,
            parser.get_parsed_content("modality_settings"),
            parser.get_parsed_content("inferer"),
            clip=bool(parser.get("clip_output", True)),
            device=device,
        )

    def __call__(self, values: np.ndarray | torch.Tensor, modality: str) -> np.ndarray:
        """Restore a 2D ``(H, W)`` or 3D ``(H, W, D)`` array in physical units.

        Args:
            values: the scan (not modified).
            modality: ``CT``, ``PET`` or ``MRI``.

        Returns:
            float32 array of the same shape, physical units.

        Raises:
            ValueError: not 2D/3D, unknown modality or non-finite values.
        """
        img = torch.as_tensor(np.asarray(values), dtype=torch.float32)
        if img.ndim not in (2, 3):
            raise ValueError(f"expected a 2D (H, W) or 3D (H, W, D) array, got shape {tuple(img.shape)}.")
        out = restore(img[None], modality, self.network, self.inferer, self.settings, self.clip, self.device)
        return out[0].numpy()
