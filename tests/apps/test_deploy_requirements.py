"""The MAP's requirements (apps/deploy/requirements.txt, copied into the container) carry what the package needs to
read, restore and write scans: every install requirement of setup.cfg but those of training, reports and the demo."""

from __future__ import annotations

import configparser
import re
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# used by training, evaluation reports and the demo only (TensorBoard, panels, progress bars, the CLIs' parsing)
NOT_IN_THE_MAP = {"tensorboard", "matplotlib", "tqdm", "fire", "pyyaml"}


def _names(lines: list[str]) -> set[str]:
    """Package names of requirement lines (comments and blank lines skipped), lower case."""
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.match(r"[A-Za-z0-9._-]+", line).group(0).lower())
    return names


class TestDeployRequirements(unittest.TestCase):
    def test_map_requirements_cover_the_runtime_requirements(self):
        cfg = configparser.ConfigParser()
        cfg.read(ROOT / "setup.cfg")
        runtime = _names(cfg["options"]["install_requires"].splitlines()) - NOT_IN_THE_MAP
        self.assertTrue({"pydicom", "python-gdcm", "pylibjpeg-openjpeg", "nibabel"} <= runtime)
        in_map = _names((ROOT / "apps" / "deploy" / "requirements.txt").read_text().splitlines())
        self.assertEqual(sorted(runtime - in_map), [], "add these to apps/deploy/requirements.txt")

    def test_pydicom_3_where_gdcm_is_installed(self):
        # the reader keeps GDCM off JPEG 2000 / baseline with pydicom 3's per-dataset decoder choice; pydicom 2 would
        # try GDCM first (it aborts the process on corrupt headers)
        cfg = configparser.ConfigParser()
        cfg.read(ROOT / "setup.cfg")
        for where, lines in (
            ("setup.cfg", cfg["options"]["install_requires"].splitlines()),
            ("apps/deploy/requirements.txt", (ROOT / "apps" / "deploy" / "requirements.txt").read_text().splitlines()),
        ):
            pins = [re.sub(r"\s+", "", line.split("#", 1)[0]) for line in lines]
            self.assertIn("python-gdcm", _names(lines), where)
            floor = [p for p in pins if p.lower().startswith("pydicom>=")]
            self.assertEqual(len(floor), 1, where)
            self.assertGreaterEqual(int(floor[0].split(">=")[1].split(".")[0]), 3, where)


if __name__ == "__main__":
    unittest.main()
