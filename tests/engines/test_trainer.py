from __future__ import annotations

import tempfile
import unittest
import warnings
from unittest import mock

import torch
from custom.engines import FiniteGradientGuard, FiniteLossGuard, InputAwareLoss, TaskAdaptiveTrainer, batch_sources
from custom.losses import PlainL1Loss, SupervisedContrastiveLoss, TaskAdaptiveBalancedLoss
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from parameterized import parameterized

from tests.utils import TINY_TREN, tiny_net

MODALITIES = ["CT", "PET", "MRI"] * 2


def _batches(n: int, bad: int | None = None, meta: bool = True) -> list[dict]:
    """``n`` batches of 6 random 8 x 8 slices, file names ``/data/<modality>_<batch>_<sample>.nii.gz``; batch
    ``bad`` has one NaN input voxel."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        image = torch.rand(6, 1, 8, 8, generator=g)
        if i == bad:
            image[0, 0, 0, 0] = float("nan")
        files = {"filename_or_obj": [f"/data/{m}_{i}_{j}.nii.gz" for j, m in enumerate(MODALITIES)]}
        out.append(
            {
                "image": MetaTensor(image, meta=files) if meta else image,
                "label": torch.rand(6, 1, 8, 8, generator=g),
                "modality": list(MODALITIES),
            }
        )
    return out


def _trainer(loss, data, net=None, **kwargs) -> TaskAdaptiveTrainer:
    torch.manual_seed(0)
    net = net or torch.nn.Conv2d(1, 1, 3, padding=1)
    params = list(net.parameters()) + (list(loss.parameters()) if isinstance(loss, torch.nn.Module) else [])
    return TaskAdaptiveTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.AdamW(params, lr=1e-2),
        loss_function=loss,
        **kwargs,
    )


def _iteration_outputs(trainer: TaskAdaptiveTrainer) -> list[dict]:
    """Collects each iteration's output dict after the backward pass (MONAI decollates it at MODEL_COMPLETED)."""
    seen: list[dict] = []
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: seen.append(dict(e.state.output)))
    return seen


class RecordingLoss(torch.nn.Module):
    """L1 loss that records its arguments and its training mode at every call; optionally returns details."""

    def __init__(self, details: bool = False) -> None:
        super().__init__()
        self.details = details
        self.calls: list[tuple] = []

    def forward(self, inputs, preds, targets):
        self.calls.append((inputs, preds, targets, self.training))
        per_sample = (preds - targets).abs().flatten(1).mean(1)
        if self.details:
            return per_sample, {"weight": per_sample.detach() + 1.0, "sigma": per_sample.detach() + 2.0}
        return per_sample


