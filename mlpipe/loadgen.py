"""Closed-loop load generator: N workers each send requests back to back, timing each one.

It stands in for Triton's `perf_analyzer` (which needs glibc 2.38). A worker gets a *caller
factory*: a picklable zero-argument callable returning the function that sends one request.
What that function does is what gets timed, so for Triton it builds the request from numpy
(serialization), sends it, waits and decodes the reply: client-observed latency.

Workers are threads (in-process backends, and Triton clients, whose network I/O releases the
GIL) or spawned processes (Triton clients without GIL contention on serialization); they persist
across the windows of one measurement, each keeping its client. Per window all workers warm up,
meet at a barrier, then run their timed requests; throughput is requests completed over the wall
time from the barrier to the last worker's end.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
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


def _timed(call: Caller | None, setup_error: str | None, warmup: int, requests: int,
           barrier: Any) -> _WorkerOut:
    """One window of one worker: warm up, wait for all workers, then time `requests` calls."""
    out = _WorkerOut()
    if call is None:  # the caller could not even be built: report, still meet the barrier
        out.errors, out.first_error = requests, setup_error
        barrier.wait()
        return out
    try:
        for _ in range(warmup):
            call()
    except Exception as err:
        out.errors, out.first_error = requests, f"warm-up failed: {type(err).__name__}: {err}"
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


def _serve(factory: CallerFactory, commands: Any, results: Any, barrier: Any) -> None:
    """Worker loop (thread or process): build the caller once, then run windows on command."""
    try:
        call, error = factory(), None
    except Exception as err:
        call, error = None, f"{type(err).__name__}: {err}"
    while (cmd := commands.get()) is not None:
        results.put(_timed(call, error, cmd[0], cmd[1], barrier))


class Workers:
    """`concurrency` persistent closed-loop workers; each keeps its caller (client) across windows.

    Processes are spawned, not forked: gRPC and torch threads do not survive a fork.
    """

    def __init__(self, factory: CallerFactory, concurrency: int, mode: str = "thread",
                 timeout_s: float = 600.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown load generator mode {mode!r}; valid choices: {list(MODES)}")
        if concurrency < 1:
            raise ValueError(f"need concurrency >= 1, got {concurrency}")
        self.concurrency, self.timeout_s = concurrency, timeout_s
        if mode == "thread":
            self._results: Any = queue.Queue()
            barrier: Any = threading.Barrier(concurrency, timeout=timeout_s)
            self._commands: list[Any] = [queue.Queue() for _ in range(concurrency)]
            self._workers: list[Any] = [
                threading.Thread(target=_serve, args=(factory, c, self._results, barrier), daemon=True)
                for c in self._commands
            ]
        else:
            ctx = mp.get_context("spawn")
            self._results = ctx.Queue()
            barrier = ctx.Barrier(concurrency, timeout=timeout_s)
            self._commands = [ctx.Queue() for _ in range(concurrency)]
            self._workers = [
                ctx.Process(target=_serve, args=(factory, c, self._results, barrier), daemon=True)
                for c in self._commands
            ]
        self._barrier = barrier  # keep it alive: its semaphore must outlive the children's start
        for w in self._workers:
            w.start()

    def _dead(self) -> list[str]:
        return [f"{w.name} (exit code {w.exitcode})" for w in self._workers
                if isinstance(w, mp.process.BaseProcess) and not w.is_alive()]

    def window(self, warmup: int, requests: int) -> WindowResult:
        """Every worker warms up, then all time `requests` calls from a common start."""
        if requests < 1 or warmup < 0:
            raise ValueError(f"need requests >= 1 and warmup >= 0, got {requests}, {warmup}")
        for c in self._commands:
            c.put((warmup, requests))
        outs: list[_WorkerOut] = []
        deadline = time.monotonic() + self.timeout_s
        while len(outs) < self.concurrency:
            try:
                outs.append(self._results.get(timeout=min(1.0, self.timeout_s)))
                continue
            except queue.Empty:
                pass
            if dead := self._dead():
                raise RuntimeError(f"load worker process died: {', '.join(dead)} (see stderr)")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.concurrency - len(outs)} load workers did not finish in {self.timeout_s} s"
                )
        timed = [o for o in outs if o.end > 0]
        latencies = np.array([x for o in outs for x in o.latencies_s], dtype=np.float64)
        wall = (max(o.end for o in timed) - min(o.start for o in timed)) if timed else 0.0
        errors = sum(o.errors for o in outs)
        first_error = next((o.first_error for o in outs if o.first_error), None)
        return WindowResult(latencies, wall, errors, first_error)

    def close(self) -> None:
        for c in self._commands:
            c.put(None)
        for w in self._workers:
            w.join(timeout=5)
            if isinstance(w, mp.process.BaseProcess) and w.is_alive():
                w.terminate()
                w.join()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_window(
    factory: CallerFactory, concurrency: int, requests_per_worker: int, warmup_per_worker: int,
    mode: str = "thread", timeout_s: float = 600.0,
) -> WindowResult:
    """Run `concurrency` closed-loop workers for one window and collect their latencies."""
    with Workers(factory, concurrency, mode, timeout_s) as workers:
        return workers.window(warmup_per_worker, requests_per_worker)


@dataclass(frozen=True)
class TritonCaller:
    """Picklable caller factory: one client per worker; each call serializes, sends, decodes."""

    protocol: str  # "http" or "grpc"
    address: str
    model: str
    input_name: str
    output_name: str
    images: np.ndarray

    def __call__(self) -> Callable[[], np.ndarray]:
        if self.protocol == "http":
            import tritonclient.http as client_mod
        else:
            import tritonclient.grpc as client_mod
        client = client_mod.InferenceServerClient(self.address)
        outputs = [client_mod.InferRequestedOutput(self.output_name)]

        def call() -> np.ndarray:
            inp = client_mod.InferInput(self.input_name, list(self.images.shape), "FP32")
            inp.set_data_from_numpy(self.images)
            return client.infer(self.model, [inp], outputs=outputs).as_numpy(self.output_name)

        return call


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
    with Workers(factory, concurrency, mode, timeout_s) as workers:
        for i in range(max_windows):
            window = workers.window(warmup_per_worker if i == 0 else 0, requests_per_worker)
            if window.errors:
                break
            history.append(window.percentiles_ms((50,))["p50_ms"])
            if len(history) >= max(2, min_windows):
                prev, cur = history[-2], history[-1]
                if abs(cur - prev) <= rel_tol * prev:
                    return StableResult(window, history, True)
    return StableResult(window, history, False)
