"""The bundle's one checkpoint loader: every checkpoint layout the bundle writes, read safely (``weights_only``).

Used by inference (:mod:`custom.inference.restore`), the task statistics (:mod:`custom.handlers.task_statistics`),
the export wrapper (:mod:`custom.export`), the tools and the apps.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from custom.networks.convert import convert_reference_state_dict, unwrap_reference_state

__all__ = [
    "unsafe_checkpoint_reason",
    "is_state_dict",
    "read_checkpoint",
    "checkpoint_weights",
    "load_checkpoint",
    "load_reference_checkpoint",
]

logger = logging.getLogger(__name__)


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to tensors (a state dict)."""
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """What a checkpoint file holds, loaded safely (``torch.load(..., weights_only=True)``: tensors and containers).

    Args:
        path: checkpoint file.
        map_location: device the tensors are loaded to.

    Returns:
        the loaded object (a dict for every layout the bundle writes).

    Raises:
        ValueError: missing file, unsafe content (would need to run code) or an unreadable file; the message names it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: checkpoint not found (no such file).")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: cannot be loaded safely as a weights-only checkpoint ({unsafe_checkpoint_reason(e)})."
        ) from e
    except Exception as e:  # torch's unpickler fails on junk with KeyError, IndexError, UnicodeDecodeError, ...
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}).") from e


def unsafe_checkpoint_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that says why: the global it would import, else the unpickler's
    error (``Unsupported operand 149``: another pickle protocol or not a checkpoint), else the first line.

    Torch's first line suggests loading with ``weights_only=False``, which would run the file's code.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return line
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            tail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return tail or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else type(error).__name__


def checkpoint_weights(
    state: Any, path: str, weights: str = "ema", model_key: str = "model"
) -> Mapping[str, torch.Tensor]:
    """The network state dict inside any checkpoint layout the bundle writes (see :func:`load_checkpoint`).

    Args:
        state: what ``torch.load`` returned.
        path: file name for messages.
        weights: ``"ema"`` or ``"network"`` for a training checkpoint.
        model_key: key of the weights in a ``{"model": ...}`` checkpoint.

    Returns:
        the state dict (names -> tensors).

    Raises:
        ValueError: no state dict in any known place.
    """
    if is_state_dict(state):
        return state
    if isinstance(state, Mapping) and isinstance(state.get("network"), Mapping):  # the trainer's latest.pt
        ema = state.get("ema")
        if weights == "ema" and isinstance(ema, Mapping) and is_state_dict(ema.get("ema_model")):
            logger.info("%s: training checkpoint, loading its EMA weights (the model validated and kept).", path)
            return ema["ema_model"]
        if weights == "ema":
            logger.warning("%s: training checkpoint without EMA weights, loading the raw network weights.", path)
        else:
            logger.info("%s: training checkpoint, loading the raw network weights (not the EMA).", path)
        state = state["network"]
    elif isinstance(state, Mapping) and isinstance(state.get(model_key), Mapping):  # model.pt (+ task statistics)
        state = state[model_key]
    elif isinstance(state, Mapping) and is_state_dict(state.get("ema_model")):  # latest.pt's "ema" entry alone
        state = state["ema_model"]
    if not is_state_dict(state):
        raise ValueError(
            f"{path}: expected a state dict, {{'{model_key}': state dict, ...}} or a training checkpoint "
            f"{{'network': ..., 'ema': {{'ema_model': ...}}, ...}}, got "
            + (
                f"a dict with keys {sorted(map(str, state))[:10]}."
                if isinstance(state, Mapping)
                else f"{type(state).__name__}."
            )
        )
    return state


def load_checkpoint(
    network: torch.nn.Module,
    path: str | os.PathLike,
    map_location: Any = "cpu",
    weights: str = "ema",
    model_key: str = "model",
) -> torch.nn.Module:
    """Load a weights-only checkpoint into ``network`` (strict names and shapes): the bundle's one checkpoint loader.

    Accepts every layout the bundle writes: a bare state dict; ``{"model": state dict}`` (the best-model saver's
    ``model.pt``), also with ``"task_statistics"``; the trainer's ``latest.pt``
    (``{"network": ..., "ema": {"ema_model": ...}, "optimizer": ...}``), from which the EMA weights are loaded by
    default (the EMA model is the one validated and kept as ``model.pt``; logged) or the raw network's with
    ``weights="network"``; its ``"ema"`` entry alone (``{"ema_model": ...}``) too. Weights under the published TAT
    code's names (``custom.networks.convert``) are converted when they do not load as they are (logged).

    Args:
        network: the network built from the config's ``network_def``.
        path: checkpoint file.
        map_location: device the tensors are loaded to.
        weights: ``"ema"`` or ``"network"``: which weights of a training checkpoint.
        model_key: key of the weights in a ``{"model": ...}`` checkpoint.

    Returns:
        ``network`` (modified in place).

    Raises:
        ValueError: missing or unsafe file (would need to run code), an unknown layout or ``weights``, or weights
            that do not match the network.
    """
    if weights not in ("ema", "network"):
        raise ValueError(f"weights must be 'ema' or 'network', got {weights!r}.")
    path = os.fspath(path)
    state = checkpoint_weights(read_checkpoint(path, map_location), path, weights, model_key)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        try:
            converted = convert_reference_state_dict(state, network)
        except ValueError:
            raise ValueError(f"{path}: does not match the network ({e}).") from e
        network.load_state_dict(converted)
        logger.info("%s: weights under the published TAT names, converted.", path)
    return network


def load_reference_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint saved by the published TAT training script and convert it.

    Accepts a plain state dict, one wrapped under a key such as ``state_dict``/``params_ema``/``model``,
    an EMA wrapper's state (``ema_model.*`` keys) and ``module.`` prefixes. Loading uses
    the bundle's one safe reader (:func:`read_checkpoint`, ``weights_only=True``): a file that would execute code is
    refused.

    Args:
        path: the ``.pth`` file.
        model: target network (see :func:`convert_reference_state_dict`).

    Returns:
        This package's state dict.

    Raises:
        ValueError: unreadable or unsafe file, or keys/shapes that do not match (naming them).
    """
    path = os.fspath(path)
    obj = read_checkpoint(path)
    try:
        return convert_reference_state_dict(unwrap_reference_state(obj, path), model)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
