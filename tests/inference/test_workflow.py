"""RestorationEvaluator: every item is reported (written, skipped with the scanner's reason, failed), also when the
run stops early; values written through the one restore path."""

from __future__ import annotations

import json
import os
import tempfile
import time
import unittest
from unittest import mock

import nibabel as nib
import numpy as np
import torch
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
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose
from parameterized import parameterized

from tests.utils import BUNDLE, ShiftNet, save_identity_checkpoint

SETTINGS = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))
CT_LO, CT_HI = SETTINGS["CT"]["clip_range"]


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
            times = {k: written[k] for k in ("seconds", "read_seconds", "restore_seconds", "write_seconds")}
            self.assertEqual(times, {k: round(v, 3) for k, v in times.items()})  # in milliseconds
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


def _raise(error: Exception, cause: Exception | None = None):
    def transform(data):
        raise error from cause

    return transform


class TestCatchFailures(unittest.TestCase):
    @parameterized.expand(
        [
            ("nested_compose", ValueError("x.nii: broken"), None, "ValueError: x.nii: broken"),
            ("own_cause_kept", ValueError("bad header"), KeyError("k"), "ValueError: bad header"),
            (
                "words_without_cause",
                ValueError("error applying transform x"),
                None,
                "ValueError: error applying transform x",
            ),
            ("runtime_not_a_wrapper", RuntimeError("out of memory"), OSError("o"), "RuntimeError: out of memory"),
        ]
    )
    def test_error_is_the_first_exception_that_is_not_composes_wrapper(self, _, error, cause, expected):
        data = {"image": "x.nii", "n": 3, "f": 0.5, "files": ["x.nii"], "meta": {"k": 1}, "arr": np.zeros(2)}
        out = CatchFailures(Compose([Compose([_raise(error, cause)])]))(data)
        self.assertEqual(out, {"image": "x.nii", "n": 3, "f": 0.5, "files": ["x.nii"], "error": expected})

    def test_marked_items_pass_unread_and_reading_is_timed(self):
        calls = []

        def read(data):
            calls.append(data["image"])
            return {**data, "image": np.zeros(2)}

        catch = CatchFailures(read)
        for marked in ({"image": "a", "skip": "hidden"}, {"image": "b", "error": "b: broken"}):
            self.assertEqual(catch(marked), marked)
        self.assertEqual(calls, [])
        start = time.perf_counter()
        out = catch({"image": "c"})
        elapsed = time.perf_counter() - start
        self.assertEqual(calls, ["c"])
        self.assertTrue(0 <= out["read_seconds"] <= elapsed, out["read_seconds"])

    def test_first_item(self):
        item = {"image": "a"}
        self.assertIs(first_item([item]), item)
        for batch in ([], [item, item]):
            with self.assertRaisesRegex(ValueError, f"batch_size 1\\), got {len(batch)}"):
                first_item(batch)


def _restored(image: torch.Tensor) -> torch.Tensor:
    """What :class:`ShiftNet` gives for a CT image in HU: normalise, + 0.5, denormalise, clip."""
    x = (image.clamp(CT_LO, CT_HI) - CT_LO) / (CT_HI - CT_LO)
    return (CT_LO + (x + 0.5) * (CT_HI - CT_LO)).clamp(CT_LO, CT_HI)


class TestSwitchesFromTheCommandLine(unittest.TestCase):
    """``--overwrite false`` / ``--amp false`` / ``--clip_output false`` reach the config as the text 'false' (fire
    reads only Python literals): each component that takes such a switch reads the text as the user meant it."""

    @parameterized.expand(
        [("false", False), ("False", False), ("no", False), ("true", True), (1, True), (False, False)]
    )
    def test_switch_values(self, value, expected):
        from custom.inference.difference import SaveDifferenced
        from custom.inference.restore import Restorer

        evaluator = RestorationEvaluator(
            device="cpu",
            val_data_loader=[],
            network=ShiftNet(),
            inferer=SliceBatchInferer(1),
            overwrite=value,
            amp=value,
            clip_output=value,
            epoch_length=1,
        )
        self.assertEqual((evaluator.overwrite, evaluator.amp, evaluator.clip_output), (expected,) * 3)
        self.assertIs(SaveRestoredd(keys="pred", overwrite=value).overwrite, expected)
        self.assertIs(SaveDifferenced(keys="pred", overwrite=value).overwrite, expected)
        restorer = Restorer(ShiftNet(), SETTINGS, SliceBatchInferer(1), clip=value, amp=value)
        self.assertEqual((restorer.clip, restorer.amp), (expected, expected))

    def test_other_text_is_refused_naming_the_switch(self):
        for kwargs, name in (({"overwrite": "maybe"}, "overwrite"), ({"amp": "fp16"}, "amp")):
            with self.subTest(name), self.assertRaisesRegex(ValueError, f"{name} must be true or false"):
                RestorationEvaluator(
                    device="cpu", val_data_loader=[], network=ShiftNet(), inferer=SliceBatchInferer(1), **kwargs
                )
        with self.assertRaisesRegex(ValueError, "overwrite must be true or false"):
            SaveRestoredd(keys="pred", overwrite="maybe")


