"""Find the scans to restore: NIfTI files and DICOM series under a folder, or the items of a data list.

Every NIfTI file (``.nii``, ``.nii.gz``) and every DICOM series (the DICOM files of one folder that share a
``SeriesInstanceUID``; a single DICOM file is a one-slice series) is one scan. Each scan's output mirrors
its path relative to ``dataset_dir`` under ``output_dir`` (a DICOM series folder -> a folder of derived
files of the same names; a folder holding several series -> one sub-folder per series).

Symbolic links to files and to series folders are followed (``os.walk(followlinks=True)``), with a loop guard:
a real folder or file reached a second time (a link loop, or two links to one target) is listed once as
``skip``. Every other entry found is listed too, so that it appears in ``inference_report.json``: hidden files
and folders, ``DICOMDIR`` and files that are neither NIfTI nor DICOM get ``skip`` (the reason); a broken link
gets ``error``. DICOM sniffing and headers go through :mod:`custom.data.readers` (read once, cached).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from custom.data.readers import is_nifti, is_series_candidate, read_dicom_header
from custom.inference.difference import difference_path
from custom.settings import as_flag

__all__ = ["NIFTI_SUFFIXES", "find_scans", "read_dicom_headers"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SKIP_NAMES = ("DICOMDIR",)


def _is_nifti(path: str) -> bool:
    return is_nifti(path)


def _looks_dicom(path: str) -> bool:
    return is_series_candidate(path)


def read_dicom_headers(files: Sequence[str]) -> dict[str, list[str]]:
    """Group DICOM files by ``SeriesInstanceUID`` (headers only, read once and cached for the reader).

    Args:
        files: DICOM file paths.

    Returns:
        series uid -> sorted file paths.

    Raises:
        ValueError: a file is not readable DICOM (the message names it).
    """
    groups: dict[str, list[str]] = {}
    for path in files:
        ds = read_dicom_header(path)
        groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "") or ""), []).append(path)
    return {uid: sorted(paths) for uid, paths in groups.items()}


def _output_for(rel: str, output_dir: str) -> str:
    return os.path.join(output_dir, rel)


def _not_a_scan(path: str, rel: str, reason: str, failed: bool = False) -> dict[str, Any]:
    """A report entry for an input found that is not restored: ``skip`` (reason) or ``error`` (failed)."""
    return {"image": path, "kind": "other", "output": "", "name": rel, ("error" if failed else "skip"): reason}


def _file_entry(path: str, dataset_dir: str, seen_files: dict[str, str]) -> tuple[str, dict[str, Any] | None]:
    """Classify one file found: ``("nifti"|"dicom", None)`` or ``("", report entry)`` for anything else."""
    rel = os.path.relpath(path, dataset_dir)
    name = os.path.basename(path)
    if not os.path.exists(path):
        return "", _not_a_scan(path, rel, f"{path}: broken symbolic link (its target does not exist).", failed=True)
    real = os.path.realpath(path)
    if real in seen_files:
        return "", _not_a_scan(path, rel, f"same file as {seen_files[real]} (symbolic link); read once, there.")
    seen_files[real] = path
    if name.startswith("."):
        return "", _not_a_scan(path, rel, "hidden file, not an input.")
    if name in _SKIP_NAMES:
        return "", _not_a_scan(path, rel, "DICOMDIR index file; the series' files are read instead.")
    if _is_nifti(path):
        return "nifti", None
    if _looks_dicom(path):
        return "dicom", None
    return "", _not_a_scan(path, rel, "not a NIfTI file or a DICOM file (unsupported format).")


def _scan_folder(dataset_dir: str, output_dir: str, modality: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    out_real = os.path.realpath(output_dir)
    seen_dirs = {os.path.realpath(dataset_dir): dataset_dir}  # loop guard for followed symbolic links
    seen_files: dict[str, str] = {}

    def unreadable(err: OSError) -> None:  # a folder os.walk cannot list is reported, not dropped
        folder = os.fspath(err.filename or dataset_dir)
        rel = os.path.relpath(folder, dataset_dir)
        reason = f"{folder}: unreadable folder, its contents were not searched ({err.strerror or err})."
        items.append(_not_a_scan(folder, rel, reason, failed=True))

    for root, dirs, files in os.walk(dataset_dir, onerror=unreadable, followlinks=True):
        keep = []
        for d in sorted(dirs):
            full = os.path.join(root, d)
            real = os.path.realpath(full)
            if real == out_real or real.startswith(out_real + os.sep):
                continue  # the outputs of this run, not inputs
            rel = os.path.relpath(full, dataset_dir)
            if d.startswith("."):
                items.append(_not_a_scan(full, rel, "hidden folder, not searched."))
            elif real in seen_dirs:
                items.append(
                    _not_a_scan(full, rel, f"same folder as {seen_dirs[real]} (symbolic link loop or second link).")
                )
            else:
                seen_dirs[real] = full
                keep.append(d)
        dirs[:] = keep
        rel_root = os.path.relpath(root, dataset_dir)
        dicoms = []
        for path in (os.path.join(root, f) for f in sorted(files)):
            if os.path.realpath(path) == os.path.realpath(os.path.join(output_dir, "inference_report.json")):
                continue
            kind, entry = _file_entry(path, dataset_dir, seen_files)
            if entry is not None:
                items.append(entry)
            elif kind == "nifti":
                rel = os.path.relpath(path, dataset_dir)
                items.append({"image": path, "kind": "nifti", "output": _output_for(rel, output_dir), "name": rel})
            else:
                dicoms.append(path)
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
        except ValueError as e:  # reported as a failed scan, the other scans still run (the validator refuses it too)
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
    entries = raw if isinstance(raw, list) else raw.get(split) if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        got = f"keys {sorted(raw)}" if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise ValueError(f"{datalist}: expected a list of items or a '{split}' split, got {got}.")
    base = dataset_dir or os.path.dirname(os.path.abspath(datalist))
    items: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        entry = {"image": entry} if isinstance(entry, str) else dict(entry)
        if "image" not in entry:
            raise ValueError(f"{datalist}: item {i} has no 'image'.")
        rel = os.path.normpath(entry["image"])
        path = rel if os.path.isabs(rel) else os.path.join(base, rel)
        # the output mirrors the path relative to the base under output_dir (an absolute path inside the base too);
        # a path that is the base or lies outside it keeps only its own name there
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
        if rel.split(os.sep)[0] in (os.curdir, os.pardir):
            rel = os.path.basename(os.path.abspath(path))
        if not rel:
            raise ValueError(f"{datalist}: item {i} ({entry['image']!r}) has no file or folder name for its output.")
        kind = "nifti" if _is_nifti(path) else "dicom"
        item = {
            "image": path,
            "kind": kind,
            "output": _output_for(rel, output_dir),
            "name": rel,
            "modality": entry.get("modality") or modality,
        }
        item["source"] = path
        if kind == "dicom" and not os.path.isdir(path):
            item["files"] = [path]  # a series folder is read as one (custom.data.readers.dicom_series)
        items.append(item)
    return items


def find_scans(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    modality: str | None = None,
    split: str = "test",
    difference_output: Any = False,
) -> list[dict[str, Any]]:
    """List the scans to restore, with their output paths.

    Args:
        dataset_dir: folder searched recursively (``output_dir`` is skipped if it lies inside); with a data list,
            the base of its relative paths (an item's output mirrors its path relative to the base under
            ``output_dir``; a path outside the base, or the base itself, keeps only its own name there).
        output_dir: where the restored scans go; must not be ``dataset_dir``.
        datalist: optional json: a list of items (``{"image": path, "modality": ...}`` or plain paths) or a dict
            with a ``split`` list (the training data list format; only ``image`` is used).
        modality: modality used when an item has none (``None``: the DICOM ``Modality`` tag decides).
        split: split read from a dict data list.
        difference_output: the difference outputs will be written too (inference option ``difference_output``): their
            paths (:func:`custom.inference.difference.difference_path`) may not meet another output or an input.

    Returns:
        items ``{"image", "source" (= image, kept after loading), "kind" ("nifti"/"dicom"), "output", "name",
        "modality", ["files", "series_uid"]}``, and for inputs found that are not scans
        ``{"image", "source", "kind": "other", "output": "", "name", "skip" or "error": reason}``.

    Raises:
        ValueError: missing folder, ``output_dir`` equal to ``dataset_dir``, unreadable data list, no scan found, an
            output path that is an input, or two outputs with one path (a data list's items named alike; with
            ``difference_output``, a scan ``a_difference.nii.gz`` beside ``a.nii.gz``).
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
    scans = [item for item in items if item.get("kind") != "other"]
    if not scans:
        others = f" ({len(items)} other entries found, e.g. {items[0]['image']})" if items else ""
        raise ValueError(f"{datalist or dataset_dir}: no NIfTI file or DICOM series found{others}.")
    outputs = [(item["output"], item) for item in scans]
    if as_flag(difference_output, "difference_output"):
        outputs += [(difference_path(item["output"]), item) for item in scans]
    written: dict[str, str] = {}  # output -> its scan: two outputs written to one path would lose one of them
    for output, item in outputs:
        key = os.path.normcase(os.path.abspath(output))
        if key in written:
            raise ValueError(
                f"{output}: two outputs would be written here (of {written[key]} and of {item['image']});"
                " give the scans distinct names (paths under dataset_dir)."
            )
        written[key] = item["image"]
    inputs = {os.path.realpath(f) for item in scans for f in item.get("files", [item["image"]])}
    for output, item in outputs:
        if os.path.realpath(output) in inputs or os.path.realpath(output) == os.path.realpath(item["image"]):
            raise ValueError(f"{output}: output path is an input file; choose another output_dir.")
    return items
