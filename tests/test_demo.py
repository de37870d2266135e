"""custom.tools.demo: the orchestration (data list -> bundle training CLI -> evaluate.json CLI -> report) on a tiny budget.

The real demo data needs wheels from PyPI; here the demo is pointed at a pre-built tiny data list instead.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import subprocess
import sys

import pytest
from custom.networks import TAT
from custom.tools.demo import BUNDLE_DIR, DEMO_OVERRIDES, bundle_command

from tests.utils import TINY_TRAINING, make_tiny_dataset


def test_demo_overrides_are_train_json_keys():
    with open(os.path.join(BUNDLE_DIR, "configs", "train.json"), encoding="utf-8") as f:
        config = json.load(f)
    tat_args = inspect.signature(TAT).parameters
    for key in DEMO_OVERRIDES:
        if key.startswith("network_def#"):  # network arguments may be new keys of network_def
            assert key.split("#")[1] in tat_args, f"demo override {key} is not a TAT argument"
        else:
            assert key in config, f"demo override {key} is not a train.json key"
    cmd = bundle_command("evaluating", ["train.json", "evaluate.json"], "/d", "/m", "/o", {"network_def#heads": [1, 2]})
    assert cmd[cmd.index("--network_def#heads") + 1] == "[1, 2]"
    assert json.loads(cmd[cmd.index("--config_file") + 1])[1].endswith(os.path.join("configs", "evaluate.json"))


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    datalist = make_tiny_dataset(str(tmp_path / "data"))
    cmd = [
        sys.executable,
        "-m",
        "custom.tools.demo",
        "--output_dir",
        str(tmp_path / "demo"),
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
    stale = tmp_path / "demo" / "models" / "latest.pt"  # a previous run's leftovers: training must start afresh
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not a checkpoint")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    demo = tmp_path / "demo"
    assert (demo / "models" / "model.pt").is_file() and (demo / "models" / "latest.pt").is_file()
    summary = json.loads((demo / "evaluation" / "test_summary.json").read_text())
    assert set(summary["tasks"]) == {"low_dose_ct", "low_count_pet", "mri_super_resolution"}
    for task in summary["tasks"]:
        assert (demo / "evaluation" / f"test_panel_{task}.png").is_file()
        assert task in proc.stdout  # the per-task table is printed
    assert "PSNR in" in proc.stdout and "test_scans.csv" in proc.stdout and "wall time" in proc.stdout
    assert not (demo / "data").exists()  # a given data list is used as is

    assert "starting a new training" in log  # the stale latest.pt was removed, not resumed from

    # task check, difference output and review panel (issue 13): every test scan restored with its task printed
    assert "task statistics stored in" in log  # train.json's handler at the end of training
    report = json.loads((demo / "inference" / "inference_report.json").read_text())
    tests = json.loads(open(datalist, encoding="utf-8").read())["test"]
    assert report["counts"]["written"] == len(tests)
    for scan in report["scans"]:
        assert scan["predicted_task"] in ("CT", "PET", "MRI") and isinstance(scan["warnings"], list)
        assert os.path.isfile(scan["difference_output"])
        # scans of different tasks may share a file name: one printed line per scan, in the report's order
        lines = [x for x in proc.stdout.splitlines() if os.path.basename(scan["image"]) + ": declared" in x]
        assert any(f"predicted {scan['predicted_task']} " in x for x in lines), (scan, lines)
    printed = [x for x in proc.stdout.splitlines() if ": declared" in x and ", predicted " in x]
    assert len(printed) == len(report["scans"])
    assert (demo / "evaluation" / "review_panel_mri.png").stat().st_size > 1000
    assert "data-consistent MRI" in proc.stdout

    # the printed one-line restore command works on a user's folder of scans (here the tiny test images, as CT)
    overlay = json.loads((demo / "models" / "demo_inference.json").read_text())
    assert overlay["checkpoint"] == str(demo / "models" / "model.pt")
    assert overlay["network_def#dim"] == TINY_TRAINING["network_def#dim"]
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("python -m monai.bundle run inference"))
    line = line.split("#")[0]
    scans, restored = tmp_path / "my_scans", tmp_path / "restored"
    scans.mkdir()
    src = next(p for p in sorted((tmp_path / "data").rglob("*.nii*")) if "ct" in str(p).lower())
    (scans / src.name).write_bytes(src.read_bytes())
    args = shlex.split(line.replace("YOUR_SCANS", str(scans)).replace("YOUR_OUTPUT_DIR", str(restored)))
    assert args[:3] == ["python", "-m", "monai.bundle"]
    run = subprocess.run(
        [sys.executable, *args[1:], "--modality", "CT"], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert (restored / src.name).is_file()