class TestRestorationEvaluatorSteps(unittest.TestCase):
    """Items straight from a list (no reading): what each step records and passes on."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        self.seen: list[dict] = []

    def tearDown(self):
        self.tmp.cleanup()

    def _post(self, item: dict) -> dict:
        self.seen.append(dict(item))
        return {**item, "predicted_task": "CT", "task_distance": 0.5, "warnings": ["w"], "difference_output": "x"}

    def _run(self, items: list, loader=None, inferer=None, **kwargs) -> list[dict]:
        net = ShiftNet().train()  # the evaluator puts it in eval mode
        report = os.path.join(self.d, "report.json")
        engine = RestorationEvaluator(
            device="cpu",
            val_data_loader=loader if loader is not None else items,
            network=net,
            inferer=inferer or SliceBatchInferer(2),
            postprocessing=self._post,
            report_path=report,
            **({"epoch_length": len(items)} if loader is None else {}),
            **kwargs,
        )
        self.engine, self.outputs = engine, []
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self.outputs.append(e.state.output))
        try:
            engine.run()
        finally:
            with open(report, encoding="utf-8") as f:
                self.report = json.load(f)
        return self.report["scans"]

    def test_defaults_restore_in_float32_and_clip(self):
        image = torch.linspace(-1500, 3500, 8 * 6).reshape(1, 8, 6)
        items = [{"image": image, "modality": "CT", "output": os.path.join(self.d, "a.nii")}]
        (entry,) = self._run(items, inferer=lambda x, network: network(x), settings=SETTINGS)  # precision: amp's
        self.assertEqual(entry["status"], "written")
        (item,) = self.seen
        torch.testing.assert_close(item["pred"], _restored(image), rtol=0, atol=0.05)
        self.assertLessEqual(float(item["pred"].max()), CT_HI)
        self.assertGreater(float((image > CT_HI).sum()), 0)
        self.assertIs(item["input"], image)  # the physical input is kept
        x = (image - CT_LO) / (CT_HI - CT_LO)
        torch.testing.assert_close(item["image"], x.clamp(0, 1))  # the normalised input
        (output,) = self.outputs  # the engine's output: the restored scan, for handlers
        self.assertEqual(set(output), {"pred"})
        self.assertIs(output["pred"], item["pred"])

    @parameterized.expand([("amp", True), ("float32", False)])
    def test_without_settings_the_network_output_is_the_prediction(self, _, amp):
        image = torch.linspace(0, 1, 8 * 6).reshape(1, 8, 6)
        given = torch.full_like(image, -1.0)
        item = {"image": MetaTensor(image), "input": given, "output": os.path.join(self.d, "a.nii")}
        with mock.patch("custom.inference.workflow.warn_if_emulated") as warn:
            (entry,) = self._run([item], inferer=lambda x, network: network(x), amp=amp)  # precision left to amp
        self.assertEqual(entry["status"], "written", entry["message"])
        self.assertEqual(warn.call_args_list, [mock.call("bfloat16")] if amp else [])
        (seen,) = self.seen
        self.assertEqual((type(seen["pred"]), seen["pred"].dtype), (torch.Tensor, torch.float32))
        self.assertEqual(tuple(seen["pred"].shape), (1, 8, 6))
        expected = image + 0.5  # not clipped, not denormalised
        torch.testing.assert_close(seen["pred"], expected, rtol=0, atol=1e-2 if amp else 1e-6)
        self.assertEqual(bool(torch.equal(seen["pred"], expected)), not amp)  # bfloat16 rounds
        self.assertIs(seen["input"], given)

    def test_report_entries(self):
        p = os.path.join(self.d, "p.nii")
        image = torch.zeros(1, 4, 4)
        items = [
            {"image": "notes.txt", "skip": "not an image file"},
            {"image": p, "source": p, "error": "gzip CRC check failed", "output": "o"},
            {"image": p + "2", "source": p + "2", "error": f"{p}2: truncated", "output": "o2"},
            {"image": image, "source": "nowhere.nii", "modality": "CT"},
            {"image": image, "source": "ok.nii", "modality": "CT", "output": os.path.join(self.d, "ok.nii")},
        ]
        with self.assertLogs("custom.inference.workflow", "INFO") as logs:
            with self.assertRaisesRegex(RuntimeError, "3 of 5 scan"):
                self._run(items, DataLoader(Dataset(items), batch_size=1, collate_fn=first_item), settings=SETTINGS)
        self.assertEqual(self.report["counts"], {"written": 1, "skipped": 1, "failed": 3})
        skipped, failed, named, no_output, written = self.report["scans"]
        self.assertEqual(
            skipped,
            {"image": "notes.txt", "output": "", "status": "skipped", "message": "not an image file", "seconds": 0.0},
        )
        self.assertEqual((failed["message"], failed["seconds"]), (f"{p}: gzip CRC check failed", 0.0))
        self.assertEqual(named["message"], f"{p}2: truncated")  # already names the file
        self.assertEqual(no_output["message"], "nowhere.nii: no output path for this item")
        self.assertEqual((no_output["status"], no_output["output"]), ("failed", ""))
        self.assertEqual(written["status"], "written")
        self.assertEqual(written["read_seconds"], 0.0)  # not read by CatchFailures
        extra = {k: written[k] for k in ("predicted_task", "task_distance", "warnings", "difference_output")}
        self.assertEqual(
            extra, {"predicted_task": "CT", "task_distance": 0.5, "warnings": ["w"], "difference_output": "x"}
        )
        self.assertNotIn("predicted_task", skipped)
        levels = [line.split(":", 1)[0] for line in logs.output]
        self.assertEqual(levels, ["WARNING", "ERROR", "ERROR", "ERROR", "INFO", "INFO"])  # the last: the counts
        self.assertEqual(self.outputs[:4], [{}, {}, {}, {}])

    def test_existing_output_with_overwrite_is_restored_and_a_write_failure_keeps_the_timings(self):
        out = os.path.join(self.d, "a.nii")
        open(out, "w").close()
        items = [{"image": torch.zeros(1, 4, 4), "source": "a.nii", "modality": "CT", "output": out}]

        def fail(item):
            raise OSError(28, "No space left on device", item["output"])

        self._post = fail
        start = time.perf_counter()
        with self.assertRaisesRegex(RuntimeError, "1 of 1 scan"):  # not skipped: restored, then the write fails
            self._run(
                items,
                loader=torch.utils.data.DataLoader(items, collate_fn=first_item),
                settings=SETTINGS,
                overwrite=True,
            )
        elapsed = time.perf_counter() - start
        (entry,) = self.report["scans"]
        self.assertEqual(entry["status"], "failed")
        self.assertIn("No space left on device", entry["message"])
        self.assertEqual({"read_seconds", "restore_seconds"} - set(entry), set())
        # times are rounded to ms
        self.assertTrue(entry["restore_seconds"] <= entry["seconds"] <= elapsed + 5e-4, entry)

    def test_stopped_run_names_items_by_image_without_source(self):
        items = [{"image": "a.nii", "skip": "hidden file"}, {"image": "b.nii", "output": "b"}, {"image": "c.nii"}]
        loader = DataLoader(Dataset([*items, "not an item"]), batch_size=1, collate_fn=first_item)
        with self.assertRaisesRegex(ValueError, "model.pt"):  # what is not an item is left out
            self._run(items, loader, val_handlers=[_FailAtStart()])
        stopped = "inference stopped before this scan: ValueError: model.pt: does not match the network"
        self.assertEqual(
            [(r["image"], r["output"], r["status"], r["message"]) for r in self.report["scans"]],
            [
                ("a.nii", "", "skipped", "hidden file"),
                ("b.nii", "b", "failed", f"b.nii: {stopped}"),
                ("c.nii", "", "failed", f"c.nii: {stopped}"),
            ],
        )

    def test_items_beyond_the_epoch_and_a_second_run(self):
        out = os.path.join(self.d, "out")
        items = [
            {
                "image": torch.zeros(1, 4, 4),
                "source": f"{name}.nii",
                "modality": "CT",
                "output": os.path.join(out, f"{name}.nii"),
            }
            for name in ("a", "b")
        ]
        loader = DataLoader(Dataset(items), batch_size=1, collate_fn=first_item)
        with self.assertRaisesRegex(RuntimeError, "1 of 2 scan"):
            self._run(items, loader, settings=SETTINGS, epoch_length=1)
        status = [(r["image"], r["status"], r["message"]) for r in self.report["scans"]]
        self.assertEqual(status, [("a.nii", "written", ""), ("b.nii", "failed", "b.nii: not processed by the engine")])
        self.assertEqual(len(self.seen), 1)
        os.makedirs(out)
        open(items[0]["output"], "w").close()
        with self.assertRaisesRegex(RuntimeError, "1 of 2 scan"):  # the same engine again: a new report
            self.engine.run()
        with open(os.path.join(self.d, "report.json"), encoding="utf-8") as f:
            self.assertEqual([r["status"] for r in json.load(f)["scans"]], ["skipped", "failed"])
        self.assertEqual(self.engine.state.epoch, 1)


if __name__ == "__main__":
    unittest.main()
