"""Checkpoint safety: weights-only loading everywhere, code-running pickles refused on the paths users hit,
wrong-architecture checkpoints named key by key, atomic writes (a kill never leaves a partial file under the final
name), and the AMP GradScaler path on overflow."""

from __future__ import annotations

import ast
import glob
import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest
import torch

from tests.utils import ENV, REPO, TINY, TINY_TREN

TINY_NET = {**TINY, **TINY_TREN}


def _python_sources() -> list[str]:
    files = []
    for top in ("custom", "tests", "bundle", "scripts"):
        files += glob.glob(os.path.join(REPO, top, "**", "*.py"), recursive=True)
    return sorted(files)


def test_every_torch_load_is_weights_only():
    """AST scan of the source tree (and a text scan of the bundle configs): every ``torch.load(...)`` passes
    ``weights_only=True`` literally."""
    offenders, seen = [], 0
    for path in _python_sources():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if name == "load" and owner == "torch":
                seen += 1
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    offenders.append(f"{os.path.relpath(path, REPO)}:{node.lineno}")
    for path in glob.glob(os.path.join(REPO, "bundle", "configs", "**", "*.json"), recursive=True):
        text = open(path, encoding="utf-8").read()
        for i, line in enumerate(text.splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{os.path.relpath(path, REPO)}:{i}")
            if "weights_only=False" in line or '"weights_only": false' in line:
                offenders.append(f"{os.path.relpath(path, REPO)}:{i}")
    assert seen >= 5, "the scan found no torch.load call: is it still looking at the right tree?"
    assert not offenders, "torch.load without weights_only=True at: " + ", ".join(offenders)


def test_monai_checkpoint_loader_is_weights_only():
    """The configs restore through monai.handlers.CheckpointLoader: pin that it still loads weights-only."""
    import inspect

    from monai.handlers import CheckpointLoader

    assert "weights_only=True" in inspect.getsource(CheckpointLoader.__call__)


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def evil(tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.pt")
    torch.save({"network": {"w": torch.zeros(1)}, "state_dict": _Payload(marker)}, path)
    return path, marker


def test_pickle_payload_refused_by_load_reference_checkpoint(evil):
    from custom.networks import load_reference_checkpoint

    path, marker = evil
    with pytest.raises(ValueError, match=f"{path}: cannot be loaded safely as a weights-only checkpoint"):
        load_reference_checkpoint(path)
    assert not os.path.exists(marker)


def test_pickle_payload_refused_by_resume_loader(evil, tmp_path):
    """The config's resume path (ResumeCheckpointLoader -> MONAI CheckpointLoader) refuses the payload."""
    from custom.handlers import ResumeCheckpointLoader
    from ignite.engine import Engine

    path, marker = evil
    net = torch.nn.Linear(1, 1)
    engine = Engine(lambda e, b: None)
    ResumeCheckpointLoader(load_path=path, load_dict={"network": net}, map_location="cpu").attach(engine)
    with pytest.raises(ValueError, match="cannot be loaded safely as a weights-only checkpoint") as err:
        engine.run([0], max_epochs=1)
    assert path in str(err.value)  # the message names the file
    assert "GLOBAL os.makedirs" in str(err.value)  # and the refused callable
    assert not os.path.exists(marker)


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    from custom.networks import TAT, load_reference_checkpoint

    small = TAT(**TINY_NET)
    path = str(tmp_path / "small.pt")
    torch.save({"state_dict": small.state_dict()}, path)
    wider = TAT(**{**TINY_NET, "dim": 16})
    with pytest.raises(ValueError) as err:
        load_reference_checkpoint(path, wider)
    msg = str(err.value)
    assert msg.startswith(path) and "does not match this TAT's architecture or hyper-parameters" in msg, msg[:2000]
    assert "patch_embed.weight (8, 1, 3, 3) -> patch_embed.weight expects (16, 1, 3, 3)" in msg, msg[:2000]
    # the bundle's own checkpoints go through torch's strict load_state_dict (CheckpointLoader strict=True)
    deeper = TAT(**{**TINY_NET, "num_blocks": (2, 1, 1, 1)})
    with pytest.raises(RuntimeError) as err:
        deeper.load_state_dict(small.state_dict(), strict=True)
    assert "Missing key(s)" in str(err.value) and "encoder_level1.1." in str(err.value)
    with pytest.raises(
        RuntimeError,
        match=r"size mismatch for patch_embed.weight: copying a param with shape "
        r"torch.Size\(\[8, 1, 3, 3\]\).*torch.Size\(\[16, 1, 3, 3\]\)",
    ):
        wider.load_state_dict(small.state_dict(), strict=True)


# ---------------------------------------------------------------- atomic writes
def test_atomic_saver_never_leaves_partial_file(tmp_path):
    """A save that dies half-way (simulated: torch.save writes bytes then raises) leaves the previous complete
    checkpoint under the final name and no temporary file."""
    from custom.handlers.checkpoint import AtomicDiskSaver

    saver = AtomicDiskSaver(str(tmp_path), filename="latest.pt")
    saver({"network": {"w": torch.ones(3)}}, "ignored.pt")
    good = open(tmp_path / "latest.pt", "rb").read()
    real_save = torch.save

    def dying_save(obj, f, **kw):
        f.write(b"PARTIAL" * 100)
        raise KeyboardInterrupt("killed mid-write")

    with mock.patch("ignite.handlers.checkpoint.torch.save", dying_save), pytest.raises(KeyboardInterrupt):
        saver({"network": {"w": torch.zeros(3)}}, "ignored.pt")
    assert open(tmp_path / "latest.pt", "rb").read() == good
    assert sorted(os.listdir(tmp_path)) == ["latest.pt"]
    assert real_save is torch.save


def test_write_json_atomic_never_leaves_partial_file(tmp_path):
    from custom.io import write_json_atomic

    path = tmp_path / "datalist.json"
    write_json_atomic(path, {"training": [1]})

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(path, {"training": [Boom()]})  # fails after writing part of the document
    assert json.loads(path.read_text()) == {"training": [1]}
    assert sorted(os.listdir(tmp_path)) == ["datalist.json"]


_WRITER = """
import sys, torch
from custom.handlers.checkpoint import AtomicDiskSaver
big = {"network": {"w": torch.zeros(64 * 2**20)}}  # 256 MiB: slow enough to be killed while writing
saver = AtomicDiskSaver(sys.argv[1], filename="latest.pt")
print("ready", flush=True)
while True:
    saver(big, "x.pt")
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write(tmp_path):
    """A real writer process SIGKILLed while a temporary file is being written: the final name is either absent
    or a complete checkpoint, never a partial one."""
    out = tmp_path / "models"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for a temp file being written (not yet renamed)
            temps = [p for p in out.iterdir() if p.name != "latest.pt"] if out.exists() else []
            if temps and temps[0].stat().st_size > 0:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    temps = [p for p in out.iterdir() if p.name != "latest.pt"]
    assert temps, "no temporary file was seen: the kill did not land mid-write"
    assert temps[0].stat().st_size < 256 * 2**20  # the leftover temp is the partial one
    if (out / "latest.pt").exists():
        ckpt = torch.load(out / "latest.pt", weights_only=True)
        assert ckpt["network"]["w"].numel() == 64 * 2**20


# ---------------------------------------------------------------- AMP
def test_grad_scaler_skips_overflowing_step():
    """TaskAdaptiveTrainer's scaler path: an overflow in the scaled backward skips the optimiser step and lowers
    the scale; the next finite step updates the weights. On this CPU-only machine autocast("cuda") is inactive, so
    the CPU GradScaler stands in for the CUDA one (AMP itself is CUDA-only in this bundle)."""
    import warnings

    from custom.engines import TaskAdaptiveTrainer

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 1)
    scale_box = {"factor": 1e35}

    def loss_fn(inputs, pred, target):
        return (pred - target).abs().mean() * scale_box["factor"]  # finite, but inf once scaled by 2**16

    data = [{"image": torch.rand(1, 1, 4, 4), "label": torch.rand(1, 1, 4, 4)}] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = TaskAdaptiveTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=data,
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            loss_function=loss_fn,
            amp=True,
            epoch_length=1,
        )
    before = [p.detach().clone() for p in net.parameters()]
    # SupervisedTrainer.run() builds torch.cuda.amp.GradScaler(), disabled without CUDA: use the CPU scaler instead
    cpu_scaler = lambda: torch.amp.GradScaler("cpu", init_scale=2.0**16)  # noqa: E731
    with mock.patch("torch.cuda.amp.GradScaler", cpu_scaler):
        trainer.run()
        assert trainer.scaler.get_scale() == 2.0**15  # overflow seen, scale halved
        for a, b in zip(before, net.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)  # step skipped
        scale_box["factor"] = 1.0
        trainer.state.max_epochs = 2
        trainer.run()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
