"""MONAI Deploy app (apps/deploy/app.py) run for real with the App SDK (holoscan) on a DICOM CT series.

The difference option (env TAT_DEPLOY_DIFFERENCE) is on: its derived series must hold restored - input.

Needs the separate environment built by `scripts/build_deploy_env.sh` (monai-deploy-app-sdk 4.0.0, holoscan,
highdicom; ~4 min to build here). Skips, saying so, when it is absent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pytest

from tests.apps.helpers import BUNDLE, REPO, TINY_KW, env_python, run, write_ct_dicom_series, write_tiny_checkpoint

ENV_VAR, ENV_DEFAULT = "TAT_DEPLOY_ENV", "/tmp/deployenv"


def _reference_hu(hu: np.ndarray, ckpt: Path) -> np.ndarray:
    """The tiny network's restoration of each slice, computed here (project venv) with ct.json's normalisation."""
    import torch
    from monai.bundle import ConfigParser

    ct = json.loads((BUNDLE / "configs" / "modality" / "ct.json").read_text())
    lo, hi = ct["clip_range"]
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    for k, v in TINY_KW.items():
        parser[f"network_def#{k}"] = v
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(str(ckpt), weights_only=True))
    x = torch.as_tensor(np.clip((hu - lo) / (hi - lo), 0, 1), dtype=torch.float32).permute(2, 0, 1)[:, None]
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + 1]) for i in range(x.shape[0])])
    return (pred[:, 0].permute(1, 2, 0).numpy() * (hi - lo) + lo).astype(np.float32)


@pytest.mark.external_env
class TestDeployApp(unittest.TestCase):
    def setUp(self):
        self.py = env_python(ENV_VAR, ENV_DEFAULT)
        if self.py is None:
            self.skipTest(
                f"no MONAI Deploy environment at ${ENV_VAR} (default {ENV_DEFAULT}); build it with "
                "`scripts/build_deploy_env.sh` (~2-4 min: monai-deploy-app-sdk 4.0.0 + holoscan + highdicom); "
                "`CI=true make test` and `make test-external` build it"
            )

    def test_dicom_in_derived_dicom_out_in_hu(self):
        import pydicom

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            hu = write_ct_dicom_series(d / "in" / "series1")
            bundle = d / "bundle"
            shutil.copytree(BUNDLE / "configs", bundle / "configs")
            ckpt = write_tiny_checkpoint(bundle / "models" / "model.pt")
            env_override = json.dumps({f"network_def#{k}": v for k, v in TINY_KW.items()})
            import os

            os.environ["TAT_DEPLOY_OVERRIDE"] = env_override
            os.environ["TAT_DEPLOY_DIFFERENCE"] = "true"  # the difference as its own derived series
            try:
                run(
                    [self.py, REPO / "apps" / "deploy" / "app.py", "-i", d / "in", "-o", d / "out", "-m", bundle],
                    cwd=d,
                    timeout=600,
                )
            finally:
                os.environ.pop("TAT_DEPLOY_OVERRIDE", None)
                os.environ.pop("TAT_DEPLOY_DIFFERENCE", None)
            src = [pydicom.dcmread(str(p)) for p in sorted((d / "in" / "series1").glob("*.dcm"))]
            uid = src[0].SeriesInstanceUID
            series_dirs = sorted(p.name for p in (d / "out").iterdir() if p.is_dir())
            self.assertEqual(series_dirs, [uid, f"{uid}_difference"])

            def read(folder: Path) -> list:
                return sorted(
                    (pydicom.dcmread(str(p)) for p in folder.glob("*.dcm")),
                    key=lambda ds: float(ds.ImagePositionPatient[2]),
                )

            def physical(datasets: list) -> np.ndarray:
                return np.stack(
                    [o.pixel_array * float(o.RescaleSlope) + float(o.RescaleIntercept) for o in datasets], -1
                )

            out = read(d / "out" / uid)
            self.assertEqual(len(out), len(src))
            for o, s in zip(out, src):
                self.assertNotEqual(o.SeriesInstanceUID, s.SeriesInstanceUID)
                self.assertNotEqual(o.SOPInstanceUID, s.SOPInstanceUID)
                self.assertEqual(o.StudyInstanceUID, s.StudyInstanceUID)
                self.assertIn("DERIVED", list(o.ImageType))
                self.assertEqual((o.Rows, o.Columns), (s.Rows, s.Columns))
            got = physical(out)
            diff = read(d / "out" / f"{uid}_difference")
            self.assertNotIn(diff[0].SeriesInstanceUID, {out[0].SeriesInstanceUID, uid})
            np.testing.assert_allclose(physical(diff), got - hu, atol=1.0)  # restored - input, integer storage
            self.assertFalse(got.min() >= 0 and got.max() <= 255, "output looks cast to uint8")
            ref = _reference_hu(hu, ckpt)
            inside = (ref > -1023) & (ref < 3070)  # the derived series keeps the source's stored range
            self.assertGreater(inside.mean(), 0.5)
            np.testing.assert_allclose(got[inside], ref[inside], atol=1.0)  # 1 HU: integer storage
