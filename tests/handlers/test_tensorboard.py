"""Training scalars for TensorBoard (custom.handlers.tensorboard)."""

from __future__ import annotations

import unittest

import torch
from custom.handlers import TrainingScalarWriter, per_task_mean
from ignite.engine import Engine


class _Writer:
    """Records ``add_scalar`` calls as TensorBoard's ``SummaryWriter`` receives them."""

    def __init__(self) -> None:
        self.scalars: dict[str, tuple[float, int]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag] = (value, step)


def _engine(output: object, iteration: int = 7) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.iteration, engine.state.output = iteration, output
    return engine


class TestPerTaskMean(unittest.TestCase):
    def test_decollated_items(self):
        items = [
            {"loss_weight": torch.tensor(1.0), "modality": "CT"},
            {"loss_weight": torch.tensor([2.0, 4.0]), "modality": "MRI"},  # a per-sample map: its mean
            {"loss_weight": 3.0, "modality": "ct"},
            {"loss_weight": 0.5, "modality": "PET"},
            {"modality": "PET"},  # no weight: skipped
            {"loss_weight": 9.0},  # no task: skipped
        ]
        self.assertEqual(per_task_mean(items, "loss_weight"), {"ct": 2.0, "mri": 3.0, "pet": 0.5})
        self.assertEqual(list(per_task_mean(items, "loss_weight")), ["ct", "mri", "pet"])
        self.assertEqual(per_task_mean(items, "loss_weight", task_key="task"), {})

    def test_collated_dict(self):
        out = {"loss_weight": torch.tensor([[1.0], [3.0], [6.0]]), "modality": ["CT", "CT", "PET"]}
        self.assertEqual(per_task_mean(out, "loss_weight"), {"ct": 2.0, "pet": 6.0})
        self.assertEqual(per_task_mean({"modality": ["CT"]}, "loss_weight"), {})
        self.assertEqual(per_task_mean({"loss_weight": torch.ones(1)}, "loss_weight"), {})

    def test_nothing(self):
        self.assertEqual(per_task_mean(None, "loss_weight"), {})
        self.assertEqual(per_task_mean([], "loss_weight"), {})


class TestTrainingScalarWriter(unittest.TestCase):
    def setUp(self) -> None:
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
        self.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 9.0})

    def test_loss_contrast_lr_and_weights_at_the_iteration(self):
        output = [
            {"loss": torch.tensor(0.5), "task_contrast": torch.tensor(0.125), "loss_weight": 2.0, "modality": "CT"},
            {"loss": torch.tensor(0.5), "task_contrast": torch.tensor(0.125), "loss_weight": 4.0, "modality": "PET"},
        ]
        writer = _Writer()
        TrainingScalarWriter(self.optimizer)(_engine(output, iteration=7), writer)
        self.assertEqual(
            writer.scalars,
            {
                "train_loss": (0.5, 7),
                "task_contrast": (0.125, 7),
                "lr": (0.25, 7),  # the first parameter group
                "loss_weight/ct": (2.0, 7),
                "loss_weight/pet": (4.0, 7),
            },
        )

    def test_without_contrast_and_other_keys(self):
        output = [{"loss": torch.tensor(1.5), "w": 3.0, "task": "MRI", "loss_weight": 8.0, "modality": "CT"}]
        writer = _Writer()
        TrainingScalarWriter(self.optimizer, task_key="task", weight_key="w")(_engine(output, 3), writer)
        self.assertEqual(writer.scalars, {"train_loss": (1.5, 3), "lr": (0.25, 3), "loss_weight/mri": (3.0, 3)})

    def test_collated_or_empty_output(self):
        writer = _Writer()
        collated = {"loss": torch.tensor(2.0), "loss_weight": torch.tensor([1.0, 2.0]), "modality": ["PET", "PET"]}
        TrainingScalarWriter(self.optimizer)(_engine(collated, 4), writer)
        self.assertEqual(writer.scalars, {"train_loss": (2.0, 4), "lr": (0.25, 4), "loss_weight/pet": (1.5, 4)})
        for empty in ([], None):
            writer = _Writer()
            TrainingScalarWriter(self.optimizer)(_engine(empty, 5), writer)
            self.assertEqual(writer.scalars, {"lr": (0.25, 5)})


if __name__ == "__main__":
    unittest.main()
