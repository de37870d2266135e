"""Data list (MONAI's JSON datalist style) for paired restoration data: build from a folder tree, validate.

Data set layout (one folder per modality, then ``image`` = degraded input, ``label`` = clean target;
partners share the same case name; a case is a NIfTI file or a DICOM series folder)::

    root/
      CT/                          # CT, PET or MRI (case-insensitive; DICOM spellings MR, PT accepted)
        image/case01.nii.gz        # degraded (e.g. quarter dose)
        label/case01.nii.gz        # clean (full dose), same shape
        image/case02/  label/case02/     # DICOM series folders
      PET/ ...
      MRI/ ...

Optionally a split level fixes the split: ``root/CT/training/{image,label}/...`` (also ``validation``,
``test``). Without it, cases are split at random (by case, i.e. by volume) with ``val_fraction`` and
``test_fraction``. The written json is::

    {"training": [{"image": "CT/image/case01.nii.gz", "label": "CT/label/case01.nii.gz",
                   "modality": "CT", "task": "low_dose_ct", "source": "..."}, ...],
     "validation": [...], "test": [...]}

Paths are relative to the json's folder. Load a split with :func:`load_datalist` (``monai.data.
load_decathlon_datalist`` plus a fix: MONAI also rewrites any other string value that names an existing
path, e.g. ``"modality": "CT"`` next to a ``CT`` folder). Command line (:mod:`custom.tools.datalist`)::

    python -m custom.tools.datalist build --root DIR --output DIR/datalist.json [--settings_dir bundle/configs/modality]
    python -m custom.tools.datalist validate --datalist DIR/datalist.json

The authors' released data set (``root/{PET,CT,MRI}/{train,validation,test}/{LQ,HQ}/``, pickled ``.bin`` training
patches, 2D ``.nii`` slices) is read in place with ``--layout reference`` (:mod:`custom.data.reference_layout`)::

    python -m custom.tools.datalist build --layout reference --root DIR --output DIR/datalist.json
    python -m custom.tools.datalist validate --layout reference --datalist DIR/datalist.json [--root DIR]
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from custom.data.readers import DICOM_TO_MODALITY, load_image
from custom.data.slicing import spatial_shape
from custom.io import write_json_atomic
from custom.settings import MODALITIES, canonical_modality
from monai.data import load_decathlon_datalist

__all__ = ["SPLITS", "PATH_KEYS", "build_datalist", "item_name", "key_name", "load_datalist", "validate_datalist"]

SPLITS = ("training", "validation", "test")
PATH_KEYS = ("image", "label")
_SUFFIXES = (".nii.gz", ".nii", ".dcm")


def _file_of(value: Any) -> str | None:
    """The file an item's value names: a path (str or path-like), a list of paths (a DICOM series: its folder, as
    :func:`custom.data.load_image` names it) or a loaded image whose metadata names its file (``filename_or_obj``);
    None for anything else (never the text of an image's values)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, os.PathLike)):
        first = os.fspath(value[0])
        value = os.path.dirname(first) or first
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    meta = getattr(value, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return os.fspath(name) if isinstance(name, (str, os.PathLike)) and os.fspath(name) else None


def item_name(item: Mapping[Any, Any], keys: Sequence[Any] = ("image",)) -> str:
    """The file an item comes from, for messages and logs.

    Args:
        item: a data-list or inference item, before or after loading.
        keys: keys to look at, in order, when the item has no ``"source"``.

    Returns:
        ``item["source"]``; else the file named by the first of ``keys`` that names one (a path, a series' folder,
        a loaded image's ``filename_or_obj``); else ``"?"``.
    """
    if item.get("source") is not None:
        return str(item["source"])
    return next((name for name in map(_file_of, (item.get(k) for k in keys)) if name), "?")


def key_name(item: Mapping[Any, Any], key: Any) -> str:
    """The file ``item[key]`` comes from (as :func:`item_name`, that key only, no ``"source"``: the image and the
    label of one item are different files), else ``item key '<key>'``; for messages."""
    return _file_of(item.get(key)) or f"item key '{key}'"


def _case_name(name: str) -> str | None:
    if name.startswith("."):
        return None
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name if "." not in name else None  # folders (DICOM series) have no suffix


def _cases(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        case = _case_name(name)
        if case is not None:
            out[case] = os.path.join(folder, name)
    return out


def _modality_name(folder: str) -> str | None:
    name = DICOM_TO_MODALITY.get(folder.upper())
    return name if name in MODALITIES else None


def _pairs(folder: str, allow_clean_only: bool) -> list[dict[str, str]]:
    image_dir, label_dir = os.path.join(folder, "image"), os.path.join(folder, "label")
    if not os.path.isdir(label_dir):
        raise ValueError(f"{folder}: no 'label' folder (clean targets).")
    labels = _cases(label_dir)
    images = _cases(image_dir) if os.path.isdir(image_dir) else {}
    if not images and not allow_clean_only:
        raise ValueError(f"{image_dir}: no degraded inputs; pass allow_clean_only=True to simulate them.")
    pairs = []
    for case, label in labels.items():
        if images and case not in images:
            raise ValueError(f"{label}: missing partner, no '{case}' in {image_dir}.")
        pairs.append({"image": images[case], "label": label} if images else {"label": label})
    for case, image in images.items():
        if case not in labels:
            raise ValueError(f"{image}: missing partner, no '{case}' in {label_dir}.")
    return pairs


def build_datalist(
    root: str | os.PathLike,
    output: str | os.PathLike | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    allow_clean_only: bool = False,
    validate: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Build a data list from the folder layout described in the module docstring.

    Args:
        root: data set root.
        output: json file to write atomically (paths made relative to its folder); None to only return.
        settings: modality settings (:func:`custom.settings.load_modality_settings`), used for the task names;
            without it the task is the lower-case modality.
        val_fraction: fraction of cases (volumes) per modality for validation when no split folders exist.
        test_fraction: same for test.
        seed: seed of the random split.
        allow_clean_only: accept modalities with clean targets only (items without ``image``, to be
            degraded by a simulator transform).
        validate: run :func:`validate_datalist` on the result (reads every image once).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths (relative ones in the file).

    Raises:
        ValueError: no modality folder, missing partner, or a validation error (the message names the file); a
            fraction outside [0, 1], fractions summing to more than 1, or a modality whose rounded split sizes
            leave it no training case although the fractions sum to less than 1.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise ValueError(f"{root}: data set root not found.")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction of the cases in [0, 1], got {value!r}.")
    if val_fraction + test_fraction > 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} is more than all the cases (at most 1)."
        )
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    rng = np.random.default_rng(seed)
    found = False
    for folder in sorted(os.listdir(root)):
        modality = _modality_name(folder)
        path = os.path.join(root, folder)
        if modality is None or not os.path.isdir(path):
            continue
        found = True
        task = str(settings[modality]["task"]) if settings and modality in settings else modality.lower()
        extra = {"modality": modality, "task": task}
        split_dirs = [s for s in SPLITS if os.path.isdir(os.path.join(path, s))]
        if split_dirs:
            for split in split_dirs:
                pairs = _pairs(os.path.join(path, split), allow_clean_only)
                out[split].extend({**p, **extra, "source": os.path.basename(p["label"])} for p in pairs)
            continue
        pairs = _pairs(path, allow_clean_only)
        order = rng.permutation(len(pairs))
        n_test = int(round(test_fraction * len(pairs)))
        n_val = int(round(val_fraction * len(pairs)))
        if pairs and n_test + n_val >= len(pairs) and val_fraction + test_fraction < 1.0:
            raise ValueError(
                f"{path}: {len(pairs)} cases leave none for training with val_fraction {val_fraction} and "
                f"test_fraction {test_fraction} ({n_val} validation, {n_test} test after rounding); lower them or add "
                "cases."
            )
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "validation" if rank < n_test + n_val else "training"
            out[split].append({**pairs[i], **extra, "source": os.path.basename(pairs[i]["label"])})
    if not found:
        raise ValueError(f"{root}: no modality folder (expected some of {MODALITIES}).")
    if validate:
        validate_datalist(out, settings=settings)
    if output is not None:
        base = os.path.dirname(os.path.abspath(os.fspath(output)))
        rel = {
            s: [
                {k: (os.path.relpath(v, base) if k in ("image", "label") else v) for k, v in item.items()}
                for item in items
            ]
            for s, items in out.items()
        }
        write_json_atomic(output, rel)
    return out


def load_datalist(
    path: str | os.PathLike, split: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Load one split with ``monai.data.load_decathlon_datalist``, keeping non-path values verbatim.

    MONAI joins *any* string value with the base folder when the result exists on disk (so a modality
    ``"CT"`` becomes ``"/data/CT"`` if the json sits next to a ``CT`` folder); this wrapper restores the
    values of every key other than ``image`` and ``label``.

    Args:
        path: the datalist json.
        split: ``training``, ``validation`` or ``test``.
        base_dir: folder for relative paths (default: the json's folder).

    Returns:
        list of item dicts with absolute ``image``/``label`` paths.

    Raises:
        ValueError: unreadable file or missing split.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable data list ({e}).") from e
    if split not in raw:
        raise ValueError(f"{path}: no '{split}' split (has {sorted(raw)}).")
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=split, base_dir=base_dir)
    return [{**item, **{k: v for k, v in orig.items() if k not in PATH_KEYS}} for item, orig in zip(items, raw[split])]


def _resolve(path: str, base_dir: str | None) -> str:
    return path if os.path.isabs(path) or base_dir is None else os.path.normpath(os.path.join(base_dir, path))


def validate_datalist(
    datalist: Mapping[str, Sequence[Mapping[str, Any]]] | str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    check_content: bool = True,
    keys: Sequence[str] = ("image", "label"),
    pet_units: str | None = None,
) -> int:
    """Check every item of a data list; collect all problems and raise them together.

    Checks: known modality (``settings`` or CT/PET/MRI), both files present (``image`` may be absent only for
    clean-only items), readable through the one reading layer (:func:`custom.data.load_image`: the same checks
    as training and inference, so a file this accepts inference accepts and vice versa), 2D or 3D, same shape for
    input and target, finite values.

    Args:
        datalist: the dict, or a json file (relative paths resolved against its folder).
        base_dir: folder for relative paths (default: the json's folder).
        settings: modality settings; None accepts CT, PET, MRI.
        check_content: read the voxels (shape, finiteness); False only checks presence and modality.
        keys: image keys of an item.
        pet_units: declared PET units (``"SUV"``) for PET that cannot be converted to SUV, as inference's option.

    Returns:
        the number of items checked.

    Raises:
        ValueError: one line per problem, each naming the file (or the item).
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = os.fspath(datalist)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable data list ({e}).") from e
        base = os.fspath(base_dir) if base_dir is not None else os.path.dirname(os.path.abspath(path))
    else:
        data, base = datalist, (os.fspath(base_dir) if base_dir is not None else None)
    known = {m.upper() for m in (settings or {m: {} for m in MODALITIES})}
    errors: list[str] = []
    count = 0
    for split, items in data.items():
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            count += 1
            where = f"{split}[{i}]"
            files = {k: _resolve(str(item[k]), base) for k in keys if item.get(k)}
            name = files.get("label") or files.get("image") or where
            modality = canonical_modality(item.get("modality")) or str(item.get("modality"))
            if not item.get("modality"):
                errors.append(f"{name}: no 'modality' in the item ({where}; expected one of {sorted(known)}).")
            elif modality.upper() not in known:
                errors.append(f"{name}: unknown modality {item.get('modality')!r} (expected one of {sorted(known)}).")
            if "label" not in files:
                errors.append(f"{where}: no 'label' (clean target) in the item.")
            shapes = {}
            for k, f in files.items():
                if not os.path.exists(f):
                    partner = "missing partner: " if len(files) > 1 else ""
                    errors.append(f"{f}: {partner}file not found ('{k}' of {where}).")
                    continue
                if not check_content:
                    continue
                try:  # load_image refuses NaN / inf and values beyond float32 (custom.data.limits.finite_values)
                    shapes[k] = spatial_shape(load_image(f, pet_units=pet_units).shape, f)
                except ValueError as e:
                    errors.append(str(e))
            if len(set(shapes.values())) > 1:
                errors.append(
                    f"{files.get('image')}: shape mismatch between input {shapes.get('image')} and "
                    f"target {shapes.get('label')} ({files.get('label')})."
                )
    if errors:
        raise ValueError("invalid data list:\n" + "\n".join(errors))
    return count
