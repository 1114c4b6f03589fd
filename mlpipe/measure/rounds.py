"""Repeated measurement: when a figure has settled, and in which order rivals are measured.

One convergence loop (:func:`until_settled`: rounds until two in a row agree within
``rel_tol``) behind the load generator's windows (p50 per window) and the knee's layer timings
(best of N per round); one interleaving helper (:func:`interleaved`: every contender once per
round, the order rotated each round) behind the serving targets and the tuner's confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mlpipe.common.config import as_float, positive_int, require

T = TypeVar("T")


@dataclass(frozen=True)
class Stability:
    """Repeat rounds until a figure moves less than `rel_tol`; `min_rounds`..`max_rounds`."""

    rel_tol: float
    min_rounds: int
    max_rounds: int

    def __post_init__(self) -> None:
        require(
            1 <= self.min_rounds <= self.max_rounds,
            "stability",
            f"need 1 <= min_rounds <= max_rounds, got {self.min_rounds}, {self.max_rounds}",
        )

    @classmethod
    def from_config(cls, node: Mapping[str, Any], key: str) -> Stability:
        """From a `stability:` node (rel_tol, min_rounds, max_rounds); errors name `key`."""
        settings = cls(
            as_float(node["rel_tol"], f"{key}.rel_tol"),
            positive_int(node["min_rounds"], f"{key}.min_rounds"),
            positive_int(node["max_rounds"], f"{key}.max_rounds"),
        )
        require(settings.rel_tol > 0, f"{key}.rel_tol", f"must be > 0, got {node['rel_tol']!r}")
        return settings


def until_settled(
    measure: Callable[[int], float | None], stability: Stability
) -> tuple[list[float], bool]:
    """Call ``measure(round)`` until two consecutive figures differ by at most ``rel_tol`` of the
    earlier one (after at least ``min_rounds``, at most ``max_rounds``). A ``None`` figure ends
    the loop unsettled (a round with errors never settles). Returns (figures, settled?)."""
    history: list[float] = []
    for i in range(stability.max_rounds):
        figure = measure(i)
        if figure is None:
            break
        history.append(figure)
        if len(history) >= max(2, stability.min_rounds):
            prev, cur = history[-2], history[-1]
            if abs(cur - prev) <= stability.rel_tol * prev:
                return history, True
    return history, False


def interleaved(
    labels: Sequence[str], rounds: int, measure: Callable[[str], T]
) -> dict[str, list[T]]:
    """``rounds`` measurements of every label, one per round, the order rotated each round.

    On a shared machine the load drifts within seconds: measured one after another, the first
    label and the last see different machines. Interleaved, each round compares them under the
    same conditions, and rotation spreads who goes first."""
    runs: dict[str, list[T]] = {label: [] for label in labels}
    for round_index in range(rounds):
        shift = round_index % len(labels) if labels else 0
        for label in [*labels[shift:], *labels[:shift]]:
            runs[label].append(measure(label))
    return runs
