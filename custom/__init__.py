"""TAT (Task-Adaptive Transformer) all-in-one medical image restoration, packaged for MONAI bundles.

Sub-packages: ``networks`` (the TAT network and its blocks), ``losses``, ``engines``, ``handlers``,
``transforms``, ``data``, ``metrics``. Everything a bundle config references is importable by its full
dotted path, e.g. ``custom.networks.TAT``.
"""

from __future__ import annotations

__version__ = "0.1.0"
