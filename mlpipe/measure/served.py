"""One served point: a model on a running tritonserver under N requests in flight.

:func:`served_point` is how the tuner, the serving targets and the bench's Triton rows measure a
served model: the workers are pointed at it (one client per worker), warmed up, then timed in
windows until p50 settles (:func:`mlpipe.measure.rounds.until_settled`). Triton's own counters
are read around each window, so the reported window's mean server batch holds that window's
requests only (no warm-up, no earlier window, no earlier measurement of the same model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipe.measure.loadgen import WindowResult, Workers
from mlpipe.measure.rounds import Stability, until_settled
from mlpipe.serving.client import TritonCaller, TritonClient
from mlpipe.serving.server import TritonServer


@dataclass(frozen=True)
class Requests:
    """What every request slot of a served point sends, and how many of them."""

    batch: np.ndarray  # (B, C, H, W): each request's input
    per_window: int  # timed requests per slot per window
    warmup: int  # untimed requests per slot before the first window
    protocol: str = "grpc"


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Triton's counters over one window: inferences, executions, and their ratio."""
    inferences = int(after["inference_count"] - before["inference_count"])
    executions = int(after["execution_count"] - before["execution_count"])
    return {
        "inference_count": inferences,
        "execution_count": executions,
        "mean_server_batch": inferences / executions if executions else None,
    }


def window_row(window: WindowResult, history: list[float], stable: bool) -> dict[str, Any]:
    """The figures of a stability loop's last window (p50 of every window in `history`)."""
    row = {
        "status": "ok" if not window.errors else "error",
        "requests": window.requests,
        "errors": window.errors,
        "wall_s": window.wall_s,
        "throughput_rps": window.throughput_rps,
        "latency": window.latency(),
        "windows": len(history),
        "stable": stable,
        "p50_history_ms": [round(x, 4) for x in history],
    }
    if window.errors:
        row["reason"] = window.first_error
    return row


def served_point(
    server: TritonServer, model: str, workers: Workers, stability: Stability, requests: Requests
) -> dict[str, Any]:
    """Throughput, latency and the mean server batch of `model` at the workers' concurrency:
    the last window of the stability loop, with Triton's statistics of that window."""
    timeout_s = workers.settings.timeout_s
    address = server.grpc_address if requests.protocol == "grpc" else server.http_address
    workers.retarget(TritonCaller(requests.protocol, address, model, requests.batch, timeout_s))
    admin = server.admin_grpc_headers  # statistics are a restricted API (mlpipe-serve's key)
    last: dict[str, Any] = {}
    with TritonClient("grpc", server.grpc_address, model, timeout_s, admin) as stats:
        workers.warm_up(requests.warmup)  # a failing warm-up fails the first window too

        def p50(_round: int) -> float | None:
            before = stats.batch_stats()
            last["window"] = window = workers.window(0, requests.per_window)
            last["server"] = _delta(before, stats.batch_stats())
            return None if window.errors else window.latency()["p50_ms"]

        history, stable = until_settled(p50, stability)
    return {
        "model": model,
        "protocol": requests.protocol,
        "concurrency": workers.concurrency,
        "batch_size": int(requests.batch.shape[0]),
        **window_row(last["window"], history, stable),
        "server": last["server"],
    }
