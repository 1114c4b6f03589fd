"""Every option of every training config group composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from mlpipe.train.module import DigitsClassifier
from mlpipe.train.run import instantiate_group, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
NO_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="trainer=gpu needs a CUDA GPU (accelerator=gpu); none here",
)


def options(group: str) -> list:
    """Every config file of a group, the GPU ones marked (they skip without CUDA, saying why)."""
    names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    return [pytest.param(n, marks=[pytest.mark.gpu, NO_CUDA]) if n == "gpu" else n for n in names]


def _model(cfg) -> DigitsClassifier:
    scheduler = (
        instantiate(cfg.scheduler.scheduler) if cfg.scheduler.scheduler is not None else None
    )
    return instantiate(
        cfg.model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        scheduler_interval=cfg.scheduler.interval,
        scheduler_monitor=cfg.scheduler.monitor,
    )


def test_defaults(compose_cfg) -> None:
    cfg = compose_cfg(shrink=False)
    assert cfg.model.net._target_ == "mlpipe.train.nets.CNN"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert set(cfg.logger) == {"csv"}
    assert {"model_checkpoint", "early_stopping", "progress_bar", "lr_monitor"} <= set(
        cfg.callbacks
    )
    assert cfg.callbacks.model_checkpoint.dirpath == cfg.paths.checkpoint_dir
    assert Path(cfg.outputs.best_checkpoint) == Path(cfg.paths.checkpoint_dir) / "best.ckpt"
    validate_config(cfg)


@pytest.mark.parametrize("name", options("data"))
def test_data_options(compose_cfg, name: str) -> None:
    dm = instantiate(compose_cfg(f"data={name}").data)
    assert isinstance(dm, L.LightningDataModule)


@pytest.mark.parametrize("name", options("model"))
def test_model_options(compose_cfg, name: str) -> None:
    cfg = compose_cfg(f"model={name}")
    module = _model(cfg)
    assert module(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    if name == "mlp_wide":
        assert all(w == 1024 for w in cfg.model.net.hidden)


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_options(compose_cfg, name: str) -> None:
    factory = instantiate(compose_cfg(f"optimizer={name}").optimizer)
    assert isinstance(factory(params=[torch.nn.Parameter(torch.zeros(3))]), torch.optim.Optimizer)


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_options(compose_cfg, name: str) -> None:
    cfg = compose_cfg(f"scheduler={name}")
    module = _model(cfg)
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Optimizer)
    if cfg.scheduler.scheduler is not None:
        assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LRScheduler)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(compose_cfg, name: str) -> None:
    cfg = compose_cfg(f"trainer={name}")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    if name == "ddp":
        assert trainer.num_devices == 2 and type(trainer.strategy).__name__ == "DDPStrategy"


@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_options(compose_cfg, name: str) -> None:
    callbacks = instantiate_group(compose_cfg(f"callbacks={name}").callbacks)
    assert callbacks and all(isinstance(cb, L.Callback) for cb in callbacks)


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options(compose_cfg, name: str) -> None:
    loggers = instantiate_group(compose_cfg(f"logger={name}").logger)
    assert loggers and all(isinstance(lg, L.pytorch.loggers.Logger) for lg in loggers)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options(compose_cfg, name: str) -> None:
    cfg = compose_cfg(f"experiment={name}")
    validate_config(cfg)
    assert isinstance(_model(cfg), DigitsClassifier)
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)


def test_unknown_key_keeps_hydras_error(compose_cfg) -> None:
    with pytest.raises(ConfigCompositionException, match=r"data\.bogus"):
        compose_cfg("data.bogus=1")


def test_unknown_option_keeps_hydras_error(compose_cfg) -> None:
    with pytest.raises(MissingConfigException, match=r"resnet"):
        compose_cfg("model=resnet")
