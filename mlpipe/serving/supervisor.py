"""mlpipe-serve: tritonserver and the gateway under a watchdog; ready must mean "answers".

``/v2/health/ready`` stays READY when a model's python stub has died (every request then fails
after ~2 s), so the watchdog sends a **real inference** (one zero sample built from the model's
signature) to every model every ``serve.watchdog.interval_s``, and checks between probes that
tritonserver and the gateway still run (and that tritonserver is not stopped: a SIGSTOPped
server is alive to ``poll()`` and serves nothing). When a model stops answering or a process dies,
the server (or the gateway) is restarted on the same ports, after a backoff that grows with each
restart in a row; the reason is logged. After ``max_restarts`` restarts in a row mlpipe-serve
exits non-zero with a one-line reason. ``healthy_reset_s`` of good probes resets the count.

A probe queues behind the clients' requests, so under legitimate overload it times out while the
server is working hard. Liveness is therefore judged by **progress**: a probe that timed out
while tritonserver's completed-inference counters (``nv_inference_request_success`` on its own
metrics port, read with its own deadline) went up during the probe is "busy", never a reason to
restart; an error answer (a dead stub) is a failure however busy the server is. A server that
completes nothing (a hang) is restarted, and without waiting for nginx to drain requests stuck on
it: they are lost with the server anyway.

On SIGINT/SIGTERM the gateway stops first (nginx finishes in-flight requests and accepts no new
ones), then tritonserver, so it is never torn down with requests in flight.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hydra
import numpy as np
import psutil
from omegaconf import DictConfig

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, plain, positive_int, require
from mlpipe.common.errors import ServerError
from mlpipe.serving.client import TritonClient
from mlpipe.serving.gateway import Gateway, validate_gateway_cfg
from mlpipe.serving.gateway import from_config as gateway_from_config
from mlpipe.serving.lifecycle import Reaper, describe_exit
from mlpipe.serving.nginx_conf import Upstream
from mlpipe.serving.server import TritonServer

log = logging.getLogger(__name__)

# 'nv_inference_request_success{model="digits",version="1"} 42' (Triton's Prometheus text)
_SUCCESS = re.compile(r'^nv_inference_request_success\{[^}]*model="([^"]*)"[^}]*\}\s+(\S+)', re.M)


def completed_inferences(metrics_text: str) -> dict[str, float]:
    """Successful inference requests per model so far, from Triton's metrics text."""
    counts: dict[str, float] = {}
    for model, value in _SUCCESS.findall(metrics_text):
        counts[model] = counts.get(model, 0.0) + float(value)
    return counts


@dataclass(frozen=True)
class WatchdogSettings:
    """``serve.watchdog``: probe cadence, restart budget and backoff."""

    interval_s: float
    timeout_s: float
    progress_timeout_s: float
    failures_before_restart: int
    check_interval_s: float
    restart_stop_timeout_s: float
    max_restarts: int
    backoff_s: float
    backoff_factor: float
    backoff_max_s: float
    healthy_reset_s: float

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> WatchdogSettings:
        ints = {"failures_before_restart": 1, "max_restarts": 0}
        values = {
            key: positive_int(node[key], f"serve.watchdog.{key}", minimum)
            for key, minimum in ints.items()
        }
        for key in cls.__dataclass_fields__:
            if key not in ints:
                values[key] = as_float(node[key], f"serve.watchdog.{key}")
                require(values[key] > 0, f"serve.watchdog.{key}", f"must be > 0, got {node[key]!r}")
        return cls(**values)

    def backoff(self, attempt: int) -> float:
        """Wait before restart number ``attempt`` (1-based)."""
        return min(self.backoff_s * self.backoff_factor ** (attempt - 1), self.backoff_max_s)


