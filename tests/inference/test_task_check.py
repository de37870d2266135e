"""Task identification and out-of-distribution warnings from the task embedding (custom.inference.task_check)."""

from __future__ import annotations

import logging
import os
import tempfile
import unittest

import numpy as np
import torch
from custom.handlers.task_statistics import (
    STATS_KEY,
    calibrate_threshold,
    compute_task_statistics,
    fit_task_statistics,
    load_task_statistics,
    split_embeddings,
    store_task_statistics,
    task_distances,
    task_embeddings,
)
from custom.inference.task_check import TaskCheckd, check_scan
from custom.settings import load_modality_settings
from custom.transforms import ModalityNormalized
from parameterized import parameterized
from skimage import data as skdata
from skimage.transform import resize

from tests.utils import BUNDLE, TINY, make_task_dataset, task_slice, tiny_net

SETTINGS = load_modality_settings(os.path.join(BUNDLE, "configs", "modality"))


def _clusters(seed: int = 0, n: int = 20) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = {"CT": 0.0, "PET": 3.0, "MRI": -3.0}
    return {t: c + torch.randn(n, 5, generator=g) for t, c in centres.items()}


class TestStatistics(unittest.TestCase):
    def test_distance_formula(self) -> None:
        stats = {"tasks": ["CT"], "mean": torch.zeros(1, 4), "std": torch.full((1, 4), 2.0)}
        d = task_distances(torch.tensor([[2.0, 0.0, 4.0, 2.0]]), stats)
        self.assertAlmostEqual(float(d[0, 0]), float(np.sqrt((1 + 0 + 4 + 1) / 4)), places=5)

    def test_fit_means_pooled_std_and_nearest_task(self) -> None:
        emb = _clusters()
        stats = fit_task_statistics({"ct": emb["CT"], "PT": emb["PET"], "MR": emb["MRI"]})
        self.assertEqual(stats["tasks"], ["CT", "MRI", "PET"])
        self.assertEqual(stats["count"], [20, 20, 20])
        torch.testing.assert_close(stats["mean"][1], emb["MRI"].mean(0))
        pooled = torch.cat([emb[t] - emb[t].mean(0) for t in ("CT", "MRI", "PET")]).pow(2).sum(0) / 57
        torch.testing.assert_close(stats["std"][0], pooled.sqrt())
        test = _clusters(seed=1)
        for i, t in enumerate(stats["tasks"]):
            self.assertTrue((task_distances(test[t], stats).argmin(1) == i).all())

    def test_std_floor(self) -> None:
        z = torch.zeros(4, 3)
        z[:, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # dims 1, 2 constant
        stats = fit_task_statistics({"CT": z, "PET": z + 10})
        self.assertTrue((stats["std"] > 0).all())

    def test_fit_errors(self) -> None:
        with self.assertRaisesRegex(ValueError, "no training"):
            fit_task_statistics({})
        with self.assertRaisesRegex(ValueError, "at least 2"):
            fit_task_statistics({"CT": torch.zeros(1, 3), "PET": torch.zeros(4, 3)})
        with self.assertRaisesRegex(ValueError, "one D"):
            fit_task_statistics({"CT": torch.zeros(3, 3), "PET": torch.zeros(4, 2)})

    def test_threshold_is_the_validation_percentile(self) -> None:
        emb, val = _clusters(), _clusters(seed=2, n=10)
        stats = fit_task_statistics(emb)
        cal = calibrate_threshold(stats, val, 90.0)
        own = torch.cat([task_distances(val[t], stats)[:, i] for i, t in enumerate(stats["tasks"])])
        self.assertAlmostEqual(cal["threshold"], float(np.percentile(own.numpy(), 90.0)), places=5)
        self.assertEqual(cal["validation_count"], [10, 10, 10])
        self.assertNotIn("threshold", stats)  # a copy

    def test_threshold_needs_every_task(self) -> None:
        stats = fit_task_statistics(_clusters())
        with self.assertRaisesRegex(ValueError, r"dl.json: no validation data for task\(s\) \['PET'\]"):
            calibrate_threshold(stats, {"CT": torch.zeros(2, 5), "MRI": torch.zeros(2, 5)}, where="dl.json")
        with self.assertRaisesRegex(ValueError, "percentile"):
            calibrate_threshold(stats, _clusters(), 0)

    def test_check_scan_warnings(self) -> None:
        stats = calibrate_threshold(fit_task_statistics(_clusters()), _clusters(seed=3), 99.0)
        ok = _clusters(seed=4)["PET"][:3]
        self.assertEqual(check_scan(ok, stats, "PT")[::2], ("PET", []))
        task, dist, warnings = check_scan(ok, stats, "CT")
        self.assertEqual(task, "PET")
        self.assertEqual(len(warnings), 1)
        self.assertIn("says PET", warnings[0])
        self.assertIn("declared CT", warnings[0])
        far = ok + 50.0
        task, dist, warnings = check_scan(far, stats, "PET")
        self.assertGreater(dist, stats["threshold"])
        self.assertIn("exceeds the calibrated threshold", warnings[-1])
        self.assertEqual(check_scan(ok, stats, None)[2], [])

    def test_threshold_warning_names_the_calibrated_percentile(self) -> None:
        stats = calibrate_threshold(fit_task_statistics(_clusters()), _clusters(seed=3), 90.0)
        far = _clusters(seed=4)["PET"][:3] + 50.0
        _, dist, warnings = check_scan(far, stats, None)
        self.assertEqual(len(warnings), 1)
        self.assertIn(
            f"task distance {dist:.2f} exceeds the calibrated threshold {stats['threshold']:.2f} (90th", warnings[0]
        )
        legacy = {k: v for k, v in stats.items() if k != "percentile"}  # statistics stored without it: the default
        self.assertIn("(99th percentile", check_scan(far, legacy, None)[2][0])

    def test_distance_at_the_threshold_is_not_warned(self) -> None:
        stats = fit_task_statistics(_clusters())
        z = _clusters(seed=4)["CT"][:1]
        dist = check_scan(z, {**stats, "threshold": 1e9}, None)[1]
        self.assertEqual(check_scan(z, {**stats, "threshold": dist}, None)[2], [])
        self.assertEqual(len(check_scan(z, {**stats, "threshold": dist * 0.999}, None)[2]), 1)

    def test_summary_lines(self) -> None:
        items = [
            {"image": "a.nii", "predicted_task": "CT", "task_distance": 1.23456, "warnings": []},
            {"image": "b.nii", "predicted_task": "PET", "task_distance": 0.5, "warnings": ["w1", "w2"]},
            {"image": "c.nii", "predicted_task": None, "task_distance": None, "warnings": None},
            {},
        ]
        self.assertEqual(
            TaskCheckd.summary(items),
            "a.nii: CT (distance 1.23) no warning\n"
            "b.nii: PET (distance 0.50) w1; w2\n"
            "c.nii: None (distance n/a) no warning\n"
            "?: None (distance n/a) no warning",
        )

    def test_scan_distance_is_the_slice_median(self) -> None:
        stats = calibrate_threshold(fit_task_statistics(_clusters()), _clusters(seed=3), 99.0)
        slices = _clusters(seed=5)["CT"][:5]
        slices[0] += 100.0  # one odd slice (e.g. air at the end of a volume) does not decide
        _, dist, warnings = check_scan(slices, stats, "CT")
        self.assertAlmostEqual(dist, float(task_distances(slices, stats)[:, 0].median()), places=5)
        self.assertEqual(warnings, [])


class TestEmbedding(unittest.TestCase):
    def test_embedding_is_the_forward_pass_value_and_outputs_unchanged(self) -> None:
        net = tiny_net()
        x = torch.rand(3, 1, 24, 40, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = net(x)
        seen = []
        handle = net.task_kernels.mlp.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
        with torch.no_grad():
            net(x)
        handle.remove()
        z = task_embeddings(net, x, batch_size=2)
        self.assertEqual(tuple(z.shape), (3, 256))
        torch.testing.assert_close(z, seen[0])
        self.assertEqual(len(net.task_kernels.mlp._forward_hooks), 0)
        with torch.no_grad():
            torch.testing.assert_close(net(x), before, rtol=0, atol=0)

    def test_no_task_network(self) -> None:
        from custom.networks import TAT

        net = TAT(**TINY, task_adaptive=False)
        with self.assertRaisesRegex(ValueError, "task_adaptive=False"):
            task_embeddings(net, torch.rand(1, 1, 16, 16))


class TestOnTinyData(unittest.TestCase):
    """Statistics of the tiny network on a tiny data set; test split, foreign images and noise."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.datalist = make_task_dataset(cls.tmp.name)
        # a fixed random network (no training) whose embedding separates the synthetic tasks; the statistics and
        # the checks do not depend on the slice orientation, so its layers keep the readers' order (no transpose)
        cls.net = tiny_net()
        cls.net.transpose_hw = False
        cls.stats = compute_task_statistics(cls.net, cls.datalist, SETTINGS)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def _check(self, image: np.ndarray, declared: str, normalise_as: str | None = None) -> tuple:
        x = torch.as_tensor(image, dtype=torch.float32)[None]
        if normalise_as:
            x = ModalityNormalized("image", SETTINGS)({"image": x, "modality": normalise_as})["image"]
        return check_scan(task_embeddings(self.net, x[None]), self.stats, declared)

    def test_test_split_predicted_right(self) -> None:
        test = split_embeddings(self.net, self.datalist, "test", SETTINGS)
        for task, z in test.items():
            for row in z:
                predicted, _, warnings = check_scan(row[None], self.stats, task)
                self.assertEqual(predicted, task)

    def test_natural_photograph_warned(self) -> None:
        photo = resize(skdata.camera().astype(np.float32) / 255.0, (32, 32), anti_aliasing=True)
        _, dist, warnings = self._check(photo, "CT")
        self.assertTrue(warnings)
        self.assertGreater(dist, self.stats["threshold"])

    def test_pet_declared_ct_warned(self) -> None:
        pet = task_slice("PET", np.random.default_rng(99))
        predicted, _, warnings = self._check(pet, "CT", normalise_as="PET")
        self.assertEqual(predicted, "PET")
        self.assertTrue(any("declared CT" in w for w in warnings))

    @parameterized.expand([[0], [1]])
    def test_noise_warned(self, seed: int) -> None:
        noise = np.random.default_rng(seed).random((32, 32)).astype(np.float32)
        _, dist, warnings = self._check(noise, "MRI")
        self.assertTrue(warnings)

    def test_transform_with_and_without_statistics(self) -> None:
        ckpt = os.path.join(self.tmp.name, "model.pt")
        torch.save({"model": self.net.state_dict()}, ckpt)
        self.assertIsNone(load_task_statistics(ckpt))
        check = TaskCheckd("image", self.net, ckpt)
        item = {"image": torch.rand(1, 32, 32, 2), "modality": "MRI", "source": "a.nii"}
        with self.assertLogs("custom.inference.task_check", logging.WARNING) as logs:
            check(item)
            out2 = check(item)
        self.assertEqual(len(logs.output), 1)  # once per run, not per scan
        self.assertIn("no task statistics", logs.output[0])
        self.assertEqual((out2["predicted_task"], out2["task_distance"], out2["warnings"]), (None, None, []))

        store_task_statistics(ckpt, self.stats)
        self.assertEqual(set(torch.load(ckpt, weights_only=True)), {"model", STATS_KEY})
        pet = ModalityNormalized("image", SETTINGS)(
            {"image": torch.as_tensor(task_slice("PET", np.random.default_rng(7)))[None], "modality": "PET"}
        )["image"]
        item = {"image": pet, "modality": "CT", "source": "b.nii", "warnings": ["earlier note"]}
        with self.assertLogs("custom.inference.task_check", logging.WARNING) as logs:
            out = TaskCheckd("image", self.net, ckpt)(item)
        self.assertEqual(out["predicted_task"], "PET")
        self.assertIsInstance(out["task_distance"], float)
        self.assertEqual(out["warnings"][0], "earlier note")
        self.assertTrue(any("declared CT" in w for w in out["warnings"][1:]))
        self.assertIn("b.nii", logs.output[0])
        self.assertEqual(item["warnings"], ["earlier note"])  # the input item is not modified
        self.assertNotIn("predicted_task", TaskCheckd("image", self.net, ckpt, enabled=False)(item))

    def test_enabled_is_a_flag_naming_the_option(self) -> None:
        self.assertFalse(TaskCheckd("image", self.net, None, enabled="false").enabled)
        self.assertTrue(TaskCheckd("image", self.net, None, enabled="yes").enabled)
        with self.assertRaisesRegex(ValueError, "task_check must be true or false, got 'maybe'"):
            TaskCheckd("image", self.net, None, enabled="maybe")

    def test_no_checkpoint_restores_without_the_check(self) -> None:
        check = TaskCheckd("image", self.net, None)
        with self.assertLogs("custom.inference.task_check", logging.WARNING) as logs:
            out = check({"image": torch.rand(1, 32, 32), "modality": "CT"})
        self.assertIn("None: no task statistics", logs.output[0])
        self.assertEqual((out["predicted_task"], out["task_distance"], out["warnings"]), (None, None, []))
        self.assertIsNone(check.statistics())

    def test_volume_is_scored_by_its_slices(self) -> None:
        """A (1, H, W, D) scan is D slices of (1, H, W): the check scores their embeddings (median distance)."""
        ckpt = os.path.join(self.tmp.name, "volume.pt")
        torch.save({"model": self.net.state_dict()}, ckpt)
        store_task_statistics(ckpt, self.stats)
        rng = np.random.default_rng(11)
        norm = ModalityNormalized("image", SETTINGS)
        slices = [
            norm({"image": torch.as_tensor(task_slice("MRI", rng)[:, :24])[None], "modality": "MRI"})["image"]
            for _ in range(3)
        ]  # (1, 32, 24) each: H != W, so a transposed slice would give another embedding
        volume = torch.stack([s.as_tensor() if hasattr(s, "as_tensor") else s for s in slices], dim=-1)
        self.assertEqual(tuple(volume.shape), (1, 32, 24, 3))
        expected = check_scan(task_embeddings(self.net, volume.permute(3, 0, 1, 2)), self.stats, "CT")
        item = {"image": volume, "declared": "CT", "image_path": "v.nii"}
        with self.assertLogs("custom.inference.task_check", logging.WARNING) as logs:
            out = TaskCheckd("image", self.net, ckpt, batch_size=2, modality_key="declared")(item)
        self.assertEqual((out["predicted_task"], out["task_distance"]), (expected[0], round(expected[1], 4)))
        self.assertEqual(out["warnings"], expected[2])
        self.assertTrue(any("declared CT" in w for w in out["warnings"]))
        self.assertTrue(all(line.startswith("WARNING:custom.inference.task_check:?: ") for line in logs.output))


if __name__ == "__main__":
    unittest.main()
