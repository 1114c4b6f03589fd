"""Resume checks: a checkpoint continues only the run that wrote it.

Lightning restores weights, optimizer, scheduler, loops and callbacks from a checkpoint and takes
everything else from the config. A setting that decides the result and differs from the
checkpoint's run (seed, batch size, split, augmentation, net, threads, the CPU contract, ...)
gave a hybrid of two runs; a finished or early-stopped run trained on and rewrote its outputs.
Both are refused here, in one line, before any output is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mlpipe.common.config import plain
from mlpipe.common.errors import ArtifactError, ConfigError
from mlpipe.common.provenance import recorded_dir_hash

#: Data keys that decide the result (paths, loader workers and eval batch size do not).
DATA_KEYS = ("filename", "image_size", "num_classes", "pixel_max", "split", "augment", "batch_size")
#: Trainer keys that decide the result (max_epochs is free: it only says where to stop, and
#: cosine's T_max, which follows it, is compared with the schedule).
TRAINER_KEYS = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "deterministic",
    "limit_train_batches",
    "limit_val_batches",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "check_val_every_n_epoch",
)


def schedule_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved optimizer and scheduler settings a checkpoint's optimizer state belongs to."""
    return {"optimizer": plain(cfg.optimizer), "scheduler": plain(cfg.scheduler)}


def _node(cfg: DictConfig, key: str) -> Any:
    value = cfg.get(key)
    return plain(value) if isinstance(value, DictConfig) else value


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """Everything apart from the schedule that decides the result of a run (stored in the
    checkpoint; a resume must match it). `repro` is the CPU contract, where the config has one."""
    callbacks = cfg.get("callbacks") or {}
    checkpoint = callbacks.get("model_checkpoint") or {}
    return {
        "seed": cfg.seed,
        "data": {key: _node(cfg.data, key) for key in DATA_KEYS},
        "data_md5": recorded_dir_hash(Path(cfg.data.dvc_file)),
        "model": plain(cfg.model),
        "trainer": {key: _node(cfg.trainer, key) for key in TRAINER_KEYS},
        "callbacks": {
            "early_stopping": _node(callbacks, "early_stopping"),
            "model_checkpoint": {k: checkpoint.get(k) for k in ("monitor", "mode")},
        },
        "repro": _node(cfg, "repro"),
    }


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`key: checkpoint <old>, config <new>` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for key in sorted(set(old) | set(new), key=str)
            for line in differences(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix.rstrip('.')}: checkpoint {old!r}, config {new!r}"]


def read_checkpoint(path: str, override: str) -> dict[str, Any]:
    """The checkpoint at `path` (weights only: no pickled code runs), or one-line ArtifactError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to read a user's file: truncated, not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(
            f"{override}: cannot read {path} ({type(err).__name__}: {first}); point ckpt_path at "
            "an intact checkpoint, or train afresh without ckpt_path"
        ) from err


def _stopped_early(ckpt: dict[str, Any]) -> int | None:
    """The epoch at which EarlyStopping ended the checkpoint's run, if it did."""
    for name, state in (ckpt.get("callbacks") or {}).items():
        if str(name).startswith("EarlyStopping") and int(state.get("stopped_epoch") or 0) > 0:
            return int(state["stopped_epoch"])
    return None


def check_not_finished(ckpt: dict[str, Any], cfg: DictConfig) -> None:
    """Refuse to resume a run that already ended: it would train on and rewrite its outputs."""
    where = f"ckpt_path={cfg.ckpt_path}"
    stopped = _stopped_early(ckpt)
    if stopped is not None:
        raise ConfigError(
            f"{where}: early stopping already ended that run at epoch {stopped}: nothing to "
            "resume. Train afresh without ckpt_path (e.g. with a larger "
            "callbacks.early_stopping.patience)"
        )
    done = int(ckpt.get("epoch", -1)) + 1  # last.ckpt is written at the end of an epoch
    if done >= int(cfg.trainer.max_epochs):
        raise ConfigError(
            f"{where}: that run already finished ({done} epochs, trainer.max_epochs="
            f"{cfg.trainer.max_epochs}): nothing to resume. To train longer, raise "
            "trainer.max_epochs (scheduler=none; cosine's T_max follows it); to redo it, train "
            "afresh without ckpt_path"
        )


def check_same_run(ckpt: dict[str, Any], cfg: DictConfig) -> None:
    """Refuse a config whose result-deciding settings differ from the checkpoint's run."""
    stored = ckpt.get("hyper_parameters") or {}
    diffs: list[str] = []
    if stored.get("run_config") is not None:
        diffs += differences(stored["run_config"], run_config(cfg))
    if stored.get("schedule") is not None:
        diffs += differences(stored["schedule"], schedule_config(cfg))
    if diffs:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path}: the config differs from the run that wrote the "
            f"checkpoint ({'; '.join(diffs)}); resume with the checkpoint's values (cosine's "
            "T_max follows trainer.max_epochs), or train afresh without ckpt_path"
        )


def check_resume(ckpt_path: str, cfg: DictConfig) -> None:
    """Every resume check, on one read of the checkpoint."""
    ckpt = read_checkpoint(ckpt_path, f"ckpt_path={cfg.ckpt_path}")
    check_same_run(ckpt, cfg)
    check_not_finished(ckpt, cfg)
