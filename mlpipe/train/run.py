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

import inspect
import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir
from mlpipe.common import repro
from mlpipe.common.atomic import atomic_write, atomic_write_text
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, is_int, require
from mlpipe.common.errors import ArtifactMissingError, ConfigError, UnavailableError, UserError
from mlpipe.data import validate_data_cfg
from mlpipe.data.digits import verify_committed
from mlpipe.train.callbacks import EpochHistory
from mlpipe.train.checkpoint_io import AtomicCheckpointIO
from mlpipe.train.nets import ACTIVATIONS
from mlpipe.train.resume import check_resume, run_config, schedule_config

log = logging.getLogger(__name__)

#: Exit status after SIGTERM, as a shell reports a process the signal ended (128 + 15).
SIGTERM_EXIT = 128 + signal.SIGTERM


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
    dropout = number(net.dropout, "model.net.dropout")
    require(0.0 <= dropout < 1.0, "model.net.dropout", f"must be in [0, 1), got {net.dropout}")
    validate_optimizer(cfg.optimizer)
    validate_trainer(cfg.trainer)
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


def number(value: Any, key: str) -> float:
    """A real number from the config; a quoted string (`optimizer.lr='1e-3'`) is refused too:
    torch would fail on it deep inside the first optimizer step."""
    require(
        not isinstance(value, str | bool), key, f"must be a number, got {value!r} (drop the quotes)"
    )
    return as_float(value, key)


def validate_optimizer(opt: DictConfig) -> None:
    """Every key a parameter of `opt._target_`; lr > 0; the other numbers >= 0."""
    try:
        accepted = inspect.signature(get_class(opt._target_)).parameters
    except Exception:  # not importable, not a class: a user's _target_ override
        raise ConfigError(
            f"invalid config value optimizer._target_: cannot use {opt._target_!r} (not an "
            "importable optimizer class); choose optimizer=adamw or optimizer=sgd"
        ) from None
    for key, value in opt.items():
        name = f"optimizer.{key}"
        if str(key).startswith("_"):
            continue
        require(
            key in accepted and key != "params",
            name,
            f"{opt._target_} has no such argument; valid: {sorted(set(accepted) - {'params'})}",
        )
        if key == "lr":
            require(number(value, name) > 0, name, f"must be > 0, got {value}")
        elif key in ("weight_decay", "momentum", "dampening", "eps", "alpha"):
            require(number(value, name) >= 0, name, f"must be >= 0, got {value}")


