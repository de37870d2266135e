from __future__ import annotations

import unittest
from unittest import mock

import custom.networks.tat as tat_module
import torch
from custom.networks import TAT, convert_reference_state_dict
from parameterized import parameterized

from tests.networks.golden import formula_weights, golden_image, golden_pair
from tests.utils import tiny_tat as tiny


class TestGolden(unittest.TestCase):
    """The published model, filled with the closed-form weights through the converter, on CPU float32."""

    @classmethod
    def setUpClass(cls):
        cls.model = TAT().eval()
        cls.model.load_state_dict(convert_reference_state_dict(formula_weights(), cls.model), strict=True)

    def test_parameter_count(self):
        self.assertEqual(sum(p.numel() for p in self.model.parameters()), 41_687_424)

    @parameterized.expand([(128,), (200,)])
    def test_matches_published_outputs(self, size):
        x, expected = golden_pair(size)
        torch.testing.assert_close(x, golden_image(size), rtol=0, atol=0)
        with torch.no_grad():
            out = self.model(x)
        diff = (out - expected).abs()
        # measured 2026-12-01 (CPU float32, 1 thread): max 3.7e-5, mean 6.3e-6 (128) / 6.4e-6 (200), the figures
        # the README quotes (4e-5, 7e-6); the bounds leave 5x / 3x room for other CPUs' float32 summation order
        self.assertLess(diff.max().item(), 2e-4)
        self.assertLess(diff.mean().item(), 2e-5)

    def test_generated_kernels_matter(self):
        # zeroing every gate must change the output: the generated kernels are exercised
        x, expected = golden_pair(128)
        model = TAT().eval()
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        for k in state:
            if k.endswith(".gate"):
                state[k].zero_()
        model.load_state_dict(state)
        with torch.no_grad():
            self.assertGreater((model(x) - expected).abs().max().item(), 0.05)


