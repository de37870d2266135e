"""The restricted reader of the authors' pickled ``.bin`` patches: exact round trips, refusals that run nothing."""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import re
import tempfile
import unittest
import warnings
from collections import OrderedDict
from unittest import mock

import numpy as np
import torch
from custom.data import load_image, load_slice, num_slices
from custom.data.pickled import (
    _ALLOWED,
    PickledTensorReader,
    RestrictedUnpickler,
    load_pickled_array,
    load_pickled_image,
)
from monai.utils import MetaKeys
from parameterized import parameterized

from tests.utils import write_bin, write_nii


class _RunsCode:
    """Unpickling this calls ``os.system``, which would create ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class _Reduce:
    """Pickles as ``func(*args)`` (with ``state`` given to BUILD when not None)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


def _global_then_build(module: str, name: str, attribute: str, value_opcodes: bytes) -> bytes:
    """Protocol-2 pickle: push the global ``module.name``, then BUILD it with slot state {attribute: value}."""
    attr = attribute.encode()
    return (
        b"\x80\x02c"
        + f"{module}\n{name}\n".encode()
        + b"N}X"
        + len(attr).to_bytes(4, "little")
        + attr
        + value_opcodes
        + b"s\x86b."
    )


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

    def test_patch_pickled_from_a_gpu_tensor_reads_on_the_cpu(self):
        """``pickle.dump`` of a CUDA tensor nests a storage saved with location ``cuda:0``: it is mapped to the CPU."""
        t = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4) - 5
        nested = io.BytesIO()
        with mock.patch("torch.serialization.location_tag", return_value="cuda:0"):
            torch.save(t.storage(), nested, _use_new_zipfile_serialization=False)
        self.assertIn(b"cuda:0", nested.getvalue())
        storage = _Reduce(torch.storage._load_from_bytes, (nested.getvalue(),))
        tensor = _Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, (1, 3, 4), (12, 4, 1), False, OrderedDict()))
        with open(self.path("gpu.bin"), "wb") as f:
            pickle.dump(tensor, f)
        np.testing.assert_array_equal(load_pickled_array(self.path("gpu.bin")), t.numpy())

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
            ("complex_array", np.array([[1j, 2]], np.complex64), "refused dtype 'c8', expected real numbers"),
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

    @parameterized.expand([(module, name) for module, name in _ALLOWED])
    def test_build_on_an_admitted_global_is_refused_and_later_reads_are_intact(self, module, name):
        """BUILD ``__defaults__ = (1,)`` on what the global hands out would break every later read if admitted."""
        good = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
        with open(self.path("good.bin"), "wb") as f:
            pickle.dump(good, f)
        with open(self.path("good_np.bin"), "wb") as f:
            pickle.dump(good.numpy().astype(np.float64), f)
        with open(self.path("hostile.bin"), "wb") as f:
            f.write(_global_then_build(module, name, "__defaults__", b"K\x01\x85"))  # value (1,)
        with self.assertRaisesRegex(ValueError, r"hostile\.bin: .*BUILD"):
            load_pickled_array(self.path("hostile.bin"))
        np.testing.assert_array_equal(load_pickled_array(self.path("good.bin")), good.numpy())
        np.testing.assert_array_equal(load_pickled_array(self.path("good_np.bin")), good.numpy())

    def test_build_on_a_rebuilt_tensor_is_refused(self):
        """``Tensor.__setstate__`` would ``set_`` any storage / size / stride, past the layout checks."""
        storage = torch.zeros(1).storage()
        obj = _Reduce(
            torch._utils._rebuild_tensor_v2, (storage, 0, (1,), (1,), False, {}), (storage, 0, (1, 9, 9), (0, 0, 0))
        )
        with open(self.path("b.bin"), "wb") as f:
            pickle.dump(obj, f)
        with self.assertRaisesRegex(ValueError, r"b\.bin: .*refused to set the state of a Tensor"):
            load_pickled_array(self.path("b.bin"))

    @parameterized.expand(
        [
            ("broadcast", torch.zeros(1).expand(1, 300, 300), "does not fit its storage"),
            ("partly_broadcast", torch.zeros(1, 1, 4).expand(1, 5, 4), "does not fit its storage"),
        ]
    )
    def test_tensor_larger_than_its_storage_is_refused(self, _, tensor, message):
        with open(self.path("big.bin"), "wb") as f:
            pickle.dump(tensor, f)
        with self.assertRaisesRegex(ValueError, r"big\.bin: .*" + message):
            load_pickled_array(self.path("big.bin"))

    def test_tensor_outside_its_storage_is_refused(self):
        storage = torch.arange(6, dtype=torch.float32).storage()
        for offset, size, stride in ((3, (4,), (1,)), (0, (2, 3), (3, 2)), (-1, (2,), (1,))):
            with open(self.path("o.bin"), "wb") as f:
                pickle.dump(_Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, {})), f)
            with self.assertRaisesRegex(ValueError, r"o\.bin: unreadable"):
                load_pickled_array(self.path("o.bin"))
        with open(self.path("o.bin"), "wb") as f:  # the largest view that fits
            pickle.dump(_Reduce(torch._utils._rebuild_tensor_v2, (storage, 2, (2, 2), (2, 1), False, {})), f)
        np.testing.assert_array_equal(load_pickled_array(self.path("o.bin")), [[2, 3], [4, 5]])

    @parameterized.expand(
        [
            ("hooks", (0, (2,), (1,), False, OrderedDict([(0, 1)])), "not a plain tensor"),
            ("attributes", (0, (2,), (1,), False, {}, {"name": 1}), "not a plain tensor"),
            ("float_in_size", (0, (1, 2.0), (2, 1), False, {}), r"size \(1, 2\.0\) is not a tuple of integers"),
            ("int_size", (0, 2, (1,), False, {}), "size 2 is not a tuple of integers"),
            ("float_offset", (1.0, (2,), (1,), False, {}), r"invalid tensor layout \(offset 1\.0"),
            ("negative_offset", (-1, (2,), (1,), False, {}), r"invalid tensor layout \(offset -1"),
            ("rank_mismatch", (0, (2, 3), (3,), False, {}), "invalid tensor layout"),
            ("negative_stride", (1, (2, 2), (2, -1), False, {}), "invalid tensor layout"),
        ]
    )
    def test_refused_tensor_layouts_say_why(self, _, args, message):
        storage = torch.arange(6, dtype=torch.float32).storage()
        with open(self.path("l.bin"), "wb") as f:
            pickle.dump(_Reduce(torch._utils._rebuild_tensor_v2, (storage, *args)), f)
        with self.assertRaisesRegex(ValueError, r"l\.bin: unreadable pickled tensor \(UnpicklingError: " + message):
            load_pickled_array(self.path("l.bin"))

    def test_zero_dim_and_empty_tensors_are_read(self):
        for name, tensor in (("scalar", torch.tensor(2.5)), ("empty", torch.zeros(1, 0, 4))):
            with open(self.path(f"{name}.bin"), "wb") as f:
                pickle.dump(tensor, f)
            out = load_pickled_array(self.path(f"{name}.bin"))
            self.assertEqual(out.shape, tuple(tensor.shape))
            np.testing.assert_array_equal(out, tensor.numpy())

    def test_voxel_limit(self):
        with open(self.path("t.bin"), "wb") as f:
            pickle.dump(torch.zeros(1, 3, 4), f)
        with open(self.path("n.bin"), "wb") as f:
            pickle.dump(np.zeros((1, 3, 4), np.float32), f)
        with mock.patch("custom.data.pickled.MAX_VOXELS", 12):
            self.assertEqual(load_pickled_array(self.path("t.bin")).shape, (1, 3, 4))
            self.assertEqual(load_pickled_array(self.path("n.bin")).shape, (1, 3, 4))
        with mock.patch("custom.data.pickled.MAX_VOXELS", 11):
            for name in ("t.bin", "n.bin"):
                with self.assertRaisesRegex(ValueError, name + r": .*12 voxels, larger than the limit of 11"):
                    load_pickled_array(self.path(name))

    def test_ndarray_without_data_is_refused(self):
        """``numpy.ndarray(shape, dtype)`` would return uninitialised memory."""
        with open(self.path("u.bin"), "wb") as f:
            pickle.dump(_Reduce(np.ndarray, ((1, 64, 64), np.dtype("f4"))), f)
        with self.assertRaisesRegex(ValueError, r"u\.bin: unreadable pickled tensor"):
            load_pickled_array(self.path("u.bin"))

    @parameterized.expand(
        [
            ("short", (1, (1, 4, 4), np.dtype("f4"), False, b"\0" * 60), "needs 64 data bytes, got 60"),
            ("long", (1, (1, 4, 4), np.dtype("f4"), False, b"\0" * 68), "needs 64 data bytes, got 68"),
            ("negative", (1, (-1, 4), np.dtype("f4"), False, b""), "negative size"),
            ("not_bytes", (1, (2,), np.dtype("f4"), False, [1.0, 2.0]), "got list"),
            ("six_fields", (1, (2,), np.dtype("f4"), False, b"\0" * 8, None), "numpy array state of an unknown form"),
            (
                "float_shape",
                (1, (2.0,), np.dtype("f4"), False, b"\0" * 8),
                r"shape \(2\.0,\) is not a tuple of integers",
            ),
            ("four_fields", (1, (2,), np.dtype("f4"), b"\0" * 8), "numpy array state of an unknown form"),
        ]
    )
    def test_ndarray_state_must_match_its_data(self, _, state, message):
        with open(self.path("s.bin"), "wb") as f:
            pickle.dump(_Reduce(_NP_RECONSTRUCT, (np.ndarray, (0,), b"b"), state), f)
        with self.assertRaisesRegex(ValueError, r"s\.bin: .*" + message):
            load_pickled_array(self.path("s.bin"))

    def test_shared_dtype_is_not_changed(self):
        """A BUILD on ``numpy.dtype('f4')`` (numpy's shared descriptor without a copy) must not alter float32."""
        state = (3, ">", None, None, None, -1, -1, 0)
        with open(self.path("d.bin"), "wb") as f:
            pickle.dump(_Reduce(np.dtype, ("f4", False, False), state), f)
        with self.assertRaises(ValueError):
            load_pickled_array(self.path("d.bin"))
        self.assertEqual(np.dtype("f4").byteorder, "=")
        big_endian = np.arange(6, dtype=">f4").reshape(1, 2, 3)
        with open(self.path("be.bin"), "wb") as f:
            pickle.dump(big_endian, f)
        np.testing.assert_array_equal(load_pickled_array(self.path("be.bin")), big_endian.astype(np.float32))

    @parameterized.expand(
        [
            ("nan_tensor", torch.tensor([[1.0, float("nan")]]), r"non-finite values \(NaN or inf\)"),
            ("inf_array", np.array([[np.inf, 0.0]], np.float32), r"non-finite values \(NaN or inf\)"),
            ("float64_overflow", np.array([[1e300, 0.0]]), "values up to 1e\\+300 exceed the float32 range"),
            ("float64_overflow_tensor", torch.tensor([[0.0, -1e39]], dtype=torch.float64), "exceed the float32 range"),
            ("int64_inexact", np.array([[16777217, 0]], np.int64), "integer values such as 16777217 cannot be held"),
            ("int32_inexact_tensor", torch.tensor([[0, 16777219]], dtype=torch.int32), "such as 16777219 cannot"),
            ("int64_max", np.array([[np.iinfo(np.int64).max]]), "cannot be held exactly"),
            ("uint32_max", np.array([[np.iinfo(np.uint32).max]], np.uint32), "cannot be held exactly"),
        ]
    )
    def test_values_float32_cannot_hold_are_refused(self, _, obj, message):
        with open(self.path("v.bin"), "wb") as f:
            pickle.dump(obj, f)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no out-of-range integer cast while checking (e.g. 2**63)
            with self.assertRaisesRegex(ValueError, r"v\.bin: .*" + message):
                load_pickled_array(self.path("v.bin"))

    @parameterized.expand(
        [
            ("int64_exact", np.array([[2**24, -(2**24), 2**30, -(2**63)]], np.int64)),
            ("uint64_exact", np.array([[2**63, 0]], np.uint64)),
            ("int16", np.array([[-32768, 32767]], np.int16)),
            ("int8", np.array([[-128, 127]], np.int8)),  # one-byte dtypes pickle with byte order '|'
            ("uint8", np.array([[0, 255]], np.uint8)),
            ("float64_max", np.array([[float(np.finfo(np.float32).max), 0.5]])),
            ("bfloat16", torch.tensor([[1.5, -3.0]], dtype=torch.bfloat16)),
        ]
    )
    def test_values_float32_holds_exactly_are_read(self, _, obj):
        with open(self.path("ok.bin"), "wb") as f:
            pickle.dump(obj, f)
        out = load_pickled_array(self.path("ok.bin"))
        ref = obj.float().numpy() if isinstance(obj, torch.Tensor) else obj
        self.assertEqual(out.dtype, np.float32)
        self.assertTrue(all(float(a) == float(b) for a, b in zip(out.ravel(), ref.ravel())))

    def _nested_torch_save(self, name: str, obj: object) -> str:
        """A ``.bin`` whose pickle is ``torch.storage._load_from_bytes(legacy torch.save of obj)``."""
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=False)
        with open(self.path(name), "wb") as f:
            pickle.dump(_Reduce(torch.storage._load_from_bytes, (buf.getvalue(),)), f)
        return self.path(name)

    def test_nested_torch_save_must_hold_a_storage(self):
        """A tensor nested in the torch.save data would skip the layout and voxel checks: one stored zero broadcast
        to 90000 voxels (with a limit of 1000 here; 10^10 voxels would need 40 GB) must not be read."""
        for name, obj in (
            ("broadcast.bin", torch.zeros(1).expand(1, 300, 300)),
            ("grad.bin", torch.arange(6.0).reshape(1, 2, 3).requires_grad_()),
        ):
            path = self._nested_torch_save(name, obj)
            with mock.patch("custom.data.pickled.MAX_VOXELS", 1000):
                with self.assertRaisesRegex(
                    ValueError, re.escape(path) + r": unreadable .*holds a Tensor, expected a storage"
                ):
                    load_pickled_array(path)

    @parameterized.expand(
        [
            ("metadata", (4, "<", None, None, None, -1, -1, 0, {"k": 1})),
            ("seven_fields", (3, "<", None, None, None, -1, -1)),
            ("unknown_byte_order", (3, "x", None, None, None, -1, -1, 0)),
        ]
    )
    def test_dtype_state_of_another_form_is_refused(self, _, state):
        """numpy itself would accept each of these states (metadata, an old layout, a byte order it ignores)."""
        data = np.array([[1.5, -2.0]], "<f4").tobytes()
        dtype = _Reduce(np.dtype, ("f4", False, False), state)
        with open(self.path("d.bin"), "wb") as f:
            pickle.dump(_Reduce(_NP_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1, 2), dtype, False, data)), f)
        with self.assertRaisesRegex(ValueError, r"d\.bin: .*numpy dtype state of an unknown form"):
            load_pickled_array(self.path("d.bin"))

    def test_native_byte_order_dtype_state_is_read(self):
        data = np.array([[1.5, -2.0]], "=f4").tobytes()
        dtype = _Reduce(np.dtype, ("f4", False, False), (3, "=", None, None, None, -1, -1, 0))
        with open(self.path("d.bin"), "wb") as f:
            pickle.dump(_Reduce(_NP_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1, 2), dtype, False, data)), f)
        np.testing.assert_array_equal(load_pickled_array(self.path("d.bin")), [[1.5, -2.0]])

    def test_error_messages_name_the_file_once(self):
        """Refusals keep their own message (no second wrapping); other ValueErrors (here pickle's own, for a
        protocol it does not know) are wrapped with the file name; a ``pathlib.Path`` works the same."""
        with open(self.path("evil.bin"), "wb") as f:
            pickle.dump(_RunsCode(self.path("pwned")), f)
        with open(self.path("p9.bin"), "wb") as f:
            f.write(b"\x80\x09N.")
        for as_path in (str, pathlib.Path):
            with self.assertRaisesRegex(ValueError, "^" + re.escape(self.path("evil.bin")) + ": refused to unpickle"):
                load_pickled_array(as_path(self.path("evil.bin")))
            with self.assertRaisesRegex(
                ValueError,
                "^"
                + re.escape(self.path("p9.bin"))
                + r": unreadable pickled tensor \(unsupported pickle protocol: 9\)",
            ):
                load_pickled_array(as_path(self.path("p9.bin")))

    def test_reader_interface(self):
        """Defaults, one file or several (stacked as channels), geometry and shapes."""
        a, b = self.rng.normal(size=(3, 4)).astype(np.float32), self.rng.normal(size=(3, 4)).astype(np.float32)
        write_bin(self.path("a.bin"), a)
        write_bin(self.path("b.bin"), b)
        reader = PickledTensorReader()
        one = reader.read(self.path("a.bin"), unused_option=1)  # ImageReader.read takes reader options
        self.assertIsInstance(one, np.ndarray)
        arr, meta = reader.get_data(one)
        np.testing.assert_array_equal(arr, a.T)  # reverse_indexing by default
        self.assertTrue(np.isnan(meta[MetaKeys.ORIGINAL_CHANNEL_DIM]))
        for key in (MetaKeys.AFFINE, MetaKeys.ORIGINAL_AFFINE):
            np.testing.assert_array_equal(meta[key], np.eye(4))
        np.testing.assert_array_equal(meta[MetaKeys.SPATIAL_SHAPE], (4, 3))
        arr, meta = reader.get_data(reader.read([self.path("a.bin"), self.path("b.bin")]))
        np.testing.assert_array_equal(arr, np.stack([a.T, b.T]))
        self.assertEqual(meta[MetaKeys.ORIGINAL_CHANNEL_DIM], 0)
        write_bin(self.path("c.bin"), np.zeros((3, 5), np.float32))
        with self.assertRaisesRegex(ValueError, "pickled images of different shapes"):
            reader.get_data(reader.read([self.path("a.bin"), self.path("c.bin")]))
        img = load_pickled_image(pathlib.Path(self.path("a.bin")))
        self.assertEqual(img.meta["filename_or_obj"], self.path("a.bin"))
        torch.testing.assert_close(img.affine, torch.eye(4, dtype=torch.float64), rtol=0, atol=0)

    def test_one_pixel_wide_is_read_and_empty_is_refused(self):
        with open(self.path("line.bin"), "wb") as f:
            pickle.dump(torch.arange(5.0).reshape(1, 1, 5), f)
        np.testing.assert_array_equal(load_image(self.path("line.bin")).numpy(), [[0], [1], [2], [3], [4]])
        for name, shape in (("empty.bin", (1, 0, 4)), ("empty_width.bin", (1, 4, 0))):
            with open(self.path(name), "wb") as f:
                pickle.dump(torch.zeros(shape), f)
            with self.assertRaisesRegex(ValueError, re.escape(name) + r": pickled tensor of shape \(\d, \d\)"):
                load_image(self.path(name))

    def test_unpickler_refuses_before_import(self):
        with open(self.path("g.bin"), "wb") as f:
            pickle.dump(_RunsCode("x"), f)
        with open(self.path("g.bin"), "rb") as f, self.assertRaisesRegex(ValueError, "g.bin-name"):
            RestrictedUnpickler(f, name="g.bin-name").load()


if __name__ == "__main__":
    unittest.main()
