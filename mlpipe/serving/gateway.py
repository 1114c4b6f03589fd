"""The gateway: Debian's nginx in front of tritonserver, configured from the model signature.

Triton's deployment guide says to put the server "behind a secure proxy or gateway" for anything
beyond loopback. mlpipe-serve writes an ``nginx.conf`` from each model's ``config.pbtxt``
(``max_batch_size`` x one sample) and ``conf/gateway/``, starts nginx and supervises it like the
server. What the gateway enforces, in front of every bug of Triton 2.51 it contains:

* only inference, health and metadata routes are proxied (HTTP and gRPC); everything else is 404,
  and the admin-key header is stripped from what is forwarded;
* body limits per model: JSON (capped so no body can nest deep enough to crash Triton's JSON
  parser) and binary tensors; gRPC messages; oversize bodies get 413 before Triton sees a byte;
* a ``Content-Encoding`` (or a gRPC message encoding) is refused with 415: Triton 2.51 leaks the
  inflated buffer of a compressed body it cannot parse;
* a TCP front (nginx's stream module) on the public ports caps open connections per client
  address, HTTP/1.1 and HTTP/2 alike, and passes the address on (PROXY protocol) to the HTTP and
  gRPC servers behind it on unix sockets; there header and body timeouts and a per-client cap on
  requests in progress stop slow-loris; bodies are buffered whole by nginx, so Triton never
  holds a half-sent request;
* every request body is checked against the model signature (:mod:`mlpipe.serving.gateway_js`);
* every error the gateway makes itself is Triton's ``{"error": ...}`` JSON (gRPC: a status and
  its message), so clients show the reason.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlpipe.common.config import as_float, positive_int, require
from mlpipe.common.errors import ConfigError, ServerError
from mlpipe.serving.gateway_js import check_script
from mlpipe.serving.lifecycle import Reaper
from mlpipe.serving.network import is_loopback, port_number
from mlpipe.serving.nginx_conf import GatewayPaths, Upstream, render_config
from mlpipe.serving.process import ManagedProcess
from mlpipe.serving.repository import ModelSpec

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SOCKET_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, with its NUL


def validate_gateway_cfg(cfg: Mapping[str, Any]) -> None:
    """Every count and limit a positive integer, every timeout a positive number, every port a
    port (names the key): checked before tritonserver starts."""
    for key in ("worker_processes", "worker_connections"):
        positive_int(cfg[key], f"gateway.{key}")
    for key in ("http_port", "grpc_port"):
        port_number(cfg, key, "gateway")
    for key in ("ready_timeout_s", "stop_timeout_s", "poll_interval_s", "health_timeout_s"):
        require(as_float(cfg[key], f"gateway.{key}") > 0, f"gateway.{key}", "must be > 0")
    for key, value in cfg["limits"].items():
        positive_int(value, f"gateway.limits.{key}")
    for key, value in cfg["timeouts"].items():
        require(as_float(value, f"gateway.timeouts.{key}") > 0, f"gateway.timeouts.{key}", "> 0")
    positive_int(cfg["check"]["max_json_depth"], "gateway.check.max_json_depth")


def _workers_own(path: Path, cfg: Mapping[str, Any]) -> None:
    """Only nginx's workers may use `path` (they run as worker_user when started as root)."""
    if os.geteuid() == 0:
        shutil.chown(path, str(cfg["worker_user"]), str(cfg["worker_group"]))
    path.chmod(0o700)