class Supervisor:
    """Probes the models, watches the processes, restarts with bounded retries and backoff."""

    def __init__(
        self, server: TritonServer, gateway: Gateway | None, settings: WatchdogSettings
    ) -> None:
        self.server, self.gateway, self.settings = server, gateway, settings
        self.restarts = 0
        self.failures = 0
        self.last_restart = time.monotonic()
        self._clients: dict[str, TritonClient] = {}
        self.busy_probes = 0  # probes that timed out on a server completing requests

    def _close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients = {}

    def _probe_model(self, name: str) -> tuple[str | None, bool]:
        """(why the model failed its probe or None, whether it only ran out of time)."""
        spec = self.server.specs[name]
        try:
            if name not in self._clients:
                self._clients[name] = TritonClient(
                    "http", self.server.http_address, name, self.settings.timeout_s
                )
            logits = self._clients[name].infer(spec.probe_batch())
        except Exception as err:  # timeout, 500 "Stub process is not healthy", refused, ...
            self._clients.pop(name, None)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            timed_out = isinstance(err, TimeoutError) or "timed out" in first.lower()
            return f"model {name!r} did not answer a probe inference ({first})", timed_out
        dims = spec.outputs[0].dims if spec.outputs else logits.shape[1:]
        declared = all(d == got or d < 0 for d, got in zip(dims, logits.shape[1:], strict=False))
        shape_ok = logits.shape[0] == 1 and len(dims) == logits.ndim - 1 and declared
        if not shape_ok or not np.all(np.isfinite(logits)):  # the signature's shape, finite
            return (
                f"model {name!r} answered a probe with shape {logits.shape} (its signature: "
                f"(1, {', '.join(map(str, dims))})) or non-finite values",
                False,
            )
        return None, False

    def completed(self) -> float | None:
        """Inferences tritonserver completed so far, all models (its metrics port, read with its
        own deadline); None when it does not answer."""
        try:
            with urllib.request.urlopen(
                self.server.metrics_url, timeout=self.settings.progress_timeout_s
            ) as resp:
                return sum(completed_inferences(resp.read().decode(errors="replace")).values())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def probe(self) -> str | None:
        """A real inference to every model; the first failure's reason, or None.

        A probe that only ran out of time while the server completed other inferences meanwhile
        is busy (the models share the CPU: one model's load starves another's probe), not
        broken. An error answer (a dead stub) is a failure however busy the server is."""
        before = self.completed()
        for name in self.server.specs:
            reason, timed_out = self._probe_model(name)
            if reason is None:
                continue
            after = self.completed() if timed_out and self.stopped() is None else None
            if before is not None and after is not None and after > before:
                self.busy_probes += 1
                log.info("busy, not restarting: %s, yet it completed requests meanwhile", reason)
                before = after
                continue
            return reason
        return None

    def stopped(self) -> str | None:
        """Why a running tritonserver serves nothing although it has not exited (SIGSTOP)."""
        process = self.server.process
        try:
            if process is not None and psutil.Process(process.pid).status() == "stopped":
                return f"tritonserver is stopped (SIGSTOP), pid {process.pid}"
        except psutil.NoSuchProcess:
            pass
        return None

    def _server_exit(self) -> str:
        code = self.server.returncode
        return f"tritonserver exited ({describe_exit(code)}); log {self.server.log_path}"

    def _server_died(self) -> str | None:
        """Why a started server is gone (None while it runs, or when it was stopped on purpose)."""
        process = self.server.process
        return None if process is None or process.poll() is None else self._server_exit()

    def process_problem(self) -> str | None:
        """Why a process is down, or None."""
        if not self.server.is_running():
            return self._server_exit()
        stopped = self.stopped()
        if stopped is not None:
            return stopped
        if self.gateway is not None and not self.gateway.is_running():
            return f"the gateway (nginx) exited ({describe_exit(self.gateway.returncode)})"
        return None

    def _restart(self) -> None:
        """Restart what is broken: the gateway alone when only it died, else the server."""
        grace = self.settings.restart_stop_timeout_s
        if self.server.is_running() and self.gateway is not None and not self.gateway.is_running():
            self.gateway.stop()
            self.gateway.start()
            return
        self._close_clients()
        if self.gateway is not None:
            # nginx's keep-alive connections to the old server would keep its ports taken (the
            # server's ends linger in FIN_WAIT until nginx closes them): close them first. Not
            # with the full drain: requests in flight on a broken server never finish.
            self.gateway.stop(timeout_s=grace)
        self.server.stop(timeout_s=grace)
        self.server.start()
        if self.gateway is not None:
            self.gateway.start()

    def recover(self, reason: str, stop_event: threading.Event) -> None:
        """Restart with backoff until it works, the budget is spent (ServerError) or stop."""
        while True:
            self.restarts += 1
            if self.restarts > self.settings.max_restarts:
                raise ServerError(
                    f"giving up after {self.settings.max_restarts} restarts in a row "
                    f"(serve.watchdog.max_restarts): {reason}"
                )
            delay = self.settings.backoff(self.restarts)
            log.warning(
                "restart %d/%d in %.1f s: %s",
                self.restarts,
                self.settings.max_restarts,
                delay,
                reason,
            )
            if stop_event.wait(delay):
                return
            try:
                self._restart()
            except ServerError as err:
                # A server that died meanwhile is the cause to name: the gateway's readiness wait
                # then only times out against a dead upstream.
                reason = self._server_died() or f"restart failed: {str(err).splitlines()[0]}"
                continue
            self.last_restart, self.failures = time.monotonic(), 0
            log.warning("restarted after: %s", reason)
            return

    def run(self, stop_event: threading.Event) -> None:
        """Until ``stop_event``: check the processes often, probe the models every interval."""
        next_probe = time.monotonic() + self.settings.interval_s
        while not stop_event.wait(self.settings.check_interval_s):
            Reaper.shared()  # a killed reaper is replaced (with every registration) at once
            reason = self.process_problem()
            if reason is None and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.settings.interval_s
                failed = self.probe()
                self.failures = self.failures + 1 if failed else 0
                if self.failures >= self.settings.failures_before_restart:
                    reason = failed
            if reason is not None and not stop_event.is_set():
                self.recover(reason, stop_event)
                next_probe = time.monotonic() + self.settings.interval_s
            elif (
                self.restarts
                and time.monotonic() - self.last_restart > self.settings.healthy_reset_s
            ):
                self.restarts = 0
        self._close_clients()


