"""Every primary config and every option of every config group composes (and resolves); every
option of the training groups instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.compose import CONF_DIR, tmp_path_overrides
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

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


# -- every primary config and every group, not only the training ones ----------------------------
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
#: Folders that are not selectable groups: Hydra's own settings, `@_here_` wiring files that an
#: option includes, and the device presets mlpipe-profile reads by file name.
NOT_GROUPS = ("hydra", "wiring", "profile/device")


def _choices(name: str) -> dict[str, str]:
    """The group choices a primary config makes (`load@bench.load`: a group under a package)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="choices"):
        cfg = compose(config_name=name, return_hydra_config=True)
    return {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}


CHOICES = {name: _choices(name) for name in PRIMARY}


def _group_options() -> list[tuple[str, str]]:
    """(group, option) of every yaml file under conf/<group>/, nested groups included."""
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group != "." and not any(part in NOT_GROUPS for part in (group, *group.split("/"))):
            found.append((group, path.stem))
    return found


def _resolved(tmp_path: Path, name: str, *overrides: str) -> dict:
    """Every value of the composed config, interpolations resolved (`${hydra:...}` included, as
    at run time)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="resolve"):
        cfg = compose(
            config_name=name,
            overrides=[*tmp_path_overrides(tmp_path), *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    try:
        nodes = {key: cfg[key] for key in cfg if key != "hydra"}  # reading a value resolves it
        return {
            key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            for key, node in nodes.items()
        }
    finally:  # process-wide: later tests' composed configs are library calls, not a Hydra app
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes_and_resolves(tmp_path: Path, name: str) -> None:
    assert _resolved(tmp_path, name)


@pytest.mark.parametrize(
    ("group", "option"), _group_options(), ids=lambda p: p if isinstance(p, str) else str(p)
)
def test_every_group_option_composes_in_a_primary_config(
    tmp_path: Path, group: str, option: str
) -> None:
    """Selected in the first primary config that uses the group (where it is nested under a
    package, as `load@bench.load`, by that key)."""
    uses = [
        (name, key)
        for name, choices in CHOICES.items()
        for key in choices
        if key == group or key.startswith(f"{group}@")
    ]
    assert uses, f"conf/{group}/ is used by no primary config"
    name, key = uses[0]
    assert _resolved(tmp_path, name, f"{key}={option}")
