"""TAT's assembly: per-level widths, heads, block counts and windows derived from the hyper-parameters, the layers
between the levels, the global residual, padding / cropping, ``transpose_hw`` and the export predicate."""

from __future__ import annotations

import unittest
from unittest import mock

import custom.networks.tat as tat_module
import numpy as np
import torch
from custom.networks import TAT
from parameterized import parameterized

from tests.utils import tiny_net
from tests.utils import tiny_tat as tiny

# (name, level index 0-3 of its width and heads, number of blocks from num_blocks / refinement, decoder side)
LEVELS = [
    ("encoder_level1", 0, 0, False),
    ("encoder_level2", 1, 1, False),
    ("encoder_level3", 2, 2, False),
    ("latent", 3, 3, True),
    ("decoder_level3", 2, 2, True),
    ("decoder_level2", 1, 1, True),
    ("decoder_level1", 0, 0, True),
    ("refinement", 0, None, True),
]


def block_width(block) -> int:
    return block.attn.qkv.weight.shape[1]


class TestLevels(unittest.TestCase):
    @parameterized.expand([(16, 4, (1, 2, 4, 8)), (4, 2, (2, 1, 4, 8)), (None, 4, (1, 2, 4, 8))])
    def test_levels_follow_hyper_parameters(self, train_patch_size, dim, heads):
        """Block counts, widths (dim * 2^level, decoder level 1 and refinement at 2 * dim), heads and windows
        (1.5 x max(train_patch_size // heads, 1), none without a training size) of every level."""
        num_blocks, num_refinement = (1, 2, 3, 4), 2
        net = TAT(
            dim=dim,
            num_blocks=num_blocks,
            num_refinement_blocks=num_refinement,
            heads=heads,
            train_patch_size=train_patch_size,
            tren_hidden_channels=8,
            tren_embed_dim=16,
        )
        for name, level, count, decoder in LEVELS:
            blocks = getattr(net, name)
            self.assertEqual(len(blocks), num_refinement if count is None else num_blocks[count], name)
            # the decoder's level 1 and the refinement run on the concatenation with the encoder: 2 * dim
            width = 2 * dim if decoder and level == 0 else dim * 2**level
            window = None if train_patch_size is None else int(1.5 * max(train_patch_size // heads[level], 1))
            for block in blocks:
                self.assertEqual(block_width(block), width, name)
                self.assertEqual(block.attn.num_heads, heads[level], name)
                self.assertEqual(block.attn.window, window, name)
                self.assertEqual(block.attn.qkv_dwconv.dynamic, decoder, name)
                self.assertEqual(block.ffn.dwconv.dynamic, decoder, name)

    def test_training_sizes_are_floored_and_at_least_one_pixel(self):
        """A level's training size is the floor of train_patch_size / heads, and 1 where that is 0; its window is
        the floor of 1.5x the training size."""
        net = tiny(train_patch_size=7)  # 7 // (1, 2, 4, 8) = 7, 3, 1, 0 -> training sizes 7, 3, 1, 1
        windows = [getattr(net, name)[0].attn.window for name in ("encoder_level1", "encoder_level2")]
        windows += [getattr(net, name)[0].attn.window for name in ("encoder_level3", "latent")]
        self.assertEqual(windows, [10, 4, 1, 1])
        self.assertEqual([net.decoder_level3[0].attn.window, net.refinement[0].attn.window], [1, 10])

    def test_layers_between_levels(self):
        """Shapes of the embedding, the samplers, the channel reductions, the final fusion and the output conv."""
        dim, c_in, c_out = 6, 2, 3
        net = tiny(dim=dim, in_channels=c_in, out_channels=c_out, heads=(1, 1, 1, 1), tren_hidden_channels=8)
        shapes = {
            "patch_embed": (dim, c_in, 3, 3),
            "down1_2.conv": (dim // 2, dim, 3, 3),
            "down2_3.conv": (dim, 2 * dim, 3, 3),
            "down3_4.conv": (2 * dim, 4 * dim, 3, 3),
            "up4_3.conv": (16 * dim, 8 * dim, 3, 3),
            "reduce_chan_level3": (4 * dim, 8 * dim, 1, 1),
            "up3_2.conv": (8 * dim, 4 * dim, 3, 3),
            "reduce_chan_level2": (2 * dim, 4 * dim, 1, 1),
            "up2_1.conv": (4 * dim, 2 * dim, 3, 3),
            # encoder level 1 (dim), decoder level 1 (2 dim) and the refinement (2 dim), concatenated
            "reduce_final.0": (dim, 5 * dim, 3, 3),
            "reduce_final.2": (dim, dim, 1, 1),
            "output": (c_out, dim, 3, 3),
        }
        for name, shape in shapes.items():
            self.assertEqual(tuple(net.get_submodule(name).weight.shape), shape, name)
        # the 3x3 convs keep the size (padding 1)
        for name in ("patch_embed", "reduce_final.0", "output"):
            self.assertEqual(net.get_submodule(name).padding, (1, 1), name)

    @parameterized.expand([(False,), (True,)])
    def test_bias_argument_reaches_the_assembly_convs(self, bias):
        net = tiny(bias=bias)
        for name in ("patch_embed", "reduce_chan_level3", "reduce_chan_level2", "reduce_final.0", "reduce_final.2"):
            self.assertEqual(net.get_submodule(name).bias is not None, bias, name)
        self.assertEqual(net.output.bias is not None, bias)
        self.assertEqual(net.latent[0].attn.qkv.bias is not None, bias)

    def test_task_kernels_per_decoder_level(self):
        """The generator makes, per decoder level of width w, 3w attention and 2 * int(w * ffn_expansion_factor)
        feed-forward depthwise kernels of 3x3 taps, from an embedding of ``tren_embed_dim`` computed by a trunk of
        ``tren_hidden_channels`` on the 4x pixel-shuffled bottleneck (8 dim / 16 channels)."""
        dim, factor, hidden, embed = 8, 2.66, 12, 20  # int(16 * 2.66) = 42, round() would give 43
        net = tiny(dim=dim, ffn_expansion_factor=factor, tren_hidden_channels=hidden, tren_embed_dim=embed)
        widths = {"latent": 8 * dim, "level3": 4 * dim, "level2": 2 * dim, "level1": 2 * dim}
        self.assertEqual(set(net.task_kernels.heads), set(widths))
        for level, w in widths.items():
            heads = net.task_kernels.heads[level]
            self.assertEqual(tuple(heads["attn"].weight.shape), (3 * w * 9, embed), level)
            self.assertEqual(tuple(heads["ffn"].weight.shape), (2 * int(w * factor) * 9, embed), level)
        self.assertEqual(tuple(net.task_kernels.features[0].weight.shape), (hidden, 8 * dim // 16, 3, 3))
        self.assertEqual(net.task_kernels.shuffle_factor, 4)
        self.assertEqual(tuple(net.task_embedding(torch.rand(1, 1, 32, 32)).shape), (1, embed))

    def test_without_task_adaptation_every_block_is_static(self):
        net = tiny(task_adaptive=False)
        self.assertIsNone(net.task_kernels)
        for name, *_ in LEVELS:
            for block in getattr(net, name):
                self.assertFalse(block.attn.qkv_dwconv.dynamic, name)
                self.assertFalse(block.ffn.dwconv.dynamic, name)
        with self.assertRaisesRegex(ValueError, "task_adaptive=False"):
            net.task_embedding(torch.rand(1, 1, 16, 16))

    @parameterized.expand([(2,), (4,), (6,)])
    def test_smallest_and_other_even_dims_accepted(self, dim):
        net = tiny(dim=dim, heads=(1, 1, 1, 1), tren_hidden_channels=4, tren_embed_dim=4)
        self.assertEqual(tuple(net.patch_embed.weight.shape), (dim, 1, 3, 3))

    @parameterized.expand([(0,), (1,), (3,), (7,), (-2,)])
    def test_odd_or_too_small_dim_refused(self, dim):
        with self.assertRaisesRegex(ValueError, "dim must be even"):
            tiny(dim=dim, heads=(1, 1, 1, 1))

    @parameterized.expand([((1, 1, 1), (1, 2, 4, 8)), ((1, 1, 1, 1), (1, 2, 4)), ((1, 1, 1, 1, 1), (1, 2, 4, 8, 8))])
    def test_four_levels_required(self, num_blocks, heads):
        with self.assertRaisesRegex(ValueError, "4 levels"):
            tiny(num_blocks=num_blocks, heads=heads)

    @parameterized.expand(
        [
            ("num_blocks", dict(num_blocks=(0, 1, 1, 1)), 1),
            ("num_blocks", dict(num_blocks=(1, 1, 1, 0)), 1),
            ("num_blocks", dict(num_blocks=(1, -1, 1, 1)), 1),
            ("heads", dict(heads=(1, 2, 0, 8)), 1),
            ("num_refinement_blocks", dict(num_refinement_blocks=-1), 0),
        ]
    )
    def test_levels_without_blocks_or_heads_refused(self, name, kwargs, least):
        with self.assertRaisesRegex(ValueError, f"{name} must each be at least {least}"):
            tiny(**kwargs)

    @parameterized.expand(
        [
            ("num_blocks", dict(num_blocks=(1, 1.5, 1, 1))),
            ("num_blocks", dict(num_blocks=(1, 1, "2", 1))),
            ("heads", dict(heads=(1, 2, 4, None))),
            ("heads", dict(heads=(1, 2.0, 4, 8))),
            ("num_refinement_blocks", dict(num_refinement_blocks=1.0)),
        ]
    )
    def test_counts_that_are_not_integers_refused(self, name, kwargs):
        with self.assertRaisesRegex(ValueError, f"{name} must be integers"):
            tiny(**kwargs)

    def test_numpy_integer_counts_accepted(self):
        net = tiny(num_blocks=np.array([1, 2, 1, 1]), num_refinement_blocks=np.int64(0), heads=np.array([1, 2, 4, 8]))
        self.assertEqual([len(net.encoder_level2), len(net.refinement), net.latent[0].attn.num_heads], [2, 0, 8])

    @parameterized.expand([(0,), (2,)])
    def test_final_fusion_reads_encoder_decoder_and_refinement(self, num_refinement):
        """reduce_final sees the concatenation of encoder level 1, decoder level 1 and the refinement's output (decoder
        level 1's again without refinement blocks)."""
        net = tiny_net(num_refinement_blocks=num_refinement, transpose_hw=False)
        self.assertEqual(len(net.refinement), num_refinement)
        seen = {}
        for name in ("encoder_level1", "decoder_level1", "refinement"):
            for block in getattr(net, name)[-1:]:
                block.register_forward_hook(lambda m, args, out, name=name: seen.update({name: out}))
        net.reduce_final[0].register_forward_pre_hook(lambda m, args: seen.update(fused=args[0]))
        y = net(torch.rand(1, 1, 16, 16))  # with gradients: the plain module path, whose hooks fire
        self.assertEqual(tuple(y.shape), (1, 1, 16, 16))
        refined = seen["refinement"] if num_refinement else seen["decoder_level1"]
        expected = torch.cat([seen["encoder_level1"], seen["decoder_level1"], refined], 1)
        torch.testing.assert_close(seen["fused"], expected, rtol=0, atol=0)

    def test_window_mode_validated_and_reported(self):
        with self.assertRaisesRegex(ValueError, "window mode"):
            tiny(window_mode="tiles")
        net = tiny(window_mode="blended")
        self.assertEqual(net.window_mode, "blended")
        with self.assertRaisesRegex(ValueError, "window mode"):
            net.set_window_mode("tiles")
        self.assertEqual(net.window_mode, "blended")
        self.assertIs(net.set_window_mode("global"), net)
        self.assertTrue(all(m.attn.window_mode == "global" for name, *_ in LEVELS for m in getattr(net, name)))
        net.latent[0].attn.window_mode = "published"
        self.assertEqual(net.window_mode, "mixed")


class TestRestore(unittest.TestCase):
    def _output_conv(self, net: TAT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``net(x)`` and what the output conv produced (before the residual and the crop)."""
        captured = {}
        handle = net.output.register_forward_hook(lambda m, i, o: captured.update(out=o.detach().clone()))
        with torch.no_grad():
            y = net(x)
        handle.remove()
        return y, captured["out"]

    @parameterized.expand([(1, 1, (16, 24)), (1, 1, (13, 21)), (2, 2, (16, 16)), (1, 2, (12, 20)), (2, 1, (16, 16))])
    def test_global_residual_only_with_equal_channels(self, c_in, c_out, size):
        """``output = net(x) + x`` when in_channels == out_channels, the output conv alone otherwise; computed on the
        padded image and cropped back to the input size."""
        torch.manual_seed(0)
        net = tiny(in_channels=c_in, out_channels=c_out).eval()
        h, w = size
        x = torch.rand(2, c_in, h, w)
        y, conv_out = self._output_conv(net, x)
        self.assertEqual(tuple(y.shape), (2, c_out, h, w))
        self.assertEqual(tuple(conv_out.shape), (2, c_out, h + (-h) % 8, w + (-w) % 8))
        expected = conv_out[..., :h, :w] + (x if c_in == c_out else 0)
        torch.testing.assert_close(y, expected)

    def test_transpose_hw_transposes_input_and_output(self):
        net = tiny_net(transpose_hw=False)  # non-zero gates: the generated kernels matter
        transposed = tiny(transpose_hw=True).eval()
        transposed.load_state_dict(net.state_dict())
        x = torch.rand(2, 1, 16, 24)
        with torch.no_grad():
            y = transposed(x)
            expected = net(x.transpose(-1, -2)).transpose(-1, -2)
            self.assertEqual(tuple(y.shape), (2, 1, 16, 24))
            torch.testing.assert_close(y, expected)
            self.assertTrue(y.is_contiguous())
            # the network is not transpose-equivariant: the option changes the result
            self.assertGreater((y - net(x)).abs().max().item(), 1e-4)

    def test_each_decoder_level_gets_its_generated_kernels(self):
        """The latent blocks get the generator's "latent" kernels, decoder levels 3 and 2 theirs, decoder level 1 and
        the refinement "level1"; the encoder blocks get none."""
        net = tiny().eval()
        generated, received = {}, {}
        net.task_kernels.register_forward_hook(lambda m, i, o: generated.update(o))
        for name, *_ in LEVELS:
            for k, block in enumerate(getattr(net, name)):
                block.register_forward_pre_hook(
                    lambda m, args, kwargs, key=(name, k): received.update({key: (args + (kwargs.get("kernels"),))[1]}),
                    with_kwargs=True,
                )
        with torch.no_grad():
            net(torch.rand(1, 1, 16, 16))
        expected = {"latent": "latent", "decoder_level3": "level3", "decoder_level2": "level2"}
        expected.update(decoder_level1="level1", refinement="level1")
        self.assertEqual(len(received), sum(len(getattr(net, name)) for name, *_ in LEVELS))
        for (name, _), kernels in received.items():
            if name in expected:
                self.assertIs(kernels, generated[expected[name]], name)
            else:
                self.assertIsNone(kernels, name)

    def test_input_checks_skipped_while_a_graph_is_captured(self):
        """``check_input`` reads values (a data-dependent guard that breaks ``torch.export``): skipped while
        :func:`~custom.networks.blocks.cpu_paths.graph_capture`, run otherwise."""
        net, x = tiny_net(), torch.rand(1, 1, 16, 16)
        refuse = mock.patch.object(net, "check_input", side_effect=AssertionError("checked while capturing"))
        with torch.no_grad(), refuse, mock.patch.object(tat_module, "graph_capture", return_value=True):
            net(x)
        with torch.no_grad(), refuse as check, self.assertRaises(AssertionError):
            net(x)
        check.assert_called_once_with(x)


if __name__ == "__main__":
    unittest.main()
