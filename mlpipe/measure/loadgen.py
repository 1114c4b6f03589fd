"""The one closed-loop load generator: N requests in flight, each timed, behind the serving
targets, the bench and the tuner.

It stands in for Triton's `perf_analyzer` (which needs glibc 2.38), with the same semantics as
its `--concurrency-range N`: exactly N requests outstanding, a new one sent as each completes.
A worker gets a *caller factory*: a picklable zero-argument callable returning the function that
sends one request. What that function does is what gets timed, so for Triton it builds the
request from numpy (serialization), sends it, waits and decodes the reply: client-observed
latency.

Modes (`MODES`):
- ``thread``: N threads calling back to back (in-process backends; Triton clients, whose network
  I/O releases the GIL);
- ``process``: N spawned processes (Triton clients without GIL contention on serialization);
- ``async``: the N requests are kept in flight by ``processes`` spawned processes through the
  caller's ``submit(callback)`` (async gRPC: far less client CPU per request than N blocking
  clients).

Workers persist across the windows of one measurement, each keeping its client. Per window all
workers warm up, meet at a barrier, then run their timed requests; throughput is requests
completed over the wall time from the barrier to the last worker's end.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from mlpipe.common.config import as_float, one_of, positive_int, require
from mlpipe.common.errors import ConfigError
from mlpipe.common.stats import latency_summary, now, timed
from mlpipe.measure.rounds import Stability, until_settled

Caller = Callable[[], Any]
CallerFactory = Callable[[], Caller]

MODES = ("thread", "process", "async")


@dataclass(frozen=True)
class LoadSettings:
    """How a measurement runs (from config): mode, client processes (async), time limits."""

    mode: str
    timeout_s: float  # one window, and one request in async mode
    join_timeout_s: float  # a worker's grace to exit when the workers close
    processes: int = 1  # async mode: processes sharing the requests in flight

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"unknown load generator mode {self.mode!r}; valid choices: {list(MODES)}"
            )
        if self.processes < 1:
            raise ConfigError(f"load generator processes must be >= 1, got {self.processes}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any], key: str) -> LoadSettings:
        """From a `load:` config node (mode, timeout_s, join_timeout_s, processes); each error
        names its `<key>.<field>`."""
        seconds = {f: as_float(node[f], f"{key}.{f}") for f in ("timeout_s", "join_timeout_s")}
        for field_name, value in seconds.items():
            require(value > 0, f"{key}.{field_name}", f"must be > 0, got {node[field_name]!r}")
        return cls(
            str(one_of(node["mode"], MODES, f"{key}.mode")),
            processes=positive_int(node["processes"], f"{key}.processes"),
            **seconds,
        )


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

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.wall_s if self.wall_s else 0.0

    def latency(self) -> dict[str, float]:
        """The shared latency summary (p50/p90/p99/mean in ms) of this window."""
        return latency_summary(self.latencies_s)


@dataclass
class _WorkerOut:
    latencies_s: list[float] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    errors: int = 0
    first_error: str | None = None


def _timed(call: Caller, requests: int) -> _WorkerOut:
    """The timed part of a blocking worker's window: `requests` calls back to back."""
    out = _WorkerOut(start=now())  # the one clock: comparable across processes
    for _ in range(requests):
        try:
            _, seconds = timed(call)
        except Exception as err:
            out.errors += 1
            out.first_error = out.first_error or f"{type(err).__name__}: {err}"
            continue
        out.latencies_s.append(seconds)
    out.end = now()
    return out


