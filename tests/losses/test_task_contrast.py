from __future__ import annotations

import math
import unittest

import torch
from custom.losses import SupervisedContrastiveLoss, task_labels
from parameterized import parameterized


def _reference(z: torch.Tensor, labels: list[int], temperature: float) -> float:
    """Khosla et al.'s L_out written out as loops over anchors, positives and the denominator's samples."""
    u = torch.nn.functional.normalize(z.double(), dim=1)
    terms = []
    for i in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(u[i] @ u[a]) / temperature) for a in range(len(labels)) if a != i)
        terms.append(-sum(float(u[i] @ u[p]) / temperature - math.log(denom) for p in positives) / len(positives))
    return sum(terms) / len(terms)


class TestSupervisedContrastiveLoss(unittest.TestCase):
    @parameterized.expand([("balanced", [0, 1, 2, 0, 1, 2], 0.1), ("unbalanced", [0, 0, 0, 1, 1, 2], 0.5)])
    def test_equals_the_written_out_formula(self, _, labels, temperature):
        z = torch.randn(len(labels), 5, generator=torch.Generator().manual_seed(1))
        got = float(SupervisedContrastiveLoss(temperature)(z, torch.tensor(labels)))
        self.assertAlmostEqual(got, _reference(z, labels, temperature), places=5)

    def test_separated_tasks_score_lower_than_mixed_ones(self):
        centres = torch.eye(3, 4) * 5
        z = centres[[0, 1, 2, 0, 1, 2]] + 0.1 * torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
        loss = SupervisedContrastiveLoss(0.1)
        right = float(loss(z, ["CT", "PET", "MRI", "CT", "PET", "MRI"]))
        wrong = float(loss(z, ["CT", "CT", "PET", "PET", "MRI", "MRI"]))
        self.assertLess(right, wrong)

    def test_scale_invariant(self):
        z = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
        loss = SupervisedContrastiveLoss()
        labels = ["CT", "PET", "MRI"] * 2
        self.assertAlmostEqual(float(loss(z, labels)), float(loss(7.0 * z, labels)), places=5)

    def test_no_positive_pair_gives_zero_with_a_gradient(self):
        z = torch.randn(3, 4, requires_grad=True)
        out = SupervisedContrastiveLoss()(z, ["CT", "PET", "MRI"])
        out.backward()
        self.assertEqual(float(out), 0.0)
        self.assertTrue(torch.equal(z.grad, torch.zeros_like(z)))

    def test_anchor_without_positive_is_left_out(self):
        z = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
        loss = SupervisedContrastiveLoss(0.2)
        got = float(loss(z, torch.tensor([0, 0, 1, 1, 2])))
        self.assertAlmostEqual(got, _reference(z, [0, 0, 1, 1, 2], 0.2), places=5)

    def test_gradient_pulls_a_task_together(self):
        z = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), requires_grad=True)
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        loss = SupervisedContrastiveLoss(0.1)
        opt = torch.optim.SGD([z], lr=0.1)
        start = float(loss(z, labels))
        for _ in range(50):
            opt.zero_grad()
            loss(z, labels).backward()
            opt.step()
        self.assertLess(float(loss(z, labels)), start)
        u = torch.nn.functional.normalize(z.detach(), dim=1)
        self.assertGreater(float(u[0] @ u[3]), float(u[0] @ u[1]))

    def test_float32_inside_autocast(self):
        z = torch.randn(6, 8, generator=torch.Generator().manual_seed(5))
        labels = ["CT", "PET", "MRI"] * 2
        ref = SupervisedContrastiveLoss()(z, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = SupervisedContrastiveLoss()(z, labels)
        self.assertEqual(got.dtype, torch.float32)
        torch.testing.assert_close(got, ref)

    def test_task_labels(self):
        self.assertEqual(task_labels(["PET", "ct", "CT", "MRI"]).tolist(), [2, 0, 0, 1])
        with self.assertRaisesRegex(ValueError, "empty"):
            task_labels([])

    def test_task_labels_are_long_on_the_given_device(self):
        given = task_labels(torch.tensor([[2, 0], [0, 1]], dtype=torch.int32))  # integer labels: flattened, int64
        self.assertEqual(given.dtype, torch.long)
        self.assertEqual(given.tolist(), [2, 0, 0, 1])
        named = task_labels(["CT", "PET", "ct"], device=torch.device("meta"))  # a device the data never is on
        self.assertEqual((named.device.type, named.dtype, tuple(named.shape)), ("meta", torch.long, (3,)))

    def test_default_temperature_is_the_papers(self):
        z = torch.randn(6, 5, generator=torch.Generator().manual_seed(6))
        labels = [0, 1, 2, 0, 0, 1]
        self.assertAlmostEqual(float(SupervisedContrastiveLoss()(z, labels)), _reference(z, labels, 0.1), places=5)

    @parameterized.expand([("zero", 0.0), ("negative", -1.0)])
    def test_bad_temperature(self, _, t):
        with self.assertRaisesRegex(ValueError, "temperature"):
            SupervisedContrastiveLoss(t)

    def test_bad_shapes(self):
        loss = SupervisedContrastiveLoss()
        with self.assertRaisesRegex(ValueError, r"\(B, D\)"):
            loss(torch.zeros(2, 3, 4), [0, 1])
        with self.assertRaisesRegex(ValueError, "3 task labels for 2"):
            loss(torch.zeros(2, 3), [0, 1, 1])


if __name__ == "__main__":
    unittest.main()
