"""Batch inference through the real CLI on the hostile corpus mixed with valid scans: every bad scan is reported
naming its file, the valid scans are written, the exit status is non-zero, inputs are byte-identical; a run
SIGKILLed after its first output and rerun completes the remaining scans (same voxels as an uninterrupted run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized

from tests.reliability.corpus import NAMES as CORPUS_NAMES
from tests.reliability.corpus import make_corpus
from tests.utils import BUNDLE, ENV, INFERENCE_CONFIG, TINY_OVERRIDES, save_checkpoint, tree_hashes

pytestmark = pytest.mark.slow
N_VALID = 6
# scans whose failure is reported by the inference reader (all corpus inputs except those that are only wrong
# as a training pair: shape mismatch with a target, a modality missing where the CT default applies)
PAIR_ONLY = {"shape_mismatch"}


def _cmd(tmp: str, datalist: str, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        INFERENCE_CONFIG,
        "--bundle_root",
        BUNDLE,
        "--checkpoint",
        os.path.join(tmp, "model.pt"),
        *TINY_OVERRIDES,
        "--dataset_dir",
        os.path.join(tmp, "in"),
        "--datalist",
        datalist,
        "--output_dir",
        out,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=os.path.dirname(cmd[-1]))


def _runs(tmp: str) -> dict:
    """The corpus plus valid scans under ``tmp``: one full CLI run, one SIGKILLed after its first output and rerun."""
    root = os.path.join(tmp, "in")
    cases = make_corpus(root)
    save_checkpoint(os.path.join(tmp, "model.pt"))
    rng = np.random.default_rng(0)
    valid = []
    for i in range(N_VALID):
        rel = f"valid/scan{i}.nii.gz"
        os.makedirs(os.path.join(root, "valid"), exist_ok=True)
        arr = (rng.random((64, 64, 6)) * 2000 - 1000).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(root, rel))
        valid.append({"image": rel, "modality": "CT"})
    bad = [{k: v for k, v in c.item.items() if k != "label"} for n, c in cases.items() if n not in PAIR_ONLY]
    datalist = os.path.join(tmp, "datalist.json")
    with open(datalist, "w", encoding="utf-8") as f:
        json.dump({"test": valid + bad}, f)
    before = tree_hashes(root, metadata=True)
    res = {"tmp": tmp, "root": root, "cases": cases, "valid": valid, "bad": bad, "before": before}

    res["full_out"] = os.path.join(tmp, "full_out")
    res["full"] = _run(_cmd(tmp, datalist, res["full_out"]))

    res["killed_out"] = out = os.path.join(tmp, "killed_out")
    first = os.path.join(out, valid[0]["image"])
    proc = subprocess.Popen(
        _cmd(tmp, datalist, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp
    )
    deadline = time.monotonic() + 240
    while not os.path.exists(first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    res["kill_rc"] = proc.wait()
    res["written_at_kill"] = sorted(v["image"] for v in valid if os.path.exists(os.path.join(out, v["image"])))
    res["rerun"] = _run(_cmd(tmp, datalist, out))
    res["after"] = tree_hashes(root, metadata=True)
    return res


def _report(out: str) -> dict:
    with open(os.path.join(out, "inference_report.json"), encoding="utf-8") as f:
        return json.load(f)


# inference reads through the same reading layer as the validator (custom.data.readers), so its message carries the
# same problem words as the validator's (tests/reliability/test_agreement.py checks the messages are identical);
# only the modality differs: a NIfTI item without one has no DICOM tag to fall back on
INFERENCE_NAMES = sorted(name for name in CORPUS_NAMES if name not in PAIR_ONLY)
INFERENCE_OVERRIDES = {"missing_modality": "no modality"}


class TestInferenceOnCorpus(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.runs = _runs(tmp)

    def test_bad_scans_reported_valid_scans_written(self):
        runs = self.runs
        proc = runs["full"]
        self.assertNotEqual(proc.returncode, 0)
        report = _report(runs["full_out"])
        by_image = {os.path.relpath(r["image"], runs["root"]): r for r in report["scans"]}
        for v in runs["valid"]:
            self.assertEqual(by_image[v["image"]]["status"], "written", by_image[v["image"]])
            self.assertTrue(os.path.exists(os.path.join(runs["full_out"], v["image"])))
        for item in runs["bad"]:
            r = by_image[os.path.normpath(item["image"])]
            if r["status"] == "failed":  # (the DICOM series gaps are written: see the per-case message test)
                self.assertIn(os.path.join(runs["root"], item["image"]), proc.stderr)  # listed in the final error too
        self.assertGreaterEqual(report["counts"]["written"], N_VALID)
        self.assertGreaterEqual(report["counts"]["failed"], len(runs["bad"]) - 2)

    def test_killed_inference_rerun_completes_remaining(self):
        runs = self.runs
        self.assertEqual(runs["kill_rc"], -signal.SIGKILL, "inference finished before it could be killed")
        self.assertGreaterEqual(len(runs["written_at_kill"]), 1, runs["written_at_kill"])
        self.assertLess(len(runs["written_at_kill"]), N_VALID, runs["written_at_kill"])
        report = _report(runs["killed_out"])
        status = {os.path.relpath(r["image"], runs["root"]): r["status"] for r in report["scans"]}
        for v in runs["valid"]:
            expected = "skipped" if v["image"] in runs["written_at_kill"] else "written"
            self.assertEqual(status[v["image"]], expected, (v["image"], status))
            a = nib.load(os.path.join(runs["killed_out"], v["image"])).get_fdata()
            b = nib.load(os.path.join(runs["full_out"], v["image"])).get_fdata()
            np.testing.assert_array_equal(a, b)
        leftovers = [f for _, _, files in os.walk(runs["killed_out"]) for f in files if f.startswith(".tmp")]
        self.assertLessEqual(len(leftovers), 1, leftovers)  # at most the one temp file the kill interrupted

    def test_inference_never_modifies_inputs(self):
        self.assertEqual(self.runs["after"], self.runs["before"])

    @parameterized.expand([(name,) for name in INFERENCE_NAMES])
    def test_inference_message_names_file_and_problem(self, name):
        case = self.runs["cases"][name]
        path = os.path.join(self.runs["root"], case.item["image"])
        r = next(r for r in _report(self.runs["full_out"])["scans"] if r["image"] == path)
        self.assertEqual(r["status"], "failed", r)
        self.assertIn(INFERENCE_OVERRIDES.get(name, case.problem), r["message"].lower(), r["message"])
        # the final error: file + problem
        self.assertIn(f"  {path}: {r['message'].splitlines()[0]}", self.runs["full"].stderr)


if __name__ == "__main__":
    unittest.main()
