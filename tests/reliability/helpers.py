"""Shared helpers of the reliability tests: hashing input trees, running the bundle CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def tree_hashes(root: str) -> dict[str, str]:
    """sha256 and mode of every file under ``root`` (relative path -> digest), to prove inputs are untouched."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = f"{digest}:{oct(os.stat(path).st_mode)}:{os.stat(path).st_mtime_ns}"
    return out


def run_module(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the repository root with single-threaded maths; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
