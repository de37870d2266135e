"""The network takes MONAI MetaTensors (what the bundle's readers and evaluators pass) as it takes plain tensors."""

from __future__ import annotations

import unittest

import torch
from monai.data import MetaTensor
from parameterized import parameterized

from tests.utils import tiny_net

# published at 96 x 80 (training patch 32): several overlapping windows per level; global: one map; both with and without a graph
CASES = [[mode, grad] for mode in ("published", "global", "blended") for grad in (False, True)]


class TestMetaTensorInput(unittest.TestCase):
    @parameterized.expand(CASES)
    def test_metatensor_equals_plain_tensor(self, mode: str, grad: bool) -> None:
        net = tiny_net(window_mode=mode)
        x = torch.rand(2, 1, 96, 80, generator=torch.Generator().manual_seed(1))
        meta = MetaTensor(x.clone(), meta={"filename_or_obj": "slice.nii.gz"})
        with torch.set_grad_enabled(grad):
            expected = net(x)
            out = net(meta)
        self.assertEqual(tuple(out.shape), (2, 1, 96, 80))
        torch.testing.assert_close(torch.as_tensor(out), expected, rtol=0, atol=1e-6)


if __name__ == "__main__":
    unittest.main()
