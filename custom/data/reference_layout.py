"""The authors' released data set, read in place: data list from its folder tree, and the validation subset.

Layout (the benchmark shared by TAT, AMIR and Restore-RWKV)::

    root/
      PET/ CT/ MRI/                      # the task: its folder name, mapped to the bundle's modality
        train/      LQ/*.bin  HQ/*.bin   # pickled float tensors (1, 256, 256), physical units (custom.data.pickled)
        validation/ LQ/*.nii  HQ/*.nii   # one 2D slice per file, written by SimpleITK
        test/       LQ/*.nii  HQ/*.nii

The HQ (target) file of an LQ (degraded input) file has the same path with the ``LQ`` folder replaced by ``HQ``.
Items are ordered by task folder name, then split, then file name (Python string order), so the list and the
validation subset (:func:`first_per_task`) are the same on every machine; the authors' code lists folders in
unsorted directory order, which differs between file systems. Folder names are matched case-insensitively.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from custom.data.datalist import SPLITS, validate_datalist
from custom.data.readers import DICOM_TO_MODALITY
from custom.io import write_json_atomic
from custom.settings import MODALITIES

__all__ = [
    "REFERENCE_SPLITS",
    "IMAGE_SUFFIXES",
    "scan_reference_layout",
    "build_reference_datalist",
    "validate_reference_datalist",
    "first_per_task",
]

REFERENCE_SPLITS = {"train": "training", "validation": "validation", "test": "test"}  # folder -> data-list split
IMAGE_SUFFIXES = (".bin", ".nii", ".nii.gz")
_LQ, _HQ = "LQ", "HQ"


def _subfolder(parent: str, name: str) -> str | None:
    """The entry of ``parent`` named ``name`` case-insensitively (exact name first), or None."""
    if os.path.isdir(os.path.join(parent, name)):
        return os.path.join(parent, name)
    matches = [e for e in sorted(os.listdir(parent)) if e.lower() == name.lower()]
    return os.path.join(parent, matches[0]) if matches and os.path.isdir(os.path.join(parent, matches[0])) else None


def _images(folder: str, errors: list[str]) -> list[str]:
    """Sorted image file names of ``folder``; other entries (except hidden ones) are reported in ``errors``."""
    names = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        if os.path.isfile(path) and name.lower().endswith(IMAGE_SUFFIXES):
            names.append(name)
        else:
            errors.append(f"{path}: not a {'/'.join(IMAGE_SUFFIXES)} file, unexpected in the released layout.")
    return names


def _problems(error: ValueError) -> list[str]:
    """The problem lines of a :func:`custom.data.validate_datalist` error (its first line is a title)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines


