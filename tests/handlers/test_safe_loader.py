from __future__ import annotations

import os
import pickle
import re
import tempfile
import unittest

import torch
from custom.handlers import SafeCheckpointLoader
from custom.networks.checkpoint import read_checkpoint
from ignite.engine import Engine


class _Payload:
    def __reduce__(self):
        return (os.makedirs, ("/tmp/should_not_exist_tat_payload",))


class TestSafeCheckpointLoader(unittest.TestCase):
    def _run(self, path: str, net: torch.nn.Module) -> None:
        engine = Engine(lambda e, b: None)
        SafeCheckpointLoader(load_path=path, load_dict={"model": net}).attach(engine)
        engine.run([0], max_epochs=1)

    def test_errors_name_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            evil = os.path.join(d, "evil.pt")
            with open(evil, "wb") as f:
                pickle.dump({"model": _Payload()}, f)
            with self.assertRaisesRegex(ValueError, "evil.pt: cannot be loaded safely"):
                self._run(evil, torch.nn.Linear(2, 2))
            self.assertFalse(os.path.exists("/tmp/should_not_exist_tat_payload"))
            saved = os.path.join(d, "saved.pt")
            torch.save({"model": _Payload()}, saved)  # torch's own pickle protocol: refused at the global it needs
            with self.assertRaisesRegex(ValueError, r"saved.pt: cannot be loaded safely .*\(.*GLOBAL .*makedirs"):
                self._run(saved, torch.nn.Linear(2, 2))
            self.assertFalse(os.path.exists("/tmp/should_not_exist_tat_payload"))
            junk = os.path.join(d, "junk.pt")
            with open(junk, "wb") as f:
                f.write(b"not a checkpoint")
            with self.assertRaises(ValueError) as ctx:
                self._run(junk, torch.nn.Linear(2, 2))
            # no GLOBAL line: the unpickler's own error, not torch's first line (which suggests weights_only=False)
            self.assertIn("Unsupported operand", str(ctx.exception.__cause__))
            refusal = r": cannot be loaded safely as a weights-only checkpoint \(Unsupported operand \d+\)\.$"
            self.assertRegex(str(ctx.exception), "^" + re.escape(junk) + refusal)
            newer = os.path.join(d, "protocol4.pt")  # harmless weights in a pickle protocol torch does not read
            torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, newer, pickle_protocol=4)
            for load in (lambda: self._run(newer, torch.nn.Linear(2, 2)), lambda: read_checkpoint(newer)):
                with self.assertRaisesRegex(ValueError, r"protocol4.pt: .* \(Unsupported operand \d+\)\.$"):
                    load()
            other = os.path.join(d, "other.pt")
            torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, other)
            with self.assertRaisesRegex(ValueError, "other.pt: does not match"):
                self._run(other, torch.nn.Linear(2, 2))
            good = os.path.join(d, "good.pt")
            src = torch.nn.Linear(2, 2)
            torch.save({"model": src.state_dict()}, good)
            dst = torch.nn.Linear(2, 2)
            self._run(good, dst)
            torch.testing.assert_close(dst.weight, src.weight)

    def test_junk_files_are_named_not_tracebacks(self):
        """Torch's weights-only unpickler fails on bytes that are no checkpoint with KeyError, IndexError,
        UnicodeDecodeError, EOFError...: each is a ValueError naming the file, in both loaders."""
        blobs = {  # found by feeding random bytes to torch.load(weights_only=True), torch 2.13
            "key": b"hello world not a pickle",
            "index": b".\xbd;\x12\x0bc^?\xf5k\x1f\x0b",
            "unicode": b"U\x8cg\xb1\xe5-\xd4\xd1>)\xed\xa5",
            "eof": b"\x8a)\x8ep\x02Ij\x01\xd6AJ\xf8",
            "empty": b"",
        }
        with tempfile.TemporaryDirectory() as d:
            for name, blob in blobs.items():
                path = os.path.join(d, f"{name}.pt")
                with open(path, "wb") as f:
                    f.write(blob)
                for load in (lambda: self._run(path, torch.nn.Linear(2, 2)), lambda: read_checkpoint(path)):
                    with self.subTest(name), self.assertRaisesRegex(ValueError, f"{name}.pt: "):
                        load()
            # a readable file holding another object, or lacking one of the objects to restore
            for name, content in (("list", [1, 2]), ("number", 3), ("text", "abc")):
                path = os.path.join(d, f"{name}.pt")
                torch.save(content, path)
                with (
                    self.subTest(name),
                    self.assertRaisesRegex(ValueError, f"{name}.pt: unreadable checkpoint, or not"),
                ):
                    self._run(path, torch.nn.Linear(2, 2))
            path = os.path.join(d, "model_only.pt")
            torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, path)
            engine = Engine(lambda e, b: None)
            load_dict = {"model": torch.nn.Linear(2, 2), "opt": torch.optim.SGD(torch.nn.Linear(2, 2).parameters())}
            SafeCheckpointLoader(load_path=path, load_dict=load_dict).attach(engine)
            with self.assertRaisesRegex(ValueError, "model_only.pt: unreadable checkpoint, or not .*'opt'"):
                engine.run([0], max_epochs=1)


if __name__ == "__main__":
    unittest.main()
