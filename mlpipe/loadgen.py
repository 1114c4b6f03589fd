"""Closed-loop load generator: N workers each send requests back to back, timing each one.

It stands in for Triton's `perf_analyzer` (which needs glibc 2.38). A worker gets a *caller
factory*: a picklable zero-argument callable returning the function that sends one request.
What that function does is what gets timed, so for Triton it builds the request from numpy
(serialization), sends it, waits and decodes the reply: client-observed latency.

Workers are threads (in-process backends, and Triton clients, whose network I/O releases the
GIL) or spawned processes (Triton clients without GIL contention on serialization). All workers
warm up, meet at a barrier, then run their timed requests; throughput is requests completed over
the wall time from the barrier to the last worker's end.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Caller = Callable[[], Any]
CallerFactory = Callable[[], Caller]

MODES = ("thread", "process")


@dataclass
class WindowResult:
    """One measurement window: every timed request's latency, and the window's wall time."""

    latencies_s: np.ndarray
    wall_s: float
    errors: int
    first_error: str | None = None

    @property
    def requests(self) -> int:
        return int(self.latencies_s.size)

    def percentiles_ms(self, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
        if not self.latencies_s.size:
            return {f"p{q:g}_ms": float("nan") for q in qs}
        values = np.percentile(self.latencies_s, qs) * 1e3
        return {f"p{q:g}_ms": float(v) for q, v in zip(qs, values)}


@dataclass
class _WorkerOut:
    latencies_s: list[float] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    errors: int = 0
    first_error: str | None = None


def _work(factory: CallerFactory, warmup: int, requests: int, barrier: Any) -> _WorkerOut:
    """Body shared by threads and processes: warm up, wait for all, then time `requests` calls."""
    out = _WorkerOut()
    try:
        call = factory()
        for _ in range(warmup):
            call()
    except Exception as err:  # the caller cannot even start: report, still meet the barrier
        out.errors, out.first_error = requests, f"{type(err).__name__}: {err}"
        barrier.wait()
        return out
    barrier.wait()
    out.start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes on Linux
    for _ in range(requests):
        t0 = time.perf_counter()
        try:
            call()
        except Exception as err:
            out.errors += 1
            out.first_error = out.first_error or f"{type(err).__name__}: {err}"
            continue
        out.latencies_s.append(time.perf_counter() - t0)
    out.end = time.perf_counter()
    return out


def _process_main(factory: CallerFactory, warmup: int, requests: int, barrier: Any, queue: Any) -> None:
    queue.put(_work(factory, warmup, requests, barrier))


def run_window(
    factory: CallerFactory, concurrency: int, requests_per_worker: int, warmup_per_worker: int,
    mode: str = "thread", timeout_s: float = 600.0,
) -> WindowResult:
    """Run `concurrency` closed-loop workers once and collect their latencies."""
    if mode not in MODES:
        raise ValueError(f"unknown load generator mode {mode!r}; valid choices: {list(MODES)}")
    if concurrency < 1 or requests_per_worker < 1 or warmup_per_worker < 0:
        raise ValueError(
            f"need concurrency >= 1, requests >= 1, warmup >= 0; got {concurrency}, "
            f"{requests_per_worker}, {warmup_per_worker}"
        )
    outs: list[_WorkerOut] = []
    if mode == "thread":
        barrier = threading.Barrier(concurrency, timeout=timeout_s)
        results: list[_WorkerOut | None] = [None] * concurrency

        def target(i: int) -> None:
            results[i] = _work(factory, warmup_per_worker, requests_per_worker, barrier)

        threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout_s)
        outs = [r for r in results if r is not None]
    else:
        # spawn, not fork: gRPC and torch threads do not survive a fork
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(concurrency, timeout=timeout_s), ctx.Queue()
        procs = [
            ctx.Process(target=_process_main,
                        args=(factory, warmup_per_worker, requests_per_worker, barrier, queue),
                        daemon=True)
            for _ in range(concurrency)
        ]
        for p in procs:
            p.start()
        try:
            outs = [queue.get(timeout=timeout_s) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
                    p.join()
    if len(outs) < concurrency:
        raise TimeoutError(f"{concurrency - len(outs)} load workers did not finish in {timeout_s} s")
    timed = [o for o in outs if o.end > 0]
    latencies = np.array([x for o in outs for x in o.latencies_s], dtype=np.float64)
    wall = (max(o.end for o in timed) - min(o.start for o in timed)) if timed else 0.0
    errors = sum(o.errors for o in outs)
    first_error = next((o.first_error for o in outs if o.first_error), None)
    return WindowResult(latencies, wall, errors, first_error)


@dataclass
class StableResult:
    """The last window of a stability loop plus how the loop went."""

    window: WindowResult
    p50_history_ms: list[float]
    stable: bool


def run_until_stable(
    factory: CallerFactory, concurrency: int, requests_per_worker: int, warmup_per_worker: int,
    rel_tol: float, min_windows: int, max_windows: int, mode: str = "thread",
    timeout_s: float = 600.0,
) -> StableResult:
    """Repeat windows until p50 moves less than `rel_tol` between consecutive windows.

    Warm-up runs before the first window only. Stops early on errors (they would not settle).
    """
    if max_windows < 1 or min_windows > max_windows:
        raise ValueError(f"need 1 <= min_windows <= max_windows, got {min_windows}, {max_windows}")
    history: list[float] = []
    window = WindowResult(np.empty(0), 0.0, 0)
    for i in range(max_windows):
        window = run_window(factory, concurrency, requests_per_worker,
                            warmup_per_worker if i == 0 else 0, mode, timeout_s)
        if window.errors:
            break
        history.append(window.percentiles_ms((50,))["p50_ms"])
        if len(history) >= max(2, min_windows):
            prev, cur = history[-2], history[-1]
            if abs(cur - prev) <= rel_tol * prev:
                return StableResult(window, history, True)
    return StableResult(window, history, False)
