"""Checkpoint writes that are atomic on any filesystem (the Trainer's `plugins`)."""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlpipe.common.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose save goes through a temp file beside the target, fsync, rename.

    Lightning's own save stages the bytes in `$TMPDIR` and, across filesystems, copies them over
    the target: a kill during that copy left a 0-byte `last.ckpt` (see `mlpipe.common.atomic`).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getvalue())
