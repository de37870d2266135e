"""Task statistics handler (end of training) and command (existing checkpoint) store the statistics in it."""

from __future__ import annotations

import json
import logging
import os
import shlex
import tempfile
import threading
import unittest

import nibabel as nib
import numpy as np
import torch
from custom.handlers import SafeCheckpointLoader
from custom.handlers.task_statistics import (
    STATS_KEY,
    STD_FLOOR,
    TaskStatisticsHandler,
    calibrate_threshold,
    checkpoint_network,
    compute_task_statistics,
    fit_task_statistics,
    load_task_statistics,
    task_distances,
    task_embeddings,
    task_name,
)
from custom.settings import load_modality_settings
from custom.tools.task_statistics import main
from ignite.engine import Engine
from parameterized import parameterized

from tests.utils import BUNDLE, TINY_OVERRIDES, make_task_dataset, tiny_net

SETTINGS = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))


class TestTaskStatistics(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.datalist = make_task_dataset(self.tmp, {"training": 3, "validation": 1})
        self.ckpt = os.path.join(self.tmp, "model.pt")
        self.best = tiny_net(seed=1)
        torch.save({"model": self.best.state_dict()}, self.ckpt)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def _without_validation(self, empty: bool) -> str:
        with open(self.datalist, encoding="utf-8") as f:
            lists = json.load(f)
        lists["validation"] = []
        if not empty:
            del lists["validation"]
        path = os.path.join(self.tmp, f"no_val_{empty}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(lists, f)
        return path

    def test_handler_stores_statistics_of_the_checkpoint_weights_at_completion(self) -> None:
        torch.save(self.best.state_dict(), self.ckpt)  # the best-model saver writes its one entry bare
        live = tiny_net(seed=2)  # the training network: other weights than the saved best model
        engine = Engine(lambda e, b: None)
        TaskStatisticsHandler(live, self.ckpt, self.datalist, SETTINGS).attach(engine)
        self.assertIsNone(load_task_statistics(self.ckpt))
        engine.run([0, 1], max_epochs=1)
        stats = load_task_statistics(self.ckpt)
        self.assertEqual(stats["tasks"], ["CT", "MRI", "PET"])
        self.assertEqual(stats["count"], [3, 3, 3])
        self.assertEqual(stats["validation_count"], [1, 1, 1])
        expected = compute_task_statistics(self.best, self.datalist, SETTINGS)
        torch.testing.assert_close(stats["mean"], expected["mean"])
        self.assertAlmostEqual(stats["threshold"], expected["threshold"], places=5)
        other = compute_task_statistics(live, self.datalist, SETTINGS)
        self.assertFalse(torch.allclose(stats["mean"], other["mean"]))
        ckpt = torch.load(self.ckpt, weights_only=True)
        self.assertEqual(set(ckpt), {"model", STATS_KEY})
        for k, v in self.best.state_dict().items():  # the weights themselves are kept
            torch.testing.assert_close(ckpt["model"][k], v)
        net = tiny_net(seed=3)  # and the bundle's loader still restores them
        SafeCheckpointLoader(load_path=self.ckpt, load_dict={"model": net})(Engine(lambda e, b: None))
        torch.testing.assert_close(net.state_dict(), self.best.state_dict())

    def test_checkpoint_network_reads_every_layout_with_the_bundle_loader(self) -> None:
        """Bare state dict, {"model": ...} and the trainer's latest.pt (its EMA weights); the network is copied."""
        raw, ema = tiny_net(seed=2).state_dict(), self.best.state_dict()
        latest = os.path.join(self.tmp, "latest.pt")
        torch.save({"network": raw, "ema": {"ema_model": ema, "num_updates": torch.tensor(3)}}, latest)
        bare = os.path.join(self.tmp, "bare.pt")
        torch.save(ema, bare)
        template = tiny_net(seed=3)
        before = {k: v.clone() for k, v in template.state_dict().items()}
        for path in (self.ckpt, bare, latest):
            net = checkpoint_network(template, path)
            self.assertFalse(net.training)
            for key, value in ema.items():
                torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0, msg=f"{path} {key}")
        for key, value in template.state_dict().items():
            self.assertTrue(torch.equal(value, before[key]), key)
        torch.save({"optimizer": {}}, bare)
        with self.assertRaisesRegex(ValueError, "bare.pt: expected a state dict"):
            checkpoint_network(template, bare)

    def test_handler_disabled_or_without_checkpoint(self) -> None:
        engine = Engine(lambda e, b: None)
        TaskStatisticsHandler(self.best, self.ckpt, self.datalist, SETTINGS, enabled="false").attach(engine)
        engine.run([0], max_epochs=1)
        self.assertIsNone(load_task_statistics(self.ckpt))
        with self.assertRaisesRegex(ValueError, "task_statistics must be true or false, got 'sometimes'"):
            TaskStatisticsHandler(self.best, self.ckpt, self.datalist, SETTINGS, enabled="sometimes")
        missing = TaskStatisticsHandler(self.best, os.path.join(self.tmp, "missing.pt"), self.datalist, SETTINGS)
        with self.assertRaisesRegex(ValueError, "missing.pt: no checkpoint"):
            missing()
        engine = Engine(lambda e, b: None)
        missing.attach(engine)
        with self.assertLogs("custom.handlers.task_statistics", logging.ERROR) as logs:
            engine.run([0], max_epochs=1)  # the training itself does not fail at its very end
        self.assertIn("task statistics NOT stored", logs.output[0])
        self.assertIn("python -m custom.tools.task_statistics", logs.output[0])
        self.assertNotIn("--model_key", logs.output[0])  # the command's default key

    def test_failure_log_gives_a_command_that_runs_as_written(self) -> None:
        """The suggested command quotes a checkpoint path with a space and names a model_key other than 'model'."""
        path = os.path.join(self.tmp, "my run", "model.pt")
        handler = TaskStatisticsHandler(self.best, path, self.datalist, SETTINGS, model_key="weights")
        engine = Engine(lambda e, b: None)
        handler.attach(engine)
        with self.assertLogs("custom.handlers.task_statistics", logging.ERROR) as logs:
            engine.run([0], max_epochs=1)
        command = logs.output[0].split("Compute them later with ", 1)[1].rstrip(".")
        self.assertEqual(
            shlex.split(command),
            ["python", "-m", "custom.tools.task_statistics", "--checkpoint", path, "--datalist", "DATALIST"]
            + ["--model_key", "weights"],
        )

    def test_handler_without_validation_data_warns_early_and_logs_at_the_end(self) -> None:
        engine = Engine(lambda e, b: None)
        with self.assertLogs("custom.handlers.task_statistics", logging.WARNING) as logs:
            TaskStatisticsHandler(self.best, self.ckpt, self._without_validation(False), SETTINGS).attach(engine)
        self.assertIn("no 'validation' split", logs.output[0])
        with self.assertLogs("custom.handlers.task_statistics", logging.ERROR) as logs:
            engine.run([0], max_epochs=1)
        self.assertIn("no validation data", logs.output[0])
        self.assertIsNone(load_task_statistics(self.ckpt))
        empty = self._without_validation(True)
        with self.assertLogs("custom.handlers.task_statistics", logging.WARNING) as logs:
            TaskStatisticsHandler(self.best, self.ckpt, empty, SETTINGS).attach(Engine(lambda e, b: None))
        self.assertIn("no_val_True.json: the 'validation' split is empty", logs.output[0])

    def test_a_task_without_validation_data_is_named_with_the_data_list(self) -> None:
        with open(self.datalist, encoding="utf-8") as f:
            lists = json.load(f)
        lists["validation"] = [it for it in lists["validation"] if it["modality"] != "MRI"]
        path = os.path.join(self.tmp, "no_mri_val.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(lists, f)
        with self.assertRaisesRegex(ValueError, r"no_mri_val.json: no validation data for task\(s\) \['MRI'\]"):
            compute_task_statistics(self.best, path, SETTINGS)

    def test_an_item_without_modality_is_a_clear_error(self) -> None:
        """The transforms' own error (naming the file and the key), not MONAI's 'applying transform' RuntimeError;
        at the end of training it is logged, the run does not crash."""
        with open(self.datalist, encoding="utf-8") as f:
            lists = json.load(f)
        del lists["training"][1]["modality"]
        path = os.path.join(self.tmp, "no_modality.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(lists, f)
        with self.assertRaisesRegex(ValueError, r"training_1.nii.gz.*: no 'modality' entry in the item"):
            compute_task_statistics(self.best, path, SETTINGS)
        engine = Engine(lambda e, b: None)
        TaskStatisticsHandler(self.best, self.ckpt, path, SETTINGS).attach(engine)
        with self.assertLogs("custom.handlers.task_statistics", logging.ERROR) as logs:
            engine.run([0], max_epochs=1)
        self.assertIn("no 'modality' entry", logs.output[0])
        self.assertIsNone(load_task_statistics(self.ckpt))

    def test_handler_keeps_the_weights_under_its_model_key(self) -> None:
        """A bare state dict gets the statistics (of the handler's tasks and percentile) next to its weights under the
        handler's ``model_key``, which the handler itself (a second run) and the bundle's loader then read."""
        torch.save(self.best.state_dict(), self.ckpt)
        handler = TaskStatisticsHandler(
            tiny_net(seed=2), self.ckpt, self.datalist, SETTINGS, 90.0, ["mr", "CT"], model_key="weights"
        )
        handler()
        self.assertEqual(set(torch.load(self.ckpt, weights_only=True)), {"weights", STATS_KEY})
        handler()  # again, on the file it wrote
        net = checkpoint_network(tiny_net(seed=3), self.ckpt, model_key="weights")
        torch.testing.assert_close(net.state_dict(), self.best.state_dict())
        stats = load_task_statistics(self.ckpt)
        self.assertEqual((stats["tasks"], stats["count"], stats["percentile"]), (["CT", "MRI"], [3, 3], 90.0))

    def test_no_validation_data_is_a_clear_error(self) -> None:
        for empty in (True, False):
            path = self._without_validation(empty)
            with self.assertRaisesRegex(ValueError, "no validation data"):
                compute_task_statistics(self.best, path, SETTINGS)
            self.assertIsNone(load_task_statistics(self.ckpt))

    def test_volumes_give_the_statistics_of_their_axial_slices(self) -> None:
        """A 3D volume counts one slice per index along axis 2, each embedded like the same slice in a 2D file."""
        with open(self.datalist, encoding="utf-8") as f:
            lists = json.load(f)
        volumes: dict[str, list] = {}
        for split, items in lists.items():
            volumes[split] = []
            for modality in ("CT", "PET", "MRI"):
                paths = [it["image"] for it in items if it["modality"] == modality]
                stack = np.stack([np.asarray(nib.load(os.path.join(self.tmp, p)).dataobj) for p in paths], axis=2)
                # the first slice again, so that the validation volumes have 2 slices
                stack = np.concatenate([stack, stack[:, :, :1]], axis=2)
                rel = f"{modality}_{split}_volume.nii.gz"
                nib.save(nib.Nifti1Image(stack.astype(np.float32), np.eye(4)), os.path.join(self.tmp, rel))
                volumes[split].append({"image": rel, "label": rel, "modality": modality})
                items.append({"image": paths[0], "label": paths[0], "modality": modality})  # the same, as a 2D file
        flat = os.path.join(self.tmp, "flat.json")
        with open(flat, "w", encoding="utf-8") as f:
            json.dump(lists, f)
        stacked = os.path.join(self.tmp, "volumes.json")
        with open(stacked, "w", encoding="utf-8") as f:
            json.dump(volumes, f)
        got = compute_task_statistics(self.best, stacked, SETTINGS)
        expected = compute_task_statistics(self.best, flat, SETTINGS)
        self.assertEqual(got["count"], [4, 4, 4])
        self.assertEqual(got["validation_count"], [2, 2, 2])
        torch.testing.assert_close(got["mean"], expected["mean"])
        torch.testing.assert_close(got["std"], expected["std"])
        self.assertAlmostEqual(got["threshold"], expected["threshold"], places=5)

    def test_modalities_keep_only_those_tasks(self) -> None:
        every = compute_task_statistics(self.best, self.datalist, SETTINGS)
        some = compute_task_statistics(self.best, self.datalist, SETTINGS, percentile=50.0, modalities=["pt", "CT"])
        self.assertEqual(some["tasks"], ["CT", "PET"])
        self.assertEqual(some["percentile"], 50.0)
        self.assertEqual(some["count"], [3, 3])
        self.assertEqual(some["validation_count"], [1, 1])
        torch.testing.assert_close(some["mean"], every["mean"][[0, 2]])

    def test_command(self) -> None:
        overlay = os.path.join(self.tmp, "overlay.json")
        overlay_keys = {k.lstrip("-"): v for k, v in zip(TINY_OVERRIDES[::2], TINY_OVERRIDES[1::2])}
        with open(overlay, "w", encoding="utf-8") as f:
            json.dump({k: json.loads(v) for k, v in overlay_keys.items()}, f)
        configs = json.dumps([os.path.join(BUNDLE, "configs", "inference.json"), overlay])
        code = main(["--checkpoint", self.ckpt, "--datalist", self.datalist, "--config_file", configs])
        self.assertEqual(code, 0)
        stats = load_task_statistics(self.ckpt)
        self.assertAlmostEqual(
            stats["threshold"], compute_task_statistics(self.best, self.datalist, SETTINGS)["threshold"], places=5
        )
        self.assertIn(STATS_KEY, torch.load(self.ckpt, weights_only=True))
        bad = self._without_validation(True)
        code = main(["--checkpoint", self.ckpt, "--datalist", bad, "--config_file", configs])
        self.assertEqual(code, 1)


if __name__ == "__main__":
    unittest.main()


def _hooked_embeddings(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the full forward pass feeds the task kernels (the task representation network's mlp output)."""
    found: list[torch.Tensor] = []
    handle = net.task_kernels.mlp.register_forward_hook(lambda m, a, out: found.append(out.detach()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return torch.cat(found)


class TestTaskEmbeddings(unittest.TestCase):
    @parameterized.expand(
        [
            ("transposed_no_pad", True, (16, 16)),
            ("transposed_reflect_pad", True, (20, 12)),
            ("plain_reflect_pad", False, (12, 20)),
            ("plain_replicate_pad", False, (4, 12)),
            ("transposed_replicate_pad", True, (12, 4)),
        ]
    )
    def test_embedding_is_what_the_forward_pass_uses(self, _, transpose_hw, size) -> None:
        net = tiny_net(seed=3, transpose_hw=transpose_hw)
        torch.manual_seed(0)
        x = torch.rand(3, 1, *size)
        z = task_embeddings(net, x, batch_size=2)
        self.assertEqual(tuple(z.shape), (3, net.task_kernels.mlp[-2].out_features))
        torch.testing.assert_close(z, _hooked_embeddings(net, x), rtol=1e-5, atol=1e-6)
        # the slices are not interchangeable: each row is its own slice's embedding
        self.assertGreater(float((z[0] - z[1]).abs().max()), 1e-6)

    def test_refuses_networks_without_task_representation_and_bad_input(self) -> None:
        with self.assertRaisesRegex(ValueError, "task_adaptive=False"):
            task_embeddings(tiny_net(task_adaptive=False), torch.rand(1, 1, 16, 16))
        with self.assertRaisesRegex(ValueError, r"non-empty \(N, C, H, W\) batch of slices, got \(0, 1, 16, 16\)"):
            task_embeddings(tiny_net(), torch.rand(0, 1, 16, 16))
        with self.assertRaisesRegex(ValueError, r"\(N, C, H, W\) batch of slices, got \(1, 16, 16\)"):
            task_embeddings(tiny_net(), torch.rand(1, 16, 16))  # one slice without its batch axis
        with self.assertRaisesRegex(ValueError, "Conv2d has no task_embedding"):
            task_embeddings(torch.nn.Conv2d(1, 1, 3), torch.rand(1, 1, 16, 16))

        class NoTaskKernels(torch.nn.Module):  # a network with the method but without the attribute
            def task_embedding(self, x: torch.Tensor) -> torch.Tensor:
                return x.flatten(1)

        with self.assertRaisesRegex(ValueError, "task_adaptive=False"):
            task_embeddings(NoTaskKernels(), torch.rand(1, 1, 16, 16))
        with self.assertRaisesRegex(ValueError, "batch_size"):
            task_embeddings(tiny_net(), torch.rand(1, 1, 16, 16), batch_size=0)

    def test_double_precision_slices_give_the_float32_embedding(self) -> None:
        net = tiny_net(seed=3)
        x = torch.rand(2, 1, 16, 16)
        torch.testing.assert_close(task_embeddings(net, x.double()), task_embeddings(net, x))

    def test_concurrent_forwards_on_the_shared_network_are_not_disturbed(self) -> None:
        net = tiny_net(seed=4)
        x = torch.rand(2, 1, 16, 16)
        with torch.no_grad():
            expected_out = net(x)
        expected_z = task_embeddings(net, x)
        errors: list[BaseException] = []
        wrong: list[str] = []

        def embed() -> None:
            for _ in range(20):
                try:
                    if not torch.allclose(task_embeddings(net, x), expected_z, atol=1e-6):
                        wrong.append("embedding")
                except BaseException as e:  # noqa: B036 (any failure of the thread is the test's result)
                    errors.append(e)

        def forward() -> None:
            for _ in range(20):
                try:
                    with torch.no_grad():
                        if not torch.allclose(net(x), expected_out, atol=1e-6):
                            wrong.append("forward")
                except BaseException as e:  # noqa: B036
                    errors.append(e)

        threads = [threading.Thread(target=embed), threading.Thread(target=forward)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(wrong, [])
        self.assertEqual(dict(net.task_kernels.mlp._forward_hooks), {})  # no hook left on the shared network


class TestStatisticsArithmetic(unittest.TestCase):
    """The statistics' edge cases: the fewest slices allowed, the standard deviation floor, input checks."""

    def test_task_names(self) -> None:
        self.assertEqual([task_name(m) for m in ("ct", "PT", "mr", "MRI")], ["CT", "PET", "MRI", "MRI"])
        self.assertEqual(task_name("us"), "US")  # not an alias: kept, upper case

    def test_two_slices_per_task_are_enough(self) -> None:
        z = {"CT": torch.tensor([[0.0, 1.0], [2.0, 5.0]]), "PET": torch.tensor([[10.0, 1.0], [14.0, 3.0]])}
        stats = fit_task_statistics(z)
        self.assertEqual(stats["count"], [2, 2])
        torch.testing.assert_close(stats["mean"], torch.tensor([[1.0, 3.0], [12.0, 2.0]]))
        # pooled variance: squared deviations (1 + 1 + 4 + 4, 4 + 4 + 1 + 1) over 4 slices - 2 tasks
        torch.testing.assert_close(stats["std"], torch.full((2, 2), 5.0**0.5))
        one = fit_task_statistics({"CT": z["CT"]})  # one task of two slices: one degree of freedom
        torch.testing.assert_close(one["std"], torch.tensor([[2.0**0.5, 8.0**0.5]]))
        with self.assertRaisesRegex(ValueError, r"at least 2 training slices per task; \['PET'\]"):
            fit_task_statistics({"CT": z["CT"], "PET": z["PET"][:1]})

    def test_std_floor_is_a_tenth_of_the_mean_std(self) -> None:
        z = torch.zeros(4, 3)
        z[:, 0] = torch.tensor([0.0, 2.0, 4.0, 6.0])  # dims 1, 2 constant within each task
        stats = fit_task_statistics({"CT": z, "PET": z + 10})
        spread = float(((z[:, 0] - 3.0) ** 2).sum() * 2 / 6) ** 0.5  # pooled over 8 slices - 2 tasks
        floor = STD_FLOOR * spread / 3  # a tenth of the mean over the 3 dims (spread, 0, 0)
        torch.testing.assert_close(stats["std"], torch.tensor([[spread, floor, floor]] * 2))

    def test_mixed_dimensions_are_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, r"must all be \(N, D\) with one D"):
            fit_task_statistics({"CT": torch.zeros(3, 4), "PET": torch.zeros(3, 2, 4)})
        stats = fit_task_statistics({"CT": torch.rand(3, 4), "PET": torch.rand(3, 4)})
        with self.assertRaisesRegex(ValueError, r"embeddings \(4,\) do not match"):
            task_distances(torch.zeros(4), stats)  # one embedding without its batch axis

    def test_percentile_bounds_and_default(self) -> None:
        g = torch.Generator().manual_seed(0)
        stats = fit_task_statistics({"CT": torch.randn(5, 3, generator=g), "PET": 4 + torch.randn(5, 3, generator=g)})
        val = {"CT": torch.randn(30, 3, generator=g), "PET": 4 + torch.randn(30, 3, generator=g)}
        own = torch.cat([task_distances(val[t], stats)[:, i] for i, t in enumerate(stats["tasks"])])
        default = calibrate_threshold(stats, val)
        self.assertEqual(default["percentile"], 99.0)
        self.assertAlmostEqual(default["threshold"], float(torch.quantile(own.double(), 0.99)), places=5)
        self.assertAlmostEqual(calibrate_threshold(stats, val, 100)["threshold"], float(own.max()), places=5)
        self.assertAlmostEqual(
            calibrate_threshold(stats, val, 0.5)["threshold"], float(torch.quantile(own.double(), 0.005)), places=5
        )
        for bad in (0, -1, 100.5):
            with self.assertRaisesRegex(ValueError, rf"percentile must be in \(0, 100\], got {bad}"):
                calibrate_threshold(stats, val, bad)
