"""The published training recipe, pinned on ``bundle/configs/train.json`` (parsed with MONAI's ConfigParser).

Values from the shared facts (TAT, MICCAI 2025, the authors' training script): AdamW lr 2e-4, betas (0.9, 0.99),
weight decay 0.01 over the network and the loss estimator together; cosine annealing to 1e-7 over 400,000
iterations stepped every iteration; EMA 0.999 with the power warm-up, the EMA model validated and saved; 4 crops
of 128 x 128 per task (12 per step); validation every 1,000 iterations on the first 16 files of each task. Only
cheap objects are instantiated (a tiny network stands in for the published widths, which are not the recipe).
"""

from __future__ import annotations

import math
import os
import tempfile
import unittest

import torch
from monai.bundle import ConfigParser

from tests.utils import BUNDLE, TRAIN_CONFIG, tiny_overrides

TRAIN = TRAIN_CONFIG


def _ref(value: str) -> str:
    """A config reference as written in the file (the parser stores ``#`` as ``::``)."""
    return str(value).replace("::", "#")


class TestTrainRecipe(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.parser = ConfigParser()
        self.parser.read_config(TRAIN)
        self.parser.update(
            {
                "bundle_root": BUNDLE,
                "ckpt_dir": self.tmp.name,
                "output_dir": self.tmp.name,
                "device": "$torch.device('cpu')",
                **tiny_overrides(tren=True, patch=False),
            }
        )

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def test_optimiser_over_network_and_loss_estimator(self):
        opt = self.parser.get_parsed_content("optimizer")
        self.assertIsInstance(opt, torch.optim.AdamW)
        self.assertEqual(len(opt.param_groups), 1)
        group = opt.param_groups[0]
        self.assertEqual(group["lr"], 2e-4)
        self.assertEqual(tuple(group["betas"]), (0.9, 0.99))
        self.assertEqual(group["weight_decay"], 0.01)
        self.assertEqual(group["eps"], 1e-8)
        self.assertFalse(group["amsgrad"])
        network, loss = self.parser.get_parsed_content("network"), self.parser.get_parsed_content("loss")
        estimator = {id(p) for p in loss.estimator.parameters()}
        self.assertGreater(len(estimator), 0)
        optimised = {id(p) for p in group["params"]}
        self.assertEqual(optimised, {id(p) for p in network.parameters()} | estimator)
        self.assertEqual(len(group["params"]), len(optimised))  # no parameter twice
        self.assertIs(self.parser["amp"], False)  # fp32

    def test_cosine_schedule_per_iteration(self):
        sched = self.parser.get_parsed_content("lr_scheduler")
        self.assertIsInstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
        self.assertEqual((sched.T_max, sched.eta_min), (400000, 1e-7))
        opt = sched.optimizer
        for k in range(1, 4):  # the lr after k scheduler steps, from the cosine formula
            opt.step()
            sched.step()
            expected = 1e-7 + (2e-4 - 1e-7) * (1 + math.cos(math.pi * k / 400000)) / 2
            self.assertAlmostEqual(opt.param_groups[0]["lr"], expected, places=15)
        handlers = [h for h in self.parser["train#handlers"] if h.get("_target_") == "LrScheduleHandler"]
        self.assertEqual(len(handlers), 1)
        self.assertIs(handlers[0]["epoch_level"], False)  # stepped every iteration, not every epoch
        self.assertEqual(_ref(handlers[0]["lr_scheduler"]), "@lr_scheduler")
        trainer = self.parser["train#trainer"]
        self.assertEqual(
            self.parser.get_parsed_content("train#trainer#max_epochs") * self.parser["val_interval"], 400000
        )
        self.assertEqual(_ref(trainer["epoch_length"]), "@val_interval")

    def test_ema_decay_warm_up_validated_and_saved(self):
        ema = self.parser.get_parsed_content("ema")
        self.assertIs(ema.network, self.parser.get_parsed_content("network"))
        self.assertEqual((ema.decay, ema.warmup, ema.inv_gamma, ema.update_every), (0.999, "power", 1.0, 1))
        self.assertAlmostEqual(ema.power, 2.0 / 3.0)
        for k in (0, 1, 100, 31622, 10**6):
            ema.num_updates = k
            self.assertAlmostEqual(ema.current_decay(), min(0.999, 1 - (1 + k) ** (-2 / 3)), places=12)
        best = self.parser.get_parsed_content("best_saver")
        self.assertEqual(list(best.save_dict), ["model"])
        self.assertIs(best.save_dict["model"], ema.ema_model)  # the EMA network is the one kept
        self.assertEqual(_ref(self.parser["validate#evaluator#network"]), "$@ema.ema_model")  # and the one validated
        self.assertIn(
            "@ema", [_ref(h) for h in self.parser["train#stateful_handlers"]]
        )  # updated by the trainer, checkpointed

    def test_crops_and_patch_size(self):
        self.assertEqual(self.parser["patch_size"], 128)
        self.assertEqual(self.parser["samples_per_task"], 4)
        self.assertEqual(self.parser["modalities"], ["CT", "PET", "MRI"])
        crops = [t for t in self.parser["train#random_transforms"] if t["_target_"].endswith("PairedRandCropd")]
        self.assertEqual(len(crops), 1)
        self.assertEqual(_ref(crops[0]["roi_size"]), "@patch_size")  # the same window in image and label
        self.assertEqual(len(self.parser["train#random_transforms"]), 1)  # random crops only: no flips, rotations
        self.assertEqual(_ref(self.parser["network_def#train_patch_size"]), "@patch_size")
        items = [{"modality": m} for m in ("CT", "PET", "MRI") for _ in range(10)]
        self.parser["train#datalist"] = items
        batch = next(iter(self.parser.get_parsed_content("train#batch_sampler")))
        self.assertEqual(len(batch), 12)
        self.assertEqual(sorted(items[i]["modality"] for i in batch), ["CT"] * 4 + ["MRI"] * 4 + ["PET"] * 4)
        self.assertEqual(_ref(self.parser["train#dataloader#batch_sampler"]), "@train#batch_sampler")

    def test_validation_interval(self):
        self.assertEqual(self.parser["val_interval"], 1000)
        handlers = [h for h in self.parser["train#handlers"] if h.get("_target_") == "ValidationHandler"]
        self.assertEqual(len(handlers), 1)
        self.assertEqual((_ref(handlers[0]["interval"]), handlers[0]["epoch_level"]), ("@val_interval", False))
        self.assertEqual(self.parser["validate#dataloader#batch_size"], 1)
        self.assertEqual(self.parser["best_saver#save_key_metric"], True)

    def test_validation_subset_first_16_files_per_task(self):
        """The published subset: the first 16 validation files of each task (sorted names), 48 slices."""
        self.assertEqual(self.parser["val_files_per_task"], 16)
        self.assertEqual(_ref(self.parser["validate#datalist#items"]), "@validate#subset")
        names = [f"{i:03d}.nii" for i in range(20)][::-1]  # given in reverse order
        self.parser["validate#selected_volumes"] = [
            {"image": f"/d/{m}/validation/LQ/{n}", "label": f"/d/{m}/validation/HQ/{n}", "modality": m}
            for m in ("MRI", "CT", "PET")
            for n in names
        ]
        subset = self.parser.get_parsed_content("validate#subset")
        self.assertEqual(len(subset), 48)
        for m in ("CT", "PET", "MRI"):
            kept = [os.path.basename(v["image"]) for v in subset if v["modality"] == m]
            self.assertEqual(kept, [f"{i:03d}.nii" for i in range(16)], m)
        self.assertEqual(self.parser["validate#key_metric#val_mean_psnr#key_average"], "slices")  # plain mean
        self.assertIs(self.parser["best_saver#key_metric_greater_or_equal"], True)  # a tie keeps the later one


if __name__ == "__main__":
    unittest.main()
