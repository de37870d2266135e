"""``python -m custom.tools.datalist``: build or validate a data list (:mod:`custom.data.datalist`), also for the
authors' released data set read in place (``--layout reference``, :mod:`custom.data.reference_layout`)::

    python -m custom.tools.datalist build --root DIR --output DIR/datalist.json [--settings_dir bundle/configs/modality]
    python -m custom.tools.datalist validate --datalist DIR/datalist.json
    python -m custom.tools.datalist build --layout reference --root DIR --output DIR/datalist.json
    python -m custom.tools.datalist validate --layout reference --datalist DIR/datalist.json [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from custom.data.datalist import build_datalist, validate_datalist
from custom.data.reference_layout import build_reference_datalist, validate_reference_datalist
from custom.settings import load_modality_settings

__all__ = ["main"]

_LAYOUT_HELP = "folders: root/<MODALITY>/[<split>/]{image,label}; reference: the authors' released data set"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``build`` a data list from a folder tree, or ``validate`` one.

    Returns:
        0 (a data problem raises ValueError, printed by the module's entry point without a traceback).
    """
    parser = argparse.ArgumentParser(
        prog="python -m custom.tools.datalist", description="Build or validate a data list (see custom.data.datalist)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build datalist.json from root/<MODALITY>/[<split>/]{image,label}/<case>")
    b.add_argument("--root", required=True)
    b.add_argument("--layout", choices=("folders", "reference"), default="folders", help=_LAYOUT_HELP)
    b.add_argument("--output", required=True)
    b.add_argument(
        "--settings_dir", default=None, help="modality json folder (e.g. BUNDLE/configs/modality), for task names"
    )
    b.add_argument("--val_fraction", type=float, default=0.1)
    b.add_argument("--test_fraction", type=float, default=0.1)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--allow_clean_only", action="store_true")
    b.add_argument("--no_validate", action="store_true")
    v = sub.add_parser("validate", help="check files, partners, shapes, modalities, finiteness")
    v.add_argument("--datalist", required=True)
    v.add_argument("--base_dir", default=None)
    v.add_argument("--settings_dir", default=None)
    v.add_argument("--headers_only", action="store_true")
    v.add_argument("--pet_units", default=None, help="declare PET units (SUV) when the tags cannot give SUV")
    v.add_argument("--layout", choices=("folders", "reference"), default="folders", help=_LAYOUT_HELP)
    v.add_argument("--root", default=None, help="reference layout: tree to re-check (default: the datalist's folder)")
    args = parser.parse_args(argv)
    settings = load_modality_settings(args.settings_dir) if args.settings_dir else None
    if args.command == "build" and args.layout == "reference":
        out = build_reference_datalist(args.root, args.output, settings, validate=not args.no_validate)
        print(f"wrote {args.output}: " + ", ".join(f"{k} {len(v)}" for k, v in out.items()))
    elif args.command == "validate" and args.layout == "reference":
        n = validate_reference_datalist(args.datalist, args.root, settings, check_content=not args.headers_only)
        print(f"{args.datalist}: {n} items OK")
    elif args.command == "build":
        out = build_datalist(
            args.root,
            args.output,
            settings,
            args.val_fraction,
            args.test_fraction,
            args.seed,
            args.allow_clean_only,
            validate=not args.no_validate,
        )
        print(f"wrote {args.output}: " + ", ".join(f"{k} {len(v)}" for k, v in out.items()))
    else:
        n = validate_datalist(
            args.datalist, args.base_dir, settings, check_content=not args.headers_only, pet_units=args.pet_units
        )
        print(f"{args.datalist}: {n} items OK")
    return 0


def _cli() -> int:
    """Entry point: data errors (ValueError, one line per problem naming the file) are printed without a
    traceback and give exit status 1."""
    try:
        return main()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(_cli())
