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
import tempfile
import time
import unittest
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


class TestWeightsOnly(unittest.TestCase):
    def test_every_torch_load_is_weights_only(self):
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
        self.assertGreaterEqual(seen, 5, "the scan found no torch.load call: is it still looking at the right tree?")
        self.assertFalse(offenders, "torch.load without weights_only=True at: " + ", ".join(offenders))

    def test_monai_checkpoint_loader_is_weights_only(self):
        """The configs restore through monai.handlers.CheckpointLoader: pin that it still loads weights-only."""
        import inspect

        from monai.handlers import CheckpointLoader

        self.assertIn("weights_only=True", inspect.getsource(CheckpointLoader.__call__))


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class TestPicklePayload(unittest.TestCase):
    """A checkpoint whose unpickling would run code (``os.makedirs(marker)``) is refused, and nothing runs."""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.marker = os.path.join(self._tmp.name, "pwned")
        self.path = os.path.join(self._tmp.name, "evil.pt")
        torch.save({"network": {"w": torch.zeros(1)}, "state_dict": _Payload(self.marker)}, self.path)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def test_pickle_payload_refused_by_load_reference_checkpoint(self):
        from custom.networks import load_reference_checkpoint

        with self.assertRaisesRegex(ValueError, f"{self.path}: cannot be loaded safely as a weights-only checkpoint"):
            load_reference_checkpoint(self.path)
        self.assertFalse(os.path.exists(self.marker))

    def test_pickle_payload_refused_by_resume_loader(self):
        """The config's resume path (ResumeCheckpointLoader -> MONAI CheckpointLoader) refuses the payload."""
        from custom.handlers import ResumeCheckpointLoader
        from ignite.engine import Engine

        net = torch.nn.Linear(1, 1)
        engine = Engine(lambda e, b: None)
        ResumeCheckpointLoader(load_path=self.path, load_dict={"network": net}, map_location="cpu").attach(engine)
        with self.assertRaisesRegex(ValueError, "cannot be loaded safely as a weights-only checkpoint") as err:
            engine.run([0], max_epochs=1)
        self.assertIn(self.path, str(err.exception))  # the message names the file
        self.assertIn("GLOBAL os.makedirs", str(err.exception))  # and the refused callable
        self.assertFalse(os.path.exists(self.marker))


class TestWrongArchitecture(unittest.TestCase):
    def test_wrong_architecture_names_keys_and_shapes(self):
        from custom.networks import TAT, load_reference_checkpoint

        small = TAT(**TINY_NET)
        wider = TAT(**{**TINY_NET, "dim": 16})
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "small.pt")
            torch.save({"state_dict": small.state_dict()}, path)
            with self.assertRaises(ValueError) as err:
                load_reference_checkpoint(path, wider)
        msg = str(err.exception)
        self.assertTrue(msg.startswith(path), msg[:2000])
        self.assertIn("does not match this TAT's architecture or hyper-parameters", msg, msg[:2000])
        self.assertIn("patch_embed.weight (8, 1, 3, 3) -> patch_embed.weight expects (16, 1, 3, 3)", msg)
        # the bundle's own checkpoints go through torch's strict load_state_dict (CheckpointLoader strict=True)
        deeper = TAT(**{**TINY_NET, "num_blocks": (2, 1, 1, 1)})
        with self.assertRaises(RuntimeError) as err:
            deeper.load_state_dict(small.state_dict(), strict=True)
        self.assertIn("Missing key(s)", str(err.exception))
        self.assertIn("encoder_level1.1.", str(err.exception))
        with self.assertRaisesRegex(
            RuntimeError,
            r"size mismatch for patch_embed.weight: copying a param with shape "
            r"torch.Size\(\[8, 1, 3, 3\]\).*torch.Size\(\[16, 1, 3, 3\]\)",
        ):
            wider.load_state_dict(small.state_dict(), strict=True)


# ---------------------------------------------------------------- atomic writes
_WRITER = """
import sys, torch
from custom.handlers.checkpoint import AtomicDiskSaver
big = {"network": {"w": torch.zeros(64 * 2**20)}}  # 256 MiB: slow enough to be killed while writing
saver = AtomicDiskSaver(sys.argv[1], filename="latest.pt")
print("ready", flush=True)
while True:
    saver(big, "x.pt")
"""


class TestAtomicWrites(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def test_atomic_saver_never_leaves_partial_file(self):
        """A save that dies half-way (simulated: torch.save writes bytes then raises) leaves the previous complete
        checkpoint under the final name and no temporary file."""
        from custom.handlers.checkpoint import AtomicDiskSaver

        saver = AtomicDiskSaver(self.tmp, filename="latest.pt")
        saver({"network": {"w": torch.ones(3)}}, "ignored.pt")
        with open(os.path.join(self.tmp, "latest.pt"), "rb") as f:
            good = f.read()
        real_save = torch.save

        def dying_save(obj, f, **kw):
            f.write(b"PARTIAL" * 100)
            raise KeyboardInterrupt("killed mid-write")

        with mock.patch("ignite.handlers.checkpoint.torch.save", dying_save), self.assertRaises(KeyboardInterrupt):
            saver({"network": {"w": torch.zeros(3)}}, "ignored.pt")
        with open(os.path.join(self.tmp, "latest.pt"), "rb") as f:
            self.assertEqual(f.read(), good)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["latest.pt"])
        self.assertIs(real_save, torch.save)

    def test_write_json_atomic_never_leaves_partial_file(self):
        from custom.io import write_json_atomic

        path = os.path.join(self.tmp, "datalist.json")
        write_json_atomic(path, {"training": [1]})

        class Boom:
            pass

        with self.assertRaises(TypeError):
            write_json_atomic(path, {"training": [Boom()]})  # fails after writing part of the document
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.load(f), {"training": [1]})
        self.assertEqual(sorted(os.listdir(self.tmp)), ["datalist.json"])

    @pytest.mark.slow
    def test_sigkill_during_checkpoint_write(self):
        """A real writer process SIGKILLed while a temporary file is being written: the final name is either absent
        or a complete checkpoint, never a partial one."""
        out = os.path.join(self.tmp, "models")

        def temps() -> list[str]:
            names = os.listdir(out) if os.path.isdir(out) else []
            return [os.path.join(out, n) for n in names if n != "latest.pt"]

        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, out],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            self.assertEqual(proc.stdout.readline().strip(), "ready")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # wait for a temp file being written (not yet renamed)
                found = temps()
                if found and os.path.getsize(found[0]) > 0:
                    break
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        found = temps()
        self.assertTrue(found, "no temporary file was seen: the kill did not land mid-write")
        self.assertLess(os.path.getsize(found[0]), 256 * 2**20)  # the leftover temp is the partial one
        if os.path.exists(os.path.join(out, "latest.pt")):
            ckpt = torch.load(os.path.join(out, "latest.pt"), weights_only=True)
            self.assertEqual(ckpt["network"]["w"].numel(), 64 * 2**20)


# ---------------------------------------------------------------- AMP
class TestGradScaler(unittest.TestCase):
    def test_grad_scaler_skips_overflowing_step(self):
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
            self.assertEqual(trainer.scaler.get_scale(), 2.0**15)  # overflow seen, scale halved
            for a, b in zip(before, net.parameters()):
                torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)  # step skipped
            scale_box["factor"] = 1.0
            trainer.state.max_epochs = 2
            trainer.run()
        self.assertTrue(any(not torch.equal(a, b.detach()) for a, b in zip(before, net.parameters())))


if __name__ == "__main__":
    unittest.main()
