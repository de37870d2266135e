from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from custom.metrics import PhysicalUnitMetrics, TaskwiseImageQuality, to_physical
from custom.metrics.physical import gaussian_window, ssim_zero_padded
from ignite.engine import Engine
from parameterized import parameterized
from scipy.signal import correlate2d

SETTINGS = {
    "CT": {"modality": "CT", "clip_range": (-1024.0, 3072.0), "eval_window": (-160.0, 240.0)},
    "PET": {"modality": "PET", "clip_range": (0.0, 20.0), "eval_window": (0.0, 20.0)},
    "MRI": {"modality": "MRI", "clip_range": (0.0, 4095.0), "eval_window": (0.0, 4095.0)},
}


def reference_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    clip_range: tuple[float, float],
    window: tuple[float, float],
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    mode: str = "same",
    shift: bool = False,
    range_of: str = "target",
    clip: bool = True,
) -> dict[str, float]:
    """The published protocol written from its formula (numpy / scipy, float64), for one 2D slice in [0, 1].

    The keyword arguments other than the ranges produce the wrong variants the bundle must not match.
    """
    lo, hi = clip_range
    p, t = (np.asarray(a, dtype=np.float64) * (hi - lo) + lo for a in (pred, target))
    if clip:
        p, t = np.clip(p, *window), np.clip(t, *window)
    ref = t if range_of == "target" else p
    data_range = ref.max() - ref.min()
    mse = np.mean((p - t) ** 2)
    if shift:  # what the bundle did before: both images shifted by the target's minimum
        p, t = p - t.min(), t - t.min()
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * sigma**2))
    w = np.outer(g / g.sum(), g / g.sum())

    def f(x):
        return correlate2d(x, w, mode=mode, boundary="fill", fillvalue=0.0)

    mu1, mu2 = f(p), f(t)
    s1, s2, s12 = f(p * p) - mu1**2, f(t * t) - mu2**2, f(p * t) - mu1 * mu2
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return {"psnr": 10 * math.log10(data_range**2 / mse), "ssim": float(ssim_map.mean()), "rmse": math.sqrt(mse)}


