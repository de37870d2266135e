from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import unittest
from unittest import mock

import numpy as np
import torch
from custom.networks import checkpoint
from custom.tools import interference
from custom.tools.interference import (
    group_name,
    main,
    pairwise_cosine,
    plot_heatmap,
    resolve_config,
    task_gradients,
    write_csv,
)

from tests.utils import BUNDLE
from tests.utils import TINY as TINY_NET
from tests.utils import TINY_TREN, TRAIN_CONFIG, make_dataset, tiny_overrides

TINY = tiny_overrides(tren=True, patch=False, patch_size=TINY_NET["train_patch_size"])


class TestInterference(unittest.TestCase):
    def test_group_name(self):
        self.assertEqual(group_name("encoder_level1.0.attn.qkv.weight"), "encoder_level1.0")
        self.assertEqual(group_name("output.weight"), "output")
        self.assertEqual(group_name("encoder_level1.0.attn.qkv.weight", depth=1), "encoder_level1")

    def test_pairwise_cosine_by_hand(self):
        grads = {
            "A": {"l1": torch.tensor([1.0, 0.0]), "l2": torch.tensor([1.0, 1.0])},
            "B": {"l1": torch.tensor([0.0, 1.0]), "l2": torch.tensor([-1.0, -1.0])},
            "C": {"l1": torch.tensor([1.0, 1.0]), "l2": torch.tensor([0.0, 0.0])},
        }
        layers, pairs, m = pairwise_cosine(grads)
        self.assertEqual(pairs, ["A-B", "A-C", "B-C"])
        np.testing.assert_allclose(m[0], [0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)])
        self.assertAlmostEqual(m[1, 0], -1.0, places=6)
        self.assertTrue(np.isnan(m[1, 1]))

    def test_identical_tasks_are_aligned(self):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 1))
        batch = [(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))]
        _, _, m = pairwise_cosine(task_gradients(net, {"X": batch, "Y": batch}, depth=1))
        np.testing.assert_allclose(m, 1.0, rtol=1e-9)

    def test_cli(self):
        from custom.networks import TAT

        with tempfile.TemporaryDirectory() as d:
            datalist = make_dataset(os.path.join(d, "data"), n_train=1, n_val=0)
            net = TAT(**TINY_NET, **TINY_TREN)
            torch.save(net.state_dict(), os.path.join(d, "model.pt"))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                main(
                    [
                        "--checkpoint",
                        os.path.join(d, "model.pt"),
                        "--datalist",
                        datalist,
                        "--output_dir",
                        os.path.join(d, "out"),
                        "--config_file",
                        TRAIN_CONFIG,
                        "--override",
                        json.dumps(TINY),
                        "--batches",
                        "1",
                        "--samples_per_task",
                        "2",
                    ]
                )
            finally:
                torch.set_num_threads(threads)
            with open(os.path.join(d, "out", "task_interference.csv")) as f:
                rows = list(csv.reader(f))
            self.assertEqual(rows[0], ["layer", "num_params", "CT-MRI", "CT-PET", "MRI-PET"])
            self.assertEqual(rows[-1][0], "mean")
            self.assertTrue(all(math.isfinite(float(v)) for v in rows[-1][2:]))
            self.assertGreater(os.path.getsize(os.path.join(d, "out", "task_interference.png")), 1000)


class TestInterferenceConfig(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.d = tmp.name
        cwd = os.getcwd()
        os.chdir(self.d)  # the defaults never depend on the working folder
        self.addCleanup(os.chdir, cwd)

    def test_default_is_the_shipped_train_json(self):
        self.assertEqual(resolve_config(None, None), (os.path.realpath(TRAIN_CONFIG), os.path.realpath(BUNDLE)))

    def test_bundle_root_gives_its_train_json(self):
        root = os.path.join(self.d, "root")
        os.makedirs(os.path.join(root, "configs"))
        with open(os.path.join(root, "configs", "train.json"), "w") as f:
            f.write("{}")
        self.assertEqual(resolve_config(None, "root"), (os.path.join(root, "configs", "train.json"), root))
        self.assertEqual(resolve_config(TRAIN_CONFIG, "root"), (TRAIN_CONFIG, root))
        self.assertEqual(resolve_config("root/configs/train.json", None)[1], root)

    def test_missing_config_is_named(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(
                ["--checkpoint", "m.pt", "--datalist", "d.json", "--output_dir", "o", "--bundle_root", "nowhere"]
            )
        self.assertEqual(code, 1)
        self.assertIn(
            os.path.join(self.d, "nowhere", "configs", "train.json") + ": training config not found", err.getvalue()
        )
        with self.assertRaisesRegex(FileNotFoundError, "no_such.json: training config not found"):
            resolve_config("no_such.json", None)

    def test_no_shipped_bundle_is_an_error(self):
        with mock.patch.object(interference, "packaged_bundle", side_effect=FileNotFoundError("no _bundle")):
            with self.assertRaisesRegex(FileNotFoundError, "no _bundle"):
                resolve_config(None, None)


class TestInterferenceOutputs(unittest.TestCase):
    def test_one_checkpoint_loader(self):
        """The probe reads checkpoints with the bundle's loader (latest.pt's EMA weights included), no copy."""
        self.assertIs(interference.load_checkpoint, checkpoint.load_checkpoint)
        with open(interference.__file__, encoding="utf-8") as f:
            source = f.read()
        for copy in ("torch.load", "load_state_dict", "def load_network_weights"):
            self.assertNotIn(copy, source)

    def test_csv_is_written_atomically(self):
        layers, pairs, matrix = ["a", "b"], ["CT-PET"], np.array([[0.5], [-0.25]])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.csv")
            write_csv(path, layers, pairs, matrix, {"a": 3, "b": 1})
            with open(path, encoding="utf-8") as f:
                good = f.read()
            self.assertEqual(good.splitlines()[-1], "mean,4,0.312500")
            with self.assertRaises(KeyError):  # fails after the header and the first row were written
                write_csv(path, layers, pairs, matrix, {"a": 3})
            with open(path, encoding="utf-8") as f:
                self.assertEqual(f.read(), good)
            self.assertEqual(os.listdir(d), ["t.csv"])

    def test_png_is_written_atomically(self):
        import matplotlib.figure

        layers, pairs, matrix = ["a", "b"], ["CT-PET"], np.array([[0.5], [-0.25]])

        def partial_then_fail(fig, fname, **kwargs):
            with open(fname, "wb") as f:
                f.write(b"\x89PNG partial")
            raise OSError("disk full")

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.png")
            plot_heatmap(path, layers, pairs, matrix)
            with open(path, "rb") as f:
                good = f.read()
            self.assertTrue(good.startswith(b"\x89PNG") and len(good) > 1000)
            with mock.patch.object(matplotlib.figure.Figure, "savefig", partial_then_fail):
                with self.assertRaisesRegex(OSError, "disk full"):
                    plot_heatmap(path, layers, pairs, matrix)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), good)
            self.assertEqual(os.listdir(d), ["t.png"])


if __name__ == "__main__":
    unittest.main()
