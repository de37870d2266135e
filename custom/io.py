"""Atomic file output: write to a temporary name beside the destination, then rename it into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["atomic_output", "fsync_path", "write_text_atomic"]


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a written file's data, or a folder's entries, to disk.

    Args:
        path: the file or folder.
        directory: ``path`` is a folder: best effort (folders cannot be opened for ``fsync`` on Windows).

    Raises:
        OSError: a file cannot be opened or flushed.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name in ``path``'s folder; rename it onto ``path`` if the block succeeds.

    The temporary name keeps ``path``'s extension (writers such as nibabel choose the format by it). If the
    block raises, or the process is killed, nothing appears under ``path`` (an existing file stays as it was)
    and the temporary file is removed where possible. The destination folder is created if needed. The file's
    data is flushed to disk (``fsync``) before the rename and the folder entry after it, so that a power loss
    right after the call does not leave an empty or partial file under ``path`` either.

    Args:
        path: the final destination.

    Yields:
        The temporary path to write to.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=_suffix(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(folder, directory=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return os.fspath(path)
