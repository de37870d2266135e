from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from custom import settings as settings_module
from custom.settings import (
    as_flag,
    default_modality_dir,
    get_modality_setting,
    load_modality_settings,
    packaged_bundle,
    validate_modality_settings,
)
from parameterized import parameterized

from tests.utils import BUNDLE, SETTINGS_DIR

GOOD = {"modality": "CT", "task": "low_dose_ct", "units": "HU", "clip_range": [0, 1], "eval_window": [0, 1]}


class TestModalitySettings(unittest.TestCase):
    def test_bundle_files_hold_published_ranges(self):
        s = load_modality_settings(SETTINGS_DIR)
        self.assertEqual(set(s), {"CT", "PET", "MRI"})
        self.assertEqual(s["CT"]["clip_range"], (-1024.0, 3072.0))
        self.assertEqual(s["CT"]["eval_window"], (-160.0, 240.0))
        self.assertEqual(s["PET"]["clip_range"], (0.0, 20.0))
        self.assertEqual(s["MRI"]["clip_range"], (0.0, 4095.0))
        self.assertEqual(len({v["task"] for v in s.values()}), 3)

    def test_lookup_accepts_dicom_spelling(self):
        s = load_modality_settings(SETTINGS_DIR)
        self.assertIs(get_modality_setting(s, "MR"), s["MRI"])
        self.assertIs(get_modality_setting(s, ["pt"]), s["PET"])
        with self.assertRaisesRegex(ValueError, "x.nii: unknown modality"):
            get_modality_setting(s, "US", where="x.nii")

    def test_one_alias_table(self):
        from custom.settings import MODALITY_ALIASES, canonical_modality

        self.assertEqual(
            [canonical_modality(n) for n in ("ct", " PT", "pet", "mr", ["MRI"])], ["CT", "PET", "PET", "MRI", "MRI"]
        )
        for name in ("OT", "US", "", None):
            self.assertIsNone(canonical_modality(name))
        self.assertEqual(set(MODALITY_ALIASES.values()), {"CT", "PET", "MRI"})
        from custom.data.readers import DICOM_TO_MODALITY

        self.assertIs(DICOM_TO_MODALITY, MODALITY_ALIASES)  # one table, not a copy

    def test_bad_files_name_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(ValueError, "no modality json"):
                load_modality_settings(d)
            path = os.path.join(d, "ct.json")
            with open(path, "w") as f:
                json.dump(
                    {"modality": "CT", "task": "t", "units": "HU", "clip_range": [5, 1], "eval_window": [0, 1]}, f
                )
            with self.assertRaisesRegex(ValueError, "ct.json: 'clip_range'"):
                load_modality_settings(d)
            with open(path, "w") as f:
                f.write("{not json")
            with self.assertRaisesRegex(ValueError, "ct.json: unreadable"):
                load_modality_settings(d)

    def test_task_names_and_units_are_checked(self):
        good = {"modality": "CT", "task": "low_dose_ct", "units": "HU", "clip_range": [0, 1], "eval_window": [0, 1]}
        self.assertEqual(validate_modality_settings(good)["task"], "low_dose_ct")
        self.assertEqual(validate_modality_settings({**good, "task": "t-1.v2", "units": ""})["units"], "")
        # task names become report file names: no paths, no blanks, no non-text
        for task in ("../ct", "a/b", "", " ct", "_ct", None, 3, ["ct"]):
            with self.assertRaisesRegex(ValueError, "ct.json: 'task' must be a name"):
                validate_modality_settings({**good, "task": task}, where="ct.json")
        for units in (None, 1, ["HU"]):
            with self.assertRaisesRegex(ValueError, "ct.json: 'units' must be text"):
                validate_modality_settings({**good, "units": units}, where="ct.json")

    @parameterized.expand(
        [
            ("three", [0, 1, 2]),
            ("one", [1]),
            ("text", "01"),
            ("number", 3),
            ("empty_width", [5, 5]),
            ("nan_low", [math.nan, 1]),
            ("inf_high", [0, math.inf]),
            ("minus_inf_low", [-math.inf, 0]),
            ("null_low", [None, 1]),
            ("word_high", [0, "high"]),
            ("list_high", [0, [1]]),
        ]
    )
    def test_ranges_must_be_finite_increasing_pairs(self, _, bad):
        """A bad range is a ValueError naming the file and the key (a zero-width or infinite range would divide by
        zero or give NaN in the normalisation), whatever the JSON value is."""
        for key in ("clip_range", "eval_window"):
            with self.assertRaisesRegex(ValueError, f"ct.json: '{key}' must be"):
                validate_modality_settings({**GOOD, key: bad}, where="ct.json")

    def test_ranges_become_float_tuples_and_input_is_kept(self):
        raw = {**GOOD, "modality": "mr", "clip_range": [-1, 2.5], "eval_window": (0, 3)}
        before = json.dumps(raw)
        out = validate_modality_settings(raw)
        self.assertEqual((out["modality"], out["clip_range"], out["eval_window"]), ("MRI", (-1.0, 2.5), (0.0, 3.0)))
        self.assertEqual(json.dumps(raw), before)  # the input is not modified

    @parameterized.expand([("XR", "'XR'"), ("3", "3"), ("ot", "'ot'")])
    def test_unknown_modality_names_the_file(self, modality, shown):
        value = int(modality) if modality.isdigit() else modality
        with self.assertRaisesRegex(ValueError, f"ct.json: unknown modality {shown}, expected one of"):
            validate_modality_settings({**GOOD, "modality": value}, where="ct.json")

    @parameterized.expand([("number", "5"), ("null", "null"), ("list", "[1, 2]"), ("text", '"modality task"')])
    def test_a_file_not_holding_an_object_is_refused_naming_it(self, _, text):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "ct.json"), "w", encoding="utf-8") as f:
                f.write(text)
            with self.assertRaisesRegex(ValueError, "ct.json: modality settings must be an object with keys"):
                load_modality_settings(d)

    def test_files_read_as_utf8_whatever_the_locale(self):
        """Units such as 'µSv' are read under a C/ASCII locale too (servers, containers)."""
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "pet.json"), "w", encoding="utf-8") as f:
                json.dump({**GOOD, "modality": "PET", "units": "\u00b5Sv"}, f, ensure_ascii=False)
            code = (
                "import sys; from custom.settings import load_modality_settings; "
                "print(ascii(load_modality_settings(sys.argv[1])['PET']['units']))"
            )
            env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"}
            run = subprocess.run(
                [sys.executable, "-X", "utf8=0", "-c", code, d], capture_output=True, text=True, env=env, check=False
            )
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertEqual(run.stdout.strip(), "'\\xb5Sv'")

    def test_lookup_of_a_collated_batch(self):
        """A one-element batch is unwrapped (the message shows the name, not a list); a batch of several scans or
        none is an error, never the first scan's settings."""
        s = load_modality_settings(SETTINGS_DIR)
        self.assertIs(get_modality_setting(s, ("CT",)), s["CT"])
        with self.assertRaisesRegex(
            ValueError, r"^x.nii: unknown modality 'xx', expected one of \['CT', 'MRI', 'PET'\]"
        ):
            get_modality_setting(s, ["xx"], where="x.nii")
        for batch in (["CT", "PET"], ("MR", "MR"), []):
            with self.subTest(batch=batch), self.assertRaisesRegex(ValueError, "unknown modality"):
                get_modality_setting(s, batch)
        # a settings structure written in a config: keys matched case-insensitively, a one-element batch too
        custom = {"ct": {"task": "a"}, "XR": {"task": "b"}}
        self.assertIs(get_modality_setting(custom, ["CT"]), custom["ct"])
        self.assertIs(get_modality_setting(custom, ["xr"]), custom["XR"])

    def test_two_modalities_with_one_task_are_refused(self):
        with tempfile.TemporaryDirectory() as d:
            # one name up to case: the per-task files would collide on a case-insensitive file system
            for name, modality, task in (("ct.json", "CT", "same"), ("mr.json", "MR", "Same")):
                with open(os.path.join(d, name), "w") as f:
                    json.dump(
                        {"modality": modality, "task": task, "units": "", "clip_range": [0, 1], "eval_window": [0, 1]},
                        f,
                    )
            with self.assertRaisesRegex(
                ValueError, r"mr.json: task 'Same' is also the task of CT \('same' in .*ct.json"
            ):
                load_modality_settings(d)


