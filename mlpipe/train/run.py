"""Training entry point: `train(cfg) -> metrics` does the work, `main()` is the Hydra wrapper.

    mlpipe-train                                  # defaults: CNN, AdamW + cosine, CPU, CSV logs
    mlpipe-train model=mlp optimizer.lr=1e-3      # overrides
    mlpipe-train -m optimizer.lr=1e-3,3e-3        # sweep (each job writes under its sweep dir)
    mlpipe-train hydra.run.dir=<dir of a run> ckpt_path=last   # resume that run
    mlpipe-train trainer=ddp                      # Lightning DDP, 2 CPU processes (gloo)

Outputs: `outputs.best_checkpoint` / `outputs.last_checkpoint`, the deterministic metrics JSON
(`outputs.metrics`, DVC metrics), the per-epoch curves (`outputs.curves`, DVC plots) and a
separate timing JSON (`outputs.timing`). Only `pipeline=true` (the DVC stage) writes them at the
checkout's tracked paths; every other run writes them under its own Hydra run directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from mlpipe import config_dir
from mlpipe.common import repro
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, is_int, plain, require
from mlpipe.common.errors import ArtifactMissingError, ConfigError
from mlpipe.data import validate_data_cfg
from mlpipe.train.callbacks import EpochHistory
from mlpipe.train.nets import ACTIVATIONS

log = logging.getLogger(__name__)


def validate_config(cfg: DictConfig) -> None:
    """Reject invalid values before any work starts; each error names its config key."""
    require(
        is_int(cfg.seed) and cfg.seed >= 0, "seed", f"must be an integer >= 0, got {cfg.seed!r}"
    )
    validate_data_cfg(cfg.data)
    net = cfg.model.net
    for key in ("image_size", "num_classes"):
        require(
            net[key] == cfg.data[key],
            f"model.net.{key}",
            f"must equal data.{key} ({cfg.data[key]}), got {net[key]}",
        )
    require(
        net.activation in ACTIVATIONS,
        "model.net.activation",
        f"must be one of {list(ACTIVATIONS)}, got {net.activation!r}",
    )
    dropout = as_float(net.dropout, "model.net.dropout")
    require(0.0 <= dropout < 1.0, "model.net.dropout", f"must be in [0, 1), got {net.dropout}")
    lr = as_float(cfg.optimizer.lr, "optimizer.lr")
    require(lr > 0, "optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
    epochs = cfg.trainer.max_epochs
    require(
        is_int(epochs) and epochs > 0,
        "trainer.max_epochs",
        f"must be an integer > 0, got {epochs!r}",
    )
    repro.validate(cfg.repro)
    require(
        str(cfg.optimized_metric).startswith("val_"),
        "optimized_metric",
        f"must name a validation metric of metrics.json (val_...), got {cfg.optimized_metric!r}",
    )
    require(
        cfg.scheduler.interval in ("epoch", "step"),
        "scheduler.interval",
        f"must be 'epoch' or 'step', got {cfg.scheduler.interval!r}",
    )


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`: null (fresh run), "last" (`outputs.last_checkpoint`) or a checkpoint file."""
    if cfg.ckpt_path is None:
        return None
    path = Path(cfg.outputs.last_checkpoint if cfg.ckpt_path == "last" else cfg.ckpt_path)
    if not path.is_file():
        raise ArtifactMissingError(
            f"ckpt_path={cfg.ckpt_path}: {path} not found; train once first (`mlpipe-train`) or "
            "drop the ckpt_path override"
        )
    return str(path)


def schedule_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved optimizer and scheduler settings a checkpoint's optimizer state belongs to."""
    return {"optimizer": plain(cfg.optimizer), "scheduler": plain(cfg.scheduler)}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for key in sorted(set(old) | set(new), key=str)
            for line in _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix.rstrip('.')}: checkpoint {old!r}, config {new!r}"]


def check_resume_schedule(ckpt_path: str, cfg: DictConfig) -> None:
    """Refuse to resume with an optimizer/scheduler config other than the checkpoint's.

    Lightning restores the optimizer and scheduler state from the checkpoint, so a changed
    setting (say T_max, which follows trainer.max_epochs) would be silently ignored and the
    learning rate would rise again after the old schedule's end.
    """
    stored = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    old = (stored.get("hyper_parameters") or {}).get("schedule")
    diffs = _differences(old, schedule_config(cfg)) if old is not None else []
    if diffs:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path}: the learning-rate schedule differs from the checkpoint's "
            f"({'; '.join(diffs)}); resume with the checkpoint's settings (cosine's T_max follows "
            "trainer.max_epochs), or train afresh without ckpt_path"
        )


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` node of a callbacks/logger group (order kept)."""
    if not group:
        return []
    return [
        instantiate(node)
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """The data module, model and trainer the config describes (objects from `instantiate`)."""
    datamodule: L.LightningDataModule = instantiate(cfg.data, seed=int(cfg.seed))
    scheduler = cfg.scheduler.scheduler
    model: L.LightningModule = instantiate(
        cfg.model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler is not None else None,
        scheduler_interval=cfg.scheduler.interval,
        scheduler_monitor=cfg.scheduler.monitor,
        schedule=schedule_config(cfg),
        cpu_contract=repro.record(cfg.repro),  # provenance: the kernels these weights came from
    )
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, model, trainer


def keep_best(trainer: L.Trainer, cfg: DictConfig) -> str:
    """Copy the best checkpoint to `outputs.best_checkpoint`; its path ('' if none was written)."""
    checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    target = Path(cfg.outputs.best_checkpoint)
    if not best_path:
        log.warning(
            "no best checkpoint was written (fast_dev_run or no ModelCheckpoint "
            "callback); testing the final weights"
        )
    elif trainer.is_global_zero and Path(best_path).resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best_path, target)
    return best_path


def run_metrics(
    trainer: L.Trainer,
    results: dict[str, float],
    cfg: DictConfig,
    data_md5: str,
    val_acc_best: Any,
) -> dict[str, Any]:
    """The deterministic metrics (DVC metrics): no wall time in here. `val_acc_best` is read
    right after fit: `trainer.test` replaces the callback metrics."""
    return {
        "test_acc": float(results["test/acc"]) if results else None,
        "test_loss": float(results["test/loss"]) if results else None,
        "val_acc_best": float(val_acc_best) if val_acc_best is not None else None,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "seed": int(cfg.seed),
        "data_md5": data_md5,
    }


def run_timing(
    trainer: L.Trainer, train_wall_s: float, test_wall_s: float, n_train: int
) -> dict[str, Any]:
    """Wall times and rates, kept apart from the metrics (they vary run to run)."""
    epochs = int(trainer.current_epoch)
    return {
        "train_wall_s": round(train_wall_s, 3),
        "test_wall_s": round(test_wall_s, 3),
        "train_samples_per_s": round(n_train * epochs / train_wall_s, 1)
        if train_wall_s > 0
        else None,
        "world_size": int(trainer.world_size),
        "torch_threads": torch.get_num_threads(),
    }


def write_outputs(
    trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any], timing: dict[str, Any]
) -> None:
    """Metrics, timing and the per-epoch curves, from rank 0 only."""
    if not trainer.is_global_zero:
        return
    write_json(cfg.outputs.metrics, metrics)
    write_json(cfg.outputs.timing, timing)
    history = next((cb for cb in trainer.callbacks if isinstance(cb, EpochHistory)), None)
    if history is not None:
        history.write_csv(cfg.outputs.curves)
    log.info(
        "test_acc=%s test_loss=%s train_wall_s=%.1f best=%s",
        metrics["test_acc"],
        metrics["test_loss"],
        timing["train_wall_s"],
        cfg.outputs.best_checkpoint,
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test on the best checkpoint, write checkpoints and metrics; return the metrics.

    Returns the deterministic metrics (`test_acc`, `test_loss`, `val_acc_best`, `epochs`,
    `global_step`, `seed`, `data_md5`) merged with the timing figures (`train_wall_s`, ...).
    """
    validate_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is not None:
        check_resume_schedule(ckpt_path, cfg)
    # the contract's variables are set by entry_point (repro.apply) before torch loads; the thread
    # count again here for in-process callers (a reduction's split follows it)
    repro.guard(cfg.repro, Path(cfg.paths.root_dir), cfg.outputs.values())
    repro.set_threads(cfg.repro)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)

    start = time.perf_counter()
    # weights_only=True: no pickled code from a checkpoint runs
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_wall_s = time.perf_counter() - start
    val_acc_best = trainer.callback_metrics.get("val/acc_best")  # before test() replaces them
    best_path = keep_best(trainer, cfg)

    results: dict[str, float] = {}
    start = time.perf_counter()
    if cfg.test:
        results = trainer.test(
            model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True
        )[0]
    test_wall_s = time.perf_counter() - start

    metrics = run_metrics(trainer, results, cfg, datamodule.data_md5, val_acc_best)
    timing = run_timing(trainer, train_wall_s, test_wall_s, len(datamodule.datasets["train"]))
    write_outputs(trainer, cfg, metrics, timing)
    return {**metrics, **timing}


def isolate_run(cfg: DictConfig) -> None:
    """Unless `pipeline=true` (the DVC stage), send checkpoints and reports to the Hydra run (or
    sweep job) directory: quick runs, fast_dev_run, experiments and sweeps never overwrite the
    pipeline's tracked outputs, nor each other's. A `-m` sweep is never the pipeline."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if cfg.pipeline and not multirun:
        return
    job_dir = Path(hydra_cfg.runtime.output_dir)
    with open_dict(cfg):
        cfg.paths.checkpoint_dir = str(job_dir / "checkpoints")
        cfg.paths.reports_dir = str(job_dir / "reports")
    log.info("outputs under %s (pipeline=true writes the DVC-tracked paths)", job_dir)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@entry_point
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper; returns `metrics[optimized_metric]` (best validation metric) for sweepers:
    tuning on the test split would make the test score meaningless."""
    isolate_run(cfg)
    return train(cfg)[str(cfg.optimized_metric)]


if __name__ == "__main__":
    main()
