"""TAT (Task-Adaptive Transformer) all-in-one medical image restoration, packaged for MONAI bundles.

Layers, bottom to top (imports flow down only; ``tests/test_layering.py`` checks it): ``settings`` and ``io``;
``data``; ``transforms``; ``networks`` (with the one checkpoint loader) and ``losses``; ``engines``, ``handlers``
and ``metrics``; ``inference``, ``evaluation`` and ``export``; ``tools`` (demo, demo data, data-list command,
packaging, interference probe, task-statistics command). Everything a bundle config references is importable by its
full dotted path, e.g. ``custom.networks.TAT``.
"""

from __future__ import annotations

__version__ = "0.1.0"
