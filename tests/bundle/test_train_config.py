"""The training workflow through the real CLI (``python -m monai.bundle run training``) on tiny synthetic data.

Runs are shared between assertions (module-scoped fixtures): a full run of N iterations, the same budget as two
runs of N/2 (resume), a 2-process ``torchrun`` gloo run, and in-process runs of the documented ablation overrides.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import unittest

import pytest
import torch

from tests.utils import CONFIGS, ENV, LOGGING, META, REPO, TINY_TRAINING, TRAIN_CONFIG, assert_state_equal, make_dataset

MULTI = os.path.join(CONFIGS, "multi_gpu_train.json")
BIN = os.path.dirname(sys.executable)
# tiny network, 32x32 crops, 2 per task, N = 4 iterations validated every 2
TINY = {**TINY_TRAINING, "samples_per_task": 2, "num_iterations": 4, "val_interval": 2, "log_interval": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    datalist = make_dataset(str(root))
    tiny = root / "tiny.json"
    tiny.write_text(json.dumps(TINY))
    return {"root": str(root), "datalist": datalist, "tiny": str(tiny)}


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


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    proc = _cli(data, out)
    return out, proc


@pytest.fixture(scope="module")
def resumed_run(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("resumed"))
    _cli(data, out, "--train#trainer#max_epochs", "1")  # stops after N/2 iterations, as if interrupted
    first = torch.load(os.path.join(out, "models", "latest.pt"), weights_only=True)
    proc = _cli(data, out)  # same command, same folder: resumes
    return out, first, proc


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
class TestTrainCLI:
    def test_outputs_exist_and_are_finite(self, full_run):
        out, proc = full_run
        case = unittest.TestCase()
        latest = torch.load(os.path.join(out, "models", "latest.pt"), weights_only=True)
        case.assertEqual(
            sorted(latest),
            ["best_saver", "ema", "loss", "lr_scheduler", "network", "optimizer", "rng", "sampler", "trainer"],
        )
        case.assertEqual(latest["trainer"]["iteration"], 4)
        for name, t in latest["network"].items():
            assert torch.isfinite(t).all(), name
        case.assertIn("estimator.head.bias", latest["loss"])
        best = torch.load(os.path.join(out, "models", "model.pt"), weights_only=True)
        # the best model: the EMA network's state dict under "model", with the task statistics stored at the end
        case.assertEqual(sorted(best), ["model", "task_statistics"])
        case.assertEqual(best["task_statistics"]["tasks"], ["CT", "MRI", "PET"])
        best = best["model"]
        case.assertEqual(sorted(best), sorted(latest["network"]))
        for key in best:
            torch.testing.assert_close(best[key], latest["ema"]["ema_model"][key])

        rows = dict(line.split(",") for line in open(os.path.join(out, "eval", "metrics.csv")).read().split())
        for task in ("ct", "pet", "mri", "mean"):
            for metric in ("psnr", "ssim", "rmse"):
                assert math.isfinite(float(rows[f"val_{task}_{metric}"])), (task, metric)

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
            assert tag in scalars, (tag, sorted(scalars))
            assert all(math.isfinite(v) for v in scalars[tag]), tag
        case.assertEqual(len(scalars["train_loss"]), 4)
        assert scalars["lr"][0] > scalars["lr"][-1] > 0  # cosine annealing
        assert "Got new best metric of val_mean_psnr" in proc.stdout + proc.stderr

    def test_two_half_runs_equal_one_full_run(self, full_run, resumed_run):
        case = unittest.TestCase()
        full = torch.load(os.path.join(full_run[0], "models", "latest.pt"), weights_only=True)
        out, first, proc = resumed_run
        case.assertEqual(first["trainer"]["iteration"], 2)
        case.assertEqual(len(first["best_saver"]["_saved"]), 1)  # best score so far travels with the resume file
        assert "Resuming from" in proc.stdout + proc.stderr
        resumed = torch.load(os.path.join(out, "models", "latest.pt"), weights_only=True)
        for key in ("network", "ema", "loss", "optimizer", "lr_scheduler", "trainer", "best_saver", "sampler"):
            assert_state_equal(case, resumed[key], full[key], key)


@pytest.mark.slow
def test_multi_gpu_config_gloo(data, tmp_path):
    out = str(tmp_path)
    launcher = (os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node=2", "-m")
    _cli(data, out, MULTI, launcher=launcher)
    latest = torch.load(os.path.join(out, "models", "latest.pt"), weights_only=True)
    assert latest["trainer"]["iteration"] == 4
    assert not any(k.startswith("module.") for k in latest["network"])  # saved unwrapped: loadable without DDP
    events = glob.glob(os.path.join(out, "eval", "events.out.tfevents.*"))
    assert len({os.path.basename(e).split(".")[-2] for e in events}) == 1  # one process (rank 0) writes
    rows = dict(line.split(",") for line in open(os.path.join(out, "eval", "metrics.csv")).read().split())
    assert math.isfinite(float(rows["val_mean_psnr"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, check",
    [
        ({"modalities": ["CT"]}, "single_modality"),
        ({"network_def#task_adaptive": False}, "weight_generation_off"),
        ({"loss_def#_target_": "custom.losses.PlainL1Loss"}, "loss_balancing_off"),
    ],
)
def test_ablation_overrides(data, tmp_path, override, check):
    """The README's ablation overrides, run in-process with ConfigWorkflow (same parser as the CLI)."""
    from monai.bundle import ConfigWorkflow

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = {
            **TINY,
            "num_iterations": 2,
            "bundle_root": os.path.join(REPO, "bundle"),
            "dataset_dir": data["root"],
            "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"),
            **override,
        }
        wf = ConfigWorkflow(config_file=TRAIN_CONFIG, meta_file=META, workflow_type="train", **overrides)
        wf.initialize()
        wf.run()
        wf.finalize()
    finally:
        torch.set_num_threads(threads)
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)
    rows = dict(line.split(",") for line in open(tmp_path / "eval" / "metrics.csv").read().split())
    if check == "single_modality":
        assert "val_ct_psnr" in rows and "val_pet_psnr" not in rows and "val_mri_psnr" not in rows
    elif check == "weight_generation_off":
        assert len(latest["network"]) < len(_tat_keys(task_adaptive=True))
    else:
        assert latest["loss"] == {}
    assert math.isfinite(float(rows["val_mean_psnr"]))


def _tat_keys(task_adaptive: bool) -> list[str]:
    from custom.networks import TAT

    net = TAT(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        train_patch_size=32,
        tren_hidden_channels=8,
        tren_embed_dim=16,
        task_adaptive=task_adaptive,
    )
    return list(net.state_dict())


def test_config_properties(data, tmp_path):
    """MONAI's train-workflow property check (the zoo tooling relies on it) passes on the layered configs."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=TRAIN_CONFIG,
        meta_file=META,
        workflow_type="train",
        bundle_root=os.path.join(REPO, "bundle"),
        dataset_dir=data["root"],
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        **TINY,
    )
    wf.initialize()
    assert not wf.check_properties()
    assert wf.parser["training"] == wf.parser["run"]
    # the multi-GPU file only overrides ids that train.json defines (plus its own new ones)
    with open(MULTI) as f:
        multi = json.load(f)
    new_ids = {"dist_backend", "ddp_device_ids", "find_unused_parameters", "validate#sampler", "not_rank0"}
    for key in multi:  # an overridden key, or a new argument of a component train.json defines
        assert key in new_ids or key in wf.parser or key.rsplit("#", 1)[0] in wf.parser, key
