from __future__ import annotations

import unittest

import torch
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from custom.engines import TaskAdaptiveTrainer, batch_sources
from custom.losses import PlainL1Loss, TaskAdaptiveBalancedLoss


def _batches(n: int, bad: int | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        image = torch.rand(6, 1, 8, 8, generator=g)
        if i == bad:
            image[0, 0, 0, 0] = float("nan")
        meta = {"filename_or_obj": [f"/data/{m}_{i}_{j}.nii.gz" for j, m in enumerate(["CT", "PET", "MRI"] * 2)]}
        out.append({
            "image": MetaTensor(image, meta=meta),
            "label": torch.rand(6, 1, 8, 8, generator=g),
            "modality": ["CT", "PET", "MRI"] * 2,
        })
    return out


def _trainer(loss, data, net=None):
    torch.manual_seed(0)
    net = net or torch.nn.Conv2d(1, 1, 3, padding=1)
    params = list(net.parameters()) + list(loss.parameters())
    return TaskAdaptiveTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.AdamW(params, lr=1e-2), loss_function=loss,
    )


class TestTaskAdaptiveTrainer(unittest.TestCase):
    def test_run_updates_network_and_loss(self):
        loss = TaskAdaptiveBalancedLoss(return_details=True)
        trainer = _trainer(loss, _batches(3))
        events = []
        for ev in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                   IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):
            trainer.add_event_handler(ev, lambda e, ev=ev: events.append(ev))
        bias0 = loss.estimator.head.bias.detach().clone()
        trainer.run()
        self.assertEqual(trainer.state.iteration, 3)
        self.assertEqual(len(events), 12)
        self.assertFalse(torch.equal(bias0, loss.estimator.head.bias.detach()))  # the estimator is trained
        out = trainer.state.output  # decollated: one dict per sample
        self.assertEqual(len(out), 6)
        for key in (Keys.IMAGE, Keys.LABEL, Keys.PRED, Keys.LOSS, "loss_weight", "sigma", "modality"):
            self.assertIn(key, out[0])
        self.assertEqual([o["modality"] for o in out[:3]], ["CT", "PET", "MRI"])

    def test_plain_loss_scalar(self):
        trainer = _trainer(PlainL1Loss(), _batches(2))
        trainer.run()
        self.assertTrue(torch.isfinite(torch.as_tensor(trainer.state.output[0][Keys.LOSS])))
        self.assertNotIn("loss_weight", trainer.state.output[0])

    def test_nonfinite_loss_names_iteration_and_files(self):
        trainer = _trainer(TaskAdaptiveBalancedLoss(), _batches(3, bad=1))
        with self.assertRaises(FloatingPointError) as ctx:
            trainer.run()
        msg = str(ctx.exception)
        self.assertIn("iteration 2", msg)
        self.assertIn("/data/CT_1_0.nii.gz", msg)

    def test_gradient_accumulation_steps_once_per_two_batches(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        loss = PlainL1Loss()
        trainer = TaskAdaptiveTrainer(
            device=torch.device("cpu"), max_epochs=1, train_data_loader=_batches(4), network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=loss, accumulation_steps=2,
        )
        steps = []
        trainer.optimizer.register_step_post_hook(lambda *a: steps.append(trainer.state.iteration))
        trainer.run()
        self.assertEqual(steps, [2, 4])

    def test_batch_sources(self):
        self.assertEqual(len(batch_sources(_batches(1)[0])), 6)
        self.assertEqual(batch_sources({"image": torch.zeros(1)}), [])


if __name__ == "__main__":
    unittest.main()
