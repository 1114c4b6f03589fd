"""A callback for the resume tests: signals its own process at a given (epoch, batch).

Loaded into a real `mlpipe-train` process through a Hydra override
(`+callbacks.kill._target_=kill_callback.KillAt`, with this folder on PYTHONPATH). SIGKILL (the
default): no cleanup, no checkpoint on the way out, exactly what a power cut or the OOM killer
does. `+callbacks.kill.signum=15`: the SIGTERM a scheduler or `kill` sends.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGKILL) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and idx == self.batch:
            os.kill(os.getpid(), self.signum)
