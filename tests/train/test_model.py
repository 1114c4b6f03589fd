"""Nets, the LightningModule and safe checkpoint loading."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mlpipe.common.errors import ConfigError, NonFiniteLossError
from mlpipe.data import load_split
from mlpipe.train.module import DigitsClassifier, load_network
from mlpipe.train.nets import CNN, MLP, make_activation

MODEL_CONFS = sorted((Path(__file__).resolve().parents[2] / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", ["cnn", "mlp", "mlp_wide"])
@pytest.mark.parametrize("activation", ["torch", "relu_module"])
def test_net_from_config_maps_images_to_logits(compose_cfg, name: str, activation: str) -> None:
    cfg = compose_cfg(f"model={name}", f"model.net.activation={activation}")
    net = instantiate(cfg.model.net)
    x = torch.rand(5, 1, 8, 8)  # (B, C, H, W)
    assert net(x).shape == (5, 10)


def test_every_model_config_is_covered() -> None:
    assert {p.stem for p in MODEL_CONFS} == {"cnn", "mlp", "mlp_wide"}


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (CNN, {"channels": [4, 8], "kernel_size": 3, "pool": 2, "hidden": 16}),
        (MLP, {"hidden": [32, 16]}),
    ],
)
def test_kernel_activation_matches_torch_forward_and_backward(cls, kwargs) -> None:
    torch.manual_seed(0)
    ref = cls(
        in_channels=1, image_size=8, num_classes=10, dropout=0.0, activation="torch", **kwargs
    )
    ker = cls(
        in_channels=1, image_size=8, num_classes=10, dropout=0.0, activation="relu_module", **kwargs
    )
    ker.load_state_dict(ref.state_dict())
    assert any(type(m).__module__.startswith("relu_module") for m in ker.modules())
    x = torch.randn(7, 1, 8, 8)
    out_ref, out_ker = ref(x), ker(x)
    torch.testing.assert_close(out_ker, out_ref)
    out_ref.square().sum().backward()
    out_ker.square().sum().backward()
    for (name, p_ref), p_ker in zip(ref.named_parameters(), ker.parameters(), strict=True):
        torch.testing.assert_close(p_ker.grad, p_ref.grad, msg=f"gradient of {name}")


def test_unknown_activation_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.net\.activation.*'gelu'.*torch.*relu_module"):
        make_activation("gelu")


def test_bad_net_sizes_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.net\.hidden"):
        MLP(
            in_channels=1, image_size=8, num_classes=10, hidden=[0], dropout=0.0, activation="torch"
        )
    with pytest.raises(ConfigError, match=r"model\.net\.pool"):
        CNN(
            in_channels=1,
            image_size=8,
            num_classes=10,
            channels=[4],
            kernel_size=3,
            pool=3,
            hidden=8,
            dropout=0.0,
            activation="torch",
        )


def _module(lr: float = 1e-3) -> DigitsClassifier:
    net = {
        "_target_": "mlpipe.train.nets.MLP",
        "in_channels": 1,
        "image_size": 8,
        "num_classes": 10,
        "hidden": [16],
        "dropout": 0.0,
        "activation": "torch",
    }
    return DigitsClassifier(
        net=OmegaConf.create(net), optimizer=functools.partial(torch.optim.SGD, lr=lr)
    )


def test_hyperparameters_are_plain_containers() -> None:
    module = _module()
    assert type(module.hparams["net"]) is dict
    assert "optimizer" not in module.hparams and "scheduler" not in module.hparams


def test_nan_loss_stops_with_a_message() -> None:
    module = _module()
    x = torch.full((4, 1, 8, 8), float("nan"))
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan.*optimizer\.lr"):
        module.training_step((x, y), 0)


def test_real_checkpoint_loads_with_weights_only(trained_checkpoint) -> None:
    ckpt = torch.load(trained_checkpoint.ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["_target_"] == "mlpipe.train.nets.CNN"
    net = load_network(trained_checkpoint.ckpt_path)
    assert not net.training
    images, labels = load_split(trained_checkpoint.cfg.data, "test")
    with torch.no_grad():
        logits = net(torch.from_numpy(images))  # (N, 10)
    acc = float((logits.argmax(1).numpy() == labels).mean())
    # the network loaded outside Lightning scores exactly what the training run's test reported
    assert acc == pytest.approx(trained_checkpoint.metrics["test_acc"], abs=1e-6)
    assert acc > 0.8


def test_load_network_with_kernel_activation_gives_same_logits(trained_checkpoint) -> None:
    images, _ = load_split(trained_checkpoint.cfg.data, "val")
    x = torch.from_numpy(images)
    with torch.no_grad():
        ref = load_network(trained_checkpoint.ckpt_path)(x)
        ker = load_network(trained_checkpoint.ckpt_path, activation="relu_module")(x)
    torch.testing.assert_close(ker, ref)
    assert np.isfinite(ref.numpy()).all()


def test_missing_checkpoint_names_path_and_command(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "best.ckpt"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*mlpipe-train"):
        load_network(missing)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"hyper_parameters": {"net": functools.partial(print, "ran")}, "state_dict": {}}, path
    )
    with pytest.raises(Exception, match=r"[Ww]eights only load failed|weights_only"):
        load_network(path)
