from __future__ import annotations

import unittest
from collections.abc import Sequence
from unittest import mock

import torch
import torch.nn.functional as F
from custom.networks.blocks import ChannelAttention
from custom.networks.blocks import attention as attention_module
from custom.networks.blocks import channel_attention, window_starts
from custom.networks.blocks.layer_norm import ChannelLayerNorm
from custom.networks.blocks.local_windows import window_tiles
from parameterized import parameterized

# The literal definition of overlapping windows, copying every window out and adding it back (vectorised over
# batch and windows; any per-window function can be applied in between): the oracle of the factored windows.


def axis_index(size: int, window: int, device: torch.device) -> torch.Tensor:
    """``(n, k)`` voxel indices of the windows along one axis."""
    k = min(size, window)
    starts = torch.tensor(window_starts(size, window), device=device)
    return starts[:, None] + torch.arange(k, device=device)


def partition_windows(x: torch.Tensor, window: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Cut ``x`` into overlapping windows.

    Args:
        x: ``(B, C, *spatial)``.
        window: nominal window length per spatial axis.

    Returns:
        ``(patches, index)``: patches of shape ``(B * n_windows, C, *k)`` (channels-last in memory) ordered
        batch-major then row-major over the window grid, and the per-axis ``(n_i, k_i)`` index tensors that
        :func:`merge_windows` takes back.

    Raises:
        ValueError: ``window`` does not give one length per spatial axis.
    """
    spatial = x.shape[2:]
    d = len(spatial)
    if len(window) != d:
        raise ValueError(f"window needs {d} lengths for a {d}D input, got {tuple(window)}.")
    index = [axis_index(s, w, x.device) for s, w in zip(spatial, window)]
    t = x.movedim(1, -1)  # (B, *spatial, C): a view, contiguous for channels-last input
    for i, idx in enumerate(index):
        t = t.index_select(1 + i, idx.reshape(-1))  # axis i becomes n_i * k_i
    ns = [idx.shape[0] for idx in index]
    ks = [idx.shape[1] for idx in index]
    shape = [x.shape[0]]
    for n, k in zip(ns, ks):
        shape += [n, k]
    t = t.reshape(*shape, x.shape[1])  # (B, n_1, k_1, ..., n_d, k_d, C)
    perm = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]  # (B, n_1..n_d, k_1..k_d, C)
    patches = t.permute(perm).reshape(-1, *ks, x.shape[1])
    return patches.movedim(-1, 1), index


def merge_windows(patches: torch.Tensor, index: Sequence[torch.Tensor], spatial_shape: Sequence[int]) -> torch.Tensor:
    """Put windows back, averaging where they overlap (inverse of :func:`partition_windows` for the identity).

    Args:
        patches: ``(B * n_windows, C, *k)`` as returned by :func:`partition_windows` (possibly transformed).
        index: the per-axis index tensors returned by :func:`partition_windows`.
        spatial_shape: the full spatial shape ``(S_1, ..., S_d)``.

    Returns:
        ``(B, C, *spatial_shape)`` (channels-last in memory): each voxel is the mean of the windows that
        cover it.
    """
    d = len(spatial_shape)
    ns = [idx.shape[0] for idx in index]
    ks = [idx.shape[1] for idx in index]
    c = patches.shape[1]
    n_total = 1
    for n in ns:
        n_total *= n
    b = patches.shape[0] // n_total
    p = patches.movedim(1, -1).reshape(b, *ns, *ks, c)
    perm = [0]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    p = p.permute(*perm, 2 * d + 1)  # (B, n_1, k_1, ..., n_d, k_d, C)
    count: torch.Tensor | None = None
    for i in reversed(range(d)):
        # axes before i are still (n_j, k_j) pairs; axes after it are already merged to full length.
        dim = 1 + 2 * i
        p = p.reshape(*p.shape[:dim], ns[i] * ks[i], *p.shape[dim + 2 :])
        out = p.new_zeros(*p.shape[:dim], spatial_shape[i], *p.shape[dim + 1 :])
        p = out.index_add_(dim, index[i].reshape(-1), p)
        axis_count = torch.zeros(spatial_shape[i], device=p.device, dtype=p.dtype)
        axis_count.index_add_(0, index[i].reshape(-1), torch.ones(ns[i] * ks[i], device=p.device, dtype=p.dtype))
        count = axis_count if count is None else axis_count.reshape(-1, *[1] * count.dim()) * count.unsqueeze(0)
    p = p / count.unsqueeze(-1)  # type: ignore[union-attr]
    return p.movedim(-1, 1)


def loop_partition_merge(x: torch.Tensor, window: int, fn) -> torch.Tensor:
    """Straightforward per-window loop at batch 1 (the published procedure), for comparison."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    count = torch.zeros_like(x)
    kh, kw = min(h, window), min(w, window)
    for i in window_starts(h, window):
        for j in window_starts(w, window):
            out[..., i : i + kh, j : j + kw] += fn(x[..., i : i + kh, j : j + kw])
            count[..., i : i + kh, j : j + kw] += 1
    return out / count


class TestWindowStarts(unittest.TestCase):
    @parameterized.expand(
        [
            (200, 192, [0, 8]),
            (100, 96, [0, 4]),
            (25, 24, [0, 1]),
            (128, 192, [0]),
            (192, 192, [0]),
            (400, 192, [0, 104, 208]),
            (97, 24, [0, 19, 38, 57, 73]),
        ]
    )
    def test_published_rule(self, size, window, expected):
        starts = window_starts(size, window)
        self.assertEqual(starts, expected)
        k = min(size, window)
        self.assertEqual(starts[-1] + k, size)  # last window ends at the border

    @parameterized.expand([(1, 1, [0]), (1, 8, [0]), (5, 1, [0, 1, 2, 3, 4]), (3, 2, [0, 1])])
    def test_smallest_sizes(self, size, window, expected):
        self.assertEqual(window_starts(size, window), expected)

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            window_starts(0, 4)
        with self.assertRaises(ValueError):
            window_starts(10, 0)


class TestPartitionMerge(unittest.TestCase):
    @parameterized.expand([((2, 3, 50, 37), (24, 24)), ((1, 2, 9, 10, 11), (4, 5, 6)), ((3, 1, 16, 16), (32, 32))])
    def test_merge_inverts_partition(self, shape, window):
        x = torch.randn(shape)
        patches, index = partition_windows(x, window)
        n = 1
        for idx in index:
            n *= idx.shape[0]
        self.assertEqual(patches.shape[0], shape[0] * n)
        torch.testing.assert_close(merge_windows(patches, index, shape[2:]), x)

    def test_matches_loop_with_per_window_function(self):
        # a per-window non-linear function (normalise each window) distinguishes window membership
        def fn(p: torch.Tensor) -> torch.Tensor:
            return p / p.flatten(-2).norm(dim=-1)[..., None, None]

        x = torch.randn(3, 2, 41, 29)
        patches, index = partition_windows(x, (16, 16))
        ours = merge_windows(fn(patches), index, x.shape[2:])
        for b in range(3):  # each sample as the published code would, alone
            torch.testing.assert_close(ours[b : b + 1], loop_partition_merge(x[b : b + 1], 16, fn))

    def test_window_length_per_axis_required(self):
        with self.assertRaises(ValueError):
            partition_windows(torch.zeros(1, 1, 8, 8), (4,))


class TestWindowTiles(unittest.TestCase):
    @parameterized.expand([(256, 192), (200, 192), (97, 24), (400, 192), (128, 192), (25, 24)])
    def test_tiles_cut_at_every_window_edge(self, size, window):
        tiles, coverage = window_tiles(size, window)
        self.assertEqual(tiles[0][0], 0)
        self.assertEqual(tiles[-1][1], size)
        for (_, e), (a, _) in zip(tiles[:-1], tiles[1:]):
            self.assertEqual(e, a)  # contiguous, no gaps or overlaps
        k = min(size, window)
        starts = window_starts(size, window)
        self.assertEqual(len(coverage), len(starts))
        for s, row in zip(starts, coverage):
            covered = [(a, e) for (a, e), c in zip(tiles, row) if c]
            # each window is exactly the union of the tiles it covers: contiguous from its start to start + k
            self.assertEqual((covered[0][0], covered[-1][1]), (s, s + k))
            self.assertEqual(sum(e - a for a, e in covered), k)
        for t in range(len(tiles)):
            self.assertGreaterEqual(sum(row[t] for row in coverage), 1)  # every tile is in some window
        # and cut nowhere else: the interior tile boundaries are exactly the interior window edges
        edges = {e for s in starts for e in (s, s + k)} - {0, size}
        self.assertEqual([a for a, _ in tiles[1:]], sorted(edges))


class TestFactoredWindowAttention(unittest.TestCase):
    """The tile-factored attention equals the literal definition: attention inside each window, averaged."""

    @parameterized.expand(
        [
            ((2, 24, 50, 37), 2, (24, 24)),
            ((3, 12, 41, 29), 1, (16, 20)),
            ((1, 12, 200, 200), 1, (192, 192)),
            ((2, 24, 97, 60), 4, (24, 24)),
            ((1, 12, 9, 10, 11), 2, (4, 5, 6)),
        ]
    )
    def test_equals_partition_attend_merge(self, shape, heads, window):
        g = torch.Generator().manual_seed(0)
        qkv = torch.randn(shape, generator=g)
        temperature = torch.rand(heads, 1, 1, generator=g) * 3 + 0.5
        patches, index = partition_windows(qkv, window)
        expected = merge_windows(channel_attention(patches, heads, temperature), index, shape[2:])
        torch.testing.assert_close(channel_attention(qkv, heads, temperature, window), expected, atol=2e-5, rtol=1e-4)

    def test_window_larger_than_map_is_global(self):
        qkv = torch.randn(2, 12, 20, 20)
        temperature = torch.ones(2, 1, 1)
        torch.testing.assert_close(
            channel_attention(qkv, 2, temperature, (32, 32)), channel_attention(qkv, 2, temperature), atol=1e-6, rtol=0
        )

    def test_window_length_per_axis_required(self):
        with self.assertRaises(ValueError):
            channel_attention(torch.zeros(1, 6, 8, 8), 1, torch.ones(1, 1, 1), (4,))

    def test_norms_clamped_as_f_normalize(self):
        # q and k are L2-normalised as F.normalize does (norms clamped at 1e-12): a q channel whose norm is 1.5e-12
        # is scaled to unit length, one of norm 0.7e-12 to length 0.7
        g = torch.Generator().manual_seed(1)
        qkv = torch.randn(2, 12, 6, 5, generator=g)
        for channel, norm in ((0, 1.5e-12), (2, 0.7e-12)):
            qkv[:, channel] *= norm / qkv[:, channel].flatten(1).norm(dim=1)[:, None, None]
        qkv[:, 1] = 0.0  # and a zero one: no attention preference (uniform row)
        temperature = torch.tensor([3.0, 2.0]).reshape(2, 1, 1)
        q, k, v = (z.flatten(2).unflatten(1, (2, 2)) for z in qkv.chunk(3, 1))  # (B, h, C/h, P)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * temperature).softmax(-1)
        expected = (attn @ v).reshape(2, 4, 6, 5)
        torch.testing.assert_close(channel_attention(qkv, 2, temperature), expected, rtol=1e-5, atol=1e-6)

    def test_global_attention_sums_no_windows(self):
        # one window is the whole map: the per-window sums and means would multiply by 1, and are not formed
        g = torch.Generator().manual_seed(2)
        qkv = torch.randn(1, 12, 10, 9, generator=g)
        temperature = torch.ones(2, 1, 1)
        a = ChannelAttention(4, 2, train_size=8).eval()
        norm = ChannelLayerNorm(4)
        x = torch.randn(1, 4, 10, 9)
        with mock.patch.object(attention_module, "_over_axis", side_effect=AssertionError("a window sum")):
            channel_attention(qkv, 2, temperature)
            channel_attention(qkv, 2, temperature, (16, 16))  # a window larger than the map
            channel_attention(qkv, 2, temperature, (16, 16), blend=True)
            with torch.no_grad():
                a(x)
                a.residual_in_strips(x, norm, None, 3)
        with mock.patch.object(attention_module, "_over_axis", wraps=attention_module._over_axis) as spy:
            channel_attention(qkv, 2, temperature, (8, 8))
        self.assertTrue(spy.called)  # a smaller window: window sums

    @parameterized.expand([(None, False), ((10, 12), False), ((10, 12), True)])
    def test_runs_on_the_device_of_its_input(self, window, blend):
        # the window matrices and blend weights are made on the input's device (here "meta", as a GPU would be)
        maps = [torch.empty(2, 6, 14, 20, device="meta") for _ in range(3)]
        temperature = torch.ones(2, 1, 1, device="meta")
        project, bias = torch.empty(5, 6, device="meta"), torch.empty(5, device="meta")
        out = channel_attention(maps, 2, temperature, window, blend, project=project, project_bias=bias)
        self.assertEqual((out.device.type, tuple(out.shape)), ("meta", (2, 5, 14, 20)))
        out = channel_attention(torch.cat(maps, 1), 2, temperature, window, blend)
        self.assertEqual((out.device.type, tuple(out.shape)), ("meta", (2, 6, 14, 20)))


if __name__ == "__main__":
    unittest.main()
