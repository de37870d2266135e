"""Checkpoint save/resume handlers: MONAI's, with atomic writes, a fixed "latest" file and an optional resume."""

from __future__ import annotations

import logging
import os
import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any

from custom.io import atomic_output
from custom.networks.checkpoint import unsafe_checkpoint_reason
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["AtomicDiskSaver", "AtomicCheckpointSaver", "ResumeCheckpointLoader"]


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` writing through :func:`custom.io.atomic_output` (temporary file, ``fsync``,
    ``os.replace``), with an optional fixed file name. With a fixed name, ``remove`` is a no-op: the next save
    replaces the file atomically, so a crash never leaves the folder without a complete checkpoint. Only rank 0
    writes.

    Args:
        dirname: output folder (created if missing).
        filename: fixed file name, or None to use the name ignite proposes.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Any, func: Callable) -> None:
        """Write through :func:`custom.io.atomic_output` (temporary name, ``fsync``, rename), whatever ``atomic``."""
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            func(checkpoint, f, **self.kwargs)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose files are written atomically (temp file + ``os.replace``).

    Adds ``interval_filename``: a fixed name for the interval checkpoint (e.g. ``"latest.pt"``, the file a rerun
    resumes from, replaced in place at every save), and ``state_dict``/``load_state_dict`` of the best-score
    tracking so it can itself be checkpointed. All other arguments are ``CheckpointSaver``'s.

    Args:
        args: positional arguments of ``CheckpointSaver``.
        interval_filename: fixed file name of the interval checkpoint; None keeps MONAI's numbered names.
        kwargs: keyword arguments of ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fixed = {
            "_final_checkpoint": self._final_filename,
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": interval_filename,
        }
        for attr, filename in fixed.items():
            checkpoint = getattr(self, attr, None)
            if checkpoint is not None:  # swap MONAI's non-atomic saver for the atomic one, same file naming
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=filename)

    def state_dict(self) -> dict:
        """State of the key-metric tracking (best score and file so far), the counterpart of MONAI's
        ``load_state_dict``: put this saver in the resume checkpoint so that a resumed run does not overwrite a
        better best model with its first validation.

        Returns:
            ignite ``Checkpoint.state_dict()`` of the key-metric checkpoint (empty when not saving by key metric).
        """
        if self._key_metric_checkpoint is None:
            return {}
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the key-metric tracking saved by :meth:`state_dict` (no-op for an empty state).

        Args:
            state_dict: output of :meth:`state_dict`.
        """
        if state_dict:
            super().load_state_dict(state_dict)


class SafeCheckpointLoader(CheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` (``weights_only=True``) whose errors name the checkpoint file.

    Raises:
        ValueError: the file would need to run code to load (refused), is unreadable, or does not match the objects
            to restore.
    """

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{self.load_path}: cannot be loaded safely as a weights-only checkpoint "
                f"({unsafe_checkpoint_reason(e)})."
            ) from e
        except RuntimeError as e:
            raise ValueError(f"{self.load_path}: does not match the network or training state ({e}).") from e
        except (KeyError, IndexError, EOFError, ValueError, TypeError, AttributeError, struct.error, OSError) as e:
            # torch's unpickler on a file that is no checkpoint at all; MONAI on one that holds another object (a
            # list: TypeError) or lacks one of the objects to restore (ValueError)
            raise ValueError(
                f"{self.load_path}: unreadable checkpoint, or not one of these objects ({type(e).__name__}: {e})."
            ) from e


class ResumeCheckpointLoader(SafeCheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` that attaches only when ``load_path`` exists (resume if a previous
    run left a checkpoint, start fresh otherwise). Loads with ``weights_only=True`` like its parent.

    Args:
        load_path: checkpoint file, e.g. ``<ckpt_dir>/latest.pt``.
        load_dict: objects to restore (network, EMA, loss, optimizer, lr scheduler, trainer, RNG).
        kwargs: other ``CheckpointLoader`` arguments (``map_location``, ``strict``...).
    """

    def __init__(self, load_path: str, load_dict: dict, **kwargs: Any) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, **kwargs)

    def attach(self, engine: Engine) -> None:
        """Attach the loader if the checkpoint exists; log the decision either way.

        Args:
            engine: the trainer.
        """
        logger = logging.getLogger(self._name) if self._name else engine.logger
        if os.path.isfile(self.load_path):
            logger.info(f"Resuming from {self.load_path}.")
            super().attach(engine)
        else:
            logger.info(f"No checkpoint at {self.load_path}: starting a new training.")
