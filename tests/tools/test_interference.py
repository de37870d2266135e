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

    def test_group_name_edges(self):
        self.assertEqual(group_name("gamma"), "gamma")  # a parameter of the network itself
        self.assertEqual(group_name("encoder_level1.0.attn.qkv.weight", depth=0), "encoder_level1")  # at least one
        self.assertEqual(group_name("a.b.c.weight", depth=3), "a.b.c")
        self.assertEqual(group_name("a.b.weight", depth=5), "a.b")  # never the parameter's own name

    def test_task_gradients_accumulate_per_task(self):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1), torch.nn.Linear(1, 1))
        net[2].requires_grad_(False)  # frozen: not probed
        bx = [(torch.rand(4, 3), torch.rand(4, 1)), (torch.rand(2, 3), torch.rand(2, 1))]
        by = [(torch.rand(3, 3), torch.rand(3, 1))]

        def by_hand(batches):
            net.zero_grad()
            for x, y in batches:  # the gradients of the batches' L1 losses, summed
                (net(x) - y).abs().mean().backward()
            return {"0": torch.cat([net[0].weight.grad.flatten(), net[0].bias.grad]).double(), "1": None}

        grads = task_gradients(net, {"X": bx, "Y": by}, depth=1)
        self.assertEqual(set(grads), {"X", "Y"})
        self.assertEqual(list(grads["X"]), ["0", "1"])
        self.assertTrue(all(p.grad is None for p in net.parameters()))  # left cleared
        for task, batches in (("X", bx), ("Y", by)):  # Y's gradient holds nothing of X's
            torch.testing.assert_close(grads[task]["0"], by_hand(batches)["0"])
            self.assertEqual(grads[task]["0"].dtype, torch.float64)
        with self.assertRaisesRegex(ValueError, "task Z: no batch to probe"):
            task_gradients(net, {"X": bx, "Z": []})

    def test_task_gradients_group_by_two_components_by_default(self):
        seq = torch.nn.Sequential
        net = seq(seq(seq(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 1)), seq(torch.nn.Linear(1, 1)))
        batch = [(torch.rand(3, 2), torch.rand(3, 1))]
        grads = task_gradients(net, {"X": batch})["X"]
        self.assertEqual({k: v.numel() for k, v in grads.items()}, {"0.0": 6, "0.1": 3, "1.0": 2})
        self.assertEqual(list(task_gradients(net, {"X": batch}, depth=1)["X"]), ["0", "1"])

    def test_unused_layer_gives_zeros(self):
        class Skip(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.used, self.unused = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

            def forward(self, x):
                return self.used(x)

        batch = [(torch.rand(2, 2), torch.rand(2, 2))]
        grads = task_gradients(Skip(), {"A": batch, "B": batch}, depth=1)
        torch.testing.assert_close(grads["A"]["unused"], torch.zeros(6, dtype=torch.float64))
        layers, _, m = pairwise_cosine(grads)
        self.assertTrue(np.isnan(m[layers.index("unused"), 0]))
        self.assertAlmostEqual(m[layers.index("used"), 0], 1.0)

    def test_task_batches_from_the_config(self):
        """Items grouped by upper-cased modality, ``batches`` stacks of ``samples_per_task`` transformed items each,
        drawn without replacement when there are enough, reproducibly for a seed."""
        items = [{"modality": "ct", "i": i} for i in range(4)] + [{"modality": "PET", "i": 10}]

        class Transform:
            def set_random_state(self, seed):
                self.seed = seed

            def __call__(self, item):
                return {
                    "image": torch.full((1, 2, 3), float(item["i"])),
                    "label": torch.full((1, 2, 3), -float(item["i"])),
                }

        transform = Transform()
        parser = mock.Mock()
        parser.get_parsed_content.side_effect = {"train#datalist": items, "train#preprocessing": transform}.get
        out = interference._task_batches(parser, 2, 2, seed=5)
        self.assertEqual(transform.seed, 5)
        self.assertEqual(list(out), ["CT", "PET"])
        for task in out:
            self.assertEqual(len(out[task]), 2)
            for x, y in out[task]:
                self.assertEqual(tuple(x.shape), (2, 1, 2, 3))
                torch.testing.assert_close(y, -x)
        ct = sorted(float(x[k, 0, 0, 0]) for x, _ in out["CT"] for k in range(2))
        self.assertEqual(ct, [0.0, 1.0, 2.0, 3.0])  # four items for four samples: each once
        self.assertTrue(all(float(v) == 10.0 for x, _ in out["PET"] for v in x.flatten()))  # one item, repeated
        again = interference._task_batches(parser, 2, 2, seed=5)
        other = interference._task_batches(parser, 2, 2, seed=6)
        order = [[float(x[k, 0, 0, 0]) for x, _ in o["CT"] for k in range(2)] for o in (out, again, other)]
        self.assertEqual(order[0], order[1])
        self.assertNotEqual(order[0], order[2])

    def test_cli_defaults_and_types(self):
        """The documented defaults (EMA weights, 4 batches of 4 crops, seed 0, depth 2) and numbers read as ints."""

        class StopProbeError(Exception):
            pass

        calls = {}

        def gradients(network, batches, depth):
            calls["depth"] = depth
            raise StopProbeError

        base = ["--checkpoint", "m.pt", "--datalist", "d.json", "--output_dir", "o"]
        base += ["--config_file", TRAIN_CONFIG, "--override", json.dumps(TINY)]
        with (
            mock.patch.object(
                interference, "load_checkpoint", lambda net, path, weights: calls.update(weights=weights)
            ),
            mock.patch.object(interference, "_task_batches", lambda p, b, s, seed: calls.update(args=(b, s, seed))),
            mock.patch.object(interference, "task_gradients", gradients),
        ):
            with self.assertRaises(StopProbeError):
                main(base)
            self.assertEqual(calls, {"weights": "ema", "args": (4, 4, 0), "depth": 2})
            with self.assertRaises(StopProbeError):
                main([*base, "--batches", "1", "--samples_per_task", "1", "--seed", "3", "--depth", "1"])
            self.assertEqual(calls, {"weights": "ema", "args": (1, 1, 3), "depth": 1})
            with tempfile.TemporaryDirectory() as d:  # no --override: the config as it is
                config = os.path.join(d, "train.json")
                with open(config, "w", encoding="utf-8") as f:
                    json.dump({"network_def": {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1}}, f)
                with self.assertRaises(StopProbeError):
                    main([*base[:6], "--config_file", config])
            err = io.StringIO()
            for args in (base[2:], base[:2] + base[4:], base[:4], [*base, "--weights", "online"]):
                with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as stop:
                    main(args)  # a required option missing, or weights other than ema / network
                self.assertEqual(stop.exception.code, 2)

    def test_bad_counts_refused(self):
        for flag in ("--batches", "--samples_per_task"):
            with self.assertRaisesRegex(ValueError, "--batches and --samples_per_task must be >= 1"):
                main(["--checkpoint", "m.pt", "--datalist", "d.json", "--output_dir", "o", flag, "0"])

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
            datalist = os.path.join(d, "data", "probe_list.json")  # any name: not the config's datalist.json
            os.rename(make_dataset(os.path.join(d, "data"), n_train=1, n_val=0), datalist)
            net = TAT(**TINY_NET, **TINY_TREN)
            torch.save(net.state_dict(), os.path.join(d, "model.pt"))
            os.makedirs(os.path.join(d, "out"))  # an existing output folder is written into
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                code = main(
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
            self.assertEqual(code, 0)
            with open(os.path.join(d, "out", "task_interference.csv")) as f:
                rows = list(csv.reader(f))
            self.assertEqual(rows[0], ["layer", "num_params", "CT-MRI", "CT-PET", "MRI-PET"])
            self.assertEqual(rows[-1][0], "mean")
            layers = {r[0]: int(r[1]) for r in rows[1:-1]}
            expected: dict[str, int] = {}
            for name, p in net.named_parameters():
                expected[group_name(name)] = expected.get(group_name(name), 0) + p.numel()
            self.assertEqual(layers, expected)  # every layer once, with its parameter count
            self.assertEqual(int(rows[-1][1]), sum(p.numel() for p in net.parameters()))
            self.assertIn("encoder_level1.0", layers)
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

    def test_csv_mean_skips_unused_layers(self):
        """NaN (a layer a task does not use) is written as nan and left out of the mean and its weights."""
        matrix = np.array([[0.5, np.nan, 0.25], [np.nan, np.nan, -1.0]])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.csv")
            write_csv(path, ["a", "b"], ["A-B", "A-C", "B-C"], matrix, {"a": 3, "b": 1})
            with open(path, encoding="utf-8") as f:
                rows = list(csv.reader(f))
        self.assertEqual(rows[1], ["a", "3", "0.500000", "nan", "0.250000"])
        self.assertEqual(rows[2], ["b", "1", "nan", "nan", "-1.000000"])
        self.assertEqual(rows[3], ["mean", "4", "0.500000", "nan", "-0.062500"])

    def test_heatmap_labels_and_fixed_colour_scale(self):
        """Rows are the layers, columns the pairs, colours on the fixed [-1, 1] diverging scale (comparable between
        checkpoints), with a title and a colour bar."""
        import matplotlib.figure

        figures = []
        save = matplotlib.figure.Figure.savefig

        def keep(fig, *args, **kwargs):
            figures.append(fig)
            return save(fig, *args, **kwargs)

        layers, pairs, matrix = ["a", "b", "c"], ["CT-MRI", "CT-PET"], np.array([[0.5, 0.1], [-0.25, 0.0], [0.2, 0.3]])
        import matplotlib.pyplot as plt

        open_figures = plt.get_fignums()
        with tempfile.TemporaryDirectory() as d, mock.patch.object(matplotlib.figure.Figure, "savefig", keep):
            plot_heatmap(os.path.join(d, "t.png"), layers, pairs, matrix)
        self.assertEqual(plt.get_fignums(), open_figures)  # closed: no figure piles up over repeated probes
        ax, bar = figures[0].axes  # the heat map and its colour bar
        image = ax.images[0]
        self.assertEqual(image.get_clim(), (-1, 1))
        self.assertEqual(image.get_cmap().name, "RdBu")
        np.testing.assert_array_equal(image.get_array(), matrix)
        self.assertEqual([t.get_text() for t in ax.get_xticklabels()], pairs)
        self.assertEqual([t.get_text() for t in ax.get_yticklabels()], layers)
        self.assertEqual(ax.get_title(), "Task gradient cosine similarity")
        self.assertIs(bar, image.colorbar.ax)

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
