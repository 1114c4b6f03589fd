"""The one timing primitive and the one latency summary of every measurement (client, serving
targets, bench, tuner, knee, load generator)."""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass
class Timer:
    """Round-robin timing of several callables: each repeat times every contender once.

    The order is shuffled every repeat (fixed seed): whoever runs right after torch meets its
    still-spinning OpenMP threads, and a fixed order would always hand that to the same one.
    """

    repeats: int
    min_sample_s: float
    max_loops: int
    seed: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    faults: dict[str, float] = field(default_factory=dict)

    def _loops(self, fn: Callable[[], object]) -> int:
        fn()  # warm-up: first touch, lazy pool start, allocator state
        dt = max(timed(fn)[1], 1e-9)
        return max(1, min(self.max_loops, int(self.min_sample_s / dt)))

    def run(self, fns: Mapping[str, Callable[[], object]]) -> None:
        loops = {name: self._loops(fn) for name, fn in fns.items()}
        for name in fns:
            self.samples[name], self.faults[name] = [], 0.0
        order = list(fns)
        rng = random.Random(self.seed)
        for _ in range(self.repeats):
            rng.shuffle(order)
            for name in order:
                fn, k = fns[name], loops[name]
                f0 = _minor_faults()
                self.samples[name] += time_calls(fn, 0, 1, inner=k)
                self.faults[name] += (_minor_faults() - f0) / k / self.repeats


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