def banner(server: TritonServer, gateway: Gateway | None) -> str:
    """What mlpipe-serve prints once everything answers."""
    lines = [
        f"tritonserver ready in {server.ready_seconds:.2f} s; models {', '.join(server.models)}",
        f"  HTTP    {server.http_url}",
        f"  gRPC    {server.grpc_url}",
        f"  metrics {server.metrics_url}",
        f"  log     {server.log_path}",
        f"  admin   key in {server.admin_key_file} (header {server.admin.header}; "
        f"restricted: {', '.join(server.admin.restricted)})",
    ]
    if gateway is not None:
        lines += [
            f"  gateway HTTP {gateway.http_url}",
            f"  gateway gRPC grpc://{gateway.grpc_address}",
            f"  gateway log  {gateway.paths.error_log}",
        ]
    lines.append("Ctrl-C (SIGINT) or SIGTERM stops it.")
    return "\n".join(lines)


def gateway_for(gateway_cfg: Mapping[str, Any], server: TritonServer) -> Gateway | None:
    """The gateway in front of a started server (None with ``gateway=off``)."""
    upstream = Upstream(
        server.host, server.ports["http"], server.ports["grpc"], server.admin.header
    )
    return gateway_from_config(gateway_cfg, server.specs, upstream)


def start_stack(cfg: DictConfig, server: TritonServer) -> Gateway | None:
    """Start tritonserver, then the gateway in front of it (None with gateway=off)."""
    gateway_cfg = plain(cfg.gateway) if "gateway" in cfg else {"enabled": False}
    if gateway_cfg.get("enabled", False):
        validate_gateway_cfg(gateway_cfg)  # a bad gateway value is named before anything starts
    server.start()
    gateway = gateway_for(gateway_cfg, server)
    if gateway is not None:
        gateway.start()
    return gateway


def shutdown(server: TritonServer, gateway: Gateway | None) -> int | None:
    """Drain: the gateway finishes in-flight requests first, then tritonserver stops."""
    if gateway is not None:
        gateway.stop()
    return server.stop()


def run_service(cfg: DictConfig) -> None:
    """mlpipe-serve's work; an abnormal end raises ServerError (one line, exit 1)."""
    settings = WatchdogSettings.from_config(cfg.serve.watchdog)
    server = TritonServer.from_config(cfg.serve)
    stop_event = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; draining and stopping", signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    gateway: Gateway | None = None
    try:
        gateway = start_stack(cfg, server)
        print(banner(server, gateway), flush=True)
        Supervisor(server, gateway, settings).run(stop_event)
        code = shutdown(server, gateway)
        if code not in (0, None):
            raise ServerError(
                f"tritonserver ended abnormally while stopping ({describe_exit(code)}); "
                f"see {server.log_path}"
            )
    finally:
        shutdown(server, gateway)  # idempotent; on every path
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-serve [serve.http_port=8000] [gateway.host=0.0.0.0] ...``."""
    run_service(cfg)


if __name__ == "__main__":
    main()
