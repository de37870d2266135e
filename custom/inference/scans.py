"""Find the scans to restore: NIfTI files and DICOM series under a folder, or the items of a data list.

Every NIfTI file (``.nii``, ``.nii.gz``) and every DICOM series (the DICOM files of one folder that share a
``SeriesInstanceUID``; a single DICOM file is a one-slice series) is one scan. Each scan's output mirrors
its path relative to ``dataset_dir`` under ``output_dir`` (a DICOM series folder -> a folder of derived
files of the same names; a folder holding several series -> one sub-folder per series).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pydicom

__all__ = ["NIFTI_SUFFIXES", "find_scans", "read_dicom_headers"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SKIP_NAMES = ("DICOMDIR",)


def _is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def _looks_dicom(path: str) -> bool:
    if path.lower().endswith((".dcm", ".dicom", ".ima")):
        return True
    if _is_nifti(path) or os.path.basename(path).startswith(".") or os.path.basename(path) in _SKIP_NAMES:
        return False
    try:
        return bool(pydicom.misc.is_dicom(path))
    except OSError:
        return False


def read_dicom_headers(files: Sequence[str]) -> dict[str, list[str]]:
    """Group DICOM files by ``SeriesInstanceUID`` (headers only).

    Args:
        files: DICOM file paths.

    Returns:
        series uid -> sorted file paths.

    Raises:
        ValueError: a file is not readable DICOM (the message names it).
    """
    groups: dict[str, list[str]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types for broken files
            raise ValueError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e}).") from e
        groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append(path)
    return {uid: sorted(paths) for uid, paths in groups.items()}


def _output_for(rel: str, output_dir: str) -> str:
    return os.path.join(output_dir, rel)


def _scan_folder(dataset_dir: str, output_dir: str, modality: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    out_real = os.path.realpath(output_dir)
    for root, dirs, files in os.walk(dataset_dir):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) != out_real
        )
        rel_root = os.path.relpath(root, dataset_dir)
        paths = [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
        for path in paths:
            if _is_nifti(path):
                rel = os.path.relpath(path, dataset_dir)
                items.append({"image": path, "kind": "nifti", "output": _output_for(rel, output_dir), "name": rel})
        dicoms = [p for p in paths if _looks_dicom(p)]
        if not dicoms:
            continue
        if rel_root == ".":  # DICOM files directly in dataset_dir: one scan per file
            for path in dicoms:
                rel = os.path.basename(path)
                items.append(
                    {
                        "image": path,
                        "kind": "dicom",
                        "files": [path],
                        "output": _output_for(rel, output_dir),
                        "name": rel,
                    }
                )
            continue
        try:
            groups = read_dicom_headers(dicoms)
        except ValueError as e:  # reported as a failed scan, the other scans still run
            items.append(
                {
                    "image": root,
                    "kind": "dicom",
                    "files": dicoms,
                    "error": str(e),
                    "output": _output_for(rel_root, output_dir),
                    "name": rel_root,
                }
            )
            continue
        for uid, group in sorted(groups.items()):
            rel = rel_root if len(groups) == 1 else os.path.join(rel_root, uid or "unknown_series")
            items.append(
                {
                    "image": root,
                    "kind": "dicom",
                    "files": group,
                    "series_uid": uid,
                    "output": _output_for(rel, output_dir),
                    "name": rel,
                }
            )
    for item in items:
        item.setdefault("modality", modality)
        item["source"] = item["image"]
    return items


def _scan_datalist(
    datalist: str, dataset_dir: str, output_dir: str, modality: str | None, split: str
) -> list[dict[str, Any]]:
    try:
        with open(datalist, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{datalist}: unreadable data list ({e}).") from e
    entries = raw if isinstance(raw, list) else raw.get(split)
    if not isinstance(entries, list):
        raise ValueError(f"{datalist}: expected a list of items or a '{split}' split, got keys {sorted(raw)}.")
    base = dataset_dir or os.path.dirname(os.path.abspath(datalist))
    items: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        entry = {"image": entry} if isinstance(entry, str) else dict(entry)
        if "image" not in entry:
            raise ValueError(f"{datalist}: item {i} has no 'image'.")
        rel = os.path.normpath(entry["image"])
        path = rel if os.path.isabs(rel) else os.path.join(base, rel)
        rel = os.path.basename(rel) if os.path.isabs(rel) else rel
        kind = "nifti" if _is_nifti(path) else "dicom"
        item = {
            "image": path,
            "kind": kind,
            "output": _output_for(rel, output_dir),
            "name": rel,
            "modality": entry.get("modality") or modality,
        }
        item["source"] = path
        if kind == "dicom":
            files = (
                [os.path.join(path, f) for f in sorted(os.listdir(path)) if _looks_dicom(os.path.join(path, f))]
                if os.path.isdir(path)
                else [path]
            )
            item["files"] = files
        items.append(item)
    return items


def find_scans(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    modality: str | None = None,
    split: str = "test",
) -> list[dict[str, Any]]:
    """List the scans to restore, with their output paths.

    Args:
        dataset_dir: folder searched recursively (``output_dir`` is skipped if it lies inside); with a data list,
            the base of its relative paths.
        output_dir: where the restored scans go; must not be ``dataset_dir``.
        datalist: optional json: a list of items (``{"image": path, "modality": ...}`` or plain paths) or a dict
            with a ``split`` list (the training data list format; only ``image`` is used).
        modality: modality used when an item has none (``None``: the DICOM ``Modality`` tag decides).
        split: split read from a dict data list.

    Returns:
        items ``{"image", "source" (= image, kept after loading), "kind" ("nifti"/"dicom"), "output", "name",
        "modality", ["files", "series_uid"]}``.

    Raises:
        ValueError: missing folder, ``output_dir`` equal to ``dataset_dir``, unreadable data list, or no scan found.
    """
    dataset_dir, output_dir = os.fspath(dataset_dir or ""), os.fspath(output_dir)
    if datalist:
        items = _scan_datalist(os.fspath(datalist), dataset_dir, output_dir, modality, split)
    else:
        if not os.path.isdir(dataset_dir):
            raise ValueError(f"{dataset_dir}: dataset_dir is not a folder.")
        if os.path.realpath(dataset_dir) == os.path.realpath(output_dir):
            raise ValueError(f"{output_dir}: output_dir must differ from dataset_dir (inputs are never overwritten).")
        items = _scan_folder(dataset_dir, output_dir, modality)
    if not items:
        raise ValueError(f"{datalist or dataset_dir}: no NIfTI file or DICOM series found.")
    inputs = {os.path.realpath(f) for item in items for f in item.get("files", [item["image"]])}
    for item in items:
        if os.path.realpath(item["output"]) in inputs or os.path.realpath(item["output"]) == os.path.realpath(
            item["image"]
        ):
            raise ValueError(f"{item['output']}: output path is an input file; choose another output_dir.")
    return items
