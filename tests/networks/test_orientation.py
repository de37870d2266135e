"""Slice orientation at the network boundary: the bundle's readers give MONAI's (column, row) order, the published
code trains and tests on SimpleITK's (row, column) arrays; ``TAT(transpose_hw=True)`` makes the layers see the latter.
"""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import numpy as np
import SimpleITK
import torch
from custom.data.readers import load_image
from custom.networks import TAT

from tests.utils import TINY as UTILS_TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {k: v for k, v in UTILS_TINY.items() if k != "transpose_hw"}  # the tests' tiny widths, TAT's own orientation


def _net(transpose_hw: bool) -> TAT:
    torch.manual_seed(0)
    net = TAT(**TINY, transpose_hw=transpose_hw).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".gate"):
                p.normal_(0.0, 0.5)  # the task kernels take part
    return net


class TestTransposeHW(unittest.TestCase):
    def test_layers_see_the_transposed_slice(self):
        x = torch.rand(2, 1, 40, 56)  # not square: a swapped axis changes the local windows too
        plain, flipped = _net(False), _net(True)
        flipped.load_state_dict(plain.state_dict())
        with torch.no_grad():
            out = flipped(x)
            expected = plain(x.transpose(-1, -2)).transpose(-1, -2)
            untransposed = plain(x)
        self.assertEqual(tuple(out.shape), tuple(x.shape))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        self.assertGreater(float((out - untransposed).abs().max()), 1e-4)  # the network is not transpose-equivariant

    def test_published_array_reaches_the_layers(self):
        # a slice written as the published code writes it (SimpleITK, 2D float array in (row, column) order) and
        # read through the bundle's reader arrives transposed; the flag hands the layers the published array
        rows, cols = 24, 40
        published = np.random.default_rng(0).random((rows, cols), dtype=np.float32)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "slice.nii")
            SimpleITK.WriteImage(SimpleITK.GetImageFromArray(published), path)
            read = np.asarray(load_image(path)).squeeze()
        np.testing.assert_array_equal(read, published.T)
        plain, flipped = _net(False), _net(True)
        flipped.load_state_dict(plain.state_dict())
        with torch.no_grad():
            ours = flipped(torch.from_numpy(np.ascontiguousarray(read))[None, None])[0, 0].numpy()
            theirs = plain(torch.from_numpy(published)[None, None])[0, 0].numpy()
        np.testing.assert_allclose(ours, theirs.T, rtol=0, atol=1e-6)

    def test_bundle_configs_set_it(self):
        for name in ("train.json", "inference.json"):
            with open(os.path.join(REPO, "bundle", "configs", name)) as f:
                self.assertIs(json.load(f)["network_def"]["transpose_hw"], True, name)

    def test_default_is_off(self):
        self.assertFalse(TAT(**TINY).transpose_hw)  # the golden tests feed the published code's own arrays


if __name__ == "__main__":
    unittest.main()