class TestTaskAdaptiveTrainer(unittest.TestCase):
    def test_amp_given_as_text_is_read_as_meant(self):
        """``--amp false`` on a command line reaches the trainer as the text 'false' (truthy): read as False; other
        text is refused naming the switch."""
        loss = torch.nn.L1Loss()
        for value, expected in (("false", False), ("False", False), ("true", True), (False, False)):
            self.assertIs(_trainer(loss, [], amp=value).amp, expected, value)
        with self.assertRaisesRegex(ValueError, "amp must be true or false, got 'half'"):
            _trainer(loss, [], amp="half")

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
        self.assertIs(trainer.loss_function.loss, loss)
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

    def test_gradient_accumulation_steps_once_per_two_batches(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = TaskAdaptiveTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=_batches(4),
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            loss_function=PlainL1Loss(),
            accumulation_steps=2,
        )
        steps = []
        trainer.optimizer.register_step_post_hook(lambda *a: steps.append(trainer.state.iteration))
        trainer.run()
        self.assertEqual(steps, [2, 4])

    def test_amp_scaler_state_survives_resume(self):
        """The loss scale learnt before a checkpoint (halved by an overflow) is what the resumed run continues
        with, through the real resume loader (``weights_only=True``). CPU-only machine: the CPU GradScaler stands
        in for the CUDA one that ``Trainer.run`` builds. The overflow makes every gradient inf: with AMP the
        gradient guard leaves it to the scaler."""
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

    def test_state_dict_with_scaler_state_outside_a_run(self):
        """Loaded before ``run`` (no scaler built yet): a scaler state is refused with AMP on (it would be lost),
        ignored with AMP off; the engine state (iteration, epoch) is restored either way."""
        done = _trainer(PlainL1Loss(), _batches(2))
        done.run()
        state = dict(done.state_dict(), grad_scaler={"scale": 2.0**15, "_growth_tracker": 3})
        plain = _trainer(torch.nn.L1Loss(), _batches(2))
        plain.load_state_dict(state)
        self.assertEqual((plain.state.iteration, plain.state.epoch), (2, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            amp = _trainer(torch.nn.L1Loss(), _batches(2), amp=True)
        with self.assertRaisesRegex(ValueError, "can only be restored while the trainer runs"):
            amp.load_state_dict(state)
        amp.load_state_dict({k: v for k, v in state.items() if k != "grad_scaler"})  # nothing to restore: fine
        self.assertEqual(amp.state.iteration, 2)

    def test_batch_sources(self):
        self.assertEqual(len(batch_sources(_batches(1)[0])), 6)
        self.assertEqual(batch_sources({"image": torch.zeros(1)}), [])
        self.assertEqual(batch_sources([torch.zeros(1)]), [])
        one = {"image": MetaTensor(torch.zeros(1, 1, 2, 2), meta={"filename_or_obj": "/data/a.nii.gz"})}
        self.assertEqual(batch_sources(one), ["/data/a.nii.gz"])  # an uncollated item: one name, not its letters


class TestInputAwareLoss(unittest.TestCase):
    def test_loss_sees_inputs_predictions_and_targets(self):
        loss = RecordingLoss()
        data = _batches(2)
        trainer = _trainer(loss, data)
        outputs = _iteration_outputs(trainer)
        loss.eval()  # the trainer puts the loss in training mode, as MONAI does the network
        trainer.run()
        self.assertEqual(len(loss.calls), 2)
        for (inputs, preds, targets, training), batch, out in zip(loss.calls, data, outputs):
            self.assertTrue(torch.equal(inputs, batch["image"]))
            self.assertTrue(torch.equal(targets, batch["label"]))
            self.assertIs(preds, out[Keys.PRED])
            self.assertTrue(training)
            self.assertEqual(out["modality"], MODALITIES)
            self.assertNotIn("task", out)  # absent from the batch: not invented
            torch.testing.assert_close(out[Keys.LOSS], (preds - targets).abs().mean())  # MONAI takes the mean

    def test_details_become_loss_weight_and_sigma(self):
        trainer = _trainer(RecordingLoss(details=True), _batches(1))
        outputs = _iteration_outputs(trainer)
        trainer.run()
        out = outputs[0]
        per_sample = (out[Keys.PRED] - out[Keys.LABEL]).abs().flatten(1).mean(1).detach()
        torch.testing.assert_close(out["loss_weight"], per_sample + 1.0)
        torch.testing.assert_close(out["sigma"], per_sample + 2.0)
        torch.testing.assert_close(out[Keys.LOSS], per_sample.mean())

    def test_info_keys_copied_from_the_batch(self):
        data = [dict(b, task="denoise") for b in _batches(1)]
        loss = InputAwareLoss(RecordingLoss(), engine=mock.Mock(), info_keys=("task",))
        loss.engine.state.batch = data[0]
        loss.engine.state.output = {Keys.IMAGE: data[0]["image"]}
        loss(data[0]["label"], data[0]["label"])
        self.assertEqual(loss.engine.state.output["task"], "denoise")
        self.assertNotIn("modality", loss.engine.state.output)  # not among the info keys


def _tat_batches(n: int, modality: bool = True) -> list[dict]:
    """``n`` batches of 6 random 16 x 16 slices, two per task; without ``modality`` entries when asked."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        batch = {"image": torch.rand(6, 1, 16, 16, generator=g), "label": torch.rand(6, 1, 16, 16, generator=g)}
        if modality:
            batch["modality"] = list(MODALITIES)
        out.append(batch)
    return out


def _tat() -> torch.nn.Module:
    return tiny_net(0, **TINY_TREN).train()


class TestTaskContrast(unittest.TestCase):
    def test_adds_the_weighted_term_to_the_loss(self):
        losses = {}
        for weight in (0.0, 0.5):
            trainer = _trainer(
                PlainL1Loss(),
                _tat_batches(1),
                net=_tat(),
                task_contrast=SupervisedContrastiveLoss(0.1),
                task_contrast_weight=weight,
            )
            outputs = _iteration_outputs(trainer)
            trainer.run()
            losses[weight] = outputs[0]
        self.assertNotIn("task_contrast", losses[0.0])
        contrast = losses[0.5]["task_contrast"]
        self.assertGreater(float(contrast), 0.0)
        torch.testing.assert_close(losses[0.5][Keys.LOSS].detach(), losses[0.0][Keys.LOSS].detach() + 0.5 * contrast)
        # the term is the loss of the network's own task embedding of the batch's inputs, with its tasks
        net = _tat()
        with torch.no_grad():
            expected = SupervisedContrastiveLoss(0.1)(net.task_embedding(_tat_batches(1)[0]["image"]), MODALITIES)
        torch.testing.assert_close(contrast, expected)

    def test_gradient_reaches_only_the_task_representation_network(self):
        net = _tat()
        loss = InputAwareLoss(
            lambda x, p, t: (p - t).abs().mean() * 0.0,
            engine=mock.Mock(),
            task_contrast=SupervisedContrastiveLoss(),
            task_contrast_weight=1.0,
        )
        batch = _tat_batches(1)[0]
        loss.engine.network = net
        loss.engine.state.batch = batch
        loss.engine.state.output = {Keys.IMAGE: batch["image"]}
        loss(net(batch["image"]), batch["label"]).backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        self.assertTrue(any(g is not None and bool(g.abs().sum() > 0) for n, g in grads.items() if "task_kernels" in n))
        outside = [n for n, g in grads.items() if "task_kernels" not in n and g is not None and bool(g.abs().sum() > 0)]
        self.assertEqual(outside, [])

    def test_wrapped_network_uses_its_module(self):
        class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like to the trainer
            def __init__(self, module):
                super().__init__()
                self.module = module

            def forward(self, x):
                return self.module(x)

        trainer = _trainer(
            PlainL1Loss(),
            _tat_batches(1),
            net=Wrapper(_tat()),
            task_contrast=SupervisedContrastiveLoss(),
            task_contrast_weight=0.1,
        )
        outputs = _iteration_outputs(trainer)
        trainer.run()
        self.assertGreater(float(outputs[0]["task_contrast"]), 0.0)

    def test_published_recipe_computes_no_embedding(self):
        net = _tat()
        trainer = _trainer(PlainL1Loss(), _tat_batches(1), net=net, task_contrast=SupervisedContrastiveLoss())
        with mock.patch.object(type(net), "task_embedding", side_effect=AssertionError("called")) as embedding:
            trainer.run()
        embedding.assert_not_called()

    def test_batch_without_tasks(self):
        trainer = _trainer(
            PlainL1Loss(),
            _tat_batches(1, modality=False),
            net=_tat(),
            task_contrast=SupervisedContrastiveLoss(),
            task_contrast_weight=0.1,
        )
        with self.assertRaisesRegex(ValueError, "no 'modality' entry"):
            trainer.run()

    def test_network_without_task_embedding(self):
        trainer = _trainer(
            PlainL1Loss(), _tat_batches(1), task_contrast=SupervisedContrastiveLoss(), task_contrast_weight=0.1
        )
        with self.assertRaisesRegex(ValueError, "needs a TAT network"):
            trainer.run()

    @parameterized.expand([("negative", -0.1, SupervisedContrastiveLoss()), ("no loss", 0.1, None)])
    def test_bad_settings(self, _, weight, contrast):
        with self.assertRaisesRegex(ValueError, "task_contrast"):
            _trainer(PlainL1Loss(), _tat_batches(1), net=_tat(), task_contrast=contrast, task_contrast_weight=weight)


class TestGuards(unittest.TestCase):
    @parameterized.expand(
        [
            ("loss", FiniteLossGuard, IterationEvents.LOSS_COMPLETED),
            ("gradient", FiniteGradientGuard, IterationEvents.BACKWARD_COMPLETED),
        ]
    )
    def test_attached_to_its_event(self, _, guard_class, event):
        net = torch.nn.Conv2d(1, 1, 1)
        engine = SupervisedTrainer(
            torch.device("cpu"), 1, _batches(1), net, torch.optim.SGD(net.parameters(), lr=0.1), PlainL1Loss()
        )
        guard = guard_class()
        guard.attach(engine)
        self.assertTrue(engine.has_event_handler(guard, event))
        others = set(IterationEvents) - {event}
        self.assertFalse(any(engine.has_event_handler(guard, e) for e in others))

    @parameterized.expand(
        [
            ("with_files", True, "/data/CT_1_0.nii.gz, /data/PET_1_1.nii.gz"),
            ("no_metadata", False, "<no file metadata in the batch>"),
        ]
    )
    def test_nonfinite_loss_stops_before_backward(self, _, meta, files):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = _trainer(TaskAdaptiveBalancedLoss(), _batches(3, bad=1, meta=meta), net=net)
        backward = []
        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: backward.append(e.state.iteration))
        with self.assertRaises(FloatingPointError) as ctx:
            trainer.run()
        msg = str(ctx.exception)
        self.assertIn("non-finite training loss (nan) at iteration 2 (epoch 1)", msg)
        self.assertIn(files, msg)
        self.assertEqual(backward, [1])  # no backward pass on the NaN loss

    def test_nonfinite_loss_in_the_first_batch_leaves_no_gradient(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = _trainer(PlainL1Loss(), _batches(1, bad=0), net=net)
        with self.assertRaisesRegex(FloatingPointError, "iteration 1 .*/data/CT_0_0.nii.gz"):
            trainer.run()
        self.assertTrue(all(p.grad is None for p in net.parameters()))  # stopped before backward

    def test_nonfinite_gradient_stops_before_the_step(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = _trainer(PlainL1Loss(), _batches(3), net=net)
        before = [p.detach().clone() for p in net.parameters()]
        net.bias.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradient for one parameter
        with self.assertRaises(FloatingPointError) as ctx:
            trainer.run()
        msg = str(ctx.exception)
        self.assertRegex(
            msg, r"non-finite gradient of 'network.bias' \(finite loss [0-9.]+\) at iteration 1 \(epoch 1\)"
        )
        self.assertIn("/data/CT_0_0.nii.gz", msg)
        for a, b in zip(before, net.parameters()):  # the optimiser never stepped on the corrupt gradient
            self.assertTrue(torch.equal(a, b.detach()))

    def test_nonfinite_loss_parameter_gradient_is_named(self):
        loss = TaskAdaptiveBalancedLoss()
        trainer = _trainer(loss, _batches(1))
        loss.estimator.head.bias.register_hook(lambda g: g * float("inf"))
        with self.assertRaisesRegex(FloatingPointError, "'loss_function.estimator.head.bias'"):
            trainer.run()

    def test_accumulated_gradient_checked_at_the_batch_that_made_it(self):
        """With accumulation the check runs after every backward pass: a NaN gradient from batch 3 (not a step
        iteration with 2 accumulation steps) stops at iteration 3, naming batch 3's files, before any step on it."""
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = _trainer(PlainL1Loss(), _batches(4), net=net, accumulation_steps=2)
        net.bias.register_hook(lambda g: g * float("nan") if trainer.state.iteration == 3 else g)
        steps = []
        trainer.optimizer.register_step_post_hook(lambda *a: steps.append(trainer.state.iteration))
        with self.assertRaises(FloatingPointError) as ctx:
            trainer.run()
        self.assertIn("at iteration 3 (epoch 1)", str(ctx.exception))
        self.assertIn("/data/CT_2_0.nii.gz", str(ctx.exception))
        self.assertEqual(steps, [2])

    def test_finite_gradients_with_an_overflowing_norm_pass(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        trainer = _trainer(PlainL1Loss(), _batches(1), net=net)
        trainer.optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
        for p in net.parameters():  # each entry finite, the total norm beyond float32
            p.register_hook(lambda g: torch.full_like(g, 3e38))
        trainer.run()
        self.assertEqual(trainer.state.iteration, 1)

    def test_gradient_guard_on_a_plain_monai_trainer_names_a_partly_nan_gradient(self):
        """The guard works on MONAI's own trainer (a loss without a ``loss`` attribute) and finds a gradient with
        one NaN entry among finite ones."""
        net = torch.nn.Linear(2, 2)
        engine = mock.Mock(amp=False, scaler=None, network=net, loss_function=torch.nn.L1Loss())
        engine.optimizer.param_groups = [{"params": list(net.parameters())}]
        net.weight.grad = torch.tensor([[1.0, float("nan")], [0.5, 0.25]])
        net.bias.grad = torch.ones(2)
        engine.state.batch, engine.state.iteration, engine.state.epoch = {}, 3, 1
        engine.state.output = {Keys.LOSS: torch.tensor(0.5)}
        with self.assertRaisesRegex(FloatingPointError, "non-finite gradient of 'network.weight'.*iteration 3"):
            FiniteGradientGuard()(engine)

    def test_gradient_guard_leaves_amp_to_the_scaler(self):
        engine = mock.Mock(amp=True, scaler=object())
        engine.optimizer.param_groups = [{"params": [torch.nn.Parameter(torch.ones(1))]}]
        engine.optimizer.param_groups[0]["params"][0].grad = torch.full((1,), float("nan"))
        FiniteGradientGuard()(engine)  # the scaler skips this step: no error
        engine.amp = False
        engine.network = torch.nn.Linear(1, 1)
        engine.state.batch, engine.state.iteration, engine.state.epoch = {}, 5, 2
        engine.state.output = {Keys.LOSS: torch.tensor(0.5)}
        with self.assertRaisesRegex(
            FloatingPointError, "unnamed parameter of shape \\(1,\\).*iteration 5 \\(epoch 2\\)"
        ):
            FiniteGradientGuard()(engine)


if __name__ == "__main__":
    unittest.main()
