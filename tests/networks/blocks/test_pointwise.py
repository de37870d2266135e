"""The matrix product of the 1x1 convs and folded attention: oneDNN's where preferred, F.linear otherwise, same
values; the fallbacks (graph, autocast, other dtypes, tracing) keep F.linear."""

from __future__ import annotations

import unittest
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks import TAT
from custom.networks.blocks import ChannelAttention, GatedFeedForward, feed_forward, pointwise
from custom.networks.blocks.attention import _add_product, _product
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from custom.networks.blocks.pointwise import linear, prefers_onednn
from parameterized import parameterized

HAS_ONEDNN = pointwise._LINEAR is not None


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)


def _residual_case(module: torch.nn.Module, shape: tuple) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Random weights for ``module`` and a layer norm before it, a channels-last input of ``shape`` and
    ``x + module(norm(x))`` with a graph: ``(norm, x, expected)``."""
    norm = ChannelLayerNorm(shape[1])
    _randomise(module, 3)
    _randomise(norm, 4)
    torch.manual_seed(5)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    return norm, x, (x + module(norm(x))).detach()


def _forced(fn: Callable[[], torch.Tensor], prefer: bool = True) -> tuple[torch.Tensor, int]:
    """``fn()`` without a graph with oneDNN's product forced on (or off): its result and oneDNN's call count."""
    patches = _onednn(prefer)
    with torch.no_grad(), patches[0], patches[1] as spy:
        return fn(), spy.call_count


def _onednn(prefer: bool = True):
    """Patches forcing the choice of product, and a spy on oneDNN's op (entered together)."""
    return mock.patch.object(pointwise, "PREFER_ONEDNN", prefer), mock.patch.object(
        pointwise, "_LINEAR", wraps=pointwise._LINEAR
    )


class TestChoice(unittest.TestCase):
    @unittest.skipUnless(HAS_ONEDNN and torch.backends.mkl.is_available(), "needs oneDNN and MKL")
    def test_onednn_only_where_mkl_runs_generic_code(self):
        self.assertTrue(prefers_onednn("AuthenticAMD"))
        self.assertTrue(prefers_onednn("HygonGenuine"))
        self.assertFalse(prefers_onednn("GenuineIntel"))
        self.assertFalse(prefers_onednn(""))  # unknown vendor: F.linear
        with mock.patch.object(torch.backends.mkl, "is_available", return_value=False):
            self.assertFalse(prefers_onednn("AuthenticAMD"))  # no MKL (ARM, ...): F.linear
        with mock.patch.object(pointwise, "_LINEAR", None):
            self.assertFalse(prefers_onednn("AuthenticAMD"))
        with mock.patch.object(pointwise, "cpu_field", return_value="GenuineIntel") as field:
            self.assertFalse(prefers_onednn())
        field.assert_called_once_with("vendor_id")


@unittest.skipUnless(HAS_ONEDNN, "this torch has no oneDNN product")
class TestLinear(unittest.TestCase):
    def test_equals_f_linear_for_any_strides(self):
        torch.manual_seed(0)
        big_w = torch.randn(7, 12)
        cases = [
            (torch.randn(30, 5), torch.randn(7, 5), torch.randn(7)),
            (torch.randn(30, 10)[:, 2:7], big_w[:, 3:8], None),  # strided x and a column block of a weight
            (torch.randn(5, 30).t(), torch.randn(5, 7).t(), torch.randn(7)),  # transposed operands
            (torch.randn(2, 3, 4, 5), torch.randn(7, 5), None),  # leading dims
            (torch.randn(0, 5), torch.randn(7, 5), None),
            (torch.randn(30, 5), torch.randn(7, 5), torch.randn(14)[::2]),  # a strided bias
            (torch.randn(30, 5), torch.randn(7, 5), torch.randn(1).expand(7)),  # an expanded one
        ]
        for x, w, b in cases:
            patches = _onednn()
            with torch.no_grad(), patches[0], patches[1] as spy:
                got = linear(x, w, b)
            spy.assert_called_once()
            operands = spy.call_args.args[:3]  # dense: other strides may take oneDNN's reference kernel
            self.assertTrue(all(t is None or t.is_contiguous() for t in operands))
            torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-6, atol=1e-6)
            self.assertEqual(got.shape, (*x.shape[:-1], 7))

    def test_broadcast_bias_keeps_f_linear(self):
        x, w = torch.randn(30, 5), torch.randn(7, 5)
        for b in (torch.tensor(2.0), torch.randn(1)):  # F.linear broadcasts these, oneDNN would not
            patches = _onednn()
            with torch.no_grad(), patches[0], patches[1] as spy:
                got = linear(x, w, b)
            spy.assert_not_called()
            torch.testing.assert_close(got, F.linear(x, w, b), rtol=0, atol=0)

    def test_plain_linear_where_onednn_does_not_apply(self):
        torch.manual_seed(1)
        x, w = torch.randn(6, 5), torch.randn(4, 5)
        for prefer, grad in ((False, False), (True, True)):
            patches = _onednn(prefer)
            with torch.set_grad_enabled(grad), patches[0], patches[1] as spy:
                torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=0, atol=0)
            spy.assert_not_called()
        patches = _onednn()
        with torch.no_grad(), patches[0], patches[1] as spy:
            self.assertEqual(linear(x.double(), w.double()).dtype, torch.float64)
            self.assertTrue(pointwise.uses_onednn(x, w, torch.zeros(4)))
            self.assertFalse(pointwise.uses_onednn(x, w, torch.zeros(4, dtype=torch.float64)))
            self.assertFalse(pointwise.uses_onednn(x, w.double(), None))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                self.assertEqual(linear(x, w).dtype, torch.bfloat16)  # autocast's product
            with torch.backends.mkldnn.flags(enabled=False):
                linear(x, w)
        spy.assert_not_called()
        xg = x.clone().requires_grad_()
        patches = _onednn()
        with patches[0], patches[1] as spy:
            linear(xg, w).sum().backward()  # gradients need the plain op
        spy.assert_not_called()
        patches = _onednn()
        with torch.no_grad(), patches[0], patches[1] as spy:
            traced = torch.jit.trace(lambda a: linear(a, w), (x,), check_trace=False)
            for name, namespace in (("is_exporting", torch.compiler), ("is_in_onnx_export", torch.onnx)):
                with mock.patch.object(namespace, name, return_value=True):
                    linear(x, w)
        spy.assert_not_called()
        self.assertIn("aten::linear", str(traced.graph))
        self.assertNotIn("mkldnn", str(traced.graph))

    def test_failing_op_warns_and_falls_back(self):
        x, w = torch.randn(6, 5), torch.randn(4, 5)
        with torch.no_grad(), mock.patch.object(pointwise, "PREFER_ONEDNN", True):
            with mock.patch.object(pointwise, "_LINEAR", side_effect=RuntimeError("no primitive")):
                with self.assertWarnsRegex(UserWarning, "no primitive"):
                    got = linear(x, w)
        torch.testing.assert_close(got, F.linear(x, w), rtol=0, atol=0)


