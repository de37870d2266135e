"""The restricted reader of the authors' pickled ``.bin`` patches: exact round trips, refusals that run nothing."""

from __future__ import annotations

import os
import pickle
import tempfile
import unittest

import numpy as np
import torch
from parameterized import parameterized

from custom.data import load_image, load_slice, num_slices
from custom.data.pickled import PickledTensorReader, RestrictedUnpickler, load_pickled_array, load_pickled_image
from tests.data.reference_fixture import write_bin, write_nii


class _RunsCode:
    """Unpickling this calls ``os.system``, which would create ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class TestPickledTensorReader(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.rng = np.random.default_rng(0)

    def path(self, name: str) -> str:
        return os.path.join(self.dir.name, name)

    def test_torch_tensor_round_trip_is_exact(self):
        arr = (self.rng.normal(0, 1000, (1, 6, 5)) - 1024).astype(np.float32)
        write_bin(self.path("a.bin"), arr[0])  # pickle.dump(torch tensor (1, 6, 5)), as the authors' code
        out = load_pickled_array(self.path("a.bin"))
        self.assertEqual(out.shape, (1, 6, 5))
        self.assertEqual(out.dtype, np.float32)
        np.testing.assert_array_equal(out, arr)

    @parameterized.expand([(np.float32,), (np.float64,), (np.int16,)])
    def test_numpy_array_round_trip_is_exact(self, dtype):
        arr = self.rng.integers(-1000, 3000, (1, 7, 4)).astype(dtype)
        with open(self.path("n.bin"), "wb") as f:
            pickle.dump(arr, f)
        np.testing.assert_array_equal(load_pickled_array(self.path("n.bin")), arr.astype(np.float32))

    def test_non_contiguous_and_offset_tensor(self):
        base = torch.arange(60, dtype=torch.float32).reshape(1, 6, 10)
        view = base[:, 1:5, ::2]  # storage offset and strides: rebuilt as the same values
        with open(self.path("v.bin"), "wb") as f:
            pickle.dump(view, f)
        np.testing.assert_array_equal(load_pickled_array(self.path("v.bin")), view.numpy())

    def test_reader_drops_channel_and_matches_a_simpleitk_slice(self):
        arr = self.rng.normal(size=(6, 5)).astype(np.float32)
        write_bin(self.path("p.bin"), arr)
        write_nii(self.path("p.nii"), arr)
        img = load_image(self.path("p.bin"))
        self.assertEqual(tuple(img.shape), (5, 6))  # MONAI index order, as a NIfTI slice is read
        np.testing.assert_array_equal(img.numpy(), arr.T)
        np.testing.assert_array_equal(img.numpy(), load_image(self.path("p.nii")).numpy())
        self.assertEqual(img.meta["filename_or_obj"], self.path("p.bin"))
        plain = PickledTensorReader(reverse_indexing=False)
        np.testing.assert_array_equal(plain.get_data(plain.read(self.path("p.bin")))[0], arr)
        self.assertEqual(num_slices(self.path("p.bin")), 1)
        np.testing.assert_array_equal(load_slice(self.path("p.bin"), 0).numpy(), arr.T)
        with self.assertRaisesRegex(ValueError, "out of range"):
            load_slice(self.path("p.bin"), 1)

    def test_suffix(self):
        reader = PickledTensorReader()
        self.assertTrue(reader.verify_suffix("x/a.bin"))
        self.assertFalse(reader.verify_suffix("x/a.nii"))

    def test_code_is_never_run(self):
        marker = self.path("pwned")
        with open(self.path("evil.bin"), "wb") as f:
            pickle.dump(_RunsCode(marker), f)
        for load in (load_pickled_array, load_pickled_image, load_image, lambda p: load_slice(p, 0)):
            with self.assertRaisesRegex(ValueError, r"evil\.bin: refused to unpickle global '(posix|nt|os)\.system'"):
                load(self.path("evil.bin"))
        self.assertFalse(os.path.exists(marker))

    def test_hostile_storage_bytes_are_refused(self):
        """The nested storage pickle is loaded weights-only: code hidden there does not run either."""
        marker = self.path("pwned2")
        inner = pickle.dumps(_RunsCode(marker), protocol=2)

        class _Storage:
            def __reduce__(self):
                return (torch.storage._load_from_bytes, (inner,))

        class _Tensor:
            def __reduce__(self):
                return (torch._utils._rebuild_tensor_v2, (_Storage(), 0, (1,), (1,), False, {}))

        with open(self.path("nested.bin"), "wb") as f:
            pickle.dump(_Tensor(), f)
        with self.assertRaisesRegex(ValueError, r"nested\.bin"):
            load_pickled_array(self.path("nested.bin"))
        self.assertFalse(os.path.exists(marker))

    @parameterized.expand(
        [
            ("eval", _Eval(), r"builtins\.eval"),
            ("dict", {"a": 1}, "holds a dict, expected a tensor or an array"),
            ("object_array", np.array([1, "a"], dtype=object), "refused|dtype object"),
            ("bool_tensor", torch.zeros(2, dtype=torch.bool), "dtype torch.bool"),
        ]
    )
    def test_refused_content(self, _, obj, message):
        with open(self.path("x.bin"), "wb") as f:
            pickle.dump(obj, f)
        with self.assertRaisesRegex(ValueError, r"x\.bin: .*(" + message + ")"):
            load_pickled_array(self.path("x.bin"))

    def test_unreadable_files(self):
        open(self.path("empty.bin"), "wb").close()
        with self.assertRaisesRegex(ValueError, r"empty\.bin: empty file"):
            load_image(self.path("empty.bin"))
        write_bin(self.path("t.bin"), np.ones((8, 8), np.float32))
        data = open(self.path("t.bin"), "rb").read()
        with open(self.path("t.bin"), "wb") as f:
            f.write(data[: len(data) // 2])
        with self.assertRaisesRegex(ValueError, r"t\.bin: unreadable pickled tensor"):
            load_image(self.path("t.bin"))
        with open(self.path("s.bin"), "wb") as f:
            pickle.dump(torch.zeros(2, 3, 4), f)
        with self.assertRaisesRegex(ValueError, r"s\.bin: pickled tensor of shape \(2, 3, 4\)"):
            load_image(self.path("s.bin"))
        with self.assertRaisesRegex(ValueError, r"missing\.bin: file not found"):
            load_pickled_array(self.path("missing.bin"))

    def test_unpickler_refuses_before_import(self):
        with open(self.path("g.bin"), "wb") as f:
            pickle.dump(_RunsCode("x"), f)
        with open(self.path("g.bin"), "rb") as f, self.assertRaisesRegex(ValueError, "g.bin-name"):
            RestrictedUnpickler(f, name="g.bin-name").load()


if __name__ == "__main__":
    unittest.main()
