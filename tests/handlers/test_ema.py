from __future__ import annotations

import io
import unittest

import torch
from ignite.engine import Engine
from parameterized import parameterized

from custom.handlers import ModelEMA, ema_decay


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

    def test_errors(self):
        with self.assertRaises(ValueError):
            ModelEMA(torch.nn.Linear(1, 1), decay=1.0)
        with self.assertRaises(ValueError):
            ModelEMA(torch.nn.Linear(1, 1), warmup="cosine")


if __name__ == "__main__":
    unittest.main()