def phantom_pair(modality: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, target) pair in [0, 1] at the released slice size, target minimum above the window floor.

    CT: soft tissue between -110 and 90 HU with bone above the window ceiling (clipped at 240); PET: background
    0.3 SUV with hot spots; MRI: tissue from 150 to 2500. The prediction is the target plus noise and a small
    bias, with values beyond the window on both sides.
    """
    rng = np.random.default_rng(seed)
    h, w, lo, hi, base, spread, noise = {
        "CT": (512, 512, -1024.0, 3072.0, -110.0, 200.0, 12.0),
        "PET": (192, 400, 0.0, 20.0, 0.3, 6.0, 0.25),
        "MRI": (256, 256, 0.0, 4095.0, 150.0, 2350.0, 60.0),
    }[modality]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    smooth = 0.5 + 0.25 * np.sin(9 * xx + 2) * np.cos(7 * yy) + 0.25 * np.sin(23 * xx * yy)
    target = base + spread * smooth
    if modality == "CT":
        target[h // 3 : h // 3 + 40, w // 2 : w // 2 + 60] = 700.0  # bone: clipped to 240 in the window
    if modality == "PET":
        target[60:70, 100:112] = 15.0
    pred = target + noise * rng.standard_normal((h, w)) + 0.3 * noise
    pred[:3] -= 10 * spread  # below the window floor (clipped away in the prediction only)
    pred[-3:, :20] += 10 * spread
    return ((pred - lo) / (hi - lo)).astype(np.float32), ((target - lo) / (hi - lo)).astype(np.float32)


class TestPhysical(unittest.TestCase):
    def test_to_physical(self):
        x = torch.tensor([0.0, 0.2, 0.25, 0.3, 1.0])
        torch.testing.assert_close(
            to_physical(x, (-1024, 3072), (-160, 240)), torch.tensor([-160.0, -160.0, 0.0, 204.8, 240.0])
        )
        self.assertEqual(to_physical(x.double(), (0, 1), (0, 1)).dtype, torch.float64)
        with self.assertRaises(ValueError):
            to_physical(x, (1, 0), (0, 1))

    def test_to_physical_dtypes_and_ranges(self):
        """Half precision is mapped in float32 (no float16 rounding of the physical values); numpy input is read;
        an empty range (equal ends) is refused like a decreasing one."""
        half = torch.tensor([0.3, 0.7], dtype=torch.float16)
        out = to_physical(half, (-1024, 3072), (-1024, 3072))
        self.assertEqual(out.dtype, torch.float32)
        torch.testing.assert_close(out, half.float() * 4096 - 1024, rtol=0, atol=1e-4)  # 204.5, not 204 / 205
        torch.testing.assert_close(
            to_physical(np.array([0.0, 0.5, 1.0]), (0, 20), (0, 20)), torch.tensor([0.0, 10, 20]).double()
        )
        for clip_range, window in (((1, 1), (0, 1)), ((0, 1), (0.5, 0.5))):
            with self.assertRaisesRegex(ValueError, "increasing"):
                to_physical(half, clip_range, window)

    def test_gaussian_window(self):
        """Defaults: the published 11 taps, sigma 1.5, normalised; a 1-tap window and sigma 1 are valid."""
        i = np.arange(11) - 5.0
        g = np.exp(-(i**2) / 4.5)
        np.testing.assert_allclose(gaussian_window().numpy(), g / g.sum(), rtol=1e-12)
        torch.testing.assert_close(gaussian_window(1, 1.5), torch.ones(1, dtype=torch.float64))
        g3 = np.exp(-np.array([1.0, 0.0, 1.0]) / 2.0)
        np.testing.assert_allclose(gaussian_window(3, 1.0).numpy(), g3 / g3.sum(), rtol=1e-12)
        for win_size, sigma in ((0, 1.5), (4, 1.5), (3.5, 1.5), (3, 0.0), (3, -1.0)):
            with self.assertRaisesRegex(ValueError, "win_size"):
                gaussian_window(win_size, sigma)

    @parameterized.expand([["CT"], ["PET"], ["MRI"]])
    def test_published_formula_on_released_slice_sizes(self, modality):
        s = SETTINGS[modality]
        pairs = [phantom_pair(modality, seed) for seed in (0, 1)]
        pred = torch.from_numpy(np.stack([p for p, _ in pairs])[:, None])
        target = torch.from_numpy(np.stack([t for _, t in pairs])[:, None])
        before = pred.clone(), target.clone()
        out = PhysicalUnitMetrics(s["clip_range"], s["eval_window"])(pred, target)
        torch.testing.assert_close(pred, before[0], rtol=0, atol=0)  # inputs not modified
        torch.testing.assert_close(target, before[1], rtol=0, atol=0)
        for b, (p, t) in enumerate(pairs):
            phys = t.astype(np.float64) * (s["clip_range"][1] - s["clip_range"][0]) + s["clip_range"][0]
            self.assertGreater(phys.min(), s["eval_window"][0] + 0.01)  # the target's minimum is not the floor
            ref = reference_metrics(p, t, s["clip_range"], s["eval_window"])
            for m in ("psnr", "ssim", "rmse"):
                self.assertAlmostEqual(float(out[m][b]), ref[m], delta=1e-6 * max(1.0, abs(ref[m])), msg=m)

    @parameterized.expand(
        [
            ["sigma_3", {"sigma": 3.0}, ("ssim",)],
            ["k1_0.05", {"k1": 0.05}, ("ssim",)],
            ["k2_0.01", {"k2": 0.01}, ("ssim",)],
            ["valid_padding", {"mode": "valid"}, ("ssim",)],
            ["shifted_by_target_min", {"shift": True}, ("ssim",)],
            ["range_of_prediction", {"range_of": "pred"}, ("psnr", "ssim")],
            ["not_clipped", {"clip": False}, ("psnr", "ssim", "rmse")],
        ]
    )
    def test_wrong_variants_are_told_apart(self, _, variant, metrics):
        """Each plausible mistake changes the figures by far more than the 1e-6 of the comparison above."""
        s = SETTINGS["CT"]
        p, t = phantom_pair("CT", 0)
        out = PhysicalUnitMetrics(s["clip_range"], s["eval_window"])(
            torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None]
        )
        wrong = reference_metrics(p, t, s["clip_range"], s["eval_window"], **variant)
        for m in metrics:
            self.assertGreater(abs(float(out[m][0]) - wrong[m]), 1e-4, msg=m)

    def test_ssim_defaults_are_published(self):
        """``ssim_zero_padded`` called with its defaults (11 taps, sigma 1.5, k1 0.01, k2 0.03) is the published SSIM."""
        t = torch.rand(1, 1, 20, 18, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        p = (t + 0.1 * torch.rand(t.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)).clamp(0, 1)
        data_range = (t.max() - t.min()).reshape(1)
        ref = reference_metrics(p[0, 0].numpy(), t[0, 0].numpy(), (0, 1), (0, 1))["ssim"]
        self.assertAlmostEqual(float(ssim_zero_padded(p, t, data_range)), ref, places=10)

    def test_non_default_ssim_parameters_are_used(self):
        """kernel_sigma, k1 and k2 given to PhysicalUnitMetrics reach the SSIM (the result is that variant's formula)."""
        s = SETTINGS["CT"]
        p, t = phantom_pair("CT", 0)
        p, t = p[:64, :64], t[:64, :64]
        out = PhysicalUnitMetrics(s["clip_range"], s["eval_window"], kernel_sigma=3.0, k1=0.05, k2=0.01)(
            torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None]
        )
        ref = reference_metrics(p, t, s["clip_range"], s["eval_window"], sigma=3.0, k1=0.05, k2=0.01)["ssim"]
        self.assertAlmostEqual(float(out["ssim"][0]), ref, places=8)

    def test_each_sample_uses_its_own_range(self):
        """In a batch, each slice's L (and so C1, C2 and PSNR) is its own: the same values as one slice at a time."""
        g = torch.Generator().manual_seed(9)
        t = torch.rand(3, 1, 16, 16, generator=g) * torch.tensor([1.0, 0.3, 0.6]).reshape(3, 1, 1, 1)
        p = (t + 0.05 * torch.rand(t.shape, generator=g)).clamp(0, 1)
        fn = PhysicalUnitMetrics((0, 20), (0, 20))
        batch = fn(p, t)
        for b in range(3):
            single = fn(p[b : b + 1], t[b : b + 1])
            ref = reference_metrics(p[b, 0].numpy(), t[b, 0].numpy(), (0, 20), (0, 20))
            for m in ("psnr", "ssim", "rmse"):
                self.assertAlmostEqual(float(batch[m][b]), float(single[m][0]), places=10, msg=m)
                self.assertAlmostEqual(float(batch[m][b]), ref[m], delta=1e-6 * max(1.0, abs(ref[m])), msg=m)

    def test_constant_target_slice(self):
        """A constant target has L = 0: L is raised to eps = 1e-6, so an error of 0.1 gives 10 log10(1e-12 / 0.01)."""
        t = torch.full((1, 1, 12, 12), 0.5, dtype=torch.float64)
        out = PhysicalUnitMetrics((0, 1), (0, 1))(t + 0.1, t)
        self.assertAlmostEqual(float(out["psnr"][0]), -100.0, places=6)
        self.assertAlmostEqual(float(out["rmse"][0]), 0.1, places=12)
        self.assertTrue(bool(torch.isfinite(out["ssim"]).all()))

    def test_numpy_input_and_one_spatial_axis(self):
        """numpy arrays are read like tensors; 1D signals (spatial_dims=1) use the same formula."""
        p, t = phantom_pair("PET", 0)
        p, t = p[None, None, :32, :32], t[None, None, :32, :32]
        fn = PhysicalUnitMetrics((0, 20), (0, 20))
        from_numpy, from_torch = fn(p, t), fn(torch.from_numpy(p), torch.from_numpy(t))
        for m in ("psnr", "ssim", "rmse"):
            torch.testing.assert_close(from_numpy[m], from_torch[m])
        line = PhysicalUnitMetrics((0, 20), (0, 20), spatial_dims=1)(
            torch.from_numpy(p[:, :, 0]), torch.from_numpy(t[:, :, 0])
        )
        mse = float(np.mean((np.clip(p[0, 0, 0] * 20.0, 0, 20) - t[0, 0, 0] * 20.0) ** 2))  # row 0: clipped
        self.assertAlmostEqual(float(line["rmse"][0]), math.sqrt(mse), places=4)
        self.assertTrue(0 < float(line["ssim"][0]) < 1)

    def test_border_pixels_count(self):
        """An error confined to the outer 3 rows counts fully (a valid-mode map weighs those rows less)."""
        t = torch.full((1, 1, 40, 40), 0.3) + 0.05 * torch.rand(1, 1, 40, 40)
        p = t.clone()
        p[..., :3, :] += 0.1
        ssim = PhysicalUnitMetrics((0, 1), (0, 1))(p, t)["ssim"]
        ref = reference_metrics(p[0, 0].numpy(), t[0, 0].numpy(), (0, 1), (0, 1))["ssim"]
        self.assertLess(float(ssim), 0.99)
        self.assertAlmostEqual(float(ssim), ref, places=9)
        valid = reference_metrics(p[0, 0].numpy(), t[0, 0].numpy(), (0, 1), (0, 1), mode="valid")["ssim"]
        self.assertGreater(valid - float(ssim), 0.01)

    def test_identical_and_channels(self):
        t = torch.rand(2, 1, 24, 20)
        same = PhysicalUnitMetrics((0, 20), (0, 20))(t, t)
        torch.testing.assert_close(same["ssim"], torch.ones(2, dtype=torch.float64))
        torch.testing.assert_close(same["rmse"], torch.zeros(2, dtype=torch.float64))
        self.assertTrue(torch.isinf(same["psnr"]).all())
        # two channels: SSIM is the mean of the channels' maps, MSE and L over both channels
        p = t + 0.02 * torch.randn_like(t)
        two = PhysicalUnitMetrics((0, 20), (0, 20))(torch.cat([p, t], 1), torch.cat([t, t], 1))
        one = PhysicalUnitMetrics((0, 20), (0, 20))(p, t)
        torch.testing.assert_close(two["ssim"], (one["ssim"] + 1) / 2)
        torch.testing.assert_close(two["rmse"], one["rmse"] / math.sqrt(2))

    def test_volume_and_errors(self):
        t = torch.rand(1, 1, 12, 12, 12)
        out = PhysicalUnitMetrics((0, 1), (0, 1), spatial_dims=3)(t * 0.9, t)
        self.assertTrue(0 < float(out["ssim"]) < 1)
        fn = PhysicalUnitMetrics((0, 1), (0, 1))
        for a, b in (((1, 1, 8, 8), (1, 1, 8, 4)), ((1, 8, 8), (1, 8, 8)), ((1, 1, 4, 4, 4), (1, 1, 4, 4, 4))):
            with self.assertRaises(ValueError):
                fn(torch.rand(a), torch.rand(b))
        for kwargs in ({"win_size": 10}, {"kernel_sigma": 0.0}, {"spatial_dims": 4}, {"spatial_dims": 0}):
            with self.assertRaises(ValueError):
                PhysicalUnitMetrics((0, 1), (0, 1), **kwargs)
        with self.assertRaisesRegex(ValueError, "increasing"):  # refused when built, not at the first call
            PhysicalUnitMetrics((0, 1), (1, 0))


