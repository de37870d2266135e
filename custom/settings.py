"""Per-modality intensity settings, read from ``bundle/configs/modality/*.json``.

Each json file describes one modality (one restoration task)::

    {"modality": "CT", "task": "low_dose_ct", "units": "HU",
     "clip_range": [-1024.0, 3072.0], "eval_window": [-160.0, 240.0]}

``clip_range`` is the normalisation range (clip, then map linearly to [0, 1]); ``eval_window`` is the
published evaluation window in physical units (TAT, MICCAI 2025). No range is hard-coded in Python: the
transforms take the dict returned by :func:`load_modality_settings` as an argument.

The bundle the package ships (its configs, modality settings, docs: package data ``custom/_bundle``, see
``setup.cfg`` ``[options.package_data]``) is found with :func:`packaged_bundle`, never through the repository
layout, so a non-editable install finds it too.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "as_flag",
    "packaged_bundle",
    "default_modality_dir",
    "MODALITIES",
    "MODALITY_ALIASES",
    "canonical_modality",
    "load_modality_settings",
    "validate_modality_settings",
    "get_modality_setting",
]

MODALITIES = ("CT", "PET", "MRI")
# the one modality alias table: DICOM Modality (0008,0060) spellings and data-list spellings -> task modality
MODALITY_ALIASES = {"CT": "CT", "PT": "PET", "PET": "PET", "MR": "MRI", "MRI": "MRI"}


def canonical_modality(name: Any) -> str | None:
    """The task modality (``CT``, ``PET``, ``MRI``) of a modality name, case-insensitive; None when unsupported.

    Args:
        name: e.g. ``"mr"``, ``"PT"``, ``"CT"``; a one-element sequence (batch collation) is accepted.

    Returns:
        the canonical name, or None for an empty or unsupported name (e.g. DICOM ``OT``).
    """
    if isinstance(name, (list, tuple)) and len(name) == 1:
        name = name[0]
    if name is None:
        return None
    return MODALITY_ALIASES.get(str(name).strip().upper())


def packaged_bundle(*parts: str) -> Path:
    """A path inside the bundle shipped as the package's data (``custom/_bundle``), symbolic links resolved.

    Args:
        parts: path components below the bundle root, e.g. ``("configs", "inference.json")``; none: the root.

    Returns:
        the absolute path (in a source checkout the repository's ``bundle/``, which ``custom/_bundle`` links to).

    Raises:
        FileNotFoundError: the package carries no bundle (e.g. the copy of ``custom`` inside an unzipped bundle zip:
            there pass the bundle root, ``--bundle_root``, explicitly), or the path is not in it.
    """
    root = Path(os.fspath(resources.files("custom"))) / "_bundle"
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not in the bundle shipped with the custom package (package data custom/_bundle); "
            "pass the bundle root explicitly (--bundle_root)."
        )
    return path.resolve()


def default_modality_dir() -> Path:
    """The modality settings folder of the shipped bundle (``configs/modality``, see :func:`packaged_bundle`)."""
    return packaged_bundle("configs", "modality")


_REQUIRED = ("modality", "task", "units", "clip_range", "eval_window")
# task names become file names (per-task CSVs, panels) and keys of the reports
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_range(value: Any, name: str, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}: '{name}' must be a [low, high] pair, got {value!r}.")
    try:
        low, high = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: '{name}' must be a pair of numbers, got {value!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"{where}: '{name}' must be finite with low < high, got {value!r}.")
    return low, high


def validate_modality_settings(setting: Mapping[str, Any], where: str = "modality settings") -> dict[str, Any]:
    """Check one modality's settings and return a normalised copy.

    Args:
        setting: dict with keys ``modality``, ``task``, ``units``, ``clip_range``, ``eval_window``.
        where: name used in error messages (usually the json file path).

    Returns:
        a new dict whose ranges are tuples of floats and whose modality is upper case.

    Raises:
        ValueError: ``setting`` is not a mapping, a key is missing, the modality is unknown, the task is not a name
            usable in a file name (letters, digits, ``_ . -``), the units are not text, or a range is not a finite
            increasing pair of numbers.
    """
    if not isinstance(setting, Mapping):
        raise ValueError(f"{where}: modality settings must be an object with keys {list(_REQUIRED)}, got {setting!r}.")
    missing = [k for k in _REQUIRED if k not in setting]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}.")
    task = setting["task"]
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise ValueError(
            f"{where}: 'task' must be a name of letters, digits, '_', '.' or '-' starting with a letter or digit "
            f"(it names the report files), got {task!r}."
        )
    if not isinstance(setting["units"], str):
        raise ValueError(f"{where}: 'units' must be text (e.g. \"HU\"; may be empty), got {setting['units']!r}.")
    out = dict(setting)
    out["modality"] = canonical_modality(setting["modality"]) or str(setting["modality"]).upper()
    if out["modality"] not in MODALITIES:
        raise ValueError(f"{where}: unknown modality {setting['modality']!r}, expected one of {MODALITIES}.")
    out["clip_range"] = _check_range(setting["clip_range"], "clip_range", where)
    out["eval_window"] = _check_range(setting["eval_window"], "eval_window", where)
    return out


def load_modality_settings(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read every ``*.json`` modality file of a directory.

    Args:
        directory: folder holding one json file per modality (``bundle/configs/modality``).

    Returns:
        dict modality name (``"CT"``, ``"PET"``, ``"MRI"``) -> validated settings dict.

    Raises:
        ValueError: the folder has no json file, a file is unreadable or invalid, or two files
            describe the same modality or name the same task.
    """
    files = sorted(glob.glob(os.path.join(os.fspath(directory), "*.json")))
    if not files:
        raise ValueError(f"{directory}: no modality json file found.")
    settings: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable modality settings ({e}).") from e
        setting = validate_modality_settings(raw, where=path)
        if setting["modality"] in settings:
            raise ValueError(f"{path}: modality {setting['modality']} is described twice.")
        for other in settings.values():
            if other["task"].casefold() == setting["task"].casefold():  # file names: case-insensitive file systems
                raise ValueError(
                    f"{path}: task {setting['task']!r} is also the task of {other['modality']} ({other['task']!r} in "
                    f"{other['file']}, compared case-insensitively); "
                    "each modality needs its own task name (the reports are kept per task)."
                )
        setting["file"] = path
        settings[setting["modality"]] = setting
    return settings


def get_modality_setting(
    settings: Mapping[str, Mapping[str, Any]], modality: Any, where: str = ""
) -> Mapping[str, Any]:
    """Look a modality up in a settings dict, case-insensitively.

    Args:
        settings: output of :func:`load_modality_settings` (or the same structure written in a config).
        modality: modality name; a one-element sequence (as produced by batch collation) is accepted.
        where: file name or item description used in the error message.

    Returns:
        the settings of that modality.

    Raises:
        ValueError: the modality is not in ``settings``.
    """
    if isinstance(modality, (list, tuple)) and len(modality) == 1:
        modality = modality[0]
    name = canonical_modality(modality) or str(modality).upper()
    for key, value in settings.items():
        if key.upper() == name:
            return value
    prefix = f"{where}: " if where else ""
    raise ValueError(f"{prefix}unknown modality {modality!r}, expected one of {sorted(settings)}.")


def as_flag(value: Any, name: str = "option") -> bool:
    """A config / command-line switch as a bool: ``True``/``False``, 1/0 or the strings true/false/yes/no/1/0.

    ``--data_consistency false`` reaches the config as the string ``"false"``, which ``bool()`` reads as True.

    Raises:
        ValueError: any other value (names the option).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", "none", "null"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")