def scan_reference_layout(
    root: str | os.PathLike, settings: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Pair the files of the released layout (module docstring); read no image.

    Args:
        root: data set root holding ``PET``, ``CT`` and/or ``MRI``.
        settings: modality settings (:func:`custom.settings.load_modality_settings`) for the task names; without
            them the task is the lower-case modality.

    Returns:
        (data list ``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths, problems):
        one line per problem, each naming the file or folder (no task folder, a missing or empty split / LQ /
        HQ folder, an LQ file without its HQ partner or the reverse, an unexpected file). Every pair found is
        listed even when there are problems elsewhere.
    """
    root = os.path.abspath(os.fspath(root))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    errors: list[str] = []
    if not os.path.isdir(root):
        return out, [f"{root}: data set root not found."]
    tasks = []
    for folder in sorted(os.listdir(root)):
        modality = DICOM_TO_MODALITY.get(folder.upper())
        if modality in MODALITIES and os.path.isdir(os.path.join(root, folder)):
            tasks.append((folder, modality))
    if not tasks:
        return out, [f"{root}: no task folder (expected some of PET, CT, MRI holding train/validation/test/LQ,HQ)."]
    for folder, modality in tasks:
        task_dir = os.path.join(root, folder)
        task = str(settings[modality]["task"]) if settings and modality in settings else modality.lower()
        for split_folder, split in REFERENCE_SPLITS.items():
            split_dir = _subfolder(task_dir, split_folder)
            if split_dir is None:
                errors.append(
                    f"{os.path.join(task_dir, split_folder)}: folder missing (the released layout has "
                    f"{'/'.join(REFERENCE_SPLITS)} under each task)."
                )
                continue
            lq_dir, hq_dir = _subfolder(split_dir, _LQ), _subfolder(split_dir, _HQ)
            for kind, d in ((_LQ, lq_dir), (_HQ, hq_dir)):
                if d is None:
                    errors.append(
                        f"{os.path.join(split_dir, kind)}: folder missing ({kind} = "
                        f"{'degraded inputs' if kind == _LQ else 'targets'})."
                    )
            if lq_dir is None or hq_dir is None:
                continue
            lq, hq = _images(lq_dir, errors), _images(hq_dir, errors)
            for d, names in ((lq_dir, lq), (hq_dir, hq)):
                if not names:
                    errors.append(f"{d}: empty folder, no {'/'.join(IMAGE_SUFFIXES)} file.")
            hq_set, lq_set = set(hq), set(lq)
            for name in lq:
                if name not in hq_set:
                    errors.append(f"{os.path.join(lq_dir, name)}: missing partner, no {os.path.join(hq_dir, name)}.")
                    continue
                out[split].append(
                    {
                        "image": os.path.join(lq_dir, name),
                        "label": os.path.join(hq_dir, name),
                        "modality": modality,
                        "task": task,
                        "source": name,
                    }
                )
            errors.extend(
                f"{os.path.join(hq_dir, name)}: missing partner, no {os.path.join(lq_dir, name)}."
                for name in hq
                if name not in lq_set
            )
    return out, errors


def build_reference_datalist(
    root: str | os.PathLike,
    output: str | os.PathLike | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    validate: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Data list of the released layout; the files stay where they are.

    Args:
        root: data set root (module docstring).
        output: json file to write atomically (paths relative to its folder); None to only return.
        settings: modality settings, for the task names and the modality check.
        validate: also read every file once (:func:`custom.data.validate_datalist`: readable, safe ``.bin``,
            input and target of one shape, finite values).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}`` with absolute paths.

    Raises:
        ValueError: every layout and content problem at once, one line each naming the file (nothing is
            written then).
    """
    datalist, errors = scan_reference_layout(root, settings)
    if validate and any(datalist.values()):
        try:
            validate_datalist(datalist, settings=settings)
        except ValueError as e:
            errors.extend(_problems(e))
    if errors:
        raise ValueError(f"invalid data set {os.path.abspath(os.fspath(root))}:\n" + "\n".join(errors))
    if output is not None:
        base = os.path.dirname(os.path.abspath(os.fspath(output)))
        write_json_atomic(
            output,
            {
                s: [
                    {k: (os.path.relpath(v, base) if k in ("image", "label") else v) for k, v in i.items()}
                    for i in items
                ]
                for s, items in datalist.items()
            },
        )
    return datalist


def validate_reference_datalist(
    datalist: str | os.PathLike,
    root: str | os.PathLike | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    check_content: bool = True,
) -> int:
    """Check a data list of the released layout and the tree it came from; report every problem at once.

    Args:
        datalist: the json written by :func:`build_reference_datalist`.
        root: the data set root to re-check (:func:`scan_reference_layout`); default: the json's folder.
        settings: modality settings.
        check_content: read every listed file (:func:`custom.data.validate_datalist`).

    Returns:
        the number of items checked.

    Raises:
        ValueError: the layout problems of the tree and the problems of the listed files, one line each.
    """
    path = os.path.abspath(os.fspath(datalist))
    _, errors = scan_reference_layout(root if root is not None else os.path.dirname(path), settings)
    count = 0
    try:
        count = validate_datalist(path, settings=settings, check_content=check_content)
    except ValueError as e:
        errors.extend(_problems(e))
    if errors:
        raise ValueError(f"invalid data list {path}:\n" + "\n".join(errors))
    return count


def first_per_task(
    items: Sequence[Mapping[str, Any]], count: int | None, task_key: str = "task", name_key: str = "image"
) -> list[dict[str, Any]]:
    """The first ``count`` items of each task, by file name (the published validation subset: 16 per task).

    Items are ordered by task, then by the base name of ``item[name_key]`` (``label`` when absent), then by the
    full path, Python string order; the input order does not matter.

    Args:
        items: data-list items (a split), each with ``task_key`` (else ``modality``) and file paths.
        count: files kept per task; None keeps them all (the whole split, in the same order).
        task_key: item key of the task.
        name_key: item key whose file name orders the items.

    Returns:
        new dicts, grouped by task in sorted task order.

    Raises:
        ValueError: ``count`` < 1, or an item without task or file (the message names it).
    """
    if count is not None and int(count) < 1:
        raise ValueError(f"first_per_task: count must be >= 1 or None (whole split), got {count}.")
    keyed = []
    for i, item in enumerate(items):
        task = item.get(task_key) or item.get("modality")
        path = item.get(name_key) or item.get("label")
        if not task or not path:
            raise ValueError(f"item {i} ({dict(item)!s:.200}): needs '{task_key}' and a '{name_key}' file.")
        keyed.append(((str(task), os.path.basename(str(path)), str(path)), dict(item)))
    keyed.sort(key=lambda e: e[0])
    out: list[dict[str, Any]] = []
    taken: dict[str, int] = {}
    for (task, _, _), item in keyed:
        if count is None or taken.get(task, 0) < int(count):
            taken[task] = taken.get(task, 0) + 1
            out.append(item)
    return out
