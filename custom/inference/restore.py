"""The one restoration path: network from config + checkpoint, normalise, infer, denormalise, clip.

Used by the bundle's inference (:class:`custom.inference.RestorationEvaluator`), the MONAI Label app
(``apps/monailabel``) and the MONAI Deploy app (``apps/deploy``), so the three give the same values for the same
scan. Images are channel-first in physical units (HU, SUV, MR units): ``(C, H, W)`` for a 2D scan,
``(C, H, W, D)`` for a volume restored slice by slice along the last axis by the inferer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from custom.inference.inferer import warn_if_emulated
from custom.networks.checkpoint import load_checkpoint
from custom.settings import as_flag
from custom.transforms import ModalityDenormalized, ModalityNormalized
from custom.transforms.data_consistency import DC_MODES

__all__ = ["normalise", "denormalise", "restore", "Restorer"]

logger = logging.getLogger(__name__)

# a plain decimal number as text (``--conf kspace_factor 2``, env variables): nothing MONAI's parser would evaluate
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


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
    if amp and torch.device(device).type == "cpu":
        warn_if_emulated("bfloat16")  # CPU autocast's default dtype
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, enabled=amp):
        pred = inferer(torch.as_tensor(x)[None].to(device), network)
    out = denormalise(pred[0].float().cpu(), modality, settings, clip)
    return (out, x) if return_normalised else out


class Restorer:
    """A network, its settings and inferer built once from a bundle config; :meth:`__call__` restores arrays.

    Built with :meth:`from_bundle`, it also holds the config's ``postprocessing`` (the bundle inference's steps
    after :func:`restore`: data consistency, task check, difference output, restored-scan writer), so the apps run
    exactly those steps: :meth:`restore_item` restores a scan and applies the steps before the writers,
    :meth:`write_item` the writers. The inference options of :data:`Restorer.OPTIONS` (config ids of
    ``inference.json``) can be set per call; unset ones keep the config's values.

    Args:
        network: the loaded network.
        settings: modality settings.
        inferer: the config's inferer.
        clip: clip outputs to ``clip_range``.
        device: where the network runs.
        amp: autocast the forward pass (the bundle's ``amp``; see :func:`restore`).
    """

    #: config ids an app may set per call (the rest of the config is fixed when the restorer is built)
    OPTIONS = ("data_consistency", "kspace_factor", "data_consistency_mode", "task_check", "difference_output")
    #: the switches among :data:`OPTIONS` (true / false)
    FLAGS = ("data_consistency", "task_check", "difference_output")
    #: distinct option sets whose steps are kept (least recently used dropped first)
    STEPS_CACHE_SIZE = 16

    def __init__(
        self,
        network: torch.nn.Module,
        settings: Mapping[str, Mapping[str, Any]],
        inferer: Any,
        clip: bool = True,
        device: torch.device | str = "cpu",
        amp: bool = False,
    ) -> None:
        self.network = network.to(device).eval()
        self.settings = settings
        self.inferer = inferer
        self.clip = as_flag(clip, "clip_output")
        self.device = torch.device(device)
        self.amp = as_flag(amp, "amp")
        self._parser: Any = None  # the bundle config (from_bundle), source of the postprocessing steps
        self._defaults: dict[str, Any] = {}
        self._steps: OrderedDict[str, list[Any]] = OrderedDict()
        self._task_check: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(
        cls,
        bundle_root: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        config_file: str | os.PathLike | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> Restorer:
        """Build from a bundle: ``network_def``, ``modality_settings``, ``inferer``, ``clip_output``, ``amp`` and
        ``postprocessing`` of its inference config, weights (and task statistics) from ``checkpoint``.

        Args:
            bundle_root: the bundle folder.
            checkpoint: weights (default ``<bundle_root>/models/model.pt``).
            config_file: config (default ``<bundle_root>/configs/inference.json``).
            overrides: config ids -> values applied after reading (e.g. ``{"network_def#dim": 8}``); they become
                the defaults of :data:`OPTIONS` too.
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
        ckpt = os.fspath(checkpoint or os.path.join(root, "models", "model.pt"))
        load_checkpoint(network, ckpt)
        restorer = cls(
            network,
            parser.get_parsed_content("modality_settings"),
            parser.get_parsed_content("inferer"),
            clip=parser.get_parsed_content("clip_output") if "clip_output" in parser else True,
            device=device,
            amp=parser.get_parsed_content("amp") if "amp" in parser else False,
        )
        parser["network"], parser["checkpoint"] = restorer.network, ckpt  # the steps use this network's weights
        restorer._parser = parser
        restorer._defaults = cls.check_options({k: parser.get(k) for k in cls.OPTIONS if k in parser})
        return restorer

    @classmethod
    def check_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate and convert option values before they reach the bundle's config parser (which would evaluate a
        ``$`` expression and follow ``@`` references): the switches to ``bool``, ``kspace_factor`` to a finite
        ``float >= 1`` (the range ``DataConsistencyd`` accepts), ``data_consistency_mode`` one of ``DC_MODES``.

        Args:
            options: config ids of :data:`OPTIONS` -> values (switches: bool, 0/1 or true/false/yes/no/on/off text;
                ``kspace_factor``: an int / float or a plain decimal number as text, not a bool).

        Returns:
            a new dict, same keys, converted values.

        Raises:
            ValueError: an option that is not one of :data:`OPTIONS`, or a value outside its choices (names the
                option and what it accepts).
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise ValueError(f"unknown inference option(s) {unknown}; expected some of {list(cls.OPTIONS)}.")
        out: dict[str, Any] = {}
        for key, value in options.items():
            if key in cls.FLAGS:
                out[key] = as_flag(value, f"inference option {key}")
            elif key == "kspace_factor":
                factor = float("nan")
                if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
                    factor = float(value)
                elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
                    factor = float(value)
                if not (math.isfinite(factor) and factor >= 1):
                    raise ValueError(
                        f"inference option kspace_factor must be >= 1 (a finite number: the per-axis k-space "
                        f"truncation factor), got {value!r}."
                    )
                out[key] = factor
            else:  # data_consistency_mode
                if not (isinstance(value, str) and value in DC_MODES):
                    raise ValueError(
                        f"inference option data_consistency_mode must be one of {DC_MODES}, got {value!r}."
                    )
                out[key] = value
        return out

    def steps(self, options: Mapping[str, Any] | None = None) -> list[Any]:
        """The config's ``postprocessing`` transforms with ``options`` over the config's values (built once per
        distinct options; one task check is shared by all, so a checkpoint without task statistics is warned
        about once).

        Args:
            options: config ids of :data:`OPTIONS` -> values (e.g. ``{"data_consistency": True}``).

        Returns:
            the transforms in config order (empty for a restorer not built :meth:`from_bundle`).

        Raises:
            ValueError: an option that is not one of :data:`OPTIONS`, or a value :meth:`check_options` or the
                config's transforms refuse.
        """
        options = self.check_options(options)
        if self._parser is None:
            return []
        values = {**self._defaults, **options}
        key = json.dumps(values, sort_keys=True)
        with self._lock:
            if key in self._steps:
                self._steps.move_to_end(key)
            else:
                from custom.inference.task_check import TaskCheckd

                for k, v in values.items():
                    self._parser[k] = v
                try:
                    parsed = self._parser.get_parsed_content("postprocessing", lazy=False)
                except RuntimeError as e:  # MONAI wraps a transform's refusal of a value
                    cause = e.__cause__
                    while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
                        cause = cause.__cause__
                    if isinstance(cause, ValueError):
                        raise ValueError(f"inference options {options}: {cause}") from e
                    raise
                steps = list(getattr(parsed, "transforms", parsed))
                for i, step in enumerate(steps):
                    if isinstance(step, TaskCheckd) and step.enabled:
                        if self._task_check is None:
                            self._task_check = step
                            step.statistics()  # read (and warned about) once, here
                        steps[i] = self._task_check
                self._steps[key] = steps
                while len(self._steps) > self.STEPS_CACHE_SIZE:
                    self._steps.popitem(last=False)
            return self._steps[key]

    @staticmethod
    def _is_writer(step: Any) -> bool:
        from custom.inference.difference import SaveDifferenced
        from custom.inference.writers import SaveRestoredd

        return isinstance(step, (SaveDifferenced, SaveRestoredd))

    def restore_item(self, item: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Restore a scan item and apply the config's steps before its writers (data consistency, task check).

        Args:
            item: ``"image"`` ``(1, H, W[, D])`` in physical units (not modified), ``"modality"``; optional
                ``"source"`` (name in messages), and ``"kind"`` / ``"scan_info"`` for :meth:`write_item`.
            options: see :meth:`steps`.

        Returns:
            a new item: ``"input"`` (the physical input), ``"pred"`` (restored, physical units, float32 CPU),
            ``"image"`` (normalised input), ``"warnings"`` (list) and what the steps add (``predicted_task``,
            ``task_distance``).

        Raises:
            ValueError: unknown modality or option, non-finite values, bad data-consistency input.
        """
        d = dict(item)
        image = d["image"]
        image = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=torch.float32)
        if image.ndim not in (3, 4) or image.shape[0] != 1:
            raise ValueError(f"{d.get('source', 'scan')}: expected (1, H, W[, D]), got shape {tuple(image.shape)}.")
        d["input"] = image
        d["pred"], d["image"] = restore(
            image,
            d["modality"],
            self.network,
            self.inferer,
            self.settings,
            self.clip,
            self.device,
            amp=self.amp,
            return_normalised=True,
        )
        d["warnings"] = list(d.get("warnings") or [])
        for step in self.steps(options):
            if not self._is_writer(step):
                d = dict(step(d))
        return d

    def write_item(self, item: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Apply the config's writers to a :meth:`restore_item` result: the difference output (when enabled,
        ``difference_output`` set to its path) and the restored scan at ``item["output"]`` (warnings in the NIfTI
        ``descrip`` / DICOM ``ImageComments``).

        Args:
            item: from :meth:`restore_item`, with ``"output"``, ``"kind"`` (``nifti`` / ``dicom``) and
                ``"scan_info"`` (the reader's info; a DICOM ``"source"`` folder gives a series folder).
            options: the same options as for :meth:`restore_item`.

        Returns:
            the item after the writers.

        Raises:
            FileExistsError: an output exists and the config's ``overwrite`` is false.
            ValueError: shapes do not match the source.
        """
        d = dict(item)
        for step in self.steps(options):
            if self._is_writer(step):
                d = dict(step(d))
        return d

    def __call__(self, values: np.ndarray | torch.Tensor, modality: str) -> np.ndarray:
        """Restore a 2D ``(H, W)`` or 3D ``(H, W, D)`` array in physical units (:func:`restore` only, without the
        config's postprocessing steps; see :meth:`restore_item`).

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
        out = restore(img[None], modality, self.network, self.inferer, self.settings, self.clip, self.device, self.amp)
        return out[0].numpy()
