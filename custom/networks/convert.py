"""Checkpoint conversion: the published TAT code's parameter names -> this package's."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

__all__ = ["convert_reference_state_dict", "unwrap_reference_state", "REFERENCE_RULES"]

# (pattern on the published key, replacement, reshape of the tensor or None). Applied in order; the first
# matching rule wins; keys no rule matches keep their name (qkv, project_in/out, temperature, reduce_*, output).
_Reshape = Callable[[torch.Tensor], torch.Tensor]


def _dw_kernel(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[1], 1, *t.shape[3:])  # (1, C, 1, k, k) -> (C, 1, k, k)


def _gate(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)  # (1, C, 1, 1, 1) -> (C,)


REFERENCE_RULES: list[tuple[str, str, _Reshape | None]] = [
    (r"^patch_embed\.proj\.weight$", "patch_embed.weight", None),
    (r"^(.+)\.norm([12])\.body\.(weight|bias)$", r"\1.norm\2.\3", None),
    (r"^(.+)\.attn\.dw_kernel$", r"\1.attn.qkv_dwconv.weight", _dw_kernel),
    (r"^(.+)\.attn\.lambda_dw$", r"\1.attn.qkv_dwconv.gate", _gate),
    (r"^(.+)\.ffn\.dw_kernel$", r"\1.ffn.dwconv.weight", _dw_kernel),
    (r"^(.+)\.ffn\.lambda_dw$", r"\1.ffn.dwconv.gate", _gate),
    (r"^((?:down|up)\d_\d)\.body\.0\.weight$", r"\1.conv.weight", None),
    (r"^tren\.E\.(.+)$", r"task_kernels.features.\1", None),
    (r"^tren\.mlp\.(.+)$", r"task_kernels.mlp.\1", None),
    (r"^tren\.kernel_(\w+?)_(attn|ffn)\.0\.weight$", r"task_kernels.heads.\1.\2.weight", None),
]
_COMPILED = [(re.compile(p), r, f) for p, r, f in REFERENCE_RULES]

# wrappers seen around state dicts: training scripts, EMA libraries, (Distributed)DataParallel.
_WRAPPER_KEYS = ("params_ema", "ema", "model_ema", "state_dict", "model", "params", "net", "generator", "network")
_PREFIXES = ("ema_model.", "module.", "model.", "_orig_mod.")


def _rename(key: str) -> tuple[str, _Reshape | None]:
    for pattern, repl, reshape in _COMPILED:
        if pattern.match(key):
            return pattern.sub(repl, key), reshape
    return key, None


def _expected_shapes(model: nn.Module | None) -> dict[str, torch.Size]:
    if model is None:
        from custom.networks.tat import TAT

        with torch.device("meta"):
            model = TAT()
    return {k: v.shape for k, v in model.state_dict().items()}


def _fmt(keys: list[str], limit: int = 10) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Rename (and reshape where needed) a state dict of the published TAT code for :class:`~custom.networks.TAT`.

    Strict: every published key must map to a parameter of ``model`` with the same number of values and
    the right shape, and every parameter of ``model`` must be provided.

    Args:
        state_dict: published parameter names -> tensors (e.g. ``encoder_level1.0.attn.qkv.weight``,
            ``latent.0.ffn.dw_kernel``, ``tren.kernel_latent_attn.0.weight``).
        model: the target network, for its names and shapes; default: ``TAT()`` at the published
            hyper-parameters (built on the meta device, no memory).

    Returns:
        A new dict, this package's names -> tensors, ready for ``model.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: naming the unexpected keys (no such parameter here), the missing ones and those whose
            shapes differ.
    """
    expected = _expected_shapes(model)
    out: dict[str, torch.Tensor] = {}
    unexpected, misshaped = [], []
    for key, value in state_dict.items():
        new_key, reshape = _rename(key)
        if new_key not in expected:
            unexpected.append(key)
            continue
        target = expected[new_key]
        if reshape is not None and value.numel() == target.numel():
            value = reshape(value)
        if value.shape != target:
            misshaped.append(f"{key} {tuple(value.shape)} -> {new_key} expects {tuple(target)}")
            continue
        out[new_key] = value
    missing = [k for k in expected if k not in out and k not in {_rename(s)[0] for s in state_dict}]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_fmt(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_fmt(missing)}")
    if misshaped:
        problems.append(f"{len(misshaped)} key(s) with a different shape: {_fmt(misshaped)}")
    if problems:
        raise ValueError(
            "the checkpoint does not match this TAT's architecture or hyper-parameters: " + "; ".join(problems)
        )
    return out


def unwrap_reference_state(obj: object, path: str) -> dict[str, torch.Tensor]:
    """The published-name state dict inside a loaded checkpoint: up to three wrapper levels (``_WRAPPER_KEYS``, also
    beside counters such as ``{"params_ema": ..., "iter": tensor}``), EMA wrappers' ``ema_model.*`` and prefixes.

    Raises:
        ValueError: naming ``path``, when no mapping of tensors is found.
    """
    for _ in range(3):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors found (top-level keys: {_fmt(sorted(map(str, obj)))}).")
    ema = {k[len("ema_model.") :]: v for k, v in tensors.items() if k.startswith("ema_model.")}
    if ema:  # an EMA wrapper's state (ema_model.* and online_model.*): keep the averaged weights
        tensors = ema
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors
