"""The difference output: paths, values, overwrite rules (unit level; the CLI test covers DICOM series)."""

from __future__ import annotations

import os
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from custom.inference.difference import SaveDifferenced, difference_path
from monai.data import MetaTensor
from parameterized import parameterized


def _item(folder: str, restored: np.ndarray, measured: np.ndarray) -> dict:
    src = os.path.join(folder, "in.nii.gz")
    ref = nib.Nifti1Image(measured.astype(np.int16), np.diag([0.7, 0.8, 2.5, 1.0]))
    nib.save(ref, src)
    return {
        "kind": "nifti",
        "source": src,
        "output": os.path.join(folder, "out", "in.nii.gz"),
        "scan_info": {"nifti": nib.load(src)},
        "pred": torch.as_tensor(restored, dtype=torch.float32)[None],
        "input": torch.as_tensor(measured, dtype=torch.float32)[None],
    }


class TestDifference(unittest.TestCase):
    @parameterized.expand(
        [
            ["out/a.nii.gz", "out/a_difference.nii.gz"],
            ["out/a.nii", "out/a_difference.nii"],
            ["out/series", "out/series_difference"],
            ["out/series/", "out/series_difference"],
            ["out/x.dcm", "out/x_difference.dcm"],
            ["out/IM0001", "out/IM0001_difference"],
        ]
    )
    def test_path(self, output: str, expected: str) -> None:
        self.assertEqual(difference_path(output), expected)

    def test_values_dtype_and_geometry(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            measured = np.arange(24, dtype=np.float32).reshape(4, 6) * 10
            restored = measured - 25.5  # negative differences, non-integer: not the input's int16
            out = SaveDifferenced("pred")(_item(d, restored, measured))
            img = nib.load(out["difference_output"])
            self.assertEqual(out["difference_output"], os.path.join(d, "out", "in_difference.nii.gz"))
            self.assertEqual(img.get_data_dtype(), np.float32)
            np.testing.assert_allclose(img.get_fdata(), np.full((4, 6), -25.5), atol=1e-5)
            np.testing.assert_allclose(img.affine, np.diag([0.7, 0.8, 2.5, 1.0]))
            torch.testing.assert_close(out["difference"], torch.full((1, 4, 6), -25.5))

    def test_disabled_missing_input_and_shape(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            item = _item(d, np.zeros((4, 6)), np.ones((4, 6)))
            self.assertNotIn("difference_output", SaveDifferenced("pred", enabled="false")(item))
            self.assertFalse(os.path.exists(os.path.join(d, "out")))
            with self.assertRaisesRegex(ValueError, "in.nii.gz: the difference output needs the input scan"):
                SaveDifferenced("pred")({k: v for k, v in item.items() if k != "input"})
            with self.assertRaisesRegex(ValueError, "differ in shape"):
                SaveDifferenced("pred")({**item, "pred": torch.zeros(1, 4, 5)})
            # no "source" and a loaded image: the message names the image's file, not its values
            loaded = MetaTensor(torch.full((1, 4, 6), 7.0), meta={"filename_or_obj": "/scans/b.nii.gz"})
            bare = {k: v for k, v in item.items() if k not in ("input", "source")}
            with self.assertRaisesRegex(ValueError, r"^/scans/b.nii.gz: the difference output"):
                SaveDifferenced("pred")({**bare, "image": loaded})

    def test_overwrite_rules(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            item = _item(d, np.zeros((4, 6)), np.ones((4, 6)))
            SaveDifferenced("pred")(item)
            # an orphan difference (its restored scan missing: an interrupted run) is replaced
            item2 = {**item, "pred": torch.full((1, 4, 6), 3.0)}
            path = SaveDifferenced("pred")(item2)["difference_output"]
            np.testing.assert_allclose(nib.load(path).get_fdata(), 2.0)
            # with the restored scan present, an existing difference is kept unless overwrite
            os.makedirs(os.path.dirname(item["output"]), exist_ok=True)
            open(item["output"], "wb").close()
            with self.assertRaises(FileExistsError):
                SaveDifferenced("pred")(item)
            SaveDifferenced("pred", overwrite=True)(item)
            np.testing.assert_allclose(nib.load(path).get_fdata(), -1.0)


if __name__ == "__main__":
    unittest.main()