class TestTaskwise(unittest.TestCase):
    def _data(self):
        torch.manual_seed(0)
        data = []
        for i, m in enumerate(["CT", "PET", "MRI", "PET"]):
            t = torch.rand(1, 1, 16, 16) * 0.05 + 0.25
            data.append({"image": t, "label": t, "pred": t + 0.01 * (i + 1) * torch.rand_like(t), "modality": [m]})
        return data

    @parameterized.expand([["psnr"], ["ssim"], ["rmse"]])
    def test_per_task_means_of_slices(self, key_metric):
        data = self._data()

        def step(engine, batch):
            return [{"pred": batch["pred"][0], "label": batch["label"][0]}]

        engine = Engine(step)
        TaskwiseImageQuality(SETTINGS, key_metric=key_metric).attach(engine, "key")
        engine.run(data, max_epochs=1)
        m = engine.state.metrics
        per_task: dict[str, list[dict[str, float]]] = {}
        for d in data:
            s = SETTINGS[d["modality"][0]]
            ref = reference_metrics(
                d["pred"][0, 0].numpy(), d["label"][0, 0].numpy(), s["clip_range"], s["eval_window"]
            )
            per_task.setdefault(d["modality"][0].lower(), []).append(ref)
        for metric in ("psnr", "ssim", "rmse"):
            task_means = {task: np.mean([r[metric] for r in rows]) for task, rows in per_task.items()}
            for task, value in task_means.items():  # PET: the plain mean of its two slices
                self.assertAlmostEqual(m[f"val_{task}_{metric}"], value, places=5, msg=f"{task} {metric}")
            self.assertAlmostEqual(m[f"val_mean_{metric}"], np.mean(list(task_means.values())), places=5)
        self.assertEqual(m["key"], m[f"val_mean_{key_metric}"])

    def test_errors(self):
        with self.assertRaises(ValueError):
            TaskwiseImageQuality(SETTINGS, key_metric="mae")
        with self.assertRaises(ValueError):
            TaskwiseImageQuality({})
        metric = TaskwiseImageQuality(SETTINGS)
        with self.assertRaisesRegex(ValueError, "modality"):
            metric.update(([{"pred": torch.rand(1, 8, 8), "label": torch.rand(1, 8, 8)}], [{}]))
        with self.assertRaisesRegex(ValueError, "key_average"):
            TaskwiseImageQuality(SETTINGS, key_average="volumes")

    def test_collated_batch_and_output(self):
        """A collated batch and output (an engine with decollate=False): split per sample, entries that are not
        per sample (a scalar loss) left alone; each task's mean is the plain float64 mean of its slices."""
        g = torch.Generator().manual_seed(10)
        label = torch.rand(3, 1, 12, 12, generator=g) * 0.05 + 0.25
        pred = label + 0.02 * torch.rand(label.shape, generator=g)
        meta = {"filename_or_obj": ["a.nii", "b.nii", "c.nii"], "spatial_shape": torch.tensor([[12, 12]] * 3), "x": 0}
        batch = {"image": pred, "label": label, "modality": ["CT", "PET", "ct"], "label_meta_dict": meta}  # no "pred"
        engine = Engine(lambda e, b: {"pred": pred, "label": b["label"], "loss": torch.tensor(0.5)})
        TaskwiseImageQuality(SETTINGS).attach(engine, "key")
        engine.run([batch], max_epochs=1)
        m = engine.state.metrics
        ct = PhysicalUnitMetrics(SETTINGS["CT"]["clip_range"], SETTINGS["CT"]["eval_window"])(pred[0::2], label[0::2])
        pet = PhysicalUnitMetrics(SETTINGS["PET"]["clip_range"], SETTINGS["PET"]["eval_window"])(pred[1:2], label[1:2])
        for metric in ("psnr", "ssim", "rmse"):
            self.assertAlmostEqual(m[f"val_ct_{metric}"], float(ct[metric].mean()), places=9, msg=metric)
            self.assertAlmostEqual(m[f"val_pet_{metric}"], float(pet[metric][0]), places=9, msg=metric)
        self.assertNotIn("val_mri_psnr", m)  # a task without samples has no entry
        self.assertAlmostEqual(m["key"], (float(ct["psnr"].mean()) + float(pet["psnr"][0])) / 2, places=9)

    def test_key_average_slices(self):
        """``key_average="slices"`` (the published model selection): the key is the plain mean over every slice
        (PET's two slices count twice), reported also as ``<prefix>slice_mean_<key metric>``."""
        data = self._data()  # CT, PET, MRI, PET

        def step(engine, batch):
            return [{"pred": batch["pred"][0], "label": batch["label"][0]}]

        slices, tasks = Engine(step), Engine(step)
        TaskwiseImageQuality(SETTINGS, key_metric="ssim", key_average="slices").attach(slices, "key")
        TaskwiseImageQuality(SETTINGS, key_metric="ssim").attach(tasks, "key")
        slices.run(data, max_epochs=1)
        tasks.run(data, max_epochs=1)
        refs = [
            reference_metrics(
                d["pred"][0, 0].numpy(),
                d["label"][0, 0].numpy(),
                SETTINGS[d["modality"][0]]["clip_range"],
                SETTINGS[d["modality"][0]]["eval_window"],
            )["ssim"]
            for d in data
        ]
        m = slices.state.metrics
        self.assertAlmostEqual(m["key"], float(np.mean(refs)), places=6)
        self.assertEqual(m["val_slice_mean_ssim"], m["key"])
        self.assertGreater(abs(m["key"] - m["val_mean_ssim"]), 1e-4)  # not the mean of the task means
        self.assertEqual(m["val_mean_ssim"], tasks.state.metrics["val_mean_ssim"])
        self.assertEqual(tasks.state.metrics["key"], tasks.state.metrics["val_mean_ssim"])
        for metrics in (slices.state.metrics, tasks.state.metrics):  # only the key metric, only when asked for
            self.assertEqual([k for k in metrics if "slice_mean" in k], ["val_slice_mean_ssim"] if metrics is m else [])

    def test_each_evaluation_starts_afresh(self):
        """A second evaluation reports only its own samples (the first one's are dropped)."""
        data = self._data()

        def step(engine, batch):
            return [{"pred": batch["pred"][0], "label": batch["label"][0]}]

        engine, fresh = Engine(step), Engine(step)
        metric = TaskwiseImageQuality(SETTINGS)
        metric.attach(engine, "key")
        TaskwiseImageQuality(SETTINGS).attach(fresh, "key")
        engine.run(data[:2], max_epochs=1)  # CT, PET
        engine.run(data[2:], max_epochs=1)  # MRI, PET
        fresh.run(data[2:], max_epochs=1)
        self.assertEqual(metric.compute(), {k[len("val_") :]: v for k, v in fresh.state.metrics.items() if k != "key"})
        self.assertEqual(engine.state.metrics["key"], fresh.state.metrics["key"])
        # no CT sample the second time: no CT entry left over from the first evaluation either
        self.assertEqual(engine.state.metrics, fresh.state.metrics)
        self.assertNotIn("val_ct_psnr", engine.state.metrics)

    def test_task_from_the_output_options_and_empty(self):
        """With no batch the task is read from the output (``task_key``); ``prefix`` and ``kernel_sigma`` are used;
        an evaluation without samples reports NaN means and no task entries."""
        metric = TaskwiseImageQuality(SETTINGS, task_key="task", prefix="test_", kernel_sigma=3.0)
        empty = metric.compute()
        self.assertEqual(sorted(empty), ["mean_psnr", "mean_rmse", "mean_ssim"])
        self.assertTrue(all(math.isnan(v) for v in empty.values()))
        p, t = phantom_pair("PET", 0)
        p, t = torch.from_numpy(p[:32, :32])[None], torch.from_numpy(t[:32, :32])[None]
        engine = Engine(lambda e, b: None)
        engine.state.output, engine.state.batch = [{"pred": p, "label": t, "task": "pet"}], None
        metric.iteration_completed(engine)
        metric.completed(engine, "key")
        ref = reference_metrics(p[0].numpy(), t[0].numpy(), (0, 20), (0, 20), sigma=3.0)
        self.assertAlmostEqual(engine.state.metrics["test_pet_ssim"], ref["ssim"], places=8)
        self.assertAlmostEqual(engine.state.metrics["key"], ref["psnr"], places=6)
        self.assertEqual(engine.state.metrics["test_mean_rmse"], engine.state.metrics["test_pet_rmse"])


def _ddp_worker(rank: int, world: int, port: int, samples: list, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        metric = TaskwiseImageQuality(SETTINGS)
        metric.reset()
        mine = samples[rank::2] if rank < 2 else []  # uneven split: 3 and 2 samples, and a rank with none
        metric.update(([{"pred": p, "label": t} for p, t, _ in mine], [{"modality": m} for _, _, m in mine]))
        queue.put((rank, metric.compute()))
    finally:
        dist.destroy_process_group()


class TestTaskwiseDistributed(unittest.TestCase):
    def test_gathered_across_ranks_equals_single_process(self):
        import socket

        import torch.multiprocessing as mp

        torch.manual_seed(0)
        samples = []
        for i, m in enumerate(["CT", "PET", "MRI", "CT", "PET"]):
            t = torch.rand(1, 16, 16) * 0.05 + 0.25
            samples.append((t + 0.01 * (i + 1), t, m))
        single = TaskwiseImageQuality(SETTINGS)
        single.update(([{"pred": p, "label": t} for p, t, _ in samples], [{"modality": m} for _, _, m in samples]))
        expected = single.compute()

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_ddp_worker, args=(r, 3, port, samples, queue), daemon=True) for r in range(3)]
        for p in procs:
            p.start()
        try:
            results = dict(queue.get(timeout=90) for _ in procs)  # a worker that fails puts nothing: no endless wait
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.terminate()
        for rank in (0, 1, 2):
            self.assertEqual(sorted(results[rank]), sorted(expected))
            for key, value in expected.items():
                self.assertAlmostEqual(results[rank][key], value, places=5, msg=key)


if __name__ == "__main__":
    unittest.main()
