"""Callbacks that make a checkpoint a faithful, portable snapshot of the run.

* `EpochCheckpoint`: Lightning's ModelCheckpoint, but `last.ckpt` is written after every epoch
  (Lightning 2.6 writes it only when a top-k save happens, so `last.ckpt` lagged behind), and the
  paths it stores in the checkpoint are relative to its directory (absolute paths made the bytes
  of a checkpoint depend on where the checkout lives).
* `EpochHistory`: per-epoch training curves, kept in the checkpoint so a resumed run reports the
  whole history (the `dvc plots` file `outputs.curves`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from mlpipe.common.atomic import atomic_write_text, remove_partial

log = logging.getLogger(__name__)

_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


class EpochCheckpoint(ModelCheckpoint):
    """ModelCheckpoint with `last.ckpt` = last completed epoch and path-independent state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_saved_step: int | None = None

    def _save_last_checkpoint(
        self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_saved_step = trainer.global_step

    def _ensure_last(self, trainer: L.Trainer) -> None:
        if self.save_last and self._last_saved_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(
            trainer
        ) and self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(
            trainer
        ) and not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            for path in remove_partial(self.dirpath):  # left by a kill during a save
                log.info("removed the partial checkpoint %s", path)

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self.dirpath) if path and self.dirpath else path

    def _absolute(self, name: str) -> str:
        return os.path.join(self.dirpath, name) if name and self.dirpath else name

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["dirpath"] = "."  # the directory is the one the checkpoint is read back into
        for key in _PATH_KEYS:
            state[key] = self._relative(state[key])
        state["best_k_models"] = {self._relative(k): v for k, v in state["best_k_models"].items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        if state.get("dirpath") == ".":
            state["dirpath"] = self.dirpath
            for key in _PATH_KEYS:
                if key in state:
                    state[key] = self._absolute(state[key])
            state["best_k_models"] = {
                self._absolute(k): v for k, v in state.get("best_k_models", {}).items()
            }
        super().load_state_dict(state)


class EpochHistory(Callback):
    """Collects `metrics` after every validation; saved in (and restored from) checkpoints."""

    def __init__(self, metrics: list[str]) -> None:
        self.metrics = list(metrics)
        self.rows: list[dict[str, float | int]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics
        row: dict[str, float | int] = {"epoch": int(trainer.current_epoch)}
        for name in self.metrics:
            if name in logged:
                row[name] = float(logged[name])
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        row["lr"] = float(lr)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def write_csv(self, path: str | Path, rows: list[dict[str, float | int]] | None = None) -> None:
        """One row per epoch (`rows`, default the current ones); floats as `repr` (shortest
        round-trip, so the bytes are stable)."""
        columns = ["epoch", *(m.replace("/", "_") for m in self.metrics), "lr"]
        handle = io.StringIO()
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in self.rows if rows is None else rows:
            values = [row.get("epoch"), *(row.get(m) for m in self.metrics), row.get("lr")]
            writer.writerow(["" if v is None else repr(v) for v in values])
        atomic_write_text(path, handle.getvalue())
