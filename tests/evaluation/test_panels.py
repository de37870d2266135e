"""custom.evaluation.panels: what each PNG panel shows (images, windows, error scales, titles) and its checks."""

from __future__ import annotations

import os
import struct
import tempfile
import unittest
from typing import Any
from unittest import mock

import matplotlib.pyplot as plt
import numpy as np
from custom.evaluation.panels import plot_review_panel, plot_task_panel

H, W = 12, 10
BASE = np.linspace(-200, 300, H * W, dtype=np.float32).reshape(H, W)


def _drawn(plot: Any, *args: Any, **kwargs: Any) -> tuple[Any, tuple[int, int]]:
    """Call a panel function, keep its figure open for inspection; returns the figure and the PNG's (width, height)."""
    with tempfile.TemporaryDirectory() as d, mock.patch.object(plt, "close") as close:
        path = plot(os.path.join(d, "p.png"), *args, **kwargs)
        with open(path, "rb") as f:
            head = f.read(24)
    fig = close.call_args.args[0]
    close.assert_called_once()
    return fig, struct.unpack(">II", head[16:24])


class TestTaskPanel(unittest.TestCase):
    def test_input_restored_target_and_the_error_inside_the_window(self):
        image, pred, label = (
            BASE + np.linspace(0, 120, H * W, dtype=np.float32).reshape(H, W),
            BASE + 5,
            BASE,
        )  # errors of all sizes
        fig, size = _drawn(plot_task_panel, image, pred, label, (-160, 240), "ct: a slice 3", "HU", 30.0, 40.0, dpi=20)
        self.addCleanup(plt.close, fig)
        self.assertEqual(size, (290, 80))  # 14.5 x 4 inches at the given dpi
        self.assertEqual(fig._suptitle.get_text(), "ct: a slice 3")
        panels = fig.axes[:4]
        titles = [ax.get_title() for ax in panels]
        self.assertEqual(titles, ["degraded input (30.00 dB)", "restored (40.00 dB)", "target", "|restored - target|"])
        for ax, data in zip(panels[:3], (image, pred, label)):  # shown as given, in the display window
            np.testing.assert_array_equal(ax.images[0].get_array(), data)
            self.assertEqual(ax.images[0].get_clim(), (-160.0, 240.0))
            self.assertEqual(ax.images[0].get_cmap().name, "gray")
            self.assertEqual(ax.images[0].get_interpolation(), "nearest")  # pixels as they are, not smoothed
            self.assertEqual((list(ax.get_xticks()), list(ax.get_yticks())), ([], []))
        error = np.abs(np.clip(pred, -160, 240) - np.clip(label, -160, 240))  # measured inside the window
        np.testing.assert_allclose(panels[3].images[0].get_array(), error)
        scale = float(np.percentile(np.abs(np.clip(image, -160, 240) - np.clip(label, -160, 240)), 99.5))
        self.assertAlmostEqual(panels[3].images[0].get_clim()[1], scale, places=4)  # the input's error scale
        self.assertEqual(panels[3].images[0].get_clim()[0], 0.0)
        self.assertEqual(panels[3].images[0].get_cmap().name, "magma")
        self.assertEqual(panels[3].images[0].get_interpolation(), "nearest")
        self.assertEqual([ax.get_ylabel() for ax in fig.axes[4:]], ["HU", "HU"])  # the two colour bars

    def test_error_scale_when_the_input_has_no_error(self):
        fig, size = _drawn(plot_task_panel, BASE, BASE + 5, BASE, (-160, 240), "t")
        self.addCleanup(plt.close, fig)
        self.assertEqual(size, (1595, 440))  # 110 dpi by default
        self.assertEqual([ax.get_title() for ax in fig.axes[:2]], ["degraded input", "restored"])
        self.assertAlmostEqual(fig.axes[3].images[0].get_clim()[1], 5.0, places=4)  # the restored error's maximum
        fig, _ = _drawn(plot_task_panel, BASE, BASE, BASE, (-160, 240), "t", dpi=10)
        self.addCleanup(plt.close, fig)
        self.assertEqual(fig.axes[3].images[0].get_clim(), (0.0, 1.0))

    def test_bad_window(self):
        with tempfile.TemporaryDirectory() as d:
            for window in ((1, 1), (2, 1)):
                with self.assertRaisesRegex(ValueError, "q.png: display window must be increasing"):
                    plot_task_panel(os.path.join(d, "q.png"), BASE, BASE, BASE, window, "t")
            with self.assertRaisesRegex(ValueError, "q.png: panel needs three 2D slices of one shape"):
                plot_task_panel(os.path.join(d, "q.png"), BASE[None], BASE[None], BASE[None], (0, 1), "t")
            with self.assertRaisesRegex(ValueError, "q.png: panel needs three 2D slices of one shape"):
                plot_task_panel(os.path.join(d, "q.png"), BASE, BASE, BASE[:3], (0, 1), "t")
            self.assertEqual(os.listdir(d), [])


