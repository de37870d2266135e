"""The closed-form reference weights and test images behind tests/data/golden (our own version of the formula).

Each tensor of the published state dict (sorted by key, index j) gets values from its position alone:
``u_i = 2 * frac(|sin(12.9898 i + 78.233 j)| * 43758.5453) - 1`` in float64, then per kind of tensor:
temperature ``1 + 0.1 u``, lambda_dw ``0.2 u``, 1-D weights (layer-norm scales) ``1 + 0.1 u``, other 1-D
tensors ``0.02 u``, everything else ``u * sqrt(3 / fan_in)`` with fan_in 9 for dw_kernel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"


def reference_shapes() -> dict[str, list[int]]:
    """The published model's state-dict keys and shapes (575 tensors)."""
    return json.loads((GOLDEN_DIR / "reference_state_dict_shapes.json").read_text())


def formula_weights(shapes: dict[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Reference-named float32 tensors filled by the closed formula."""
    shapes = reference_shapes() if shapes is None else shapes
    weights = {}
    for j, key in enumerate(sorted(shapes)):
        shape = shapes[key]
        n = math.prod(shape)
        i = torch.arange(n, dtype=torch.float64)
        u = 2 * torch.frac(torch.abs(torch.sin(12.9898 * i + 78.233 * j)) * 43758.5453) - 1
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("temperature",) or (len(shape) == 1 and leaf == "weight"):
            v = 1.0 + 0.1 * u
        elif leaf == "lambda_dw":
            v = 0.2 * u
        elif len(shape) == 1:
            v = 0.02 * u
        else:
            fan_in = 9 if leaf == "dw_kernel" else n // shape[0]
            v = u * math.sqrt(3.0 / fan_in)
        weights[key] = v.reshape(shape).float()
    return weights


def golden_image(size: int) -> torch.Tensor:
    """The smooth ``(1, 1, size, size)`` float32 input image."""
    r = torch.arange(size, dtype=torch.float64)
    y, x = torch.meshgrid(r, r, indexing="ij")
    img = 0.5 + 0.3 * torch.sin(x / 7.0) * torch.cos(y / 11.0) + 0.1 * torch.sin((x + 2 * y) / 3.0)
    return img.float()[None, None]


def golden_pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored golden input and output for ``size`` (128 or 200)."""
    x = torch.from_numpy(np.load(GOLDEN_DIR / f"golden_in_{size}.npy"))
    y = torch.from_numpy(np.load(GOLDEN_DIR / f"golden_out_{size}.npy"))
    return x, y
