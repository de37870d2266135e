"""python -m custom.tools.task_statistics: where it finds its config and modality settings (--bundle_root)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import unittest

import torch
from custom.handlers.task_statistics import STATS_KEY
from custom.tools.task_statistics import DESCRIPTION, _config_files, main
from parameterized import parameterized

from tests.utils import BUNDLE, INFERENCE_CONFIG, make_tiny_dataset, save_checkpoint, tiny_overrides


class TestTaskStatisticsCommand(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def run_main(self, *argv: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["--checkpoint", os.path.join(self.tmp.name, "missing.pt"), "--datalist", "d.json", *argv])
        return code, err.getvalue()

    def test_bundle_root_is_where_the_config_is_read(self):
        code, err = self.run_main("--bundle_root", os.path.join(self.tmp.name, "nowhere"))
        self.assertEqual(code, 1)
        self.assertIn(os.path.join(self.tmp.name, "nowhere", "configs", "inference.json"), err)

    def test_a_bundle_copy_is_used_as_given(self):
        root = os.path.join(self.tmp.name, "unzipped")
        shutil.copytree(os.path.join(BUNDLE, "configs"), os.path.join(root, "configs"))
        code, err = self.run_main("--bundle_root", root)
        self.assertEqual(code, 1)  # config and network found; the (missing) checkpoint is the first problem
        self.assertIn("missing.pt: checkpoint not found", err)

    def test_help_is_one_complete_sentence(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            main(["--help"])
        self.assertIn(DESCRIPTION, " ".join(out.getvalue().split()))
        self.assertTrue(DESCRIPTION.endswith("."))

    @parameterized.expand(
        [
            ("one", "a.json", ["a.json"]),
            ("list", "['a.json', 'b.json']", ["a.json", "b.json"]),
            ("json list", ' ["a.json"] ', ["a.json"]),
        ]
    )
    def test_config_files(self, _, text, expected):
        self.assertEqual(_config_files(text), expected)


class TestTaskStatisticsSettings(unittest.TestCase):
    """A valid tiny checkpoint and config, so the command reaches the modality settings step."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.datalist = make_tiny_dataset(os.path.join(cls.tmp.name, "data"))
        cls.overlay = os.path.join(cls.tmp.name, "tiny.json")
        with open(cls.overlay, "w", encoding="utf-8") as f:
            json.dump(tiny_overrides(), f)
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls.threads)
        cls.tmp.cleanup()

    def setUp(self):
        self.d = tempfile.mkdtemp(dir=self.tmp.name)
        self.ckpt = os.path.join(self.d, "model.pt")
        save_checkpoint(self.ckpt)
        self.root = os.path.join(self.d, "unzipped")
        shutil.copytree(os.path.join(BUNDLE, "configs"), os.path.join(self.root, "configs"))

    def run_main(self, *argv: str) -> tuple[int, str]:
        err = io.StringIO()
        configs = json.dumps([INFERENCE_CONFIG, self.overlay])
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["--checkpoint", self.ckpt, "--datalist", self.datalist, "--config_file", configs, *argv])
        return code, err.getvalue()

    def test_empty_modality_dir_is_named(self):
        empty = os.path.join(self.d, "empty")
        os.makedirs(empty)
        code, err = self.run_main("--modality_dir", empty)
        self.assertEqual(code, 1)
        self.assertIn(f"{empty}: no modality json file found", err)
        self.assertNotIn(STATS_KEY, torch.load(self.ckpt, weights_only=True))

    def test_modality_dir_wins_over_bundle_root(self):
        code, err = self.run_main("--bundle_root", os.path.join(self.d, "nowhere"), "--modality_dir", self.d)
        self.assertEqual(code, 1)
        self.assertIn(f"{self.d}: no modality json file found", err)

    def test_bundle_root_settings_are_used(self):
        bad = os.path.join(self.root, "configs", "modality", "ct.json")
        with open(bad, "w", encoding="utf-8") as f:
            f.write("{not json")
        code, err = self.run_main("--bundle_root", self.root)
        self.assertEqual(code, 1)
        self.assertIn(f"{bad}: unreadable modality settings", err)

    def test_a_valid_bundle_root_stores_the_statistics(self):
        code, err = self.run_main("--bundle_root", self.root)
        self.assertEqual(code, 0, err)
        stats = torch.load(self.ckpt, weights_only=True)[STATS_KEY]
        self.assertEqual(sorted(stats["tasks"]), ["CT", "MRI", "PET"])
        self.assertEqual((stats["count"], stats["validation_count"]), ([2, 2, 2], [1, 1, 1]))  # slices per task

    def test_model_key_reads_and_stores_under_it(self):
        """A checkpoint whose weights sit under another key (the handler's ``model_key``): read and stored there,
        the weights left unchanged; without ``--model_key`` it is refused, not re-wrapped."""
        weights = torch.load(self.ckpt, weights_only=True)["model"]
        torch.save({"weights": weights}, self.ckpt)
        code, err = self.run_main("--bundle_root", self.root)
        self.assertEqual(code, 1)
        self.assertEqual(list(torch.load(self.ckpt, weights_only=True)), ["weights"])  # untouched
        code, err = self.run_main("--bundle_root", self.root, "--model_key", "weights")
        self.assertEqual(code, 0, err)
        saved = torch.load(self.ckpt, weights_only=True)
        self.assertEqual(sorted(saved), sorted(["weights", STATS_KEY]))
        for name, value in weights.items():
            torch.testing.assert_close(saved["weights"][name], value)


if __name__ == "__main__":
    unittest.main()
