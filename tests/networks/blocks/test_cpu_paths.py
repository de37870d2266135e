"""The conditions of the no-graph CPU paths: no gradients, the CPU, no graph being captured; oneDNN's float32 ops
also need oneDNN enabled, autocast off and float32 operands."""

from __future__ import annotations

import unittest
from unittest import mock

import torch
from custom.networks.blocks import cpu_paths
from custom.networks.blocks.cpu_paths import cpu_field, cpu_model, graph_capture, no_graph_on_cpu, onednn_float32
from parameterized import parameterized

PREDICATES = [
    ("is_scripting", torch.jit),
    ("is_tracing", torch.jit),
    ("is_compiling", torch.compiler),
    ("is_exporting", torch.compiler),
    ("is_in_onnx_export", torch.onnx),
]


class TestCpuField(unittest.TestCase):
    def test_fields_of_the_first_cpu(self):
        text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC: 9005\n\nprocessor\t: 1\n"
        text += "vendor_id\t: Other\n"
        with mock.patch("builtins.open", mock.mock_open(read_data=text)):
            self.assertEqual(cpu_field("vendor_id"), "AuthenticAMD")
            self.assertEqual(cpu_field("model name"), "AMD EPYC: 9005")  # a colon in the value
            self.assertEqual(cpu_field("flags"), "")  # no such field
            self.assertEqual(cpu_field("model"), "")  # not a prefix match
        with mock.patch("builtins.open", side_effect=OSError("no /proc")):
            self.assertEqual(cpu_field("vendor_id"), "")

    def test_cpu_model_from_cpuinfo_else_platform(self):
        with mock.patch.object(cpu_paths, "cpu_field", return_value="AMD EPYC 9555") as field:
            self.assertEqual(cpu_model(), "AMD EPYC 9555")
        field.assert_called_once_with("model name")
        with mock.patch.object(cpu_paths, "cpu_field", return_value=""):
            with mock.patch.object(cpu_paths.platform, "processor", return_value="arm"):
                self.assertEqual(cpu_model(), "arm")
            with mock.patch.object(cpu_paths.platform, "processor", return_value=""):
                with mock.patch.object(cpu_paths.platform, "machine", return_value="aarch64"):
                    self.assertEqual(cpu_model(), "aarch64")


class TestGraphCapture(unittest.TestCase):
    @parameterized.expand(PREDICATES)
    def test_any_capture_keeps_the_plain_ops(self, name, namespace):
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            self.assertFalse(graph_capture())
            self.assertTrue(no_graph_on_cpu(x))
            self.assertTrue(onednn_float32(x, None))
            with mock.patch.object(namespace, name, return_value=True):
                self.assertTrue(graph_capture())
                self.assertFalse(no_graph_on_cpu(x))
                self.assertFalse(onednn_float32(x, None))


class TestNoGraphOnCpu(unittest.TestCase):
    def test_gradients_and_device(self):
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            self.assertTrue(no_graph_on_cpu(x))
            self.assertFalse(no_graph_on_cpu(x.to("meta")))  # another device
            self.assertFalse(no_graph_on_cpu(x.clone().requires_grad_()))  # an input needing gradients
        self.assertFalse(no_graph_on_cpu(x))  # grad mode: a graph


class TestOneDNNFloat32(unittest.TestCase):
    def test_float32_operands_without_autocast_with_onednn_enabled(self):
        x, w, b = torch.randn(3, 4), torch.randn(2, 4), torch.randn(2)
        with torch.no_grad():
            self.assertTrue(onednn_float32(x, w, b))
            self.assertTrue(onednn_float32(x, w, None))  # None operands skipped
            for args in ((x.double(), w, b), (x, w.bfloat16(), b), (x, w, b.half())):
                self.assertFalse(onednn_float32(*args), [t.dtype for t in args])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                self.assertFalse(onednn_float32(x, w, b))
            with torch.backends.mkldnn.flags(enabled=False):
                self.assertFalse(onednn_float32(x, w, b))
        self.assertFalse(onednn_float32(x, w, b))  # a graph


if __name__ == "__main__":
    unittest.main()