def validate_trainer(trainer: DictConfig) -> None:
    """A GPU run on a machine without CUDA fails here in one line, not inside Lightning."""
    if str(trainer.accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UnavailableError(
            f"trainer.accelerator={trainer.accelerator}: this machine has no CUDA device "
            "(torch.cuda.is_available() is False); use trainer=cpu"
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


def _instantiate(node: Any, **kwargs: Any) -> Any:
    """`instantiate`, but a UserError raised inside a constructor keeps its one-line form
    (Hydra wraps it in a multi-line InstantiationException)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from err
        raise


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` node of a callbacks/logger group (order kept)."""
    if not group:
        return []
    return [
        _instantiate(node)
        for node in group.values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """The data module, model and trainer the config describes (objects from `instantiate`)."""
    datamodule: L.LightningDataModule = _instantiate(cfg.data, seed=int(cfg.seed))
    scheduler = cfg.scheduler.scheduler
    model: L.LightningModule = _instantiate(
        cfg.model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler is not None else None,
        scheduler_interval=cfg.scheduler.interval,
        scheduler_monitor=cfg.scheduler.monitor,
        schedule=schedule_config(cfg),
        cpu_contract=repro.record(cfg.repro),  # provenance: the kernels these weights came from
        run_config=run_config(cfg),
    )
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = _instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],  # atomic on any filesystem, $TMPDIR never used
    )
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
        atomic_write(target, Path(best_path).read_bytes())
    return best_path


@dataclass(frozen=True)
class FitResult:
    """What fit decided, read right after it: `trainer.test(ckpt_path=best)` restores the best
    checkpoint's callback and loop state, which rewound the curves to the best epoch."""

    epochs: int
    global_step: int
    val_acc_best: float | None
    curves: list[dict[str, float | int]]
    wall_s: float


def fit(
    trainer: L.Trainer, model: L.LightningModule, datamodule: Any, ckpt: str | None
) -> FitResult:
    start = time.perf_counter()
    # weights_only=True: no pickled code from a checkpoint runs
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    history = next((cb for cb in trainer.callbacks if isinstance(cb, EpochHistory)), None)
    return FitResult(
        epochs=int(trainer.current_epoch),
        global_step=int(trainer.global_step),
        val_acc_best=model.best_val_acc(),
        curves=[dict(row) for row in history.rows] if history is not None else [],
        wall_s=time.perf_counter() - start,
    )


def run_metrics(
    fitted: FitResult, results: dict[str, float], cfg: DictConfig, data_md5: str
) -> dict[str, Any]:
    """The deterministic metrics (DVC metrics): no wall time in here."""
    return {
        "test_acc": float(results["test/acc"]) if results else None,
        "test_loss": float(results["test/loss"]) if results else None,
        "val_acc_best": fitted.val_acc_best,
        "epochs": fitted.epochs,
        "global_step": fitted.global_step,
        "seed": int(cfg.seed),
        "data_md5": data_md5,
    }


def run_timing(
    trainer: L.Trainer, fitted: FitResult, test_wall_s: float, n_train: int
) -> dict[str, Any]:
    """Wall times and rates, kept apart from the metrics (they vary run to run)."""
    wall = fitted.wall_s
    return {
        "train_wall_s": round(wall, 3),
        "test_wall_s": round(test_wall_s, 3),
        "train_samples_per_s": round(n_train * fitted.epochs / wall, 1) if wall > 0 else None,
        "world_size": int(trainer.world_size),
        "torch_threads": torch.get_num_threads(),
    }


def write_outputs(
    trainer: L.Trainer,
    cfg: DictConfig,
    fitted: FitResult,
    metrics: dict[str, Any],
    timing: dict[str, Any],
) -> None:
    """Metrics, timing and the per-epoch curves (one row per epoch trained), from rank 0 only."""
    if not trainer.is_global_zero:
        return
    write_json(cfg.outputs.metrics, metrics)
    write_json(cfg.outputs.timing, timing)
    history = next((cb for cb in trainer.callbacks if isinstance(cb, EpochHistory)), None)
    if history is not None:
        history.write_csv(cfg.outputs.curves, fitted.curves)
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
    SIGTERM (Lightning stops the loop) exits 143, as other tools do, with no metrics written.
    """
    validate_config(cfg)
    # a run that may not write the tracked outputs is refused before anything else is read
    repro.guard(cfg.repro, Path(cfg.paths.root_dir), cfg.outputs.values())
    if cfg.pipeline:  # under `dvc repro`, which re-records changed data before this stage
        verify_committed(Path(cfg.data.dvc_file))
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is not None:
        check_resume(ckpt_path, cfg)
    # the contract's variables are set by entry_point (repro.apply) before torch loads; the thread
    # count again here for in-process callers (a reduction's split follows it)
    repro.set_threads(cfg.repro)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    try:
        fitted = fit(trainer, model, datamodule, ckpt_path)
        best_path = keep_best(trainer, cfg)
        results: dict[str, float] = {}
        start = time.perf_counter()
        if cfg.test:
            results = trainer.test(
                model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True
            )[0]
        test_wall_s = time.perf_counter() - start
    except SIGTERMException:
        log.error("stopped by SIGTERM: no metrics written; resume with ckpt_path=last")
        raise SystemExit(SIGTERM_EXIT) from None

    metrics = run_metrics(fitted, results, cfg, datamodule.data_md5)
    timing = run_timing(trainer, fitted, test_wall_s, len(datamodule.datasets["train"]))
    write_outputs(trainer, cfg, fitted, metrics, timing)
    return {**metrics, **timing}


def log_output_dirs(cfg: DictConfig) -> None:
    """Say where this run writes: `output_dirs` in conf/wiring/train.yaml decides (the tracked
    paths only under `pipeline=true`, else the Hydra run or sweep job directory)."""
    log.info(
        "outputs under %s and %s (pipeline=true writes the DVC-tracked paths)",
        cfg.output_dirs.checkpoints,
        cfg.output_dirs.reports,
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@entry_point
def main(cfg: DictConfig) -> float | None:
    """Hydra wrapper; returns `metrics[optimized_metric]` (best validation metric) for sweepers:
    tuning on the test split would make the test score meaningless."""
    log_output_dirs(cfg)
    return train(cfg)[str(cfg.optimized_metric)]


if __name__ == "__main__":
    main()
