"""Task statistics handler (end of training) and command (existing checkpoint) store the statistics in it."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import unittest

import torch
from custom.handlers import SafeCheckpointLoader
from custom.handlers.task_statistics import (
    STATS_KEY,
    TaskStatisticsHandler,
    checkpoint_network,
    compute_task_statistics,
    load_task_statistics,
    task_embeddings,
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
        missing = TaskStatisticsHandler(self.best, os.path.join(self.tmp, "missing.pt"), self.datalist, SETTINGS)
        with self.assertRaisesRegex(ValueError, "missing.pt: no checkpoint"):
            missing()
        engine = Engine(lambda e, b: None)
        missing.attach(engine)
        with self.assertLogs("custom.handlers.task_statistics", logging.ERROR) as logs:
            engine.run([0], max_epochs=1)  # the training itself does not fail at its very end
        self.assertIn("task statistics NOT stored", logs.output[0])
        self.assertIn("python -m custom.tools.task_statistics", logs.output[0])

    def test_handler_without_validation_data_warns_early_and_logs_at_the_end(self) -> None:
        engine = Engine(lambda e, b: None)
        with self.assertLogs("custom.handlers.task_statistics", logging.WARNING) as logs:
            TaskStatisticsHandler(self.best, self.ckpt, self._without_validation(False), SETTINGS).attach(engine)
        self.assertIn("no 'validation' split", logs.output[0])
        with self.assertLogs("custom.handlers.task_statistics", logging.ERROR) as logs:
            engine.run([0], max_epochs=1)
        self.assertIn("no validation data", logs.output[0])
        self.assertIsNone(load_task_statistics(self.ckpt))

    def test_no_validation_data_is_a_clear_error(self) -> None:
        for empty in (True, False):
            path = self._without_validation(empty)
            with self.assertRaisesRegex(ValueError, "no validation data"):
                compute_task_statistics(self.best, path, SETTINGS)
            self.assertIsNone(load_task_statistics(self.ckpt))

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
        with self.assertRaisesRegex(ValueError, "non-empty"):
            task_embeddings(tiny_net(), torch.rand(0, 1, 16, 16))
        with self.assertRaisesRegex(ValueError, "batch_size"):
            task_embeddings(tiny_net(), torch.rand(1, 1, 16, 16), batch_size=0)

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
