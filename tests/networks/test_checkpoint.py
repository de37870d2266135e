"""The bundle's checkpoint reader (custom.networks.checkpoint): devices and the reason given for a refused file.

The layouts :func:`load_checkpoint` reads are tested in ``tests/inference/test_restore.py``, the refusals of unsafe
and junk files in ``tests/handlers/test_safe_loader.py``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import unittest

import torch
from custom.networks.checkpoint import load_checkpoint, read_checkpoint, unsafe_checkpoint_reason


class TestReadCheckpoint(unittest.TestCase):
    def test_tensors_go_to_map_location(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.pt")
            torch.save({"model": {"w": torch.ones(2)}}, path)
            self.assertEqual(read_checkpoint(path)["model"]["w"].device.type, "cpu")
            self.assertEqual(read_checkpoint(path, map_location="meta")["model"]["w"].device.type, "meta")

    def test_load_checkpoint_passes_map_location_and_model_key(self):
        src = torch.nn.Linear(2, 2)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "b.pt")
            torch.save({"weights": src.state_dict(), "model": {"other": torch.zeros(1)}}, path)
            seen = []

            def to_cpu(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
                seen.append(location)
                return storage

            net = load_checkpoint(torch.nn.Linear(2, 2), path, map_location=to_cpu, model_key="weights")
            self.assertEqual(seen, ["cpu"] * len(seen))
            self.assertGreater(len(seen), 0)
            torch.testing.assert_close(net.weight, src.weight, rtol=0, atol=0)
            with self.assertRaisesRegex(ValueError, "b.pt: does not match the network"):
                load_checkpoint(torch.nn.Linear(2, 2), path)  # the default key: 'model'


class TestUnsafeCheckpointReason(unittest.TestCase):
    """The line of torch's refusal that says why (never torch's advice to load with weights_only=False)."""

    def _reason(self, message: str) -> str:
        return unsafe_checkpoint_reason(pickle.UnpicklingError(message))

    def test_the_unpicklers_error(self):
        advice = "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will work"
        self.assertEqual(
            self._reason(f"{advice}\n WeightsUnpickler error: Unsupported operand 149\n\nCheck"),
            ("Unsupported operand 149"),
        )

    def test_the_error_on_the_next_line(self):
        self.assertEqual(self._reason("WeightsUnpickler error:\n  Unsupported class X  \nmore"), "Unsupported class X")
        self.assertEqual(self._reason("advice\nWeightsUnpickler error:\nthe reason"), "the reason")

    def test_nothing_after_the_marker(self):
        self.assertEqual(self._reason("advice\n  WeightsUnpickler error:  "), "WeightsUnpickler error:")

    def test_first_line_without_the_marker(self):
        self.assertEqual(self._reason("\n  first line \nsecond line"), "first line")
        self.assertEqual(self._reason(""), "UnpicklingError")


if __name__ == "__main__":
    unittest.main()
