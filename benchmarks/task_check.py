"""How well the task check knows the tasks: accuracy and false alarms per data-list split, and foreign inputs.

For a checkpoint with task statistics (``TaskStatisticsHandler`` / ``python -m custom.tools.task_statistics``) and
its data list, prints per split (training, validation, test) the slices whose nearest task is their own, the false
alarms (any warning: a mismatch with the declared modality, or a distance above the calibrated threshold) and what
the wrong ones were read as. Slices are read one at a time through the statistics' own path
(:func:`custom.handlers.task_statistics.split_embeddings`, as training's handler reads them) and judged with the
inference check (:func:`custom.inference.task_check.check_scan`). Then foreign inputs, each declared as a task it is
not: scikit-image photographs declared CT, uniform noise declared MRI, Gaussian noise declared CT and, with
``--pet_slice``, a PET slice declared CT; each should get a warning.

    python benchmarks/task_check.py --checkpoint demo_output/models/model.pt \
        --datalist demo_output/data/datalist.json --overrides demo_output/models/demo_inference.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter

import numpy as np
import torch
from custom.handlers.task_statistics import load_task_statistics, split_embeddings, task_embeddings
from custom.inference.restore import Restorer
from custom.inference.task_check import check_scan
from custom.networks.blocks.cpu_paths import cpu_model
from custom.settings import packaged_bundle


def split_table(restorer: Restorer, stats: dict, datalist: str) -> list[dict]:
    """One row per split: slices, right, false alarms, what the wrong ones were read as."""
    rows = []
    for split in ("training", "validation", "test"):
        try:
            embeddings = split_embeddings(restorer.network, datalist, split, restorer.settings)
        except ValueError as e:
            print(f"{split}: {e}", file=sys.stderr)
            continue
        right = alarms = 0
        confused: Counter[str] = Counter()
        for task, z in embeddings.items():
            for row in z:
                predicted, _, warnings = check_scan(row[None], stats, task)
                right += predicted == task
                alarms += bool(warnings)
                if predicted != task:
                    confused[f"{task} read as {predicted}"] += 1
        n = sum(len(z) for z in embeddings.values())
        rows.append({"split": split, "slices": n, "right": right, "false_alarms": alarms, "confused": dict(confused)})
    return rows


def _foreign_images(size: int, pet_slice: str | None, restorer: Restorer) -> list[tuple[str, str, torch.Tensor]]:
    """(name, declared task, (1, 1, size, size) image in [0, 1]) for inputs that are none of the declared tasks."""
    from skimage import data, transform
    from skimage.color import rgb2gray

    def fit(a: np.ndarray) -> torch.Tensor:
        a = transform.resize(a.astype(np.float64), (size, size), anti_aliasing=True)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        return torch.as_tensor(a, dtype=torch.float32)[None, None]

    out = []
    for name in ("camera", "astronaut", "coffee", "brick"):
        image = getattr(data, name)()
        out.append((f"photograph {name}", "CT", fit(rgb2gray(image) if image.ndim == 3 else image)))
    rng = np.random.default_rng(0)
    out.append(("uniform noise", "MRI", fit(rng.uniform(size=(size, size)))))
    out.append(("Gaussian noise", "CT", fit(np.clip(rng.normal(0.5, 0.15, size=(size, size)), 0, 1))))
    if pet_slice:
        from custom.data.readers import load_image
        from custom.inference.restore import normalise

        image = load_image(pet_slice)
        plane = torch.as_tensor(np.asarray(image))[..., image.shape[-1] // 2] if image.ndim == 3 else image
        x = normalise(torch.as_tensor(np.asarray(plane), dtype=torch.float32)[None], "PET", restorer.settings)
        out.append((f"PET slice {pet_slice.rsplit('/', 1)[-1]}", "CT", x.reshape(1, 1, *x.shape[-2:])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Task-check accuracy and false alarms on a data list's splits.")
    parser.add_argument("--checkpoint", required=True, help="model.pt with task statistics")
    parser.add_argument("--datalist", required=True, help="the data list the statistics were computed on")
    parser.add_argument("--bundle_root", default=None, help="bundle folder (default: the package's bundle)")
    parser.add_argument("--overrides", default=None, help="json of config overrides (e.g. demo_inference.json)")
    parser.add_argument("--size", type=int, default=128, help="side of the foreign images")
    parser.add_argument("--pet_slice", default=None, help="a PET scan to declare as CT (foreign-input check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {}
    if args.overrides:
        with open(args.overrides) as f:
            overrides = {k: v for k, v in json.load(f).items() if k != "checkpoint"}
    root = args.bundle_root or str(packaged_bundle())
    restorer = Restorer.from_bundle(root, checkpoint=args.checkpoint, overrides=overrides, device="cpu")
    stats = load_task_statistics(args.checkpoint)
    if stats is None:
        print(f"{args.checkpoint}: no task statistics in the checkpoint.", file=sys.stderr)
        return 1
    print(f"# task check, {datetime.date.today()}, {cpu_model()}, torch {torch.__version__}")
    print(f"checkpoint {args.checkpoint}: tasks {stats['tasks']}, threshold {float(stats['threshold']):.3f}")
    print("| split | slices | predicted task right | false alarms (any warning) | read as another task |")
    print("|---|---|---|---|---|")
    for r in split_table(restorer, stats, args.datalist):
        confused = ", ".join(f"{n} {k}" for k, n in sorted(r["confused"].items())) or "-"
        share = f"{100 * r['right'] / max(r['slices'], 1):.1f} %"
        print(f"| {r['split']} | {r['slices']} | {r['right']} ({share}) | {r['false_alarms']} | {confused} |")
    warned = 0
    foreign = _foreign_images(args.size, args.pet_slice, restorer)
    print("\n| foreign input | declared | predicted | distance | warned |")
    print("|---|---|---|---|---|")
    for name, declared, x in foreign:
        predicted, distance, warnings = check_scan(task_embeddings(restorer.network, x, 1), stats, declared)
        warned += bool(warnings)
        print(f"| {name} | {declared} | {predicted} | {distance:.2f} | {'yes' if warnings else 'NO'} |")
    print(f"\nforeign inputs warned: {warned} of {len(foreign)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
