"""Training through the real CLI under hostile conditions: SIGKILL mid-run then rerun (same final weights as an
uninterrupted run), a NaN injected into a target (stops naming iteration and sources, saves nothing corrupt),
a bad scan in the data list (clear error naming it), and inputs byte-identical afterwards.

Tiny network and data (``tests/bundle``), deterministic CPU mode (``set_determinism`` in train.json, one thread).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import pytest
import torch

from tests.utils import (
    CONFIGS,
    ENV,
    LOGGING,
    META,
    REPO,
    TINY_TRAINING,
    TRAIN_CONFIG,
    assert_state_equal,
    make_dataset,
    tree_hashes,
)

# tiny network, 2 crops of 32x32 per task; checkpoints (latest.pt) after iterations 2, 4, 6
RUN = {**TINY_TRAINING, "samples_per_task": 2, "log_interval": 1, "num_iterations": 6, "val_interval": 2}
EVALUATE = os.path.join(CONFIGS, "evaluate.json")
STATE_KEYS = ("network", "ema", "loss", "optimizer", "lr_scheduler", "trainer", "best_saver", "rng")
# a target that turns NaN after 24 crops (batches of 2 per task x 3 tasks; the loader may fetch ahead), i.e. after
# the first checkpoint (iteration 2)
POISON = {
    "train#random_transforms": [
        {"_target_": "custom.transforms.PairedRandCropd", "keys": ["image", "label"], "roi_size": "@patch_size"},
        {
            "_target_": "Lambdad",
            "keys": ["label"],
            "func": "$lambda x, n=[0]: x if (n.append(1) or len(n) <= 24) else x * float('nan')",
        },
    ]
}


def _cmd(root: str, out: str, *configs: str) -> list[str]:
    extra = [c for c in configs if not c.endswith(".json")]
    configs = tuple(c for c in configs if c.endswith(".json"))
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--meta_file",
        META,
        *extra,
        "--config_file",
        str([TRAIN_CONFIG, *configs]),
        "--logging_file",
        LOGGING,
        "--bundle_root",
        os.path.join(REPO, "bundle"),
        "--dataset_dir",
        root,
        "--ckpt_dir",
        os.path.join(out, "models"),
        "--output_dir",
        os.path.join(out, "eval"),
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(f"{proc.args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _load(out: str, name: str = "latest.pt") -> dict:
    return torch.load(os.path.join(out, "models", name), map_location="cpu", weights_only=True)


def _folder(tmp: str, name: str) -> str:
    path = os.path.join(tmp, name)
    os.makedirs(path)
    return path


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _runs(tmp: str) -> dict:
    """All training CLI runs of this module (each CLI start costs seconds: run them once)."""
    root = _folder(tmp, "data")
    make_dataset(root)
    cfg = _folder(tmp, "cfg")
    tiny, poison = os.path.join(cfg, "tiny.json"), os.path.join(cfg, "poison.json")
    _write_json(tiny, RUN)
    _write_json(poison, POISON)
    before = tree_hashes(root, metadata=True)
    res: dict = {"root": root, "before": before}

    res["full"] = full = _folder(tmp, "full")
    _ok(_run(_cmd(root, full, tiny)))

    # evaluation of the trained checkpoint on the validation split: inputs and the checkpoint stay untouched
    models_before = tree_hashes(os.path.join(full, "models"), metadata=True)
    cmd = _cmd(root, full, EVALUATE, tiny, "--eval_split", "validation")
    cmd[cmd.index("training")] = "evaluating"
    cmd[cmd.index("--output_dir") + 1] = os.path.join(full, "evaluation")
    res["eval"] = _ok(_run(cmd))
    res["models_changed"] = tree_hashes(os.path.join(full, "models"), metadata=True) != models_before

    # killed as soon as the first checkpoint exists, then the same command again
    res["killed"] = killed = _folder(tmp, "killed")
    latest = os.path.join(killed, "models", "latest.pt")
    proc = subprocess.Popen(
        _cmd(root, killed, tiny), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not os.path.exists(latest) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    res["kill_rc"] = proc.wait()
    res["at_kill"] = _load(killed)
    res["resume"] = _ok(_run(_cmd(root, killed, tiny)))

    # NaN target from iteration 3 on
    res["nan"] = nan = _folder(tmp, "nan")
    res["nan_proc"] = _run(_cmd(root, nan, tiny, poison))
    res["after"] = tree_hashes(root, metadata=True)
    return res


@pytest.mark.slow
class TestTrainingUnderFaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.runs = _runs(tmp)

    def test_sigkill_then_rerun_equals_uninterrupted(self):
        runs = self.runs
        self.assertEqual(runs["kill_rc"], -signal.SIGKILL, "the run finished before it could be killed")
        self.assertLess(runs["at_kill"]["trainer"]["iteration"], RUN["num_iterations"])
        out = runs["resume"].stdout + runs["resume"].stderr
        self.assertIn("Resuming from", out)
        full, resumed = _load(runs["full"]), _load(runs["killed"])
        for key in STATE_KEYS:
            assert_state_equal(self, resumed[key], full[key], key)
        best_full = _load(runs["full"], "model.pt")
        for name, t in _load(runs["killed"], "model.pt")["model"].items():  # the best model equals the uninterrupted
            torch.testing.assert_close(t, best_full["model"][name], rtol=0, atol=0)

    def test_non_finite_loss_stops_naming_iteration_and_sources(self):
        runs = self.runs
        proc = runs["nan_proc"]
        self.assertNotEqual(proc.returncode, 0)
        err = proc.stderr
        line = next((x for x in err.splitlines() if x.startswith("FloatingPointError")), "")
        match = re.search(r"non-finite training loss \(nan\) at iteration (\d+) ", line)
        self.assertTrue(match, err[-3000:])
        self.assertIn("_label.nii.gz", line)  # the batch's source files are named
        self.assertIn(runs["root"], line)
        failed = int(match.group(1))
        # nothing corrupt saved: the last checkpoint is a finite one from before the failure, no partial or temp file
        latest = _load(runs["nan"])
        self.assertGreaterEqual(latest["trainer"]["iteration"], 2)
        self.assertLess(latest["trainer"]["iteration"], failed)
        for part in ("network", "loss"):
            for name, t in latest[part].items():
                self.assertTrue(torch.isfinite(t).all(), (part, name))
        for name, t in _load(runs["nan"], "model.pt").items():
            self.assertTrue(torch.isfinite(t).all(), name)
        self.assertEqual(sorted(os.listdir(os.path.join(runs["nan"], "models"))), ["latest.pt", "model.pt"])

    def test_training_and_evaluation_never_modify_inputs(self):
        self.assertEqual(self.runs["after"], self.runs["before"])  # after 4 training runs (one killed) and one eval
        self.assertFalse(self.runs["models_changed"])  # evaluation only reads the checkpoint


@pytest.mark.slow
class TestBadScan(unittest.TestCase):
    def test_bad_scan_in_training_names_it(self):
        """A NaN voxel in a training input: the CLI stops with the file and the problem in the message."""
        import nibabel as nib

        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "data")
            make_dataset(root)
            bad = os.path.join(root, "PET", "training_1_image.nii.gz")
            arr = np.asarray(nib.load(bad).dataobj, dtype=np.float32)
            arr[10, 10, 1] = np.nan
            nib.save(nib.Nifti1Image(arr, np.eye(4)), bad)
            before = tree_hashes(root, metadata=True)
            tiny = os.path.join(tmp, "tiny.json")
            _write_json(tiny, {**RUN, "num_iterations": 2})
            proc = _run(_cmd(root, os.path.join(tmp, "out"), tiny))
            self.assertNotEqual(proc.returncode, 0)
            # refused by the reading layer when the slice is read (the same message as the validator's and
            # inference's)
            self.assertIn(f"{bad}: non-finite values (NaN or inf) in the image", proc.stderr, proc.stderr[-3000:])
            self.assertEqual(tree_hashes(root, metadata=True), before)
            self.assertFalse(os.path.exists(os.path.join(tmp, "out", "models", "latest.pt")))


if __name__ == "__main__":
    unittest.main()
