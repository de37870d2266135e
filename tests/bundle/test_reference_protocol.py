"""The paper's experiment on the authors' released layout, with the published protocol, on a tiny copy of it.

The data set is written as the authors' code writes it (``pickle.dump`` of torch tensors, ``SimpleITK.WriteImage``,
their folder names); the data list is built with ``--layout reference``; a tiny TAT is trained and evaluated
through the real bundle CLI with train.json's defaults (published validation subset, seed, selection, sampler)
and evaluate.json layered on it (``run`` evaluates).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import pytest
import SimpleITK
import torch
from custom.metrics import TaskwiseImageQuality
from custom.settings import load_modality_settings
from custom.tools.datalist import main as datalist_main
from ignite.engine import Engine
from monai.bundle import ConfigParser

from tests.utils import (
    BUNDLE,
    CONFIGS,
    ENV,
    REPO,
    SETTINGS_DIR,
    TASKS,
    TINY_TRAINING,
    TRAIN_CONFIG,
    assert_close_to,
    make_reference_dataset,
)

TRAIN, EVALUATE = TRAIN_CONFIG, os.path.join(CONFIGS, "evaluate.json")
SETTINGS = load_modality_settings(SETTINGS_DIR)


def _bundle(configs: list[str], data_dir: str, out: str, *runner: str, **overrides) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", *runner, "--meta_file", os.path.join(CONFIGS, "metadata.json")]
    cmd += ["--config_file", json.dumps(configs), "--logging_file", os.path.join(CONFIGS, "logging.conf")]
    cmd += ["--bundle_root", BUNDLE, "--dataset_dir", data_dir]
    cmd += ["--ckpt_dir", os.path.join(out, "models"), "--output_dir", os.path.join(out, "eval")]
    for key, value in {**TINY_TRAINING, **overrides}.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-4000:])
    return proc


def _released(root: str) -> str:
    """The tiny copy of the released data set under ``root``, with its data list built and validated."""
    make_reference_dataset(root, counts=(4, 2, 2))
    datalist = os.path.join(root, "datalist.json")
    datalist_main(
        ["build", "--layout", "reference", "--root", root, "--output", datalist, "--settings_dir", SETTINGS_DIR]
    )
    datalist_main(["validate", "--layout", "reference", "--datalist", datalist, "--settings_dir", SETTINGS_DIR])
    return root


def _independent_psnr(lq: np.ndarray, hq: np.ndarray, window) -> float:
    x, y = np.clip(lq, *window).astype(np.float64), np.clip(hq, *window).astype(np.float64)
    return float(10 * np.log10((y.max() - y.min()) ** 2 / np.mean((x - y) ** 2)))


@pytest.mark.slow
class TestReleasedLayoutTrainEvaluate(unittest.TestCase):
    """A tiny TAT trained (2 iterations) and evaluated through the CLI on the released layout, shared by the checks."""

    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.released = _released(os.path.join(tmp, "released"))
        cls.out = out = os.path.join(tmp, "run")
        train = _bundle([TRAIN], cls.released, out, "training", num_iterations=2, val_interval=2, log_interval=1)
        evaluate = _bundle([TRAIN, EVALUATE], cls.released, out)  # no runner id: evaluate.json's "run" evaluates
        cls.train_log, cls.eval_log = train.stdout + train.stderr, evaluate.stdout + evaluate.stderr

    def test_training_reads_bin_patches_and_validates(self):
        latest = torch.load(os.path.join(self.out, "models", "latest.pt"), weights_only=True)
        self.assertEqual(latest["trainer"]["iteration"], 2)
        self.assertEqual(latest["sampler"]["next_batch"], 4)  # the trainer's epoch 1
        self.assertEqual(latest["sampler"]["seed"], 42)
        self.assertEqual(
            latest["sampler"]["task_sizes"], {"low_count_pet": 4, "low_dose_ct": 4, "mri_super_resolution": 4}
        )
        self.assertTrue(os.path.isfile(os.path.join(self.out, "models", "model.pt")))
        with open(os.path.join(self.out, "eval", "metrics.csv"), encoding="utf-8") as f:
            rows = dict(line.split(",") for line in f.read().split())
        for task in ("ct", "pet", "mri", "mean"):
            self.assertTrue(math.isfinite(float(rows[f"val_{task}_psnr"])), task)

    def test_test_phase_every_slice_per_task_csv_and_reference_table(self):
        out = os.path.join(self.out, "eval")
        with open(os.path.join(out, "test_summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        self.assertEqual(set(summary["tasks"]), set(TASKS.values()))
        for modality, task in TASKS.items():
            with open(os.path.join(out, f"test_slices_{task}.csv"), newline="") as f:
                rows = list(csv.DictReader(f))
            self.assertEqual(
                [os.path.basename(r["degraded_file"]) for r in rows],
                [f"{modality.lower()}_test_000.nii", f"{modality.lower()}_test_001.nii"],
            )  # every test slice of the task, in name order
            self.assertEqual(summary["tasks"][task]["n_slices"], 2)
            for m in ("psnr", "ssim", "rmse"):
                mean = float(np.mean([float(r[f"output_{m}"]) for r in rows]))
                assert_close_to(self, summary["tasks"][task]["output"][m], mean, rel=1e-5)  # plain mean of slices
            window = SETTINGS[modality]["eval_window"]
            for r in rows:  # the .nii files were read in place: input PSNR from the files by SimpleITK, independently
                lq = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(r["degraded_file"]))
                hq = SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(r["scan"]))
                assert_close_to(self, float(r["input_psnr"]), _independent_psnr(lq, hq, window), rel=1e-4)
        table = summary["reference_table"]
        self.assertIn(table, self.eval_log)  # printed
        lines = table.splitlines()
        self.assertEqual(lines[0].split()[:2], ["method", "MRI"])
        self.assertTrue(lines[2].startswith("AMIR (MICCAI 2024)"), lines[2])
        self.assertIn("32.0262 / 0.9396 / 29.0988", lines[2])
        self.assertTrue(lines[2].rstrip().endswith("34.2822"), lines[2])
        ours = next(line for line in lines if line.startswith("this model (restored)"))
        psnrs = [summary["tasks"][TASKS[m]]["output"]["psnr"] for m in ("MRI", "CT", "PET")]
        self.assertIn(f"{psnrs[0]:.4f} / ", ours)
        self.assertTrue(ours.rstrip().endswith(f"{np.mean(psnrs):.4f}"), ours)


class TestPublishedValidationSubset(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = cls.tmp.name
        make_reference_dataset(cls.root, counts=(1, 20, 1))
        datalist_main(["build", "--layout", "reference", "--root", cls.root, "--output", cls.root + "/datalist.json"])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def parser(self, **overrides) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(TRAIN)
        parser.update({"bundle_root": BUNDLE, "dataset_dir": self.root, **overrides})
        return parser

    def test_defaults(self):
        parser = self.parser()
        self.assertEqual(parser["seed"], 42)
        self.assertEqual(parser["val_interval"], 1000)
        self.assertEqual(parser["val_files_per_task"], 16)
        self.assertEqual(parser["validate#evaluator#network"], "$@ema.ema_model")
        self.assertEqual(parser["validate#dataloader#batch_size"], 1)
        self.assertIs(parser["best_saver#key_metric_greater_or_equal"], True)
        self.assertEqual(parser["validate#key_metric#val_mean_psnr#key_average"], "slices")

    def test_evaluate_json_runs_the_test_phase_on_every_file(self):
        parser = ConfigParser()
        parser.read_config([TRAIN, EVALUATE])
        parser.update({"bundle_root": BUNDLE, "dataset_dir": self.root, "eval_split": "validation"})
        self.assertEqual(parser["run"], "%evaluating")
        parser.parse()  # macros resolved: `monai.bundle run` without an id evaluates
        run, evaluating = ([str(e).replace("::", "#") for e in parser[k]] for k in ("run", "evaluating"))
        self.assertEqual(run, evaluating)
        self.assertIn("$@validate#evaluator.run()", run)
        self.assertEqual(len(parser.get_parsed_content("validate#datalist")), 60)  # no 16-file subset
        self.assertEqual(parser["validate#dataloader#batch_size"], 1)

    def test_first_16_files_of_each_task_by_name(self):
        items = self.parser().get_parsed_content("validate#datalist")
        self.assertEqual(len(items), 48)
        for modality in ("CT", "MRI", "PET"):
            names = [os.path.basename(i["image"]) for i in items if i["modality"] == modality]
            self.assertEqual(names, [f"{modality.lower()}_validation_{n:03d}.nii" for n in range(16)])
        whole = self.parser(val_files_per_task=None).get_parsed_content("validate#datalist")
        self.assertEqual(len(whole), 60)  # the option: the whole split

    def test_a_tie_keeps_the_later_checkpoint(self):
        parser = self.parser(ckpt_dir=os.path.join(self.root, "models"))
        parser["best_saver"]["save_dict"] = {"model": "@tiny_model"}
        parser["tiny_model"] = {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1}
        saver, model = parser.get_parsed_content("best_saver"), parser.get_parsed_content("tiny_model")
        score = {"value": 0.0}

        def step(engine: Engine, batch) -> None:  # what the SupervisedEvaluator's key metric leaves in its state
            engine.state.key_metric_name = "val_mean_psnr"
            engine.state.metrics["val_mean_psnr"] = score["value"]

        evaluator = Engine(step)
        saver.attach(evaluator)
        path = os.path.join(self.root, "models", "model.pt")
        for weight, psnr in ((1.0, 30.0), (2.0, 30.0), (3.0, 29.0)):
            torch.nn.init.constant_(model.weight, weight)
            score["value"] = psnr
            evaluator.run([0], max_epochs=1)
        self.assertEqual(float(torch.load(path, weights_only=True)["weight"][0, 0]), 2.0)  # 30 >= 30: the later


def _psnr_engine(metric: TaskwiseImageQuality, samples) -> Engine:
    def step(engine, batch):
        return {"pred": batch["pred"], "label": batch["label"]}

    engine = Engine(step)
    metric.attach(engine, "val_mean_psnr")
    engine.run([{"pred": p[None], "label": t[None], "modality": [m]} for p, t, m in samples], max_epochs=1)
    return engine


class TestSelectionMetric(unittest.TestCase):
    def test_selection_metric_is_the_plain_mean_over_slices(self):
        rng = np.random.default_rng(0)
        target = torch.as_tensor(rng.uniform(0.3, 0.6, (1, 16, 16)), dtype=torch.float32)
        samples = [
            (target + s * torch.as_tensor(rng.normal(size=(1, 16, 16)), dtype=torch.float32), target, m)
            for s, m in ((0.01, "CT"), (0.05, "CT"), (0.002, "MRI"))
        ]
        per_slice = [
            _psnr_engine(TaskwiseImageQuality(SETTINGS, key_average="slices"), [x]).state.metrics["val_mean_psnr"]
            for x in samples
        ]
        plain = _psnr_engine(TaskwiseImageQuality(SETTINGS, key_average="slices"), samples).state.metrics
        tasks = _psnr_engine(TaskwiseImageQuality(SETTINGS), samples).state.metrics
        assert_close_to(self, plain["val_mean_psnr"], np.mean(per_slice), rel=1e-6)
        assert_close_to(self, tasks["val_mean_psnr"], np.mean([np.mean(per_slice[:2]), per_slice[2]]), rel=1e-6)
        self.assertGreater(abs(plain["val_mean_psnr"] - tasks["val_mean_psnr"]), 1.0)
        with self.assertRaisesRegex(ValueError, "key_average"):
            TaskwiseImageQuality(SETTINGS, key_average="volumes")


if __name__ == "__main__":
    unittest.main()
