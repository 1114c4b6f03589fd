"""The one timing primitive and the one latency summary of every measurement (client, serving
targets, bench, tuner, knee, load generator)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

PERCENTILES: tuple[float, ...] = (50, 90, 99)

T = TypeVar("T")

#: The one clock: monotonic and system-wide (CLOCK_MONOTONIC), so stamps taken by load workers
#: in other processes compare with each other.
now = time.perf_counter


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``'s result and the wall seconds it took: the one timing primitive."""
    start = now()
    result = fn()
    return result, now() - start


def latency_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``n``, ``p50_ms``/``p90_ms``/``p99_ms`` and ``mean_ms`` of latencies given in seconds.

    An empty sample gives NaN figures (n = 0), never an exception: a window where every request
    failed still gets a row, with its errors beside it.
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if not ms.size:
        return {
            "n": 0,
            **{f"p{q:g}_ms": float("nan") for q in PERCENTILES},
            "mean_ms": float("nan"),
        }
    values = np.percentile(ms, PERCENTILES)
    return {
        "n": int(ms.size),
        **{f"p{q:g}_ms": float(v) for q, v in zip(PERCENTILES, values, strict=True)},
        "mean_ms": float(ms.mean()),
    }


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, inner: int = 1) -> list[float]:
    """Seconds per call of ``repeats`` samples after ``warmup`` untimed calls; each sample times
    ``inner`` back-to-back calls (a short call needs many for the clock to resolve it)."""
    for _ in range(warmup):
        fn()

    def sample() -> None:
        for _ in range(inner):
            fn()

    return [timed(sample)[1] / inner for _ in range(repeats)]
