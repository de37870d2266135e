"""The one restoration path: network from config + checkpoint, normalise, infer, denormalise, clip.

Used by the bundle's inference (:class:`custom.inference.RestorationEvaluator`), the MONAI Label app
(``apps/monailabel``) and the MONAI Deploy app (``apps/deploy``), so the three give the same values for the same
scan. Images are channel-first in physical units (HU, SUV, MR units): ``(C, H, W)`` for a 2D scan,
``(C, H, W, D)`` for a volume restored slice by slice along the last axis by the inferer.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from custom.transforms import ModalityDenormalized, ModalityNormalized

__all__ = ["load_checkpoint", "checkpoint_weights", "normalise", "denormalise", "restore", "Restorer"]

logger = logging.getLogger(__name__)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def checkpoint_weights(
    state: Any, path: str, weights: str = "ema", model_key: str = "model"
) -> Mapping[str, torch.Tensor]:
    """The network state dict inside any checkpoint layout the bundle writes (see :func:`load_checkpoint`).

    Args:
        state: what ``torch.load`` returned.
        path: file name for messages.
        weights: ``"ema"`` or ``"network"`` for a training checkpoint.
        model_key: key of the weights in a ``{"model": ...}`` checkpoint.

    Returns:
        the state dict (names -> tensors).

    Raises:
        ValueError: no state dict in any known place.
    """
    if _is_state_dict(state):
        return state
    if isinstance(state, Mapping) and isinstance(state.get("network"), Mapping):  # the trainer's latest.pt
        ema = state.get("ema")
        if weights == "ema" and isinstance(ema, Mapping) and _is_state_dict(ema.get("ema_model")):
            logger.info("%s: training checkpoint, loading its EMA weights (the model validated and kept).", path)
            return ema["ema_model"]
        if weights == "ema":
            logger.warning("%s: training checkpoint without EMA weights, loading the raw network weights.", path)
        else:
            logger.info("%s: training checkpoint, loading the raw network weights (not the EMA).", path)
        state = state["network"]
    elif isinstance(state, Mapping) and isinstance(state.get(model_key), Mapping):  # model.pt (+ task statistics)
        state = state[model_key]
    elif isinstance(state, Mapping) and _is_state_dict(state.get("ema_model")):  # latest.pt's "ema" entry alone
        state = state["ema_model"]
    if not _is_state_dict(state):
        raise ValueError(
            f"{path}: expected a state dict, {{'{model_key}': state dict, ...}} or a training checkpoint "
            f"{{'network': ..., 'ema': {{'ema_model': ...}}, ...}}, got "
            + (
                f"a dict with keys {sorted(map(str, state))[:10]}."
                if isinstance(state, Mapping)
                else f"{type(state).__name__}."
            )
        )
    return state


def load_checkpoint(
    network: torch.nn.Module,
    path: str | os.PathLike,
    map_location: Any = "cpu",
    weights: str = "ema",
    model_key: str = "model",
) -> torch.nn.Module:
    """Load a weights-only checkpoint into ``network`` (strict names and shapes): the bundle's one checkpoint loader.

    Accepts every layout the bundle writes: a bare state dict; ``{"model": state dict}`` (the best-model saver's
    ``model.pt``), also with ``"task_statistics"``; the trainer's ``latest.pt``
    (``{"network": ..., "ema": {"ema_model": ...}, "optimizer": ...}``), from which the EMA weights are loaded by
    default (the EMA model is the one validated and kept as ``model.pt``; logged) or the raw network's with
    ``weights="network"``; its ``"ema"`` entry alone (``{"ema_model": ...}``) too. Weights under the published TAT
    code's names (``custom.networks.convert``) are converted when they do not load as they are (logged).

    Args:
        network: the network built from the config's ``network_def``.
        path: checkpoint file.
        map_location: device the tensors are loaded to.
        weights: ``"ema"`` or ``"network"``: which weights of a training checkpoint.
        model_key: key of the weights in a ``{"model": ...}`` checkpoint.

    Returns:
        ``network`` (modified in place).

    Raises:
        ValueError: missing or unsafe file (would need to run code), an unknown layout or ``weights``, or weights
            that do not match the network.
    """
    if weights not in ("ema", "network"):
        raise ValueError(f"weights must be 'ema' or 'network', got {weights!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: checkpoint not found.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: cannot be loaded safely as a weights-only checkpoint ({e}).") from e
    except (OSError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}).") from e
    state = checkpoint_weights(state, path, weights, model_key)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        from custom.networks.convert import convert_reference_state_dict

        try:
            converted = convert_reference_state_dict(state, network)
        except ValueError:
            raise ValueError(f"{path}: does not match the network ({e}).") from e
        network.load_state_dict(converted)
        logger.info("%s: weights under the published TAT names, converted.", path)
    return network


def normalise(image: torch.Tensor, modality: str, settings: Mapping[str, Mapping[str, Any]]) -> torch.Tensor:
    """Physical units -> network range [0, 1] (clipped to the modality's ``clip_range``).

    Args:
        image: ``(C, H, W[, D])`` in physical units.
        modality: ``CT``, ``PET`` or ``MRI`` (DICOM ``PT`` / ``MR`` accepted).
        settings: modality settings (:func:`custom.data.load_modality_settings`).

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
