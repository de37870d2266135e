"""custom.tools.demo: the orchestration (data list -> bundle training CLI -> evaluate.json CLI -> report) on a tiny budget.

The real demo data needs wheels from PyPI; here the demo is pointed at a pre-built tiny data list instead.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
from custom.networks import TAT
from custom.tools import demo
from custom.tools.demo import DEMO_OVERRIDES, bundle_command, bundle_root

from tests.utils import TINY_TRAINING, make_tiny_dataset


class TestDemoCommands(unittest.TestCase):
    def test_demo_overrides_are_train_json_keys(self):
        with open(os.path.join(bundle_root(), "configs", "train.json"), encoding="utf-8") as f:
            config = json.load(f)
        tat_args = inspect.signature(TAT).parameters
        for key in DEMO_OVERRIDES:
            if key.startswith("network_def#"):  # network arguments may be new keys of network_def
                self.assertIn(key.split("#")[1], tat_args, f"demo override {key} is not a TAT argument")
            else:
                self.assertIn(key, config, f"demo override {key} is not a train.json key")
        cmd = bundle_command(
            "evaluating", ["train.json", "evaluate.json"], "/d", "/m", "/o", {"network_def#heads": [1, 2]}
        )
        self.assertEqual(cmd[cmd.index("--network_def#heads") + 1], "[1, 2]")
        self.assertTrue(
            json.loads(cmd[cmd.index("--config_file") + 1])[1].endswith(os.path.join("configs", "evaluate.json"))
        )


class TestDemoHelpers(unittest.TestCase):
    def test_recipe_matches_its_comments(self):
        kwargs = {k.split("#")[1]: v for k, v in DEMO_OVERRIDES.items() if k.startswith("network_def#")}
        net = TAT(**kwargs)
        self.assertAlmostEqual(sum(p.numel() for p in net.parameters()) / 1e6, 0.9, delta=0.05)  # ~0.9 M
        self.assertEqual(len(DEMO_OVERRIDES["network_def#num_blocks"]), 4)  # 4 levels
        self.assertGreaterEqual(min(DEMO_OVERRIDES["network_def#num_blocks"]), 1)  # the whole architecture
        self.assertGreaterEqual(DEMO_OVERRIDES["network_def#num_refinement_blocks"], 1)
        self.assertEqual((DEMO_OVERRIDES["patch_size"], DEMO_OVERRIDES["samples_per_task"]), (64, 2))
        self.assertEqual((DEMO_OVERRIDES["num_iterations"], DEMO_OVERRIDES["val_interval"]), (500, 100))
        self.assertAlmostEqual(DEMO_OVERRIDES["learning_rate"], 10 * 2e-4)
        self.assertEqual((DEMO_OVERRIDES["ema_decay"], DEMO_OVERRIDES["num_workers"]), (0.99, 0))

    def test_inference_overlay(self):
        settings = {**DEMO_OVERRIDES, "network_def#dim": 16}
        overlay = demo.inference_overlay(settings, "models/model.pt")
        expected = {k: v for k, v in settings.items() if k.startswith("network_def#")}
        expected["network_def#train_patch_size"] = 64
        expected["checkpoint"] = os.path.abspath("models/model.pt")
        self.assertEqual(overlay, expected)
        self.assertEqual(
            demo.inference_overlay({"network_def#dim": 8}, "/m.pt"), {"checkpoint": "/m.pt", "network_def#dim": 8}
        )

    def test_restore_command(self):
        root = os.path.join(tempfile.gettempdir(), "a bundle")
        line = demo.restore_command("models/demo inference.json", root)
        words = shlex.split(line.split("#")[0])
        self.assertEqual(words[:4], ["python", "-m", "monai.bundle", "run"])
        configs = json.loads(words[words.index("--config_file") + 1])
        self.assertEqual(
            configs, [os.path.join(root, "configs", "inference.json"), os.path.abspath("models/demo inference.json")]
        )
        self.assertEqual(words[words.index("--dataset_dir") + 1], "YOUR_SCANS")
        self.assertEqual(words[words.index("--output_dir") + 1], "YOUR_OUTPUT_DIR")
        words = shlex.split(demo.restore_command("/m/o.json").split("#")[0])  # default: the shipped bundle
        self.assertEqual(words[words.index("--bundle_root") + 1], bundle_root())

    def test_bundle_command_arguments(self):
        overrides = {"num_iterations": 3, "amp": False, "name": "x y", "heads": [1, 2], "lr": 0.5}
        cmd = bundle_command("training", ["train.json"], "/d", "/m", "/o", overrides, "/b")
        self.assertEqual(cmd[:5], [sys.executable, "-m", "monai.bundle", "run", "training"])
        flags = dict(zip(cmd[5::2], cmd[6::2]))
        self.assertEqual(flags["--config_file"], "/b/configs/train.json")  # one file: a plain path
        self.assertEqual(flags["--meta_file"], "/b/configs/metadata.json")
        self.assertEqual((flags["--dataset_dir"], flags["--ckpt_dir"], flags["--output_dir"]), ("/d", "/m", "/o"))
        self.assertEqual(flags["--num_iterations"], "3")
        self.assertEqual(flags["--amp"], "false")
        self.assertEqual(flags["--name"], "x y")
        self.assertEqual(flags["--heads"], "[1, 2]")
        self.assertEqual(flags["--lr"], "0.5")

    def test_inference_command(self):
        cmd = demo.inference_command("m/overlay.json", "d/datalist.json", "test", "/o", "/b")
        flags = dict(zip(cmd[5::2], cmd[6::2]))
        self.assertEqual(cmd[4], "inference")
        self.assertEqual(
            json.loads(flags["--config_file"]), ["/b/configs/inference.json", os.path.abspath("m/overlay.json")]
        )
        self.assertEqual(flags["--dataset_dir"], os.path.abspath("d"))
        self.assertEqual(flags["--datalist"], os.path.abspath("d/datalist.json"))
        self.assertEqual((flags["--datalist_split"], flags["--output_dir"]), ("test", "/o"))
        self.assertEqual((flags["--difference_output"], flags["--overwrite"]), ("true", "true"))

    def test_override(self):
        self.assertEqual(demo._override("num_iterations=600"), ("num_iterations", 600))
        self.assertEqual(demo._override("heads=[1, 2]"), ("heads", [1, 2]))
        self.assertEqual(demo._override("name=a=b"), ("name", "a=b"))  # not JSON: the text
        with self.assertRaisesRegex(argparse.ArgumentTypeError, "KEY=VALUE"):
            demo._override("num_iterations")

    def test_run_step(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            seconds = demo._run(
                [sys.executable, "-c", "import os, sys; sys.exit(os.environ['X'] != '1')"],
                {**os.environ, "X": "1"},
                "one",
            )
        self.assertGreaterEqual(seconds, 0.0)
        self.assertLess(seconds, 60.0)
        self.assertIn("=== one ===", out.getvalue())
        self.assertIn("import os, sys", out.getvalue())
        with contextlib.redirect_stdout(out):
            with self.assertRaisesRegex(RuntimeError, "demo step 'two' failed with exit status 1"):
                demo._run([sys.executable, "-c", "import sys; sys.exit(1)"], os.environ, "two")

    def test_main_arguments(self):
        with mock.patch.object(demo, "run_demo") as run:
            argv = [
                "--datalist",
                "d.json",
                "--threads",
                "2",
                "--override",
                "a=1",
                "--override",
                "b=x",
                "--no_require_gain",
            ]
            self.assertEqual(demo.main(argv), 0)
        self.assertEqual(run.call_args.args, ("demo_output", "d.json", {"a": 1, "b": "x"}, 2, False, None))
        with mock.patch.object(demo, "run_demo") as run:
            self.assertEqual(demo.main(["--output_dir", "o"]), 0)
        self.assertEqual(run.call_args.args, ("o", None, {}, None, True, None))
        err = io.StringIO()
        for error in (ValueError("no gain"), RuntimeError("step failed"), OSError("disk")):
            with mock.patch.object(demo, "run_demo", side_effect=error), contextlib.redirect_stderr(err):
                self.assertEqual(demo.main([]), 1)
        self.assertIn("demo failed: no gain", err.getvalue())


def _save(path: str, arr: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), np.eye(4)), path)
    return path


class TestReviewTestSplit(unittest.TestCase):
    """Per-scan task check lines and the MRI review panel, on tiny NIfTI files (the panel plot is mocked)."""

    def _case(self, d, volume=False, **entry):
        from custom.transforms.mri_resolution import kspace_truncate

        rng = np.random.default_rng(0)
        y = rng.uniform(100.0, 1000.0, (16, 16, 5) if volume else (16, 16)).astype(np.float32)
        if volume:
            x = np.stack([kspace_truncate(y[..., k], 4.0).numpy() for k in range(5)], -1)
        else:
            x = kspace_truncate(y, 4.0).numpy()
        x = x - min(0.0, float(x.min()))  # non-negative: a fixed point of the data consistency
        files = {
            n: _save(os.path.join(d, f"{n}.nii.gz"), a)
            for n, a in (
                ("ct_in", y),
                ("ct_gt", y),
                ("mri_in", x),
                ("mri_gt", y),
                ("out", np.zeros_like(x)),
                ("diff", -x),
            )
        }
        items = [
            {"image": files["ct_in"], "label": files["ct_gt"], "modality": "CT"},
            {"image": files["mri_in"], "label": files["mri_gt"], "modality": "mri"},
            {"image": files["mri_in"], "label": files["mri_gt"], "modality": "MRI"},
        ]
        datalist = os.path.join(d, "datalist.json")
        with open(datalist, "w") as f:
            json.dump({"training": items[:1], "validation": [], "test": items}, f)
        scans = [
            {
                "image": files["ct_in"],
                "status": "written",
                "predicted_task": "CT",
                "task_distance": 0.5,
                "warnings": [],
            },
            {
                "image": files["mri_in"],
                "status": "written",
                "predicted_task": "MRI",
                "task_distance": None,
                "warnings": ["w"],
                "output": files["out"],
                "difference_output": files["diff"],
                **entry,
            },
        ]
        report = os.path.join(d, "inference_report.json")
        with open(report, "w") as f:
            json.dump({"scans": scans}, f)
        return report, datalist, x

    def _review(self, report, datalist, **kwargs):
        with mock.patch.object(demo, "plot_review_panel", side_effect=lambda path, *a: path) as plot:
            review = demo.review_test_split(report, datalist, "/p/panel.png", **kwargs)
        return review, plot

    def test_scans_and_panel(self):
        with tempfile.TemporaryDirectory() as d:
            report, datalist, x = self._case(d)
            review, plot = self._review(report, datalist)
        self.assertEqual([s["modality"] for s in review["scans"]], ["CT", "mri", "MRI"])
        self.assertEqual([s["predicted_task"] for s in review["scans"]], ["CT", "MRI", "MRI"])
        self.assertEqual(review["scans"][0]["task_distance"], 0.5)
        self.assertEqual(review["scans"][1]["warnings"], ["w"])
        self.assertEqual(review["panel"], "/p/panel.png")
        plot.assert_called_once()  # the first MRI scan only
        args = plot.call_args.args
        np.testing.assert_allclose(args[1], x, rtol=1e-6)
        np.testing.assert_array_equal(args[2], 0.0)
        np.testing.assert_allclose(args[3], -x, rtol=1e-6)
        np.testing.assert_allclose(args[4], x, atol=5.0)  # zero output made consistent with x: x itself
        psnr = review["panel_psnr"]
        self.assertEqual(set(psnr), {"input", "restored", "consistent"})
        self.assertAlmostEqual(psnr["consistent"], psnr["input"], delta=1.0)
        self.assertLess(psnr["restored"], psnr["input"])
        self.assertEqual(args[-1], psnr)

    def test_volumes_show_the_middle_slice(self):
        with tempfile.TemporaryDirectory() as d:
            report, datalist, x = self._case(d, volume=True)
            review, plot = self._review(report, datalist)
        args = plot.call_args.args
        np.testing.assert_allclose(args[1], x[..., 2], rtol=1e-6)
        np.testing.assert_allclose(args[4], x[..., 2], atol=5.0)
        self.assertAlmostEqual(review["panel_psnr"]["consistent"], review["panel_psnr"]["input"], delta=1.0)

    def test_missing_task_check_is_an_error(self):
        for entry in ({"status": "failed"}, {"predicted_task": None}, {"image": "/elsewhere.nii.gz"}):
            with tempfile.TemporaryDirectory() as d:
                report, datalist, _ = self._case(d, **entry)
                if entry.get("predicted_task", 1) is None:
                    with open(report) as f:
                        data = json.load(f)
                    del data["scans"][1]["predicted_task"]
                    with open(report, "w") as f:
                        json.dump(data, f)
                with self.assertRaisesRegex(ValueError, "no restored entry with a task check"):
                    self._review(report, datalist)


class TestRunDemo(unittest.TestCase):
    """run_demo's orchestration with the steps mocked (what the slow smoke test runs for real)."""

    def _run(self, tmp, gain=True, datalist="given", out=None, **kwargs):
        calls = []
        out = out or os.path.join(tmp, "demo")
        data = os.path.join(tmp, "data")
        os.makedirs(data, exist_ok=True)
        given = os.path.join(data, "datalist.json")
        with open(given, "w") as f:
            json.dump({"test": []}, f)

        def step(cmd, env, name):
            calls.append((list(cmd), env, name))
            if name.startswith("1/4"):
                os.makedirs(os.path.join(out, "data"))
                with open(os.path.join(out, "data", "datalist.json"), "w") as f:
                    json.dump({"test": []}, f)
            if name.startswith("3/4"):
                os.makedirs(os.path.join(out, "evaluation"))
                tasks = {"t": {"input": {"psnr": 20.0}, "output": {"psnr": 21.0 if gain else 20.0}}}
                summary = {"tasks": tasks, "files": {"scans_csv": "s.csv", "panels": {"t": "p.png"}}}
                with open(os.path.join(out, "evaluation", "test_summary.json"), "w") as f:
                    json.dump(summary, f)
            return 2.0

        scans = [
            {"image": "/a/x.nii.gz", "modality": "CT", "predicted_task": "CT", "task_distance": None, "warnings": None},
            {
                "image": "/a/y.nii.gz",
                "modality": "MRI",
                "predicted_task": "CT",
                "task_distance": 3.5,
                "warnings": ["far", "odd"],
            },
        ]
        review = {"scans": scans, "panel": "/p.png", "panel_psnr": {"input": 20.0}}
        printed = io.StringIO()
        with (
            mock.patch.object(demo, "_run", side_effect=step),
            mock.patch.object(demo, "review_test_split", return_value=review) as rev,
            mock.patch.object(demo, "format_summary_table", return_value="TABLE"),
            contextlib.redirect_stdout(printed),
        ):
            summary = demo.run_demo(out, given if datalist == "given" else datalist, **{"root": "/b", **kwargs})
        return calls, summary, printed.getvalue(), rev, out

    def test_steps(self):
        with tempfile.TemporaryDirectory() as tmp:
            stale = os.path.join(tmp, "demo", "models", "latest.pt")
            os.makedirs(os.path.dirname(stale))
            open(stale, "w").close()
            calls, summary, printed, rev, out = self._run(tmp, overrides={"num_iterations": 7}, threads=3)
            self.assertFalse(os.path.exists(stale))  # fresh training
            with open(os.path.join(out, "models", "demo_inference.json")) as f:
                overlay = json.load(f)
        names = [c[2][:3] for c in calls]
        self.assertEqual(names, ["2/4", "3/4", "4/4"])  # the data list is given: no data step
        train, evaluate, infer = (c[0] for c in calls)
        self.assertEqual(train[4], "training")
        self.assertEqual(train[train.index("--num_iterations") + 1], "7")
        self.assertEqual(train[train.index("--dataset_dir") + 1], os.path.join(tmp, "data"))
        self.assertEqual(train[train.index("--ckpt_dir") + 1], os.path.join(out, "models"))
        self.assertEqual(train[train.index("--output_dir") + 1], os.path.join(out, "train_logs"))
        self.assertEqual(evaluate[4], "evaluating")
        self.assertEqual(json.loads(evaluate[evaluate.index("--config_file") + 1])[1], "/b/configs/evaluate.json")
        self.assertEqual(evaluate[evaluate.index("--output_dir") + 1], os.path.join(out, "evaluation"))
        self.assertEqual(infer[infer.index("--datalist_split") + 1], "test")
        self.assertEqual(infer[infer.index("--output_dir") + 1], os.path.join(out, "inference"))
        for _, env, _ in calls:
            self.assertEqual((env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]), ("3", "3"))
        self.assertEqual(overlay["checkpoint"], os.path.join(out, "models", "model.pt"))
        self.assertEqual(overlay["network_def#dim"], DEMO_OVERRIDES["network_def#dim"])
        self.assertEqual(rev.call_args.args[0], os.path.join(out, "inference", "inference_report.json"))
        self.assertEqual(rev.call_args.args[2], os.path.join(out, "evaluation", "review_panel_mri.png"))
        self.assertEqual(set(summary["timings"]), {"training", "evaluation", "inference", "total"})
        self.assertGreaterEqual(summary["timings"]["total"], 0.0)
        self.assertLess(summary["timings"]["total"], 60.0)
        self.assertIn("Every task's restored PSNR beats its degraded input's.", printed)
        self.assertIn("x.nii.gz: declared CT, predicted CT (distance n/a): no warning", printed)
        self.assertIn("y.nii.gz: declared MRI, predicted CT (distance 3.50): far; odd", printed)
        self.assertIn("(input 20.00 dB)", printed)
        self.assertIn("torch threads: 3", printed)
        self.assertIs(summary["review"], rev.return_value)
        self.assertIn("=== TAT demo: test split, degraded input vs restored output", printed)
        self.assertIn("TABLE", printed)
        self.assertIn("wall time: data 0 s, training 2 s, evaluation 2 s, inference 2 s", printed)
        self.assertIn("task check (the network's task representation; test split):", printed)
        self.assertIn(f"model:     {os.path.join(out, 'models', 'model.pt')}  (demonstration weights only)", printed)
        self.assertIn("per scan:  s.csv", printed)
        self.assertIn(f"summary:   {os.path.join(out, 'evaluation', 'test_summary.json')}", printed)
        self.assertIn("panel:     p.png", printed)
        self.assertIn(f"TensorBoard: tensorboard --logdir {os.path.join(out, 'train_logs')}", printed)
        restore = demo.restore_command(os.path.join(out, "models", "demo_inference.json"), "/b")
        self.assertIn(f"restore your scans with these weights:\n  {restore}", printed)

    def test_relative_paths_and_the_data_step(self):
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                os.chdir(tmp)
                here = os.getcwd()
                calls, summary, _, _, _ = self._run(tmp, datalist=None, out="demo")
                self.assertEqual(calls[0][0][-1], os.path.join(here, "demo", "data"))
                train = calls[1][0]
                self.assertEqual(train[train.index("--dataset_dir") + 1], os.path.join(here, "demo", "data"))
                self.assertEqual(train[train.index("--ckpt_dir") + 1], os.path.join(here, "demo", "models"))
                self.assertEqual(set(summary["timings"]), {"data", "training", "evaluation", "inference", "total"})
                calls, _, _, _, _ = self._run(tmp, datalist=os.path.join("data", "datalist.json"), out="demo2")
                train = calls[0][0]
                self.assertEqual(train[train.index("--dataset_dir") + 1], os.path.join(here, "data"))
            finally:
                os.chdir(cwd)

    def test_missing_bundle_fails_first(self):
        with tempfile.TemporaryDirectory() as tmp:
            with mock.patch.object(demo, "packaged_bundle", side_effect=FileNotFoundError("no bundle")):
                with mock.patch.object(demo, "_run") as run, self.assertRaisesRegex(FileNotFoundError, "no bundle"):
                    demo.run_demo(os.path.join(tmp, "demo"))
            run.assert_not_called()

    def test_defaults_and_data_step(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "demo")

            def step(cmd, env, name):
                raise RuntimeError(name)

            with mock.patch.object(demo, "_run", side_effect=step) as run:
                with self.assertRaisesRegex(RuntimeError, "1/4 demo data"):
                    demo.run_demo(out, root="/b")
            cmd, env, _ = run.call_args.args
            self.assertEqual(
                cmd, [sys.executable, "-m", "custom.tools.demo_data", "--output_dir", os.path.join(out, "data")]
            )
            self.assertEqual(env["OMP_NUM_THREADS"], str(demo.default_threads()))
            calls, _, _, _, _ = self._run(tmp)
            train = calls[0][0]
            self.assertEqual(train[train.index("--num_iterations") + 1], str(DEMO_OVERRIDES["num_iterations"]))
            self.assertEqual(calls[0][1]["OMP_NUM_THREADS"], "1")

    def test_no_gain(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(ValueError, r"restored PSNR does not beat the degraded input for \['t'\]"):
                self._run(tmp, gain=False)
        with tempfile.TemporaryDirectory() as tmp:
            _, summary, printed, _, _ = self._run(tmp, gain=False, require_gain=False)
        self.assertIn("NOTE: ", printed)
        self.assertIn("does not beat the degraded input for ['t']", printed)

    def test_bad_datalist(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(ValueError, "data list not found"):
                self._run(tmp, datalist=os.path.join(tmp, "missing", "datalist.json"))
            other = os.path.join(tmp, "list.json")
            with open(other, "w") as f:
                json.dump({"test": []}, f)
            with self.assertRaisesRegex(ValueError, "name the file datalist.json"):
                self._run(tmp, datalist=other)


@pytest.mark.slow
class TestDemoSmoke(unittest.TestCase):
    def test_demo_smoke(self):
        with tempfile.TemporaryDirectory() as tmp:
            self._smoke(tmp)

    def _smoke(self, tmp: str) -> None:
        datalist = make_tiny_dataset(os.path.join(tmp, "data"))
        demo = os.path.join(tmp, "demo")
        cmd = [
            sys.executable,
            "-m",
            "custom.tools.demo",
            "--output_dir",
            demo,
            "--datalist",
            datalist,
            "--threads",
            "1",
            "--no_require_gain",
            "--override",
            "num_iterations=2",
            "--override",
            "val_interval=1",
        ]
        cmd += [a for k, v in TINY_TRAINING.items() for a in ("--override", f"{k}={json.dumps(v)}")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        stale = os.path.join(demo, "models", "latest.pt")  # a previous run's leftovers: training must start afresh
        os.makedirs(os.path.dirname(stale))
        with open(stale, "wb") as f:
            f.write(b"not a checkpoint")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 0, log[-4000:])
        self.assertTrue(os.path.isfile(os.path.join(demo, "models", "model.pt")))
        self.assertTrue(os.path.isfile(os.path.join(demo, "models", "latest.pt")))
        summary = _json(os.path.join(demo, "evaluation", "test_summary.json"))
        self.assertEqual(set(summary["tasks"]), {"low_dose_ct", "low_count_pet", "mri_super_resolution"})
        for task in summary["tasks"]:
            self.assertTrue(os.path.isfile(os.path.join(demo, "evaluation", f"test_panel_{task}.png")), task)
            self.assertIn(task, proc.stdout)  # the per-task table is printed
        for text in ("PSNR in", "test_scans.csv", "wall time"):
            self.assertIn(text, proc.stdout)
        self.assertFalse(os.path.exists(os.path.join(demo, "data")))  # a given data list is used as is

        self.assertIn("starting a new training", log)  # the stale latest.pt was removed, not resumed from

        # task check, difference output and review panel (issue 13): every test scan restored with its task printed
        self.assertIn("task statistics stored in", log)  # train.json's handler at the end of training
        report = _json(os.path.join(demo, "inference", "inference_report.json"))
        tests = _json(datalist)["test"]
        self.assertEqual(report["counts"]["written"], len(tests))
        for scan in report["scans"]:
            self.assertIn(scan["predicted_task"], ("CT", "PET", "MRI"))
            self.assertIsInstance(scan["warnings"], list)
            self.assertTrue(os.path.isfile(scan["difference_output"]), scan)
            # scans of different tasks may share a file name: one printed line per scan, in the report's order
            lines = [x for x in proc.stdout.splitlines() if os.path.basename(scan["image"]) + ": declared" in x]
            self.assertTrue(any(f"predicted {scan['predicted_task']} " in x for x in lines), (scan, lines))
        printed = [x for x in proc.stdout.splitlines() if ": declared" in x and ", predicted " in x]
        self.assertEqual(len(printed), len(report["scans"]))
        self.assertGreater(os.path.getsize(os.path.join(demo, "evaluation", "review_panel_mri.png")), 1000)
        self.assertIn("data-consistent MRI", proc.stdout)

        # the printed one-line restore command works on a user's folder of scans (here the tiny test images, as CT)
        overlay = _json(os.path.join(demo, "models", "demo_inference.json"))
        self.assertEqual(overlay["checkpoint"], os.path.join(demo, "models", "model.pt"))
        self.assertEqual(overlay["network_def#dim"], TINY_TRAINING["network_def#dim"])
        line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("python -m monai.bundle run inference"))
        line = line.split("#")[0]
        scans, restored = os.path.join(tmp, "my_scans"), os.path.join(tmp, "restored")
        os.makedirs(scans)
        found = sorted(
            os.path.join(folder, name)
            for folder, _, names in os.walk(os.path.join(tmp, "data"))
            for name in names
            if ".nii" in name
        )
        src = next(p for p in found if "ct" in p.lower())
        shutil.copyfile(src, os.path.join(scans, os.path.basename(src)))
        args = shlex.split(line.replace("YOUR_SCANS", scans).replace("YOUR_OUTPUT_DIR", restored))
        self.assertEqual(args[:3], ["python", "-m", "monai.bundle"])
        run = subprocess.run(
            [sys.executable, *args[1:], "--modality", "CT"], env=env, capture_output=True, text=True, timeout=300
        )
        self.assertEqual(run.returncode, 0, (run.stdout + run.stderr)[-4000:])
        self.assertTrue(os.path.isfile(os.path.join(restored, os.path.basename(src))))


def _json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":
    unittest.main()
