"""custom.tools.demo: the orchestration (data list -> bundle training CLI -> evaluate.json CLI -> report) on a tiny budget.

The real demo data needs wheels from PyPI; here the demo is pointed at a pre-built tiny data list instead.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest

import pytest
from custom.networks import TAT
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
