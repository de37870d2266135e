"""Compute and store the task statistics of an existing checkpoint (the command line of
:mod:`custom.handlers.task_statistics`, which does the same at the end of training)::

    python -m custom.tools.task_statistics --checkpoint models/model.pt --datalist DATA/datalist.json \\
        [--bundle_root BUNDLE] [--config_file "['configs/inference.json', 'overlay.json']"] [--percentile 99] \\
        [--model_key model]

``--bundle_root`` defaults to the bundle shipped with the package (:func:`custom.settings.packaged_bundle`);
``--config_file`` (the config defining ``network_def``) and ``--modality_dir`` default to its
``configs/inference.json`` and ``configs/modality``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from custom.handlers.task_statistics import checkpoint_network, compute_task_statistics, store_task_statistics
from custom.settings import load_modality_settings, packaged_bundle
from monai.bundle import ConfigParser

__all__ = ["DESCRIPTION", "main"]

DESCRIPTION = "Compute the task statistics of an existing checkpoint and store them in it (updated in place)."


def _config_files(text: str) -> list[str]:
    """One config file, or a JSON list of them (single quotes accepted, as the bundle CLI writes them)."""
    text = text.strip()
    if text.startswith("["):
        return [str(f) for f in json.loads(text.replace("'", '"'))]
    return [text]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m custom.tools.task_statistics``: store task statistics in an existing checkpoint.

    Returns:
        0 on success, 1 (message on stderr) when the checkpoint, data list, configs or settings are unusable.
    """
    parser = argparse.ArgumentParser(prog="python -m custom.tools.task_statistics", description=DESCRIPTION)
    parser.add_argument("--checkpoint", required=True, help="checkpoint with the network's weights (updated in place)")
    parser.add_argument("--datalist", required=True, help="data list with training and validation splits")
    parser.add_argument("--bundle_root", default=None, help="bundle folder (default: the one shipped with the package)")
    parser.add_argument(
        "--config_file",
        default=None,
        help="config(s) defining network_def (a JSON list layers several, e.g. inference.json + the demo overlay); "
        "default: BUNDLE_ROOT/configs/inference.json",
    )
    parser.add_argument("--modality_dir", default=None, help="default: BUNDLE_ROOT/configs/modality")
    parser.add_argument("--percentile", type=float, default=99.0)
    parser.add_argument(
        "--model_key", default="model", help="key of the weights in a dict checkpoint (as the handler's model_key)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        bundle = None
        if args.config_file is None or args.modality_dir is None:
            bundle = str(packaged_bundle()) if args.bundle_root is None else args.bundle_root
        configs = args.config_file or os.path.join(bundle, "configs", "inference.json")
        config = ConfigParser()
        config.read_config(_config_files(configs))
        network = config.get_parsed_content("network_def")
        net = checkpoint_network(network, args.checkpoint, args.model_key)
        settings = load_modality_settings(args.modality_dir or os.path.join(bundle, "configs", "modality"))
        stats = compute_task_statistics(net, args.datalist, settings, args.percentile)
        store_task_statistics(args.checkpoint, stats, args.model_key)
    except (ValueError, OSError) as e:
        print(f"task statistics failed: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.checkpoint}: task statistics stored (tasks {stats['tasks']}, training slices {stats['count']}, "
        f"validation slices {stats['validation_count']}, threshold {stats['threshold']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