def _prepare_runtime(runtime: Path, cfg: Mapping[str, Any]) -> None:
    """Temp folders nginx's workers write request bodies to."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        path = runtime / sub
        path.mkdir(parents=True, exist_ok=True)
        _workers_own(path, cfg)


def _open_to_others(folder: Path) -> bool:
    """Every folder from / down to `folder` lets any user through (o+x)."""
    folder = folder.resolve()
    return all(os.stat(f).st_mode & stat.S_IXOTH for f in (folder, *folder.parents))


def _socket_base() -> Path:
    """Where the socket folder goes: the temp folder ($TMPDIR, else /tmp). Started as root, the
    workers run as worker_user and must pass every folder above it: a private $TMPDIR (a build
    sandbox's, pytest's, `mktemp -d`) would leave them unable to connect, so /tmp then."""
    base = Path(tempfile.gettempdir())
    if os.geteuid() != 0 or _open_to_others(base):
        return base
    if _open_to_others(Path("/tmp")):
        log.info("TMPDIR %s is private: the gateway's sockets go under /tmp", base)
        return Path("/tmp")
    raise ServerError(
        f"nginx's workers (gateway.worker_user) cannot reach a socket folder under {base} or "
        "/tmp: some folder above is closed to other users; set TMPDIR to one they can pass"
    )


def _socket_dir(port: int, cfg: Mapping[str, Any]) -> Path:
    """A fresh folder for the unix sockets behind the TCP front (:func:`_socket_base`): the
    workers connect to them, and a socket path has at most 107 bytes. The workers' alone: no
    other local user can connect there and forge a PROXY header."""
    sockets = Path(tempfile.mkdtemp(prefix=f"mlpipe-gateway-{port}-", dir=_socket_base()))
    if len(str(sockets / "http.sock").encode()) > _SOCKET_PATH_MAX:
        shutil.rmtree(sockets)
        raise ServerError(
            f"the gateway's unix sockets would be {sockets}/http.sock, longer than a socket path "
            f"may be ({_SOCKET_PATH_MAX} bytes); set TMPDIR to a shorter folder (or unset it)"
        )
    _workers_own(sockets, cfg)
    return sockets


def stream_module(binary: str, module: str) -> str | None:
    """What the TCP front needs loaded: ``module`` where ``nginx -V`` says the stream module is
    dynamic (Debian: libnginx-mod-stream), None where it is compiled in (nixpkgs)."""
    flags = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr.split()
    if "--with-stream" in flags:
        return None
    if "--with-stream=dynamic" in flags and Path(module).is_file():
        return module
    why = f"{module} is missing" if "--with-stream=dynamic" in flags else "not built in"
    raise ServerError(
        f"the gateway's per-client connection cap needs nginx's stream module ({why}); "
        "`apt-get install libnginx-mod-stream`, or serve on loopback only with gateway=off"
    )


class Gateway(ManagedProcess):
    """An nginx process in front of one TritonServer (start/stop/is_running, like the server)."""

    name, group = "nginx", "gateway"

    def __init__(
        self, cfg: Mapping[str, Any], specs: Mapping[str, ModelSpec], upstream: Upstream
    ) -> None:
        require(is_loopback(upstream.host), "serve.host", "the gateway's upstream must be loopback")
        for name in specs:
            require(bool(_MODEL_NAME.match(name)), "serve.models", f"{name!r}: use [A-Za-z0-9_.-]")
        validate_gateway_cfg(cfg)
        ports = {which: port_number(cfg, f"{which}_port", "gateway") for which in ("http", "grpc")}
        super().__init__(str(cfg["host"]), ports)
        self.cfg, self.specs, self.upstream = dict(cfg), dict(specs), upstream
        search = os.pathsep.join(str(p) for p in cfg["search_path"])
        self.binary = shutil.which(str(cfg["binary"])) or shutil.which(
            str(cfg["binary"]), path=search
        )
        self.paths: GatewayPaths | None = None

    def _paths(self) -> GatewayPaths:
        """This instance's files, named after its resolved HTTP port."""
        runtime = Path(str(self.cfg["runtime_dir"])).resolve() / f"gateway-{self.ports['http']}"
        logs = Path(str(self.cfg["log_dir"])).resolve()
        logs.mkdir(parents=True, exist_ok=True)
        _prepare_runtime(runtime, self.cfg)
        stem = f"gateway-{self.ports['http']}"
        return GatewayPaths(
            self.ports["http"],
            self.ports["grpc"],
            runtime,
            runtime / "nginx.conf",
            logs / f"{stem}.error.log",
            logs / f"{stem}.access.log",
            runtime / "check.js",
            _socket_dir(self.ports["http"], self.cfg),
        )

    def _nginx(self, *args: str) -> list[str]:
        p = self.paths
        files = ["-p", f"{p.runtime_dir}/", "-e", str(p.error_log), "-c", str(p.config)]
        return [self.binary, *files, *args]

    def _write_check(self) -> None:
        check = self.cfg["check"]
        if not check["enabled"]:
            return
        if check["module"] and not Path(str(check["module"])).is_file():
            raise ServerError(
                f"the gateway's request check needs nginx's JavaScript module ({check['module']} "
                "is missing); `apt-get install libnginx-mod-http-js`, or gateway.check.enabled="
                "false (the batch dimension is then not checked: Triton 2.51 truncates it)"
            )
        self.paths.check_script.write_text(check_script(self.specs, int(check["max_json_depth"])))

    def _write_config(self) -> None:
        """nginx.conf (and check.js), checked with ``nginx -t`` before anything listens."""
        self._write_check()
        stream = stream_module(self.binary, str(self.cfg["stream_module"]))
        text = render_config(self.cfg, self.specs, self.upstream, self.paths, stream)
        self.paths.config.write_text(text)
        check = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise ServerError(
                f"nginx rejects the generated {self.paths.config}: {' '.join(check.stderr.split())}"
            )

    def start(self) -> Gateway:
        """Write nginx.conf, check it with ``nginx -t``, start nginx, wait until it proxies."""
        if self.binary is None:
            raise ServerError(
                f"the gateway needs nginx ({self.cfg['binary']!r} not found on PATH); install "
                "Debian's nginx-light (`apt-get install nginx-light`) or serve on loopback only "
                "with gateway=off"
            )
        self.resolve_ports()
        self.paths = self._paths()
        Reaper.shared().watch_files(self._socket_files())  # if mlpipe-serve is SIGKILLed
        try:
            self._write_config()
        except ServerError:
            self._remove_sockets()
            raise
        started = time.perf_counter()
        self.spawn(self._nginx(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # error_log
        self.wait_ready(
            started,
            float(self.cfg["ready_timeout_s"]),
            float(self.cfg["poll_interval_s"]),
            self._live,
        )
        log.info("gateway ready: %s, grpc %s", self.http_url, self.grpc_address)
        return self

    def _live(self) -> bool:
        try:
            url = f"{self.http_url}/v2/health/live"
            with urllib.request.urlopen(url, timeout=float(self.cfg["health_timeout_s"])) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def failure(self, why: str) -> ServerError:
        return ServerError(f"the gateway (nginx) {why}; see {self.paths.error_log}")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Graceful: SIGQUIT (stop accepting, finish in-flight requests), then after
        ``timeout_s`` (default ``gateway.stop_timeout_s``) SIGKILL of the group."""
        grace = float(self.cfg["stop_timeout_s"]) if timeout_s is None else timeout_s
        status = self.terminate(signal.SIGQUIT, grace)
        if self.paths is not None:  # nginx has exited: its sockets' folder goes too
            self._remove_sockets()
        return status

    def _socket_files(self) -> list[Path]:
        return [self.paths.sockets, *(self.paths.socket(w) for w in ("http", "grpc"))]

    def _remove_sockets(self) -> None:
        shutil.rmtree(self.paths.sockets, ignore_errors=True)
        Reaper.shared().forget_files(self._socket_files())


def from_config(
    gateway_cfg: Mapping[str, Any], specs: Mapping[str, ModelSpec], upstream: Upstream
) -> Gateway | None:
    """The gateway, or None with ``gateway=off``."""
    if not gateway_cfg.get("enabled", False):
        return None
    if not specs:
        raise ConfigError("invalid config value serve.models: the gateway needs at least one model")
    return Gateway(gateway_cfg, specs, upstream)
