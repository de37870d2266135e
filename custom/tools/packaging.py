"""Build a self-contained, shareable zip of the bundle.

``python -m custom.tools.packaging`` writes ``dist/<name>_v<version>.zip`` (the model zoo's name of a release zip) with
one top folder ``<name>`` (:data:`BUNDLE_NAME`, the bundle's model-zoo name) holding ``bundle/`` and the ``custom``
package copied into the bundle root (``<name>/custom``). ``python -m monai.bundle run`` puts the bundle root on ``sys.path``
(``ConfigWorkflow.run``), and running from the unzipped folder puts it there from the start (``sys.path[0]`` is
the working directory), so ``custom.*`` targets resolve without installing anything but the packages listed in
``configs/metadata.json``. Run outputs (``models/*.pt`` unless ``--include_weights``, ``eval/``, ``outputs/``),
caches and byte code stay out. ``--include_weights`` needs a bundle folder holding ``models/`` weights: the bundle
installed with the package carries none, so pass ``--bundle_dir`` (e.g. the repository's ``bundle/``); without
weights there it fails naming the folder it looked in. The zip is written to a temporary file in the output folder and renamed into
place, so a reader never sees a half-written archive.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from custom.io import atomic_output
from custom.settings import packaged_bundle

# the bundle shipped as the package's data (custom.settings.packaged_bundle) and the installed package itself
PACKAGE_DIR = Path(os.fspath(resources.files("custom"))).resolve()
PACKAGE_DATA_DIR = "_bundle"  # inside PACKAGE_DIR: the shipped bundle (packed once, as the bundle tree)
BUNDLE_NAME = "tat_ct_pet_mri_restoration"
"""The bundle's model-zoo name (its folder under the zoo's ``models/``): method, data and task, snake_case."""

# relative to the bundle root; run outputs and local state
EXCLUDE_DIRS = {"eval", "outputs", "dist", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
EXCLUDE_FILES = ["*.pyc", "*.pyo", "*.tmp", "*.part", ".DS_Store", "*.swp", "events.out.tfevents.*"]
WEIGHT_PATTERNS = ["*.pt", "*.pth", "*.ts", "*.onnx", "*.pt2", "*.ckpt"]
DESCRIPTION = "Build a self-contained, shareable zip of the bundle (configs, docs and the custom package)."
# a zip entry's date must be >= 1980; a fixed stamp keeps archives of the same tree identical
_ZIP_DATE = (2025, 1, 1, 0, 0, 0)


def _is_weight(rel: str) -> bool:
    """Whether a path relative to the bundle root is a weights file under ``models/``."""
    parts = rel.split("/")
    return parts[0] == "models" and any(fnmatch.fnmatch(parts[-1], p) for p in WEIGHT_PATTERNS)


def _walk(root: Path, include_weights: bool) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if any(fnmatch.fnmatch(name, p) for p in EXCLUDE_FILES):
                continue
            if not include_weights and _is_weight((rel_dir / name).as_posix()):
                continue
            yield Path(dirpath) / name


def bundle_entries(bundle_dir: Path, package_dir: Path, prefix: str, include_weights: bool) -> list[tuple[Path, str]]:
    """(source file, archive name) pairs: the bundle tree, then the ``custom`` package under ``<prefix>/custom``."""
    entries: list[tuple[Path, str]] = []
    for f in _walk(bundle_dir, include_weights):
        rel = f.relative_to(bundle_dir).as_posix()
        if rel.split("/")[0] == "custom":  # a stale copy inside the bundle: the package copy below wins
            continue
        entries.append((f, f"{prefix}/{rel}"))
    for f in _walk(package_dir, include_weights=True):
        if f.relative_to(package_dir).parts[0] == PACKAGE_DATA_DIR:  # the shipped bundle, packed above already
            continue
        entries.append((f, f"{prefix}/custom/{f.relative_to(package_dir).as_posix()}"))
    names = [n for _, n in entries]
    if len(set(names)) != len(names):
        raise RuntimeError("duplicate archive names")
    return entries


def check_bundle(bundle_dir: Path) -> dict:
    """Minimal structure check (MONAI Bundle Specification): required files present, metadata version in changelog."""
    required = ["configs/metadata.json", "LICENSE"]
    missing = [r for r in required if not (bundle_dir / r).is_file()]
    if missing:
        raise FileNotFoundError(f"bundle {bundle_dir} lacks required file(s): {missing}")
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    if meta.get("version") not in meta.get("changelog", {}):
        raise ValueError(f"metadata version {meta.get('version')!r} is not a key of its changelog")
    return meta


def build_archive(
    output: str | os.PathLike,
    bundle_dir: str | os.PathLike | None = None,
    package_dir: str | os.PathLike = PACKAGE_DIR,
    name: str | None = None,
    include_weights: bool = False,
) -> Path:
    """Write the zip atomically to ``output`` and return its path.

    Args:
        output: the zip to write.
        bundle_dir: the bundle folder (default: the one shipped with the package, :func:`custom.settings.packaged_bundle`).
        package_dir: the ``custom`` package copied into the bundle root.
        name: the top folder of every entry (the layout of model-zoo bundle zips); default :data:`BUNDLE_NAME`.
        include_weights: also pack ``models/*.pt|*.ts|*.onnx|*.pt2``.

    Returns:
        ``output``.

    Raises:
        FileNotFoundError, ValueError: the bundle lacks a required file or its version is not in the changelog, or
            ``include_weights`` and ``bundle_dir/models`` holds no weights (the message names the folder).
    """
    bundle_dir = packaged_bundle() if bundle_dir is None else Path(bundle_dir)
    package_dir, output = Path(package_dir), Path(output)
    check_bundle(bundle_dir)
    prefix = name or BUNDLE_NAME
    entries = bundle_entries(bundle_dir, package_dir, prefix, include_weights)
    if include_weights and not any(_is_weight(arcname.split("/", 1)[1]) for _, arcname in entries):
        raise FileNotFoundError(
            f"{bundle_dir / 'models'}: no weights ({', '.join(WEIGHT_PATTERNS)}) to include; pass --bundle_dir with "
            "the bundle folder holding models/ (the bundle installed with the package carries no weights)."
        )
    with atomic_output(output) as tmp:  # temporary name, fsync, rename: never a partial zip under ``output``
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for src, arcname in entries:
                info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (0o644 & 0xFFFF) << 16
                zf.writestr(info, src.read_bytes())
        with zipfile.ZipFile(tmp) as zf:  # re-read before publishing
            bad = zf.testzip()
            if bad is not None:
                raise OSError(f"corrupt entry {bad} in {tmp}")
    return output


def main(argv: list[str] | None = None) -> int:
    """``python -m custom.tools.packaging``: write the bundle zip.

    Returns:
        0 on success, 1 (message on stderr) when the bundle is unusable or ``--include_weights`` finds no weights.
    """
    parser = argparse.ArgumentParser(prog="python -m custom.tools.packaging", description=DESCRIPTION)
    parser.add_argument("--output", default=None, help="zip to write (default: dist/<name>_v<version>.zip)")
    parser.add_argument("--bundle_dir", default=None, help="bundle folder (default: the one shipped with the package)")
    parser.add_argument("--name", default=BUNDLE_NAME, help=f"top folder inside the zip (default: {BUNDLE_NAME})")
    parser.add_argument(
        "--include_weights",
        action="store_true",
        help="also pack BUNDLE_DIR/models/*.pt|*.ts|*.onnx (the installed package's bundle has none: pass --bundle_dir)",
    )
    args = parser.parse_args(argv)
    output = args.output
    try:
        if output is None:
            version = check_bundle(packaged_bundle() if args.bundle_dir is None else Path(args.bundle_dir))["version"]
            output = str(Path.cwd() / "dist" / f"{args.name}_v{version}.zip")
        out = build_archive(output, args.bundle_dir, name=args.name, include_weights=args.include_weights)
    except (ValueError, OSError) as e:
        print(f"packaging failed: {e}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(out) as zf:
        n = len(zf.namelist())
    print(f"wrote {out} ({n} files, {out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