class TestTAT(unittest.TestCase):
    def test_widths_derive_from_arguments(self):
        net = tiny()
        self.assertEqual(tuple(net.patch_embed.weight.shape), (8, 1, 3, 3))
        self.assertEqual(tuple(net.task_kernels.features[0].weight.shape), (64, 4, 3, 3))  # 8*8/16 channels in
        self.assertEqual(tuple(net.task_kernels.heads["latent"]["ffn"].weight.shape), (2 * 2 * 170 // 2 * 9, 256))
        out = net(torch.rand(2, 1, 32, 32))
        self.assertEqual(tuple(out.shape), (2, 1, 32, 32))

    def test_default_is_published(self):
        with torch.device("meta"):
            net = TAT()
        self.assertEqual(len(net.latent), 8)
        self.assertEqual(len(net.refinement), 4)
        self.assertEqual(net.latent[0].attn.window, 24)
        self.assertEqual(net.encoder_level1[0].attn.window, 192)

    def test_batch_of_three_equals_each_alone_with_windows(self):
        torch.manual_seed(0)
        net = tiny().eval()
        with torch.no_grad():
            for blk in net.modules():
                if getattr(blk, "gate", None) is not None:
                    blk.gate.uniform_(-0.5, 0.5)
            x = torch.rand(3, 1, 50, 50)  # > 1.5x the 32-pixel training size: windows at every level
            batch = net(x)
            for b in range(3):
                torch.testing.assert_close(net(x[b : b + 1]), batch[b : b + 1], rtol=1e-4, atol=1e-5)
            self.assertGreater((batch[0] - batch[1]).abs().max().item(), 1e-3)

    def test_any_size_padded_and_cropped(self):
        net = tiny().eval()
        x = torch.rand(1, 1, 97, 131)
        with torch.no_grad():
            out = net(x)
            self.assertEqual(tuple(out.shape), (1, 1, 97, 131))
            padded = torch.nn.functional.pad(x, (0, 5, 0, 7), mode="reflect")  # to 104 x 136
            torch.testing.assert_close(out, net(padded)[..., :97, :131])
            self.assertEqual(tuple(net(torch.rand(1, 1, 5, 3)).shape), (1, 1, 5, 3))

    @parameterized.expand(
        [((16, 13), "reflect"), ((13, 16), "reflect"), ((4, 13), "replicate"), ((13, 4), "replicate")]
    )
    def test_padding_per_side(self, size, mode):
        """Each side is padded to a multiple of 8 on its own (reflect, or replicate where a padding is not smaller
        than its side: 4 rows of padding for 4 rows), and the output is that of the padded image, cropped."""
        torch.manual_seed(0)
        net = tiny().eval()
        x = torch.rand(1, 1, *size)
        h, w = size
        padded = torch.nn.functional.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode=mode)
        with torch.no_grad():
            torch.testing.assert_close(net(x), net(padded)[..., :h, :w])

    def test_blocks_run_on_channels_last_activations(self):
        # the depthwise convs are ~2.5x slower on CPU in the default layout; a 1-channel input is ambiguous,
        # so the layout must be set after the embedding and survive every block, sampler and concatenation.
        net = tiny().eval()
        layouts: list[bool] = []
        for module in net.modules():
            if type(module).__name__ == "TransformerBlock":
                module.register_forward_hook(
                    lambda m, args, out: layouts.append(
                        args[0].is_contiguous(memory_format=torch.channels_last)
                        and out.is_contiguous(memory_format=torch.channels_last)
                    )
                )
        with torch.no_grad():
            net(torch.rand(2, 1, 40, 48))
        self.assertEqual(len(layouts), 3 + 1 + 3 + 1)  # one block per encoder level, latent, decoder level, refinement
        self.assertTrue(all(layouts), layouts)

    def test_input_validation(self):
        net = tiny()
        for bad, msg in [
            (torch.rand(1, 32, 32), "4D"),
            (torch.rand(1, 2, 32, 32), "channel"),
            (torch.full((1, 1, 32, 32), float("nan")), "NaN"),
            (torch.zeros(0, 1, 32, 32), "empty"),
        ]:
            with self.assertRaisesRegex(ValueError, msg):
                net(bad)
        for kwargs in [dict(spatial_dims=3), dict(num_blocks=(1, 1, 1)), dict(dim=7), dict(heads=(3, 2, 4, 8))]:
            with self.assertRaises(ValueError):
                tiny(**kwargs)

    def test_one_non_finite_pixel_is_refused(self):
        """A single NaN or Inf pixel anywhere in the batch is refused, not only an all-NaN image."""
        net = tiny()
        for value in (float("nan"), float("inf"), float("-inf")):
            x = torch.rand(2, 1, 16, 16)
            x[1, 0, 7, 3] = value
            with self.assertRaisesRegex(ValueError, "NaN"):
                net(x)

    def test_task_embedding_checks_its_input(self):
        net = tiny()
        for bad in (torch.full((1, 1, 16, 16), float("nan")), torch.rand(1, 2, 16, 16), torch.rand(1, 16, 16)):
            with self.assertRaises(ValueError):
                net.task_embedding(bad)

    def test_reduce_final_is_the_plain_module_with_a_graph_or_exporting(self):
        """The final conv runs on the concatenation (the plain module) with gradients enabled, while exporting, or
        for a map that requires gradients; the split form only without any of them."""
        torch.manual_seed(0)
        net = tiny().requires_grad_(False)
        maps = [torch.randn(1, c, 8, 8) for c in (8, 16, 16)]
        expected = net.reduce_final(torch.cat(maps, 1))
        leaf = [maps[0], maps[1].clone().requires_grad_(), maps[2]]
        cases = [
            (torch.enable_grad(), maps),  # gradients enabled (frozen weights, no input with a graph)
            (mock.patch.object(torch.jit, "is_tracing", return_value=True), maps),  # a graph being captured
            (torch.no_grad(), leaf),  # one map requires gradients
        ]
        for context, inputs in cases:
            with torch.no_grad(), context, mock.patch.object(torch, "cat", wraps=torch.cat) as cat:
                got = net._reduce_final(inputs)
            cat.assert_called_once()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    def test_gates_start_at_zero_and_gradients_reach_generator(self):
        net = tiny()
        gates = [m.gate for m in net.modules() if getattr(m, "gate", None) is not None]
        self.assertEqual(len(gates), 2 * 5)  # attn + ffn in 1 latent, 3 decoder and 1 refinement block
        self.assertTrue(all(torch.all(g == 0) for g in gates))
        x = torch.rand(2, 1, 32, 32)
        net(x).square().mean().backward()
        self.assertTrue(all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates))
        with torch.no_grad():
            for g in gates:
                g.fill_(0.1)
        net.zero_grad()
        net(x).square().mean().backward()
        for level, heads in net.task_kernels.heads.items():
            for kind, head in heads.items():
                self.assertGreater(head.weight.grad.abs().sum().item(), 0, f"{level}/{kind}")

    def test_generator_input_detached_from_encoder(self):
        net = tiny()
        captured = {}
        net.task_kernels.register_forward_hook(lambda m, i, o: captured.update(kernels=o))
        net(torch.rand(2, 1, 32, 32))
        total = sum(k.attn.sum() + k.ffn.sum() for k in captured["kernels"].values())
        encoder = list(net.patch_embed.parameters()) + list(net.encoder_level1.parameters())
        grads = torch.autograd.grad(total, encoder, allow_unused=True)
        self.assertTrue(all(g is None for g in grads))

    def test_ablation_without_generator(self):
        net = tiny(task_adaptive=False)
        self.assertIsNone(net.task_kernels)
        self.assertFalse(any(k.endswith("gate") for k in net.state_dict()))
        self.assertEqual(tuple(net(torch.rand(1, 1, 16, 16)).shape), (1, 1, 16, 16))

    def test_gradient_checkpointing_same_result(self):
        torch.manual_seed(0)
        a = tiny()
        b = tiny(use_checkpoint=True)
        b.load_state_dict(a.state_dict())
        x = torch.rand(2, 1, 32, 32)
        ya, yb = a(x), b(x)
        torch.testing.assert_close(ya, yb)
        ya.sum().backward()
        yb.sum().backward()
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            if pa.grad is not None:
                torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)

    def test_checkpointing_only_when_asked_and_with_gradients(self):
        """Blocks are checkpointed only with ``use_checkpoint`` and gradients enabled (one call per block: 3 encoder,
        1 latent, 3 decoder and 1 refinement block here); otherwise they run plainly."""
        torch.manual_seed(0)
        x = torch.rand(1, 1, 16, 16)
        with mock.patch.object(tat_module, "checkpoint", wraps=tat_module.checkpoint) as ckpt:
            tiny()(x)
            ckpt.assert_not_called()
            net = tiny(use_checkpoint=True)
            net(x)
            self.assertEqual(ckpt.call_count, 8)
            with torch.no_grad():
                net(x)
            self.assertEqual(ckpt.call_count, 8)


if __name__ == "__main__":
    unittest.main()
