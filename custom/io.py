"""Atomic file output: write to a temporary name beside the destination, then rename it into place.

Files and folders created this way get the permissions a plain ``open()`` / ``mkdir`` would give them under the
user's umask (``0o666 & ~umask`` for files, ``0o777 & ~umask`` for folders), not the ``0o600`` / ``0o700`` of
:mod:`tempfile`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "atomic_output",
    "atomic_output_dir",
    "current_umask",
    "default_mode",
    "fsync_path",
    "write_text_atomic",
    "write_json_atomic",
]

_UMASK_LOCK = threading.Lock()


def _suffix(path: str) -> str:
    name = os.path.basename(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status`` on Linux).

    Elsewhere it is read by setting and restoring it under a lock (``os.umask`` has no read-only form).

    Returns:
        the umask, e.g. ``0o022``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Permissions a new file (``0o666 & ~umask``) or folder (``0o777 & ~umask``) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


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
    right after the call does not leave an empty or partial file under ``path`` either. The file gets the
    permissions of the user's umask (``0o666 & ~umask``) before the rename.

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
        os.chmod(tmp, default_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(folder, directory=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; move it onto ``path`` if the block succeeds.

    Every file left in the folder is flushed (``fsync``) before the move; the folder gets ``0o777 & ~umask``
    and its files ``0o666 & ~umask``. With ``overwrite``, an existing ``path`` (file or folder) is moved aside
    first and removed after the new one is in place. If the block raises, ``path`` is untouched and the
    temporary folder removed.

    Args:
        path: the final folder.
        overwrite: replace an existing ``path``.

    Yields:
        The temporary folder to write into.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path}: output exists; set overwrite=true to replace it.")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_", dir=parent)
    old = None
    try:
        yield tmp
        file_mode = default_mode()
        for root, _, files in os.walk(tmp):
            for name in files:
                os.chmod(os.path.join(root, name), file_mode)
                fsync_path(os.path.join(root, name))
            os.chmod(root, default_mode(directory=True))
        fsync_path(tmp, directory=True)
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=".old_", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        try:
            os.replace(tmp, path)
        except OSError:
            if old:  # put the previous output back
                os.replace(os.path.join(old, "previous"), path)
            raise
        fsync_path(parent, directory=True)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return os.fspath(path)


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN / inf) and mapping keys as strings; a copy."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: Any) -> str:
    """Write ``data`` to ``path`` as JSON, atomically: the bundle's one JSON writer (data lists, reports, summaries).

    Indented by 2, keys in their given order (not sorted), a trailing newline; NaN / inf floats become ``null``.
    The document is serialised before the file is touched, so a value JSON cannot hold leaves the old file as it was.

    Args:
        path: destination file.
        data: JSON-serialisable value (dicts, lists, strings, numbers, bools, None); not modified.

    Returns:
        ``path`` as a string.

    Raises:
        TypeError: ``data`` holds a value JSON cannot represent (nothing is written).
    """
    return write_text_atomic(path, json.dumps(_json_safe(data), indent=2) + "\n")
