"""RestorationEvaluator: every item is reported (written, skipped with the scanner's reason, failed), also when the
run stops early; values written through the one restore path."""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
from custom.inference import (
    CatchFailures,
    LoadScand,
    RestorationEvaluator,
    SaveRestoredd,
    SliceBatchInferer,
    first_item,
)
from custom.settings import load_modality_settings
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from tests.utils import BUNDLE, save_identity_checkpoint

SETTINGS = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))


class _FailAtStart:
    """A handler that stops the run before the first scan (as a checkpoint that does not load)."""

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        raise ValueError("model.pt: does not match the network")


def _items(d: str) -> list[dict]:
    out = os.path.join(d, "out")
    os.makedirs(out)
    values = np.random.default_rng(0).uniform(-1500, 3500, (12, 10, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(values, np.eye(4)), os.path.join(d, "a.nii"))
    nib.save(nib.Nifti1Image(values, np.eye(4)), os.path.join(d, "b.nii"))
    open(os.path.join(out, "b.nii"), "w").close()  # output exists: skipped
    good = {"image": os.path.join(d, "a.nii"), "kind": "nifti", "output": os.path.join(out, "a.nii")}
    exists = {"image": os.path.join(d, "b.nii"), "kind": "nifti", "output": os.path.join(out, "b.nii")}
    skip = {"image": os.path.join(d, "notes.txt"), "skip": "not an image file (notes.txt)", "output": ""}
    error = {"image": os.path.join(d, "c.nii.gz"), "error": "c.nii.gz: gzip CRC check failed", "output": "x"}
    items = [skip, good, error, exists]
    for item in items:
        item.update(source=item["image"], modality="CT")
    return items


def _evaluator(d: str, items: list[dict], handlers: list | None = None) -> RestorationEvaluator:
    net = save_identity_checkpoint(os.path.join(d, "m.pt"))
    loader = DataLoader(
        Dataset(items, transform=CatchFailures(Compose([LoadScand(keys="image")]))), batch_size=1, collate_fn=first_item
    )
    return RestorationEvaluator(
        device="cpu",
        val_data_loader=loader,
        network=net,
        inferer=SliceBatchInferer(2),
        postprocessing=SaveRestoredd(keys="pred"),
        report_path=os.path.join(d, "out", "inference_report.json"),
        settings=SETTINGS,
        val_handlers=handlers,
    )


def _report(d: str) -> dict:
    with open(os.path.join(d, "out", "inference_report.json"), encoding="utf-8") as f:
        return json.load(f)


class TestRestorationEvaluator(unittest.TestCase):
    def test_every_item_reported(self):
        with tempfile.TemporaryDirectory() as d:
            items = _items(d)
            with self.assertRaisesRegex(RuntimeError, "1 of 4 scan"):
                _evaluator(d, items).run()
            report = _report(d)
            self.assertEqual(report["counts"], {"written": 1, "skipped": 2, "failed": 1})
            status = {os.path.basename(r["image"]): (r["status"], r["message"]) for r in report["scans"]}
            self.assertEqual(status["notes.txt"], ("skipped", "not an image file (notes.txt)"))
            self.assertEqual(status["a.nii"], ("written", ""))
            self.assertEqual(status["c.nii.gz"][0], "failed")
            self.assertIn("gzip CRC", status["c.nii.gz"][1])
            self.assertIn("output exists", status["b.nii"][1])
            (written,) = [r for r in report["scans"] if r["status"] == "written"]
            for key in ("read_seconds", "restore_seconds", "write_seconds"):  # read / write times reported
                self.assertGreater(written[key], 0, key)
            self.assertAlmostEqual(written["seconds"], written["restore_seconds"] + written["write_seconds"], 2)
            src = nib.load(os.path.join(d, "a.nii")).get_fdata()
            out = nib.load(os.path.join(d, "out", "a.nii")).get_fdata()
            np.testing.assert_allclose(out, np.clip(src, -1024, 3072), atol=1e-3)  # restore(): normalise .. clip

    def test_run_stopped_early_still_reports_every_item(self):
        with tempfile.TemporaryDirectory() as d:
            items = _items(d)
            with self.assertRaisesRegex(ValueError, "model.pt"):
                _evaluator(d, items, handlers=[_FailAtStart()]).run()
            report = _report(d)
            self.assertEqual(len(report["scans"]), 4)
            self.assertEqual(report["counts"], {"written": 0, "skipped": 1, "failed": 3})
            messages = {os.path.basename(r["image"]): r["message"] for r in report["scans"]}
            self.assertIn("model.pt: does not match", messages["a.nii"])
            self.assertIn("gzip CRC", messages["c.nii.gz"])
            self.assertFalse(os.path.exists(os.path.join(d, "out", "a.nii")))


if __name__ == "__main__":
    unittest.main()
