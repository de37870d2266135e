"""The training workflow through the real CLI (``python -m monai.bundle run training``) on tiny synthetic data.

Runs are shared between assertions (setUpClass): a full run of N iterations, the same budget as two
runs of N/2 (resume), a 2-process ``torchrun`` gloo run, and in-process runs of the documented ablation overrides.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import pytest
import torch
from parameterized import parameterized

from tests.utils import CONFIGS, ENV, LOGGING, META, REPO
from tests.utils import TINY as TINY_NET
from tests.utils import TINY_TRAINING, TINY_TREN, TRAIN_CONFIG, assert_state_equal, make_dataset

MULTI = os.path.join(CONFIGS, "multi_gpu_train.json")
BIN = os.path.dirname(sys.executable)
# tiny network, 32x32 crops, 2 per task, N = 4 iterations validated every 2
TINY = {**TINY_TRAINING, "samples_per_task": 2, "num_iterations": 4, "val_interval": 2, "log_interval": 1}


def _dataset(root: str) -> dict:
    """The tiny data set and the tiny-run overrides (as a config file) under ``root``."""
    datalist = make_dataset(root)
    tiny = os.path.join(root, "tiny.json")
    with open(tiny, "w", encoding="utf-8") as f:
        json.dump(TINY, f)
    return {"root": root, "datalist": datalist, "tiny": tiny}


def _metrics(out: str) -> dict[str, str]:
    with open(os.path.join(out, "eval", "metrics.csv"), encoding="utf-8") as f:
        return dict(line.split(",") for line in f.read().split())


def _cli(
    data: dict, out: str, *extra: str, launcher: tuple[str, ...] = (sys.executable, "-m")
) -> subprocess.CompletedProcess:
    configs = [TRAIN_CONFIG, *(c for c in extra if c.endswith(".json")), data["tiny"]]
    overrides = [c for c in extra if not c.endswith(".json")]
    cmd = [
        *launcher,
        "monai.bundle",
        "run",
        "training",
        "--meta_file",
        META,
        "--config_file",
        str(configs),
        "--logging_file",
        LOGGING,
        "--bundle_root",
        os.path.join(REPO, "bundle"),
        "--dataset_dir",
        data["root"],
        "--ckpt_dir",
        os.path.join(out, "models"),
        "--output_dir",
        os.path.join(out, "eval"),
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def _scalars(folder: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        acc = EventAccumulator(path)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return values


@pytest.mark.slow
class TestTrainCLI(unittest.TestCase):
    """A full run of N iterations and the same budget as two runs of N/2 (resume), shared by the checks."""

    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        tmp = tmp
        data = _dataset(os.path.join(tmp, "data"))
        cls.full_out = os.path.join(tmp, "full")
        cls.full_proc = _cli(data, cls.full_out)
        cls.resumed_out = os.path.join(tmp, "resumed")
        _cli(data, cls.resumed_out, "--train#trainer#max_epochs", "1")  # stops after N/2 iterations, as if interrupted
        cls.first = torch.load(os.path.join(cls.resumed_out, "models", "latest.pt"), weights_only=True)
        cls.resumed_proc = _cli(data, cls.resumed_out)  # same command, same folder: resumes

    def test_outputs_exist_and_are_finite(self):
        out, proc = self.full_out, self.full_proc
        latest = torch.load(os.path.join(out, "models", "latest.pt"), weights_only=True)
        self.assertEqual(
            sorted(latest),
            ["best_saver", "ema", "loss", "lr_scheduler", "network", "optimizer", "rng", "sampler", "trainer"],
        )
        self.assertEqual(latest["trainer"]["iteration"], 4)
        for name, t in latest["network"].items():
            self.assertTrue(torch.isfinite(t).all(), name)
        self.assertIn("estimator.head.bias", latest["loss"])
        best = torch.load(os.path.join(out, "models", "model.pt"), weights_only=True)
        # the best model: the EMA network's state dict under "model", with the task statistics stored at the end
        self.assertEqual(sorted(best), ["model", "task_statistics"])
        self.assertEqual(best["task_statistics"]["tasks"], ["CT", "MRI", "PET"])
        best = best["model"]
        self.assertEqual(sorted(best), sorted(latest["network"]))
        for key in best:
            torch.testing.assert_close(best[key], latest["ema"]["ema_model"][key])

        rows = _metrics(out)
        for task in ("ct", "pet", "mri", "mean"):
            for metric in ("psnr", "ssim", "rmse"):
                self.assertTrue(math.isfinite(float(rows[f"val_{task}_{metric}"])), (task, metric))

        scalars = _scalars(os.path.join(out, "eval"))
        for tag in (
            "train_loss",
            "lr",
            "loss_weight/ct",
            "loss_weight/pet",
            "loss_weight/mri",
            "val_mean_psnr",
            "val_ct_psnr",
            "val_pet_ssim",
            "val_mri_rmse",
        ):
            self.assertIn(tag, scalars, sorted(scalars))
            self.assertTrue(all(math.isfinite(v) for v in scalars[tag]), tag)
        self.assertEqual(len(scalars["train_loss"]), 4)
        self.assertGreater(scalars["lr"][0], scalars["lr"][-1])  # cosine annealing
        self.assertGreater(scalars["lr"][-1], 0)
        self.assertIn("Got new best metric of val_mean_psnr", proc.stdout + proc.stderr)

    def test_two_half_runs_equal_one_full_run(self):
        full = torch.load(os.path.join(self.full_out, "models", "latest.pt"), weights_only=True)
        self.assertEqual(self.first["trainer"]["iteration"], 2)
        self.assertEqual(len(self.first["best_saver"]["_saved"]), 1)  # best score so far travels with the resume file
        self.assertIn("Resuming from", self.resumed_proc.stdout + self.resumed_proc.stderr)
        resumed = torch.load(os.path.join(self.resumed_out, "models", "latest.pt"), weights_only=True)
        for key in ("network", "ema", "loss", "optimizer", "lr_scheduler", "trainer", "best_saver", "sampler"):
            assert_state_equal(self, resumed[key], full[key], key)


class _WithData(unittest.TestCase):
    """The tiny data set, once per class, and a fresh output folder per test."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._data_dir = tempfile.TemporaryDirectory()
        cls.data = _dataset(cls._data_dir.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls._data_dir.cleanup()

    def setUp(self) -> None:
        self._out = tempfile.TemporaryDirectory()
        self.out = self._out.name

    def tearDown(self) -> None:
        self._out.cleanup()


@pytest.mark.slow
class TestMultiGPU(_WithData):
    def test_multi_gpu_config_gloo(self):
        launcher = (os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node=2", "-m")
        _cli(self.data, self.out, MULTI, launcher=launcher)
        latest = torch.load(os.path.join(self.out, "models", "latest.pt"), weights_only=True)
        self.assertEqual(latest["trainer"]["iteration"], 4)
        self.assertFalse([k for k in latest["network"] if k.startswith("module.")])  # unwrapped: loadable without DDP
        events = glob.glob(os.path.join(self.out, "eval", "events.out.tfevents.*"))
        self.assertEqual(len({os.path.basename(e).split(".")[-2] for e in events}), 1)  # one process (rank 0) writes
        self.assertTrue(math.isfinite(float(_metrics(self.out)["val_mean_psnr"])))


def _tat_keys(task_adaptive: bool) -> list[str]:
    from custom.networks import TAT

    return list(TAT(**TINY_NET, **TINY_TREN, task_adaptive=task_adaptive).state_dict())


@pytest.mark.slow
class TestAblations(_WithData):
    @parameterized.expand(
        [
            ("single_modality", {"modalities": ["CT"]}),
            ("weight_generation_off", {"network_def#task_adaptive": False}),
            ("loss_balancing_off", {"loss_def#_target_": "custom.losses.PlainL1Loss"}),
            ("task_contrast", {"task_contrast_weight": 0.1}),
        ]
    )
    def test_ablation_overrides(self, check, override):
        """The README's ablation overrides, run in-process with ConfigWorkflow (same parser as the CLI)."""
        from monai.bundle import ConfigWorkflow

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            overrides = {
                **TINY,
                "num_iterations": 2,
                "bundle_root": os.path.join(REPO, "bundle"),
                "dataset_dir": self.data["root"],
                "ckpt_dir": os.path.join(self.out, "models"),
                "output_dir": os.path.join(self.out, "eval"),
                **override,
            }
            wf = ConfigWorkflow(config_file=TRAIN_CONFIG, meta_file=META, workflow_type="train", **overrides)
            wf.initialize()
            wf.run()
            wf.finalize()
        finally:
            torch.set_num_threads(threads)
        latest = torch.load(os.path.join(self.out, "models", "latest.pt"), weights_only=True)
        rows = _metrics(self.out)
        if check == "single_modality":
            self.assertIn("val_ct_psnr", rows)
            self.assertNotIn("val_pet_psnr", rows)
            self.assertNotIn("val_mri_psnr", rows)
        elif check == "weight_generation_off":
            self.assertLess(len(latest["network"]), len(_tat_keys(task_adaptive=True)))
        elif check == "task_contrast":
            trainer = wf.parser.get_parsed_content("train#trainer")
            self.assertEqual(trainer.loss_function.task_contrast_weight, 0.1)
            self.assertIn("task_contrast", trainer.state.output[0])
            self.assertEqual(sorted(latest["network"]), sorted(_tat_keys(task_adaptive=True)))  # no new weights
        else:
            self.assertEqual(latest["loss"], {})
        self.assertTrue(math.isfinite(float(rows["val_mean_psnr"])))


class TestConfigProperties(_WithData):
    def test_config_properties(self):
        """MONAI's train-workflow property check (the zoo tooling relies on it) passes on the layered configs."""
        from monai.bundle import ConfigWorkflow

        wf = ConfigWorkflow(
            config_file=TRAIN_CONFIG,
            meta_file=META,
            workflow_type="train",
            bundle_root=os.path.join(REPO, "bundle"),
            dataset_dir=self.data["root"],
            ckpt_dir=os.path.join(self.out, "models"),
            output_dir=os.path.join(self.out, "eval"),
            **TINY,
        )
        wf.initialize()
        self.assertFalse(wf.check_properties())
        self.assertEqual(wf.parser["training"], wf.parser["run"])
        # the published recipe: no task-contrast term (beyond the paper, opt-in)
        self.assertEqual(wf.parser.get_parsed_content("train#trainer").loss_function.task_contrast_weight, 0.0)
        # the multi-GPU file only overrides ids that train.json defines (plus its own new ones)
        with open(MULTI) as f:
            multi = json.load(f)
        new_ids = {"dist_backend", "ddp_device_ids", "find_unused_parameters", "validate#sampler", "not_rank0"}
        for key in multi:  # an overridden key, or a new argument of a component train.json defines
            self.assertTrue(key in new_ids or key in wf.parser or key.rsplit("#", 1)[0] in wf.parser, key)


class TestEvaluationPrecision(unittest.TestCase):
    def test_published_test_phase_is_float32_whatever_amp(self):
        """evaluate.json's evaluator never autocasts (``amp`` false even with ``--amp True``, the training override
        the docs suggest): the test phase's precision is ``autocast_dtype`` alone (null: float32); train.json's
        validation follows ``amp``."""
        from monai.bundle import ConfigParser

        for amp in (True, False):
            parser = ConfigParser()
            parser.read_config([TRAIN_CONFIG, os.path.join(CONFIGS, "evaluate.json")])
            parser["amp"] = amp
            self.assertIs(parser.get_parsed_content("validate#evaluator#amp"), False)
            self.assertIsNone(parser.get_parsed_content("validate#inferer#autocast_dtype"))
            train = ConfigParser()
            train.read_config(TRAIN_CONFIG)
            train["amp"] = amp
            self.assertIs(train.get_parsed_content("validate#evaluator#amp"), amp)

    def test_validation_amp_given_as_text_is_read_as_meant(self):
        """``--amp false`` reaches the config as the text 'false' (fire parses Python literals only): MONAI's
        evaluator would take it as truthy and autocast validation; train.json reads it as a switch."""
        from monai.bundle import ConfigParser

        for text, expected in (("false", False), ("False", False), ("true", True), ("0", False)):
            train = ConfigParser()
            train.read_config(TRAIN_CONFIG)
            train["amp"] = text
            self.assertIs(train.get_parsed_content("validate#evaluator#amp"), expected, text)
        train = ConfigParser()
        train.read_config(TRAIN_CONFIG)
        train["amp"] = "half"
        with self.assertRaises(RuntimeError) as raised:  # MONAI wraps a component's error, the cause says why
            train.get_parsed_content("validate#evaluator#amp")
        self.assertIsInstance(raised.exception.__cause__, ValueError)
        self.assertIn("amp must be true or false, got 'half'", str(raised.exception.__cause__))


if __name__ == "__main__":
    unittest.main()