class TestAsFlag(unittest.TestCase):
    @parameterized.expand(
        [(v, True) for v in (True, 1, "1", "true", "TRUE", " yes ", "on")]
        + [(v, False) for v in (False, 0, "0", "false", "No", "off", "none", "null")]
    )
    def test_switch_spellings(self, value, expected):
        self.assertIs(as_flag(value), expected)

    @parameterized.expand([(2,), (-1,), (0.5,), (0.0,), ("maybe",), ("",), ("2",)])
    def test_other_values_are_refused_naming_the_option(self, value):
        with self.assertRaisesRegex(ValueError, f"^amp must be true or false, got {value!r}"):
            as_flag(value, "amp")


class TestPackagedBundle(unittest.TestCase):
    def test_parts_resolve_inside_the_shipped_bundle(self):
        self.assertEqual(packaged_bundle(), Path(BUNDLE).resolve())
        self.assertEqual(packaged_bundle("configs", "train.json"), Path(BUNDLE, "configs", "train.json").resolve())
        self.assertEqual(default_modality_dir(), Path(SETTINGS_DIR).resolve())

    def test_a_missing_part_is_an_error_naming_it(self):
        with self.assertRaisesRegex(FileNotFoundError, r"configs/no_such\.json: not in the bundle shipped"):
            packaged_bundle("configs", "no_such.json")

    def test_a_package_without_bundle_is_an_error(self):
        """The copy of ``custom`` inside an unzipped bundle zip has no ``_bundle``: refuse, pointing to --bundle_root."""
        with tempfile.TemporaryDirectory() as d:
            with mock.patch.object(settings_module.resources, "files", return_value=Path(d)):
                for parts in ((), ("configs", "modality")):
                    with self.assertRaisesRegex(FileNotFoundError, "--bundle_root"):
                        packaged_bundle(*parts)
                with self.assertRaisesRegex(FileNotFoundError, os.path.join(d, "_bundle")):
                    default_modality_dir()


if __name__ == "__main__":
    unittest.main()
