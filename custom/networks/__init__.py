"""The TAT network, its blocks and checkpoint conversion from the published code."""

from __future__ import annotations

from custom.networks.checkpoint import load_reference_checkpoint
from custom.networks.convert import convert_reference_state_dict
from custom.networks.tat import TAT

__all__ = ["TAT", "convert_reference_state_dict", "load_reference_checkpoint"]
