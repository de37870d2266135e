from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from ignite.engine import Engine

from custom.metrics import PhysicalUnitMetrics, TaskwiseImageQuality, to_physical

SETTINGS = {
    "CT": {"modality": "CT", "clip_range": (-1024.0, 3072.0), "eval_window": (-160.0, 240.0)},
    "PET": {"modality": "PET", "clip_range": (0.0, 20.0), "eval_window": (0.0, 20.0)},
    "MRI": {"modality": "MRI", "clip_range": (0.0, 4095.0), "eval_window": (0.0, 4095.0)},
}


class TestPhysical(unittest.TestCase):
    def test_to_physical(self):
        x = torch.tensor([0.0, 0.2, 0.25, 0.3, 1.0])
        torch.testing.assert_close(
            to_physical(x, (-1024, 3072), (-160, 240)), torch.tensor([-160.0, -160.0, 0.0, 204.8, 240.0])
        )
        with self.assertRaises(ValueError):
            to_physical(x, (1, 0), (0, 1))

    def test_against_numpy_definition(self):
        torch.manual_seed(0)
        t = torch.rand(2, 1, 32, 32) * 0.1 + 0.22
        p = t + 0.005 * torch.randn_like(t)
        out = PhysicalUnitMetrics((-1024, 3072), (-160, 240))(p, t)
        for b in range(2):
            tt = np.clip(t[b, 0].double().numpy() * 4096 - 1024, -160, 240)
            pp = np.clip(p[b, 0].double().numpy() * 4096 - 1024, -160, 240)
            mse = ((tt - pp) ** 2).mean()
            self.assertAlmostEqual(float(out["psnr"][b]), 10 * math.log10((tt.max() - tt.min()) ** 2 / mse), places=3)
            self.assertAlmostEqual(float(out["rmse"][b]), math.sqrt(mse), places=2)
        # SSIM is invariant to the shift/scale used internally
        same = PhysicalUnitMetrics((-1024, 3072), (-160, 240))(t, t)
        torch.testing.assert_close(same["ssim"], torch.ones(2))


class TestTaskwise(unittest.TestCase):
    def test_per_task_and_mean(self):
        torch.manual_seed(0)
        data = []
        for i, m in enumerate(["CT", "PET", "MRI", "PET"]):
            t = torch.rand(1, 1, 16, 16) * 0.05 + 0.25
            data.append({"image": t, "label": t, "pred": t + 0.01 * (i + 1), "modality": [m]})

        def step(engine, batch):
            return [{"pred": batch["pred"][0], "label": batch["label"][0]}]

        engine = Engine(step)
        TaskwiseImageQuality(SETTINGS).attach(engine, "val_mean_psnr")
        engine.run(data, max_epochs=1)
        m = engine.state.metrics
        for task in ("ct", "pet", "mri"):
            for metric in ("psnr", "ssim", "rmse"):
                self.assertTrue(math.isfinite(m[f"val_{task}_{metric}"]))
        self.assertAlmostEqual(m["val_mean_psnr"], (m["val_ct_psnr"] + m["val_pet_psnr"] + m["val_mri_psnr"]) / 3)
        self.assertEqual(m["val_mean_psnr"], m["val_mean_psnr"])

    def test_errors(self):
        with self.assertRaises(ValueError):
            TaskwiseImageQuality(SETTINGS, key_metric="mae")
        with self.assertRaises(ValueError):
            TaskwiseImageQuality({})


if __name__ == "__main__":
    unittest.main()


def _ddp_worker(rank: int, world: int, port: int, samples: list, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        metric = TaskwiseImageQuality(SETTINGS)
        metric.reset()
        mine = samples[rank::world]  # uneven split: 5 samples on 2 ranks
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
        queue = ctx.SimpleQueue()
        procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, samples, queue)) for r in range(2)]
        for p in procs:
            p.start()
        results = dict(queue.get() for _ in procs)
        for p in procs:
            p.join(60)
        for rank in (0, 1):
            self.assertEqual(sorted(results[rank]), sorted(expected))
            for key, value in expected.items():
                self.assertAlmostEqual(results[rank][key], value, places=5, msg=key)