def _timed_async(call: Any, requests: int, inflight: int, timeout_s: float) -> _WorkerOut:
    """The timed part of an async worker's window: `inflight` requests outstanding until
    `requests` have answered. `call.submit(callback)` sends one; the client calls
    `callback(result, error)`."""
    out = _WorkerOut()
    window, lock = threading.Semaphore(inflight), threading.Lock()

    def done(started: float, result: Any, error: Any) -> None:  # tritonclient: result=, error=
        with lock:
            if error is None:
                out.latencies_s.append(now() - started)
            else:
                out.errors += 1
                out.first_error = out.first_error or str(error)
        window.release()

    out.start = now()
    for _ in range(requests):
        if not window.acquire(timeout=timeout_s):
            raise TimeoutError(
                f"no response within {timeout_s} s with {inflight} requests in flight"
            )
        call.submit(partial(done, now()))
    for _ in range(inflight):  # drain: every request in flight has answered
        if not window.acquire(timeout=timeout_s):
            raise TimeoutError(f"requests still unanswered after {timeout_s} s")
    out.end = now()
    return out


def _failed(requests: int, error: str, barrier: Any) -> _WorkerOut:
    """A worker that cannot run reports every request as failed and still meets the barrier."""
    barrier.wait()
    return _WorkerOut(errors=requests, first_error=error)


def _run_window(
    call: Any, cmd: tuple[int, int], barrier: Any, inflight: int, timeout_s: float
) -> _WorkerOut:
    """Warm up, meet the other workers at the barrier, then run the timed part."""
    warmup, requests = cmd
    slots = max(inflight, 1)
    try:
        for _ in range(warmup):
            call()
    except Exception as err:
        return _failed(requests * slots, f"warm-up failed: {type(err).__name__}: {err}", barrier)
    barrier.wait()
    try:
        if inflight:
            return _timed_async(call, requests * inflight, inflight, timeout_s)
        return _timed(call, requests)
    except TimeoutError as err:
        return _WorkerOut(errors=requests * slots, first_error=f"TimeoutError: {err}")


#: A worker command that replaces the caller: `(RETARGET, factory)`.
RETARGET = "retarget"


def _build(factory: CallerFactory) -> tuple[Caller | None, str | None]:
    try:
        return factory(), None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


def _serve(
    factory: CallerFactory,
    commands: Any,
    results: Any,
    barrier: Any,
    inflight: int,
    timeout_s: float,
) -> None:
    """Worker loop (thread or process): build the caller once, then run windows on command
    (a `(RETARGET, factory)` command builds a new caller, e.g. for another model).

    `inflight` 0: a blocking worker (one request at a time); > 0: an async worker.
    """
    call, error = _build(factory)
    while (cmd := commands.get()) is not None:
        if cmd[0] == RETARGET:
            call, error = _build(cmd[1])
            continue
        if call is None:
            results.put(_failed(cmd[1] * max(inflight, 1), str(error), barrier))
            continue
        results.put(_run_window(call, cmd, barrier, inflight, timeout_s))


def _shares(concurrency: int, settings: LoadSettings) -> list[int]:
    """Requests in flight per worker: 0 (blocking) per thread/process; split N over processes."""
    if settings.mode != "async":
        return [0] * concurrency
    n = min(settings.processes, concurrency)
    return [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]