@unittest.skipUnless(HAS_ONEDNN, "this torch has no oneDNN product")
class TestNetworkPaths(unittest.TestCase):
    """With oneDNN's product forced on, the no-graph paths that use it equal the graph path."""

    @parameterized.expand(
        [
            ("global", 1, True, 3),  # one matrix for the sample
            ("global", 2, False, 4),  # a matrix per sample
            ("published", 1, True, 3),  # column sub-tiles: one matrix for a tile's rows
            ("published", 2, False, 5),
        ]
    )
    def test_attention_strips(self, mode, batch, bias, rows):
        a = ChannelAttention(12, 3, bias=bias, train_size=8, window_mode=mode)
        norm, x, expected = _residual_case(a, (batch, 12, 20, 17))
        got, calls = _forced(lambda: a.residual_in_strips(x, norm, None, rows))
        self.assertGreater(calls, 0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @parameterized.expand([(1,), (3,)])
    def test_attention_whole_map(self, batch):
        a = ChannelAttention(12, 3, bias=True, train_size=8)
        _randomise(a, 6)
        torch.manual_seed(7)
        x = torch.randn(batch, 12, 20, 17).contiguous(memory_format=torch.channels_last)
        expected = a(x).detach()
        got, calls = _forced(lambda: a(x))
        self.assertGreater(calls, 0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    def test_products_per_sample(self):
        torch.manual_seed(8)
        v, m = torch.randn(3, 10, 6), torch.randn(3, 4, 6)  # (N, P, C), (N, C_out, C)
        residual, bias = torch.randn(3, 10, 4), torch.randn(4)
        patches = _onednn()
        with torch.no_grad(), patches[0], patches[1] as spy:
            torch.testing.assert_close(_product(v, m), v @ m.transpose(-2, -1), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(_product(v[:1], m[:1]), v[:1] @ m[:1].transpose(-2, -1), rtol=1e-6, atol=1e-6)
            for mt in (m.transpose(-2, -1), m[1].t().expand(3, -1, -1)):  # per sample, one shared by all rows
                out = torch.empty_like(residual)
                _add_product(residual, v, mt, bias, out)
                torch.testing.assert_close(out, residual + v @ mt + bias, rtol=1e-6, atol=1e-6)
            inplace = v[..., :4].clone()  # out may be v itself
            _add_product(residual, inplace, m[:, :, :4].transpose(-2, -1), None, inplace)
            torch.testing.assert_close(inplace, residual + v[..., :4] @ m[:, :, :4].transpose(-2, -1))
        self.assertEqual(spy.call_count, 3 + 1 + 3 + 1 + 3)

    @parameterized.expand([(1, 32), (2, 5)])
    def test_feed_forward_strips(self, batch, group):
        f = GatedFeedForward(8, 2.66, bias=True)
        norm, y, expected = _residual_case(f, (batch, 8, 13, 11))
        with mock.patch.object(feed_forward, "GROUP_CHANNELS", group):
            got, calls = _forced(lambda: f.residual_in_strips_(y.clone(), norm, None, 4))
        self.assertGreater(calls, 0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    def test_network(self):
        torch.manual_seed(12)
        net = TAT(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, tren_hidden_channels=8, train_patch_size=16)
        x = torch.rand(2, 1, 40, 48)
        expected = net(x).detach()
        with mock.patch.object(feed_forward, "STRIP_BYTES", 48 * 4 * 24 * 6):  # row strips in the level-1 blocks
            got, calls = _forced(lambda: net(x))
        self.assertGreater(calls, 0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        plain, calls = _forced(lambda: net(x), prefer=False)
        self.assertEqual(calls, 0)
        torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
