"""Plain nn.Module classifiers for (B, C, H, W) images; built from `cfg.model.net` by instantiate.

The activation is a config string: "torch" (nn.ReLU) or "relu_module" (the C++ kernel's autograd
module, which exports to ONNX as a standard Relu node). Both compute the same function, so a
checkpoint trained with one loads into the other.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mlpipe.common.errors import ConfigError

ACTIVATIONS: tuple[str, ...] = ("torch", "relu_module")


def make_activation(name: str) -> nn.Module:
    """A ReLU module: torch's own or relu_module's kernel-backed one."""
    if name == "torch":
        return nn.ReLU()
    if name == "relu_module":
        from relu_module.torch import ReLU  # imported here: only this choice needs the extension

        return ReLU()
    raise ConfigError(
        f"invalid config value model.net.activation: {name!r}; choose one of {list(ACTIVATIONS)}"
    )


def _check_positive(key: str, values: Sequence[int]) -> None:
    if not values or any(int(v) <= 0 for v in values):
        raise ConfigError(
            f"invalid config value model.net.{key}: must be a non-empty list of positive "
            f"integers, got {list(values)}"
        )


class CNN(nn.Module):
    """conv-act blocks at full resolution, one max-pool, then a two-layer classifier head."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        channels: Sequence[int],
        kernel_size: int,
        pool: int,
        hidden: int,
        dropout: float,
        activation: str,
    ) -> None:
        super().__init__()
        _check_positive("channels", channels)
        if image_size % pool:
            raise ConfigError(
                f"invalid config value model.net.pool: {pool} must divide image_size {image_size}"
            )
        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(prev, int(width), kernel_size, padding=kernel_size // 2),
                make_activation(activation),
            ]
            prev = int(width)
        layers.append(nn.MaxPool2d(pool))
        self.features = nn.Sequential(*layers)
        flat = prev * (image_size // pool) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(flat, hidden),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))  # (B, C, H, W) -> (B, num_classes)


class MLP(nn.Module):
    """Flatten, then Linear-act(-dropout) per hidden width, then a Linear to the logits."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: Sequence[int],
        dropout: float,
        activation: str,
    ) -> None:
        super().__init__()
        _check_positive("hidden", hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_channels * image_size * image_size
        for width in hidden:
            layers += [
                nn.Linear(prev, int(width)),
                make_activation(activation),
                nn.Dropout(dropout),
            ]
            prev = int(width)
        layers.append(nn.Linear(prev, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, C, H, W) -> (B, num_classes)