class Workers:
    """`concurrency` requests in flight from persistent workers that keep their callers (clients)
    across windows. Processes are spawned, not forked: gRPC and torch threads do not survive a fork.
    """

    def __init__(self, factory: CallerFactory, concurrency: int, settings: LoadSettings) -> None:
        if concurrency < 1:
            raise ConfigError(f"load generator concurrency must be >= 1, got {concurrency}")
        self.concurrency, self.settings = concurrency, settings
        shares = _shares(concurrency, settings)
        if settings.mode == "thread":
            self._results: Any = queue.Queue()
            barrier: Any = threading.Barrier(len(shares), timeout=settings.timeout_s)
            self._commands: list[Any] = [queue.Queue() for _ in shares]
            make: Any = threading.Thread
        else:
            ctx = mp.get_context("spawn")
            self._results = ctx.Queue()
            barrier = ctx.Barrier(len(shares), timeout=settings.timeout_s)
            self._commands = [ctx.Queue() for _ in shares]
            make = ctx.Process
        self._workers: list[Any] = [
            make(
                target=_serve,
                daemon=True,
                args=(factory, c, self._results, barrier, share, settings.timeout_s),
            )
            for c, share in zip(self._commands, shares, strict=True)
        ]
        self._barrier = barrier  # keep it alive: its semaphore must outlive the children's start
        for w in self._workers:
            w.start()

    def _dead(self) -> list[str]:
        return [
            f"{w.name} (exit code {w.exitcode})"
            for w in self._workers
            if isinstance(w, mp.process.BaseProcess) and not w.is_alive()
        ]

    def _collect(self) -> list[_WorkerOut]:
        outs: list[_WorkerOut] = []
        deadline = time.monotonic() + self.settings.timeout_s
        while len(outs) < len(self._workers):
            try:
                outs.append(self._results.get(timeout=min(1.0, self.settings.timeout_s)))
                continue
            except queue.Empty:
                pass
            if dead := self._dead():
                raise RuntimeError(f"load worker process died: {', '.join(dead)} (see stderr)")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self._workers) - len(outs)} load workers did not finish "
                    f"in {self.settings.timeout_s} s"
                )
        return outs

    def window(self, warmup: int, requests: int) -> WindowResult:
        """Every worker warms up, then all time `requests` calls per request slot from a common
        start."""
        if requests < 1 or warmup < 0:
            raise ConfigError(f"need requests >= 1 and warmup >= 0, got {requests}, {warmup}")
        return self._run(warmup, requests)

    def warm_up(self, warmup: int) -> WindowResult:
        """`warmup` untimed calls per request slot and nothing timed: what comes before the
        windows whose server statistics must hold their own requests only."""
        return self._run(warmup, 0)

    def _run(self, warmup: int, requests: int) -> WindowResult:
        for c in self._commands:
            c.put((warmup, requests))
        outs = self._collect()
        timed = [o for o in outs if o.end > 0]
        latencies = np.array([x for o in outs for x in o.latencies_s], dtype=np.float64)
        wall = (max(o.end for o in timed) - min(o.start for o in timed)) if timed else 0.0
        errors = sum(o.errors for o in outs)
        first_error = next((o.first_error for o in outs if o.first_error), None)
        return WindowResult(latencies, wall, errors, first_error)

    def retarget(self, factory: CallerFactory) -> None:
        """Every worker builds a new caller from `factory` before its next window (the workers
        and their processes stay: a sweep over models pays their start-up once)."""
        for c in self._commands:
            c.put((RETARGET, factory))

    def close(self) -> None:
        for c in self._commands:
            c.put(None)
        for w in self._workers:
            w.join(timeout=self.settings.join_timeout_s)
            if isinstance(w, mp.process.BaseProcess) and w.is_alive():
                w.terminate()
                w.join()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_window(
    factory: CallerFactory, concurrency: int, requests: int, warmup: int, settings: LoadSettings
) -> WindowResult:
    """One window of `concurrency` closed-loop request slots; `requests` timed calls per slot."""
    with Workers(factory, concurrency, settings) as workers:
        return workers.window(warmup, requests)


@dataclass
class StableResult:
    """The last window of a stability loop plus how the loop went."""

    window: WindowResult
    p50_history_ms: list[float]
    stable: bool


def run_until_stable(
    factory: CallerFactory,
    concurrency: int,
    requests: int,
    warmup: int,
    stability: Stability,
    settings: LoadSettings,
) -> StableResult:
    """Repeat windows until p50 settles (see :class:`Stability`) on new workers."""
    with Workers(factory, concurrency, settings) as workers:
        return until_stable(workers, requests, warmup, stability)


def until_stable(
    workers: Workers, requests: int, warmup: int, stability: Stability
) -> StableResult:
    """Repeat windows of running workers until p50 settles (the one convergence loop,
    :func:`mlpipe.measure.rounds.until_settled`). Warm-up runs before the first window only;
    a window with errors ends the loop (it would not settle)."""
    last = [WindowResult(np.empty(0), 0.0, 0)]

    def p50(i: int) -> float | None:
        last[0] = workers.window(warmup if i == 0 else 0, requests)
        return None if last[0].errors else last[0].latency()["p50_ms"]

    history, stable = until_settled(p50, stability)
    return StableResult(last[0], history, stable)
