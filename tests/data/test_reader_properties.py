"""Property-based tests of the reading layer (hypothesis): generated NIfTI headers (dtype, byte order,
scl_slope/inter, pixdim, qform/sform codes, dims) and DICOM series tags (spacing, orientation, rescale, pixel
representation, bits, transfer syntax). Each generated input reads back the right physical values and geometry
through every entry point, or is refused with a ``ValueError`` naming the file and the problem; never a silent
change. Expected values and affines are computed here from the generated parameters, not by the readers' libraries.
Cost is bounded (``max_examples``, ``deadline=None``): the module runs in well under 30 s."""

from __future__ import annotations

import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
from custom.data import load_image
from custom.data.slicing import load_slice, num_slices
from custom.inference.io import LoadScand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests.utils import dicom_series_folder

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
F32_MAX = float(np.finfo(np.float32).max)


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


nifti_cases = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["u1", "i1", "i2", "u2", "i4", "f4", "f8", "c8"]),
        "order": st.sampled_from(["<", ">"]),
        "shape": st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple),
        "trailing_one": st.booleans(),
        "scaling": st.sampled_from(["none", "nan", "zero", "plain", "huge"]),
        "slope": st.floats(-50, 50).filter(lambda v: abs(v) > 1e-3),
        "inter": st.floats(-2000, 2000),
        "pixdim": st.tuples(*[st.floats(0.1, 5.0)] * 3),
        "angles": st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
        "shift": st.tuples(*[st.floats(-200, 200)] * 3),
        "codes": st.tuples(st.integers(0, 2), st.integers(0, 2)),
        "gzip": st.booleans(),
        "nan": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def _write_nifti(folder: str, c: dict) -> tuple[str, np.ndarray, np.ndarray, tuple[float, float]]:
    """Write the case; return (path, stored array, affine written, (slope, inter) that apply)."""
    dtype = np.dtype(c["order"] + c["dtype"]) if np.dtype(c["dtype"]).itemsize > 1 else np.dtype(c["dtype"])
    rng = np.random.default_rng(c["seed"])
    shape = c["shape"] + ((1,) if c["trailing_one"] and len(c["shape"]) == 3 else ())
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    elif dtype.kind == "c":
        raw = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    else:
        raw = (rng.normal(size=shape) * 1000).astype(dtype)
        if c["nan"]:
            raw.flat[0] = np.nan
    affine = np.eye(4)
    affine[:3, :3] = _rotation(c["angles"]) @ np.diag(c["pixdim"])
    affine[:3, 3] = c["shift"]
    header = nib.Nifti1Header(endianness=c["order"])
    img = nib.Nifti1Image(raw, None, header)
    img.header.set_data_dtype(dtype)
    qcode, scode = c["codes"]
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    slope, inter = {"none": (1.0, 0.0), "nan": (np.nan, np.nan), "zero": (0.0, c["inter"])}.get(
        c["scaling"], (c["slope"], c["inter"])
    )
    if c["scaling"] == "huge":
        slope = 1e36
    img.header["scl_slope"], img.header["scl_inter"] = slope, inter  # (set_slope_inter refuses 0, a legal value)
    path = os.path.join(folder, "x.nii.gz" if c["gzip"] else "x.nii")
    nib.save(img, path)
    applied = (
        (1.0, 0.0) if not np.isfinite(slope) or slope == 0 else (float(np.float32(slope)), float(np.float32(inter)))
    )
    return path, raw, affine, applied


def _close(got: np.ndarray, raw: np.ndarray, slope: float, inter: float) -> None:
    """``got`` equals ``raw * slope + inter`` to float32 rounding of the terms (no cancellation allowance lost)."""
    expected = raw.astype(np.float64) * slope + inter
    tol = 3e-7 * (np.abs(raw.astype(np.float64) * slope) + abs(inter)) + 1e-30
    bad = np.abs(np.asarray(got, np.float64).reshape(expected.shape) - expected) > tol
    assert not bad.any(), f"{int(bad.sum())} voxels differ, e.g. {got.ravel()[np.flatnonzero(bad)[:3]]}"


class TestNiftiProperties(unittest.TestCase):
    @PROPERTY
    @given(nifti_cases)
    def test_values_geometry_or_named_refusal(self, c):
        with tempfile.TemporaryDirectory() as d:
            path, raw, affine, (slope, inter) = _write_nifti(d, c)
            expected = raw.astype(np.complex128 if raw.dtype.kind == "c" else np.float64) * slope + inter
            refusal = None
            if raw.dtype.kind == "c":
                refusal = "complex voxel type"
            elif not np.isfinite(expected).all():
                refusal = "non-finite"
            elif np.abs(expected).max() > F32_MAX:
                refusal = "exceed the float32 range"
            calls = {
                "load_image": lambda: load_image(path),
                "load_slice": lambda: load_slice(path, 0),
                "LoadScand": lambda: LoadScand("image")({"image": path, "kind": "nifti", "modality": "CT"}),
            }
            if refusal:
                for name, call in calls.items():
                    with self.assertRaises(ValueError, msg=name) as err:
                        call()
                    self.assertTrue(str(err.exception).startswith(path), str(err.exception))
                    self.assertIn(refusal, str(err.exception))
                return
            img = load_image(path)
            _close(img.numpy(), raw, slope, inter)
            self.assertEqual(np.dtype(img.meta["source_dtype"]), raw.dtype)
            self.assertEqual((img.meta["source_scl_slope"], img.meta["source_scl_inter"]), (slope, inter))
            qcode, scode = c["codes"]
            if scode or qcode:  # the file's geometry, whichever of sform / qform carries it
                np.testing.assert_allclose(np.asarray(img.affine), affine, atol=1e-4)
            else:  # no orientation: only the voxel sizes are known
                ndim = len(c["shape"])
                zooms = np.abs(np.diag(np.asarray(img.affine))[:ndim])
                np.testing.assert_allclose(zooms, np.asarray(c["pixdim"][:ndim]), rtol=1e-5)
            volume = raw.reshape(raw.shape[:3]) if raw.ndim > 3 else raw
            if volume.ndim == 3:
                self.assertEqual(num_slices(path), volume.shape[2])
                k = volume.shape[2] - 1
                _close(load_slice(path, k).numpy(), volume[..., k], slope, inter)
            out = calls["LoadScand"]()
            np.testing.assert_array_equal(out["image"][0].numpy(), img.numpy().reshape(volume.shape))
            self.assertEqual(out["scan_info"]["source_scl_slope"], slope)


SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless]
ORIENTATIONS = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}

dicom_cases = st.fixed_dictionaries(
    {
        "pixel": st.sampled_from([("i2", 16), ("i2", 12), ("u2", 16), ("u2", 12), ("u1", 8)]),
        "syntax": st.sampled_from(SYNTAXES),
        "slope": st.sampled_from([1.0, 0.5, 2.5, 0.0, 0.001]),
        "inter": st.sampled_from([0.0, -1024.0, 3.25]),
        "spacing": st.tuples(st.floats(0.2, 3.0), st.floats(0.2, 3.0)),
        "step": st.floats(0.5, 5.0),
        "n": st.integers(1, 4),
        "orientation": st.one_of(st.sampled_from(list(ORIENTATIONS)), st.floats(-np.pi, np.pi)),
        "rows_cols": st.tuples(st.integers(2, 6), st.integers(2, 6)),
        "order": st.permutations(range(4)),
        "seed": st.integers(0, 2**16),
    }
)


class TestDicomProperties(unittest.TestCase):
    @PROPERTY
    @given(dicom_cases)
    def test_values_geometry_or_named_refusal(self, c):
        kind, bits = c["pixel"]
        dtype = np.dtype(kind)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if kind[0] == "i" else (0, 2**bits - 1)
        rng = np.random.default_rng(c["seed"])
        n = c["n"]
        vol = rng.integers(lo, hi, c["rows_cols"] + (n,), endpoint=True).astype(dtype)
        if isinstance(c["orientation"], str):
            iop = np.asarray(ORIENTATIONS[c["orientation"]])
        else:  # an oblique plane: axial rotated about the x axis
            a = c["orientation"]
            iop = np.array([1.0, 0.0, 0.0, 0.0, np.cos(a), np.sin(a)])
        order = [k for k in c["order"] if k < n]  # files written in this order, positions tell the slice
        with tempfile.TemporaryDirectory() as d:
            folder = os.path.join(d, "series")
            dicom_series_folder(
                folder,
                vol[..., order],
                positions=[c["step"] * k for k in order],
                syntax=c["syntax"],
                orientation=iop,
                spacing=c["spacing"],
                slope=c["slope"],
                inter=c["inter"],
                bits_stored=bits,
            )
            calls = {
                "load_image": lambda: load_image(folder, swap_ij=False),
                "load_slice": lambda: load_slice(folder, 0),
                "num_slices": lambda: num_slices(folder),
                "LoadScand": lambda: LoadScand("image")({"image": folder, "kind": "dicom", "modality": "CT"}),
            }
            if c["slope"] == 0:
                for name, call in calls.items():
                    with self.assertRaises(ValueError, msg=name) as err:
                        call()
                    self.assertTrue(str(err.exception).startswith(folder), str(err.exception))
                    self.assertIn("RescaleSlope 0", str(err.exception))
                return
            slope, inter = np.float32(c["slope"]), np.float32(c["inter"])
            expected = vol.astype(np.float32) * slope + inter if (c["slope"], c["inter"]) != (1.0, 0.0) else vol
            img = calls["load_image"]()
            self.assertEqual(tuple(img.shape), c["rows_cols"] + ((n,) if n > 1 else ()))
            np.testing.assert_array_equal(img.numpy(), np.asarray(expected, np.float32).reshape(img.shape))
            # geometry, from the tags: LPS columns (column cosine x row spacing, row cosine x column spacing,
            # slice step along the normal, first position), then RAS as MONAI's readers give it
            row, col = iop[:3], iop[3:]
            normal = np.cross(row, col)
            lps = np.eye(4)
            lps[:3, 0] = col * c["spacing"][0]
            lps[:3, 1] = row * c["spacing"][1]
            if n > 1:
                lps[:3, 2] = normal * c["step"]
            lps[:3, 3] = 0.0  # the first slice sits at the origin
            ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
            got = np.asarray(img.affine)
            cols = [0, 1, 2, 3] if n > 1 else [0, 1, 3]
            np.testing.assert_allclose(got[:3, cols], ras[:3, cols], atol=1e-4)
            self.assertEqual(calls["num_slices"](), n)
            full = load_image(folder)  # the training layout (MONAI's swap_ij)
            last = load_slice(folder, n - 1)
            np.testing.assert_array_equal(last.numpy(), full.numpy()[..., n - 1] if n > 1 else full.numpy())
            out = calls["LoadScand"]()
            np.testing.assert_array_equal(out["image"][0].numpy(), img.numpy())
            self.assertEqual(len(out["scan_info"]["datasets"]), n)
            positions = [float(np.dot(normal, ds.ImagePositionPatient)) for ds in out["scan_info"]["datasets"]]
            self.assertEqual(positions, sorted(positions))


if __name__ == "__main__":
    unittest.main()
