from __future__ import annotations

import math
import unittest

import torch
from custom.losses import PlainL1Loss, TaskAdaptiveBalancedLoss, UncertaintyEstimator
from parameterized import parameterized


class TestTaskAdaptiveBalancedLoss(unittest.TestCase):
    def setUp(self) -> None:
        torch.manual_seed(0)

    def test_initial_uncertainty_is_one(self):
        loss_fn = TaskAdaptiveBalancedLoss(return_details=True)
        x, y_hat, y = torch.rand(3, 5, 1, 8, 8).unbind(0)
        _, details = loss_fn(x, y_hat, y)
        torch.testing.assert_close(details["sigma"], torch.ones(5))
        torch.testing.assert_close(details["weight"], torch.full((5,), 0.5 / (1 + 1e-8)))

    def test_hand_computation(self):
        loss_fn = TaskAdaptiveBalancedLoss()
        with torch.no_grad():  # make sigma depend on the stats: a known affine head on a known estimator
            loss_fn.estimator.head.weight.fill_(0.1)
        x = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[0.2, 0.2], [0.2, 0.2]]]])
        y = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]], [[[0.3, 0.1], [0.2, 0.4]]]])
        y_hat = torch.tensor([[[[0.1, 0.5], [0.5, 1.0]]], [[[0.3, 0.2], [0.2, 0.3]]]])
        loss = loss_fn(x, y_hat, y)

        expected = 0.0
        for b in range(2):  # deliberately a per-sample loop: the reference the vectorised module must match
            xs, ys, ps = x[b].flatten().tolist(), y[b].flatten().tolist(), y_hat[b].flatten().tolist()
            l_in = sum(abs(i - j) for i, j in zip(xs, ys)) / 4
            l_change = sum(abs(i - j) for i, j in zip(xs, ps)) / 4
            l_rest = sum(abs(i - j) for i, j in zip(ps, ys)) / 4
            with torch.no_grad():
                s = float(loss_fn.estimator(torch.tensor([[l_in, l_change, l_rest]]))[0])
            expected += 0.5 * l_rest / (s * s + 1e-8) + 0.5 * math.log(1 + s * s)
        expected /= 2
        self.assertAlmostEqual(float(loss), expected, places=6)

    def test_random_estimator_by_hand(self):
        """The estimator and the stats written out from the formula, with random weights and random images."""
        loss_fn = TaskAdaptiveBalancedLoss(return_details=True)
        with torch.no_grad():
            for p in loss_fn.estimator.parameters():
                p.normal_(0, 0.5)
        x, y_hat, y = torch.rand(3, 4, 1, 6, 5).unbind(0)
        loss, details = loss_fn(x, y_hat, y)
        e = loss_fn.estimator
        stats = torch.stack(
            [(x - y).abs().mean((1, 2, 3)), (x - y_hat).abs().mean((1, 2, 3)), (y_hat - y).abs().mean((1, 2, 3))], 1
        )
        h = stats @ e.embed.weight.T + e.embed.bias  # linear 3 -> 16
        z = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
        z = z * e.norm.weight + e.norm.bias
        h = h + torch.nn.functional.gelu(z @ e.fc1.weight.T + e.fc1.bias) @ e.fc2.weight.T + e.fc2.bias  # residual
        sigma = (h @ e.head.weight.T + e.head.bias).squeeze(-1)
        torch.testing.assert_close(details["sigma"], sigma)
        expected = (0.5 * stats[:, 2] / (sigma**2 + 1e-8) + 0.5 * torch.log(1 + sigma**2)).mean()
        torch.testing.assert_close(loss, expected)

    def test_initial_value_formula(self):
        loss_fn = TaskAdaptiveBalancedLoss()
        x, y_hat, y = torch.rand(3, 4, 1, 6, 6).unbind(0)
        l_rest = (y_hat - y).abs().mean(dim=(1, 2, 3))
        expected = (0.5 * l_rest / (1 + 1e-8) + 0.5 * math.log(2)).mean()
        torch.testing.assert_close(loss_fn(x, y_hat, y), expected)

    def test_estimator_input_detached_and_gradients(self):
        loss_fn = TaskAdaptiveBalancedLoss()
        x, y = torch.rand(2, 3, 1, 8, 8).unbind(0)
        pred = torch.rand(3, 1, 8, 8, requires_grad=True)
        loss_fn(x, pred, y).backward()
        # with sigma = 1 the gradient wrt pred is exactly that of 0.5 * L1 / 1 (the estimator path is detached)
        expected = 0.5 * torch.sign(pred.detach() - y) / (8 * 8) / 3
        torch.testing.assert_close(pred.grad, expected / (1 + 1e-8))
        self.assertIsNotNone(loss_fn.estimator.head.bias.grad)
        # d/ds [0.5 l / s^2 + 0.5 log(1+s^2)] at s=1 = -l + 0.5
        l_rest = (pred.detach() - y).abs().mean(dim=(1, 2, 3))
        torch.testing.assert_close(
            loss_fn.estimator.head.bias.grad, (-l_rest + 0.5).mean().reshape(1), atol=1e-6, rtol=1e-5
        )

    def test_no_gradient_through_the_estimator_input(self):
        """With a non-zero head weight s_b depends on the stats; the network must still only get
        d/d y_hat [0.5 l_rest / (s_b^2 + eps)] with s_b held constant (the stats are detached)."""
        loss_fn = TaskAdaptiveBalancedLoss(return_details=True)
        with torch.no_grad():
            for p in loss_fn.estimator.parameters():
                p.normal_(0, 0.5)
        x, y = torch.rand(2, 3, 1, 8, 8).unbind(0)
        pred = torch.rand(3, 1, 8, 8, requires_grad=True)
        loss, details = loss_fn(x, pred, y)
        loss.backward()
        self.assertTrue(bool((details["sigma"] - details["sigma"].mean()).abs().max() > 1e-3))  # s_b varies with b
        expected = details["weight"].reshape(3, 1, 1, 1) * torch.sign(pred.detach() - y) / (8 * 8) / 3
        torch.testing.assert_close(pred.grad, expected)
        # the estimator itself learns through the loss formula
        self.assertGreater(float(loss_fn.estimator.embed.weight.grad.abs().sum()), 0.0)
        # and a graph through the stats would change the network's gradient: compare with the undetached variant
        stats = torch.stack(
            [
                (x - y).abs().mean(dim=(1, 2, 3)),
                (x - pred).abs().mean(dim=(1, 2, 3)),
                (pred - y).abs().mean(dim=(1, 2, 3)),
            ],
            1,
        )
        s = loss_fn.estimator(stats)
        l_rest = (pred - y).abs().mean(dim=(1, 2, 3))
        (undetached,) = torch.autograd.grad((0.5 * l_rest / (s**2 + 1e-8) + 0.5 * torch.log1p(s**2)).mean(), pred)
        self.assertGreater(float((undetached - pred.grad).abs().max()), 1e-4)

    def test_batch_independence(self):
        """Vectorised: each sample's contribution does not depend on the others."""
        loss_fn = TaskAdaptiveBalancedLoss(return_details=True)
        with torch.no_grad():
            loss_fn.estimator.head.weight.normal_()
        x, y_hat, y = torch.rand(3, 4, 1, 8, 8).unbind(0)
        _, full = loss_fn(x, y_hat, y)
        _, single = loss_fn(x[2:3], y_hat[2:3], y[2:3])
        torch.testing.assert_close(full["sigma"][2:3], single["sigma"])

    @parameterized.expand([[(2, 1, 8, 8), (2, 1, 8, 4)], [(8,), (8,)]])
    def test_shape_errors(self, shape_a, shape_b):
        with self.assertRaises(ValueError):
            TaskAdaptiveBalancedLoss()(torch.rand(shape_a), torch.rand(shape_a), torch.rand(shape_b))

    def test_3d_input(self):
        loss = TaskAdaptiveBalancedLoss()(*torch.rand(3, 2, 1, 4, 4, 4).unbind(0))
        self.assertEqual(loss.shape, ())

    def test_published_estimator_layout(self):
        """Linear 3 -> 16, residual block 16 -> 256 -> 16, linear 16 -> 1 (the published checkpoint's shapes)."""
        for estimator in (UncertaintyEstimator(), TaskAdaptiveBalancedLoss().estimator):
            shapes = {k: tuple(v.shape) for k, v in estimator.state_dict().items()}
            self.assertEqual(
                shapes,
                {
                    "embed.weight": (16, 3),
                    "embed.bias": (16,),
                    "norm.weight": (16,),
                    "norm.bias": (16,),
                    "fc1.weight": (256, 16),
                    "fc1.bias": (256,),
                    "fc2.weight": (16, 256),
                    "fc2.bias": (16,),
                    "head.weight": (1, 16),
                    "head.bias": (1,),
                },
            )
        small = TaskAdaptiveBalancedLoss(hidden=4, mlp_dim=6).estimator  # the widths reach the estimator
        self.assertEqual(tuple(small.fc1.weight.shape), (6, 4))
        self.assertEqual(tuple(small.head.weight.shape), (1, 4))

    def test_zero_uncertainty_gives_the_published_eps(self):
        """With s_b = 0 the weight is 0.5 / 1e-8 (the published eps) and the loss 0.5 * l_rest / 1e-8."""
        loss_fn = TaskAdaptiveBalancedLoss(return_details=True)
        with torch.no_grad():
            loss_fn.estimator.head.bias.zero_()  # head weight is 0: s_b = 0 for every sample
        x, y = torch.zeros(2, 2, 1, 2, 2).unbind(0)
        y_hat = torch.tensor([0.0, 0.25]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)  # l_rest = 0 and 0.25
        loss, details = loss_fn(x, y_hat, y)
        torch.testing.assert_close(details["weight"], torch.full((2,), 5e7))
        torch.testing.assert_close(loss, torch.tensor(0.5 * 0.125 / 1e-8))
        _, with_zero_eps = TaskAdaptiveBalancedLoss(eps=0.0, return_details=True)(x, y_hat, y)  # eps 0 is allowed
        torch.testing.assert_close(with_zero_eps["weight"], torch.full((2,), 0.5))

    def test_bad_sizes_are_named(self):
        with self.assertRaisesRegex(ValueError, "eps"):
            TaskAdaptiveBalancedLoss(eps=-1e-8)
        for name in ("in_features", "hidden", "mlp_dim"):
            with self.assertRaisesRegex(ValueError, name):
                UncertaintyEstimator(**{name: 0})
        tiny = UncertaintyEstimator(in_features=1, hidden=1, mlp_dim=1)  # 1 is a valid width
        self.assertEqual(tuple(tiny(torch.rand(3, 1)).shape), (3,))

    def test_batch_of_flat_samples(self):
        """(B, N) inputs are B samples of N values: the same loss as (B, 1, N)."""
        x, y_hat, y = torch.rand(3, 4, 6).unbind(0)
        loss_fn = TaskAdaptiveBalancedLoss()
        torch.testing.assert_close(loss_fn(x, y_hat, y), loss_fn(x[:, None], y_hat[:, None], y[:, None]))


class TestPlainL1Loss(unittest.TestCase):
    def test_l1(self):
        x, y_hat, y = torch.rand(3, 4, 1, 6, 6).unbind(0)
        torch.testing.assert_close(PlainL1Loss()(x, y_hat, y), (y_hat - y).abs().mean())
        loss, details = PlainL1Loss(return_details=True)(x, y_hat, y)
        torch.testing.assert_close(details["weight"], torch.ones(4))
        self.assertEqual(list(PlainL1Loss().parameters()), [])

    def test_shapes(self):
        x = torch.rand(4, 6)
        torch.testing.assert_close(PlainL1Loss()(x, x, x + 0.5), torch.tensor(0.5))  # (B, N) is a batch
        for a, b in (((2, 1, 8, 8), (2, 1, 8, 4)), ((2, 8), (2, 8, 1)), ((8,), (8,))):
            with self.assertRaisesRegex(ValueError, "shape"):
                PlainL1Loss()(torch.rand(a), torch.rand(a), torch.rand(b))


if __name__ == "__main__":
    unittest.main()
