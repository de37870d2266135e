"""Value fidelity of the whole inference path through the real CLI (``python -m monai.bundle run inference``).

With a zero-residual checkpoint (final convolution zeroed: the network is the identity), every restored scan must
equal clip(input) to the last stored unit, stored with the input's type and scaling: NIfTI float32 / int16 /
uint8, scaled integers, 2D and 3D, both byte orders; DICOM signed and unsigned, with rescale, big endian, RLE,
JPEG 2000 (pydicom's real ``MR_small_*`` files), implicit VR, a file carrying command-set elements, and PET
BQML -> SUV -> BQML. A multi-frame file (not read by the reading layer) must be reported failed, naming it, and
every output has the umask's permissions. One CLI run over one data list holding every kind. Expected values are computed here from
the input files with nibabel / pydicom directly, not through the project's readers.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import unittest

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from custom.io import current_umask
from parameterized import parameterized
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless, generate_uid

from tests.utils import (
    BUNDLE,
    INFERENCE_CONFIG,
    TINY_OVERRIDES,
    dicom_dataset,
    pet_tags,
    run_cli,
    save_identity_checkpoint,
    write_with_command_set,
)

pytestmark = pytest.mark.slow

CLIP = {"CT": (-1024.0, 3072.0), "MRI": (0.0, 4095.0), "PET": (0.0, 20.0)}
SUV_FACTOR = 70 * 1000.0 / 3.5e8  # PatientWeight 70 kg, 350 MBq, DecayCorrection ADMIN: SUV = Bq/ml * factor
AFFINE = np.array([[0.0, -0.8, 0.0, 20.0], [0.7, 0.0, 0.0, -15.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
SHAPE = (24, 20)

# name -> (modality, dtype on disk, scl_slope, scl_inter, slices (0: 2D), physical range to draw from)
NIFTI_CASES = {
    "ct_f32_3d.nii.gz": ("CT", "<f4", None, None, 3, (-1500, 3500)),
    "pet_f32_be_2d.nii": ("PET", ">f4", None, None, 0, (-2, 26)),
    "mri_i16_2d.nii": ("MRI", "<i2", None, None, 0, (-100, 4500)),
    "ct_i16_be_3d.nii.gz": ("CT", ">i2", None, None, 2, (-2000, 3500)),
    "ct_u8_scaled_3d.nii.gz": ("CT", "|u1", 16.0, -1024.0, 2, None),
    "mri_i16_scaled_be_3d.nii": ("MRI", ">i2", 0.25, 7.0, 2, None),
}
DICOM_SERIES = ("ct_u16_le", "ct_i16_be_rescaled", "mr_u16_rle", "pet_bqml")
REAL_FILES = ("CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm")
REAL_FILES += ("MR_small_implicit.dcm",)
MULTIFRAME = "mr_multiframe.dcm"


def _write_nifti(folder: str, name: str, rng: np.random.Generator) -> None:
    _, dtype, slope, inter, n, span = NIFTI_CASES[name]
    shape = SHAPE + ((n,) if n else ())
    dtype = np.dtype(dtype)
    header = nib.Nifti1Header(endianness=dtype.byteorder if dtype.byteorder in "<>" else "<")
    if slope is None:  # values in physical units, stored unscaled
        values = rng.uniform(*span, shape)
        data = np.rint(values).astype(dtype) if dtype.kind in "iu" else (np.round(values * 4) / 4).astype(dtype)
        img = nib.Nifti1Image(data, AFFINE, header)
        img.set_data_dtype(dtype)
    else:  # random stored integers over the type's range, with scale factors
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        img = nib.Nifti1Image(data, AFFINE, header)
        img.set_data_dtype(dtype)
        img.header.set_slope_inter(slope, inter)
    nib.save(img, os.path.join(folder, name))


def _write_series(folder: str, name: str, rng: np.random.Generator) -> None:
    os.makedirs(os.path.join(folder, name))
    uid = generate_uid()
    for k in range(3):
        path = os.path.join(folder, name, f"im{(2 - k):02d}.dcm")  # file names against the slice order
        common = {"series": uid, "z": 3.0 * k, "instance": k + 1}
        if name == "ct_u16_le":  # unsigned, intercept -1024: raw 0 is -1024 HU
            raw = rng.integers(0, 4095, SHAPE, endpoint=True).astype(np.uint16)
            ds = dicom_dataset(raw, modality="CT", slope=1, inter=-1024, **common)
            if k == 1:  # a clinical export with command-set elements in its data set
                write_with_command_set(ds, path)
                continue
        elif name == "ct_i16_be_rescaled":  # signed, slope 0.5: -2100..3900 HU, clipped at both ends
            raw = rng.integers(-4000, 8000, SHAPE, endpoint=True).astype(np.int16)
            syntax = ExplicitVRBigEndian
            ds = dicom_dataset(raw, modality="CT", slope=0.5, inter=-100, syntax=syntax, **common)
        elif name == "mr_u16_rle":  # unsigned, no rescale, RLE; values above 4095 clipped
            raw = rng.integers(0, 5000, SHAPE, endpoint=True).astype(np.uint16)
            ds = dicom_dataset(raw, modality="MR", syntax=RLELossless, slope=None, inter=None, **common)
        else:  # PET BQML, per-slice slope, up to 30 SUV (clipped at 20)
            raw = rng.integers(0, 50000, SHAPE, endpoint=True).astype(np.uint16)
            tags = pet_tags(decay="ADMIN", half_life=None, start=None, series_time=None)
            ds = dicom_dataset(raw, modality="PT", slope=2.0 + k, inter=0, **common, **tags)
        ds.save_as(path, enforce_file_format=True)


def _workspace(tmp: str) -> dict:
    """The identity checkpoint, one input of every kind under ``tmp``, and one CLI run over their data list."""
    save_identity_checkpoint(os.path.join(tmp, "model.pt"))
    data = os.path.join(tmp, "in")
    os.makedirs(data)
    rng = np.random.default_rng(12)
    items = []
    for name, case in NIFTI_CASES.items():
        _write_nifti(data, name, rng)
        items.append({"image": name, "modality": case[0]})
    for name in DICOM_SERIES:
        _write_series(data, name, rng)
        items.append({"image": name})  # modality from the DICOM tag
    for name in REAL_FILES:
        shutil.copy(pydicom.data.get_testdata_file(name), os.path.join(data, name))
        items.append({"image": name})
    # multi-frame: not read by the reading layer (one file per slice); it must be reported, not dropped
    frames = rng.integers(0, 4000, (3,) + SHAPE).astype(np.uint16)
    multi = dicom_dataset(frames[0], modality="MR", slope=None, inter=None)
    multi.NumberOfFrames, multi.PixelData = 3, frames.tobytes()
    multi.save_as(os.path.join(data, MULTIFRAME), enforce_file_format=True)
    items.append({"image": MULTIFRAME})
    with open(os.path.join(tmp, "datalist.json"), "w", encoding="utf-8") as f:
        json.dump({"test": items}, f)
    out = os.path.join(tmp, "out")
    args = ["run", "inference", "--config_file", INFERENCE_CONFIG, "--bundle_root", BUNDLE]
    args += ["--checkpoint", os.path.join(tmp, "model.pt"), *TINY_OVERRIDES, "--dataset_dir", data]
    args += ["--datalist", os.path.join(tmp, "datalist.json"), "--output_dir", out]
    proc = run_cli(*args, cwd=tmp)
    report_path = os.path.join(out, "inference_report.json")
    report = json.load(open(report_path, encoding="utf-8")) if os.path.isfile(report_path) else None
    return {"in": data, "out": out, "proc": proc, "report": report, "n": len(items), "umask": current_umask()}


def _physical(ds: pydicom.Dataset) -> tuple[np.ndarray, float, float]:
    slope, inter = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return ds.pixel_array.astype(np.float64) * slope + inter, slope, inter


def _dicom_pairs(run: dict) -> list[tuple[str, str, str]]:
    pairs = []
    for name in DICOM_SERIES:
        for f in sorted(os.listdir(os.path.join(run["in"], name))):
            pairs.append((name, os.path.join(run["in"], name, f), os.path.join(run["out"], name, f)))
    return pairs + [(n, os.path.join(run["in"], n), os.path.join(run["out"], n)) for n in REAL_FILES]


class TestFidelityCLI(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tmp = cls.enterClassContext(tempfile.TemporaryDirectory())
        cls.ws = _workspace(tmp)

    def test_every_scan_written_or_reported(self) -> None:
        run = self.ws
        self.assertIsNotNone(run["report"], run["proc"].stdout[-2000:] + run["proc"].stderr[-4000:])
        counts = run["report"]["counts"]
        self.assertEqual(counts, {"written": run["n"] - 1, "skipped": 0, "failed": 1}, run["report"])
        (failed,) = [s for s in run["report"]["scans"] if s["status"] == "failed"]
        self.assertTrue(failed["image"].endswith(MULTIFRAME), failed["image"])
        self.assertIn("multi-frame", failed["message"])
        self.assertNotEqual(run["proc"].returncode, 0)
        self.assertIn(MULTIFRAME, run["proc"].stdout + run["proc"].stderr)

    def test_outputs_have_umask_permissions(self) -> None:
        for folder, dirs, files in os.walk(self.ws["out"]):
            for name in dirs:
                mode = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
                self.assertEqual(mode, 0o777 & ~self.ws["umask"], name)
            for name in files:
                mode = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
                self.assertEqual(mode, 0o666 & ~self.ws["umask"], name)

    @parameterized.expand([(name,) for name in sorted(NIFTI_CASES)])
    def test_nifti_identity_is_clipped_input(self, name: str) -> None:
        modality, dtype = NIFTI_CASES[name][:2]
        src = nib.load(os.path.join(self.ws["in"], name))
        out = nib.load(os.path.join(self.ws["out"], name))
        self.assertEqual(out.get_data_dtype(), np.dtype(dtype))  # type and byte order kept
        self.assertEqual(src.get_data_dtype(), np.dtype(dtype))
        self.assertEqual(out.shape, src.shape)
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
        expected = np.clip(src.get_fdata(), *CLIP[modality])
        if np.dtype(dtype).kind == "f":
            np.testing.assert_allclose(out.get_fdata(), expected, rtol=0, atol=1e-3 * (CLIP[modality][1] / 4095))
            return
        slope, inter = src.dataobj.slope, src.dataobj.inter
        self.assertEqual((out.dataobj.slope, out.dataobj.inter), (slope, inter))  # the input's, not nibabel's
        stored = np.asarray(out.dataobj.get_unscaled())
        np.testing.assert_array_equal(stored, np.rint((expected - inter) / slope))  # to the last stored unit

    def test_dicom_identity_is_clipped_input(self) -> None:
        self.assertEqual(len(_dicom_pairs(self.ws)), 3 * len(DICOM_SERIES) + len(REAL_FILES))
        for name, src_path, out_path in _dicom_pairs(self.ws):
            src, out = pydicom.dcmread(src_path), pydicom.dcmread(out_path)
            modality = {"CT": "CT", "MR": "MRI", "PT": "PET"}[src.Modality]
            values, slope, inter = _physical(src)
            factor = SUV_FACTOR if modality == "PET" else 1.0
            expected = np.clip(values * factor, *CLIP[modality]) / factor
            rescale = (float(out.get("RescaleSlope", 1)), float(out.get("RescaleIntercept", 0)))
            self.assertEqual(rescale, (slope, inter), name)
            self.assertEqual(out.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian, name)
            self.assertEqual((out.BitsAllocated, out.BitsStored, out.HighBit), (16, 16, 15), name)
            negative = np.rint((expected - inter) / slope).min() < 0
            self.assertEqual(int(out.PixelRepresentation), 1 if negative else int(src.PixelRepresentation), name)
            self.assertFalse([e for e in out if e.tag.group == 0x0000], name)  # no command-set element
            np.testing.assert_array_equal(out.pixel_array, np.rint((expected - inter) / slope), err_msg=name)
            self.assertNotEqual(out.SeriesInstanceUID, src.SeriesInstanceUID)
            self.assertEqual(out.ImageType[0], "DERIVED")
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
                self.assertEqual(out.get(tag), src.get(tag), (name, tag))

    def test_pet_round_trip_keeps_bqml_units(self) -> None:
        peaks = []
        for f in sorted(os.listdir(os.path.join(self.ws["out"], "pet_bqml"))):
            out = pydicom.dcmread(os.path.join(self.ws["out"], "pet_bqml", f))
            src = pydicom.dcmread(os.path.join(self.ws["in"], "pet_bqml", f))
            self.assertEqual(out.Units, "BQML")
            self.assertEqual(float(out.RescaleSlope), float(src.RescaleSlope))
            suv_in = src.pixel_array.max() * float(src.RescaleSlope) * SUV_FACTOR
            suv_out = out.pixel_array.max() * float(out.RescaleSlope) * SUV_FACTOR
            self.assertAlmostEqual(suv_out, min(suv_in, 20.0), delta=float(out.RescaleSlope) * SUV_FACTOR)
            peaks.append(suv_in)
        self.assertGreater(max(peaks), 20)  # slices above and below the SUV clip
        self.assertLess(min(peaks), 20)


if __name__ == "__main__":
    unittest.main()
