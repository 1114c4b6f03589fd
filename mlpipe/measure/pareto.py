"""Throughput against p99 latency: the measured Pareto front, the choice within a budget, and
ε-dominance: one point beats another only by more than the measured noise.

Points are measured rows (``config``, ``concurrency``, ``status``, ``throughput_rps``,
``p99_ms``), from the tuner's sweep (:mod:`mlpipe.measure.tune`); the serving targets
(:mod:`mlpipe.measure.targets`) read the same front back from its results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

Point = Mapping[str, Any]


def at(rows: Sequence[Point], concurrency: int) -> list[Point]:
    """The rows measured at one client concurrency."""
    return [r for r in rows if r["concurrency"] == concurrency]


def pareto_front(points: Sequence[Point]) -> list[str]:
    """Configs no other point dominates (as much throughput or more at as low a p99 or lower,
    one of them strictly), in order of p99."""
    ok = [p for p in points if p["status"] == "ok"]

    def dominated(p: Point) -> bool:
        return any(
            q["throughput_rps"] >= p["throughput_rps"]
            and q["p99_ms"] <= p["p99_ms"]
            and (q["throughput_rps"] > p["throughput_rps"] or q["p99_ms"] < p["p99_ms"])
            for q in ok
        )

    return [p["config"] for p in sorted(ok, key=lambda p: p["p99_ms"]) if not dominated(p)]


def choose(points: Sequence[Point], budget_ms: float) -> Point | None:
    """Highest throughput among the points whose p99 meets the budget (ties: lower p99)."""
    meeting = [p for p in points if p["status"] == "ok" and p["p99_ms"] <= budget_ms]
    return max(meeting, key=lambda p: (p["throughput_rps"], -p["p99_ms"]), default=None)


def spread(values: Sequence[float]) -> float:
    """Relative round-to-round spread of repeated figures: (max - min) / median; 0 for fewer
    than two."""
    if len(values) < 2 or median(values) <= 0:
        return 0.0
    return (max(values) - min(values)) / median(values)


def eps_dominates(a: Point, b: Point, eps: float) -> bool:
    """`a` ε-dominates `b`: more throughput by more than a share `eps`, at a p99 no worse than
    `b`'s by more than that share. Within `eps` two points are one as far as the measurement can
    tell."""
    faster = a["throughput_rps"] > b["throughput_rps"] * (1 + eps)
    return faster and a["p99_ms"] <= b["p99_ms"] * (1 + eps)


def on_front(points: Sequence[Point], config: str, eps: float = 0.0) -> bool:
    """`config` lies on the measured front, or within ε of it: no point ε-dominates it (a
    hand-written config the noise-aware rule kept is on the front as far as the run can tell)."""
    if config in pareto_front(points):
        return True
    mine = [p for p in points if p["config"] == config and p["status"] == "ok"]
    ok = [q for q in points if q["status"] == "ok"]
    return bool(mine) and not any(eps_dominates(q, mine[0], eps) for q in ok)
