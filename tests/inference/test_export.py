"""Export of the tiny TAT: ``monai.bundle ckpt_export`` (TorchScript by tracing), ONNX + onnxruntime, and
``monai.bundle verify_net_in_out`` with the metadata's ``network_data_format``.

Findings pinned here (see ``custom/export.py``): the traced model equals eager at the traced shape, local
windows included; it is not valid at other shapes; ONNX works where attention is global and is refused, with
a clear error, where local windows are active.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from custom.export import export_onnx, trace_network
from tests.inference.helpers import BUNDLE, INFERENCE_CONFIG, TINY_OVERRIDES, run_cli, save_checkpoint, tiny_net

META = os.path.join(BUNDLE, "configs", "metadata.json")
TRACE_SIZE = 64  # > 1.5 * 32: the local-window branch is active in the tiny net at this size

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = str(tmp_path_factory.mktemp("export"))
    net = save_checkpoint(os.path.join(tmp, "model.pt"), seed=1)
    ts_path = os.path.join(tmp, "model.ts")
    run = run_cli("ckpt_export", "network_def", "--filepath", ts_path, "--ckpt_file", os.path.join(tmp, "model.pt"),
                  "--key_in_ckpt", "model", "--meta_file", META, "--config_file", INFERENCE_CONFIG,
                  "--bundle_root", BUNDLE, "--use_trace", "True", "--input_shape", f"[1,1,{TRACE_SIZE},{TRACE_SIZE}]",
                  *TINY_OVERRIDES, cwd=tmp)
    return {"tmp": tmp, "net": net, "run": run, "ts_path": ts_path}


@pytest.mark.slow
def test_ckpt_export_traced_equals_eager_at_export_size(exported: dict) -> None:
    assert exported["run"].returncode == 0, exported["run"].stderr[-3000:]
    ts = torch.jit.load(exported["ts_path"])
    x = torch.rand(1, 1, TRACE_SIZE, TRACE_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = exported["net"](x), ts(x)
    assert float((out - ref).abs().max()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 1, 40, 40), (2, 1, TRACE_SIZE, TRACE_SIZE)])
def test_traced_model_is_only_valid_at_export_shape(exported: dict, shape: tuple) -> None:
    """Documented limit: another size or batch size raises or gives other values than eager."""
    assert exported["run"].returncode == 0, exported["run"].stderr[-3000:]
    ts = torch.jit.load(exported["ts_path"])
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = exported["net"](x)
        try:
            out = ts(x)
        except RuntimeError:
            return
    assert out.shape != ref.shape or float((out - ref).abs().max()) > 1e-4


def test_trace_network_matches_eager_per_size() -> None:
    net = tiny_net(2)
    for size in ((40, 40), (56, 72)):
        ts = trace_network(net, (1, 1, *size))
        x = torch.rand(1, 1, *size)
        with torch.no_grad():
            assert float((ts(x) - net(x)).abs().max()) < 1e-4


def test_onnx_matches_eager(tmp_path) -> None:
    net = tiny_net(3)
    path = export_onnx(net, tmp_path / "model.onnx", (1, 1, 40, 48))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 1, 40, 48)
    with torch.no_grad():
        ref = net(x).numpy()
    (out,) = session.run(None, {"image": x.numpy()})
    assert np.abs(out - ref).max() < 1e-4


def test_onnx_refuses_local_windows(tmp_path) -> None:
    with pytest.raises(ValueError, match="local windows"):
        export_onnx(tiny_net(), tmp_path / "model.onnx", (1, 1, TRACE_SIZE, TRACE_SIZE))
    assert not os.listdir(tmp_path)  # no partial file left


@pytest.mark.slow
def test_verify_net_in_out(tmp_path) -> None:
    run = run_cli("verify_net_in_out", "network_def", "--meta_file", META, "--config_file", INFERENCE_CONFIG,
                  "--bundle_root", BUNDLE, "-n", "4", "--any", "8", *TINY_OVERRIDES, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "verified with no error" in run.stdout + run.stderr
