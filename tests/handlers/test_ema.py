from __future__ import annotations

import io
import unittest

import torch
from custom.handlers import ModelEMA, ema_decay
from ignite.engine import Engine
from parameterized import parameterized


class TestEMA(unittest.TestCase):
    @parameterized.expand(
        [
            ["none", 0, 0.999],
            ["torch_ema", 0, 0.1],
            ["torch_ema", 10**6, 0.999],
            ["power", 0, 0.0],
            ["power", 31622, 0.999],
        ]
    )
    def test_decay(self, warmup, n, expected):
        self.assertAlmostEqual(ema_decay(n, 0.999, warmup), expected, places=5)
        self.assertLess(ema_decay(1000, 0.999, "power"), 0.999)

    def test_power_warm_up_formula_and_its_step_scale(self):
        for n in (1, 7, 1000):
            self.assertAlmostEqual(ema_decay(n, 0.999), 1.0 - (1.0 + n) ** (-2.0 / 3.0), places=12)
            self.assertAlmostEqual(ema_decay(n, 0.999, inv_gamma=4.0), 1.0 - (1.0 + n / 4.0) ** (-2.0 / 3.0), places=12)
        ema = ModelEMA(torch.nn.Linear(1, 1), power=0.5, inv_gamma=4.0)
        ema.num_updates = 12
        self.assertAlmostEqual(ema.current_decay(), 1.0 - (1.0 + 12 / 4.0) ** -0.5, places=12)

    def test_zero_decay_copies_the_weights(self):
        net = torch.nn.Linear(2, 2)
        ema = ModelEMA(net, decay=0.0, warmup="none")
        with torch.no_grad():
            net.weight.add_(1.0)
        ema.update()
        torch.testing.assert_close(ema.ema_model.weight, net.weight.detach(), rtol=0, atol=0)

    def test_update_formula_and_state(self):
        net = torch.nn.Linear(2, 2)
        ema = ModelEMA(net, decay=0.9, warmup="none")
        before = [p.detach().clone() for p in ema.ema_model.parameters()]
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
        engine = Engine(lambda e, b: None)
        ema.attach(engine)
        engine.run([0], max_epochs=1)
        for b, e, p in zip(before, ema.ema_model.parameters(), net.parameters()):
            torch.testing.assert_close(e, 0.9 * b + 0.1 * p.detach())
        self.assertFalse(any(p.requires_grad for p in ema.ema_model.parameters()))
        buf = io.BytesIO()
        torch.save({"ema": ema.state_dict()}, buf)
        buf.seek(0)
        other = ModelEMA(torch.nn.Linear(2, 2))
        other.load_state_dict(torch.load(buf, weights_only=True)["ema"])
        self.assertEqual(other.num_updates, 1)
        for a, b in zip(other.ema_model.parameters(), ema.ema_model.parameters()):
            torch.testing.assert_close(a, b)

    def test_load_state_dict_is_strict_unless_told(self):
        ema = ModelEMA(torch.nn.Linear(2, 2))
        state = ema.state_dict()
        del state["ema_model"]["bias"]  # e.g. weights of another architecture
        with self.assertRaisesRegex(RuntimeError, "Missing key.*bias"):
            ModelEMA(torch.nn.Linear(2, 2)).load_state_dict(state)
        other = ModelEMA(torch.nn.Linear(2, 2))
        other.load_state_dict(state, strict=False)
        torch.testing.assert_close(other.ema_model.weight, ema.ema_model.weight)

    @parameterized.expand([["from_start", 0, 6], ["across_the_cap", 31619, 6]])
    def test_update_applies_the_warm_up_step_by_step(self, _, start, steps):
        """Each ``update`` uses d_k = min(0.999, 1 - (1 + k)^(-2/3)), k = updates done before it (the published
        ema-pytorch rule), on the parameters, and copies the buffers."""
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).double()
        ema = ModelEMA(net)  # defaults: decay 0.999, power warm-up
        with torch.no_grad():
            for p in ema.ema_model.parameters():
                p.normal_()  # an EMA state unlike the network's
        ema.num_updates = start
        expected = [p.detach().clone() for p in ema.ema_model.parameters()]
        decays = []
        for k in range(start, start + steps):
            with torch.no_grad():
                for p in net.parameters():
                    p.normal_()
                net[1].running_mean.normal_()
            d = min(0.999, 1.0 - (1.0 + k) ** (-2.0 / 3.0))
            decays.append(d)
            self.assertAlmostEqual(ema.current_decay(), d, places=12)
            ema.update()
            expected = [d * e + (1.0 - d) * p.detach() for e, p in zip(expected, net.parameters())]
            for e, got in zip(expected, ema.ema_model.parameters()):
                torch.testing.assert_close(got, e, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ema.ema_model[1].running_mean, net[1].running_mean, rtol=0, atol=0)
        self.assertEqual(ema.num_updates, start + steps)
        if start == 0:
            self.assertEqual(decays[0], 0.0)  # the first update copies the weights
            self.assertTrue(all(a < b for a, b in zip(decays, decays[1:])))
        else:
            self.assertLess(decays[0], 0.999)  # k = 31619 is still warming up ...
            self.assertEqual(decays[-1], 0.999)  # ... and the cap holds afterwards

    def test_engine_updates_once_per_iteration_or_every_n(self):
        for update_every, expected in ((1, 5), (2, 2)):
            net = torch.nn.Linear(2, 2)
            ema = ModelEMA(net, update_every=update_every)
            engine = Engine(lambda e, b: None)
            ema.attach(engine)
            ema.attach(engine)  # attaching twice registers one handler
            engine.run(range(5), max_epochs=1)
            self.assertEqual(ema.num_updates, expected)

    def test_errors(self):
        with self.assertRaises(ValueError):
            ModelEMA(torch.nn.Linear(1, 1), decay=1.0)
        with self.assertRaises(ValueError):
            ModelEMA(torch.nn.Linear(1, 1), warmup="cosine")
        with self.assertRaises(ValueError):
            ModelEMA(torch.nn.Linear(1, 1), update_every=0)
        with self.assertRaises(ValueError):
            ema_decay(0, 0.999, "cosine")


if __name__ == "__main__":
    unittest.main()