class TestReviewPanel(unittest.TestCase):
    def test_input_restored_difference_and_consistent(self):
        image, restored, consistent = BASE, BASE + 7, BASE + 3
        difference = restored - image + np.linspace(-1, 1, H * W, dtype=np.float32).reshape(H, W)
        psnr = {"input": 20.0, "restored": 25.5, "consistent": 26.25}
        fig, size = _drawn(
            plot_review_panel, image, restored, difference, consistent, (0, 100), "mri", "a.u.", psnr, dpi=20
        )
        self.addCleanup(plt.close, fig)
        self.assertEqual(size, (290, 80))
        self.assertEqual(fig._suptitle.get_text(), "mri")
        panels = fig.axes[:4]
        self.assertEqual(
            [ax.get_title() for ax in panels],
            ["degraded input (20.00 dB)", "restored (25.50 dB)", "restored - input", "data-consistent (26.25 dB)"],
        )
        for ax, data in zip((panels[0], panels[1], panels[3]), (image, restored, consistent)):
            np.testing.assert_array_equal(ax.images[0].get_array(), data)
            self.assertEqual(ax.images[0].get_clim(), (0.0, 100.0))
        np.testing.assert_array_equal(panels[2].images[0].get_array(), difference)
        scale = float(np.percentile(np.abs(difference), 99.5))
        low, high = panels[2].images[0].get_clim()
        self.assertAlmostEqual(high, scale, places=4)
        self.assertAlmostEqual(low, -scale, places=4)  # a symmetric diverging scale
        self.assertEqual(panels[2].images[0].get_cmap().name, "RdBu_r")
        self.assertEqual([ax.get_ylabel() for ax in fig.axes[4:]], ["a.u.", "a.u."])
        for ax in panels:
            self.assertEqual((list(ax.get_xticks()), list(ax.get_yticks())), ([], []))

    def test_titles_without_psnr_and_a_zero_difference(self):
        fig, _ = _drawn(plot_review_panel, BASE, BASE, np.zeros_like(BASE), BASE, (0, 1), "t", dpi=10)
        self.addCleanup(plt.close, fig)
        self.assertEqual(
            [ax.get_title() for ax in fig.axes[:4]],
            ["degraded input", "restored", "restored - input", "data-consistent"],
        )
        self.assertEqual(fig.axes[2].images[0].get_clim(), (-1.0, 1.0))

    def test_bad_slices_and_window(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "r.png")
            for arrays in ((BASE, BASE, BASE, BASE[:3]), (BASE, BASE[:3], BASE, BASE), (BASE[None],) * 4):
                with self.assertRaisesRegex(ValueError, "r.png: review panel needs four 2D slices of one shape"):
                    plot_review_panel(path, *arrays, window=(0, 1), title="t")
            with self.assertRaisesRegex(ValueError, "r.png: display window must be increasing"):
                plot_review_panel(path, BASE, BASE, BASE, BASE, window=(1, 1), title="t")
            self.assertEqual(os.listdir(d), [])


if __name__ == "__main__":
    unittest.main()
