"""The one latency summary every measurement reports (client, serving targets, bench, tuner)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PERCENTILES: tuple[float, ...] = (50, 90, 99)


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


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` sequential calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples
