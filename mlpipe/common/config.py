"""Config checks shared by every stage: each failure names the full key and the valid range."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlpipe.common.errors import ConfigError


def is_int(value: Any) -> bool:
    """An integer config value (YAML `true` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError naming `key` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"invalid config value {key}: {message}")


def as_float(value: Any, key: str) -> float:
    """`value` as a float, or ConfigError naming `key` (`optimizer.lr=abc` is a user mistake)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid config value {key}: must be a number, got {value!r}") from None


def positive_int(value: Any, key: str, minimum: int = 1) -> int:
    """`value` if it is an integer >= `minimum`, else ConfigError naming `key`."""
    require(
        is_int(value) and value >= minimum, key, f"must be an integer >= {minimum}, got {value!r}"
    )
    return int(value)


def positive_ints(values: Any, key: str) -> list[int]:
    """A non-empty list of integers >= 1 (batch sizes, concurrency levels); a bare int is a list
    of one. Order is kept (it is the order of the sweep)."""
    if is_int(values):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        items = []
    if not items or not all(is_int(v) and v > 0 for v in items):
        raise ConfigError(
            f"invalid config value {key}: must be a non-empty list of positive integers, got "
            f"{values!r}; valid example: {key}=[1,8,64]"
        )
    return [int(v) for v in items]


def names(values: Any, key: str) -> list[str]:
    """A non-empty list of names (device presets, backends); a bare name is a list of one, so
    ``profile.devices=t4`` is not read letter by letter."""
    if isinstance(values, str):
        values = [values]
    try:
        items = [str(v) for v in values]
    except TypeError:
        items = []
    require(bool(items), key, f"must be a non-empty list of names, got {values!r}")
    return items


def one_of(value: Any, choices: Any, key: str) -> Any:
    """`value` if it is one of `choices`, else ConfigError listing them."""
    require(value in list(choices), key, f"must be one of {list(choices)}, got {value!r}")
    return value


def plain(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A resolved plain-dict copy of a config node: what constructors, JSON and weights_only
    checkpoints want (no OmegaConf objects inside)."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return {k: plain(v) if isinstance(v, (Mapping, DictConfig)) else v for k, v in node.items()}
