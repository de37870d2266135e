from __future__ import annotations

import unittest

import torch
from custom.engines import TaskAdaptiveTrainer, batch_sources
from custom.losses import PlainL1Loss, TaskAdaptiveBalancedLoss
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys


def _batches(n: int, bad: int | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        image = torch.rand(6, 1, 8, 8, generator=g)
        if i == bad:
            image[0, 0, 0, 0] = float("nan")
        meta = {"filename_or_obj": [f"/data/{m}_{i}_{j}.nii.gz" for j, m in enumerate(["CT", "PET", "MRI"] * 2)]}
        out.append(
            {
                "image": MetaTensor(image, meta=meta),
                "label": torch.rand(6, 1, 8, 8, generator=g),
                "modality": ["CT", "PET", "MRI"] * 2,
            }
        )
    return out


def _trainer(loss, data, net=None):
    torch.manual_seed(0)
    net = net or torch.nn.Conv2d(1, 1, 3, padding=1)
    params = list(net.parameters()) + list(loss.parameters())
    return TaskAdaptiveTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.AdamW(params, lr=1e-2),
        loss_function=loss,
    )


class TestTaskAdaptiveTrainer(unittest.TestCase):
    def test_run_updates_network_and_loss(self):
        loss = TaskAdaptiveBalancedLoss(return_details=True)
        trainer = _trainer(loss, _batches(3))
        events = []
        for ev in (
            IterationEvents.FORWARD_COMPLETED,
            IterationEvents.LOSS_COMPLETED,
            IterationEvents.BACKWARD_COMPLETED,
            IterationEvents.MODEL_COMPLETED,
        ):
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

    def test_nonfinite_gradient_stops_before_the_step(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = _trainer(PlainL1Loss(), _batches(3), net=net)
        before = [p.detach().clone() for p in net.parameters()]
        net.bias.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradient for one parameter
        with self.assertRaises(FloatingPointError) as ctx:
            trainer.run()
        msg = str(ctx.exception)
        self.assertIn("network.bias", msg)
        self.assertIn("iteration 1", msg)
        self.assertIn("/data/CT_0_0.nii.gz", msg)
        for a, b in zip(before, net.parameters()):  # the optimiser never stepped on the corrupt gradient
            self.assertTrue(torch.equal(a, b.detach()))

    def test_gradient_accumulation_steps_once_per_two_batches(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        loss = PlainL1Loss()
        trainer = TaskAdaptiveTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=_batches(4),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            loss_function=loss,
            accumulation_steps=2,
        )
        steps = []
        trainer.optimizer.register_step_post_hook(lambda *a: steps.append(trainer.state.iteration))
        trainer.run()
        self.assertEqual(steps, [2, 4])

    def test_amp_scaler_state_survives_resume(self):
        """The loss scale learnt before a checkpoint (halved by an overflow) is what the resumed run continues
        with, through the real resume loader (``weights_only=True``). CPU-only machine: the CPU GradScaler stands
        in for the CUDA one that ``Trainer.run`` builds."""
        import tempfile
        import warnings
        from unittest import mock

        from custom.handlers import ResumeCheckpointLoader

        factor = {"value": 1e35}  # finite loss, inf once scaled by 2**16: the first step overflows

        def loss_fn(inputs, pred, target):
            return (pred - target).abs().mean() * factor["value"]

        def make(max_epochs):
            net = torch.nn.Conv2d(1, 1, 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return TaskAdaptiveTrainer(
                    device=torch.device("cpu"),
                    max_epochs=max_epochs,
                    train_data_loader=_batches(1),
                    network=net,
                    optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                    loss_function=loss_fn,
                    amp=True,
                    epoch_length=1,
                )

        cpu_scaler = lambda: torch.amp.GradScaler("cpu", init_scale=2.0**16)  # noqa: E731
        with (
            tempfile.TemporaryDirectory() as tmp,
            mock.patch("torch.cuda.amp.GradScaler", cpu_scaler),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            first = make(1)
            first.run()
            self.assertEqual(first.scaler.get_scale(), 2.0**15)
            path = f"{tmp}/latest.pt"
            torch.save({"trainer": first.state_dict()}, path)

            factor["value"] = 1.0
            resumed = make(2)
            ResumeCheckpointLoader(load_path=path, load_dict={"trainer": resumed}).attach(resumed)
            resumed.run()
            self.assertEqual(resumed.state.iteration, 2)  # resumed after iteration 1
            self.assertEqual(resumed.scaler.get_scale(), 2.0**15)  # not the initial 2**16

            fresh = make(1)  # a checkpoint without scaler state (AMP off, older files) loads and keeps the default
            state = first.state_dict()
            del state["grad_scaler"]
            state["max_epochs"] = 2
            torch.save({"trainer": state}, path)
            ResumeCheckpointLoader(load_path=path, load_dict={"trainer": fresh}).attach(fresh)
            fresh.state.max_epochs = 2
            fresh.run()
            self.assertEqual(fresh.scaler.get_scale(), 2.0**16)

    def test_batch_sources(self):
        self.assertEqual(len(batch_sources(_batches(1)[0])), 6)
        self.assertEqual(batch_sources({"image": torch.zeros(1)}), [])


if __name__ == "__main__":
    unittest.main()
