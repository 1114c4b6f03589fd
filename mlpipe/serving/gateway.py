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
* header and body timeouts and a per-client connection limit stop slow-loris; bodies are
  buffered whole by nginx, so Triton never holds a half-sent request;
* every request body is checked against the model signature (:mod:`mlpipe.serving.gateway_js`);
* every error the gateway makes itself is Triton's ``{"error": ...}`` JSON (gRPC: a status and
  its message), so clients show the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipe.common.config import as_float, positive_int, require
from mlpipe.common.errors import ConfigError, ServerError
from mlpipe.serving.admin import GRPC_HEADER_PREFIX
from mlpipe.serving.gateway_js import check_script
from mlpipe.serving.network import bracketed, is_loopback, port_number
from mlpipe.serving.process import ManagedProcess
from mlpipe.serving.repository import ModelSpec

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_GRPC_OPEN = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
_REFUSED = "refused by the mlpipe gateway: "
# A body buffer one HTTP/2 frame (16 KiB) larger than the body limit: a body without a length
# (gRPC, chunked) is then refused with 413 when it passes the limit, before nginx would spill
# the full buffer to a temp file (a worker that cannot write there made that a 500).
_SPILL_SLACK = 16384 + 1024
# Every status the gateway makes itself, as Triton's own {"error": ...} body, so tritonclient
# shows the reason (an nginx HTML page reads as "Parse error at offset 0"). No quote, no $: the
# text goes into nginx's `return`.
_HTTP_ERRORS = {
    400: "malformed HTTP request",
    403: "method not allowed on this route (GET for health and metadata, POST for inference)",
    404: "not found: only inference, health and metadata of the served models are routed",
    413: "request body too large for this model (max_batch_size x one sample; binary tensors "
    "for large batches)",
    414: "request line too long",
    415: "compressed bodies (Content-Encoding) are refused",
    429: "too many connections from this client (gateway.limits.connections_per_client)",
    494: "request headers too large",
    500: "internal gateway error",
    502: "tritonserver is not answering (restarting?); retry",
    503: "tritonserver is not answering (restarting?); retry",
    504: "tritonserver did not answer in time (gateway.timeouts.upstream_read_s)",
}
# The same for gRPC: a trailers-only answer with the gRPC status code.
_GRPC_ERRORS = {
    404: (12, "method not routed: only inference, health and metadata"),
    413: (8, "message too large for this model (max_batch_size x one sample)"),
    415: (3, "compressed messages are refused"),
    429: (8, "too many concurrent streams from this client"),
    502: (14, "tritonserver is not answering (restarting?); retry"),
    504: (4, "tritonserver did not answer in time"),
}


@dataclass(frozen=True)
class BodyLimits:
    """Largest accepted request body per route kind, in bytes."""

    json: dict[str, int]  # model -> limit
    binary: dict[str, int]
    grpc_infer: int
    small: int


def body_limits(specs: Mapping[str, ModelSpec], limits: Mapping[str, Any]) -> BodyLimits:
    """max_batch_size x one sample, as JSON text and as binary tensors (+ headers/framing)."""
    json_cap = int(limits["json_max_bytes"])
    header_max = 10 ** int(limits["binary_header_max_digits"]) - 1
    json, binary = {}, {}
    for name, spec in specs.items():
        wanted = int(
            limits["json_overhead_bytes"]
        ) + spec.max_batch_size * spec.sample_values * int(limits["json_value_bytes"])
        json[name] = min(wanted, json_cap)
        if wanted > json_cap:
            per_sample = spec.sample_values * int(limits["json_value_bytes"])
            log.info(
                "gateway: JSON bodies for %s are capped at %d bytes (about %d samples, not "
                "max_batch_size=%d): larger batches must use binary tensors",
                name,
                json_cap,
                max(1, (json_cap - int(limits["json_overhead_bytes"])) // per_sample),
                spec.max_batch_size,
            )
        binary[name] = header_max + spec.max_batch_size * spec.sample_bytes
    grpc = int(limits["grpc_overhead_bytes"]) + max(
        s.max_batch_size * s.sample_bytes for s in specs.values()
    )
    return BodyLimits(json, binary, grpc, int(limits["small_body_bytes"]))


def _proxy_settings(cfg: Mapping[str, Any], admin_header: str) -> str:
    t = cfg["timeouts"]
    return f"""
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header {admin_header} "";
    proxy_connect_timeout {t["upstream_connect_s"]}s;
    proxy_read_timeout {t["upstream_read_s"]}s;
    proxy_send_timeout {t["upstream_read_s"]}s;
    proxy_request_buffering on;
    grpc_set_header {GRPC_HEADER_PREFIX}{admin_header} "";
    grpc_connect_timeout {t["upstream_connect_s"]}s;
    grpc_read_timeout {t["upstream_read_s"]}s;
    grpc_send_timeout {t["upstream_read_s"]}s;"""


def _http_errors() -> str:
    """error_page for every status nginx makes, each a JSON body; 405 (TRACE) is 403 like the
    other methods a route does not take."""
    pages = [f"error_page {code} @mlpipe_{code};" for code in _HTTP_ERRORS]
    pages.append("error_page 405 =403 @mlpipe_403;")
    for code, text in _HTTP_ERRORS.items():
        body = json.dumps({"error": _REFUSED + text})
        pages.append(f"location @mlpipe_{code} {{ return {code} '{body}'; }}")
    return "\n        ".join(pages)


def _grpc_errors() -> str:
    """error_page for the gRPC server: a trailers-only answer with grpc-status and the reason."""
    # =200: a gRPC status travels in a 200 answer; any other HTTP status reads as UNKNOWN
    pages = [f"error_page {code} =200 @mlpipe_grpc_{code};" for code in _GRPC_ERRORS]
    for code, (status, text) in _GRPC_ERRORS.items():
        message = urllib.parse.quote(_REFUSED + text)
        pages.append(
            f"location @mlpipe_grpc_{code} {{ default_type application/grpc; "
            f"add_header grpc-status {status} always; "
            f'add_header grpc-message "{message}" always; return 200; }}'
        )
    return "\n        ".join(pages)


def _bad_header(digits: int) -> str:
    text = f"Inference-Header-Content-Length must be a byte count of 1 to {digits} digits"
    return json.dumps({"error": _REFUSED + text})


def _http_server(
    listen: str,
    specs: Mapping[str, ModelSpec],
    limits: BodyLimits,
    connections: int,
    check: bool,
    header_digits: int,
) -> str:
    models = "|".join(re.escape(name) for name in specs)
    forward = "js_content check.checkHttp;" if check else "proxy_pass http://triton_http;"
    largest = max([*limits.json.values(), *limits.binary.values()])
    infer = []
    for name in specs:
        for kind, size in (("json", limits.json[name]), ("binary", limits.binary[name])):
            infer.append(f"""
        location ~ ^/_mlpipe_{kind}/{re.escape(name)}((/versions/[0-9]+)?/infer)$ {{
            internal;
            limit_except POST {{ deny all; }}
            client_max_body_size {size};
            client_body_buffer_size {size + _SPILL_SLACK};
            client_body_in_single_buffer on;
            set $mlpipe_model {name};
            rewrite ^/_mlpipe_{kind}/([^/]+)(/.*)$ /v2/models/$1$2 break;
            {forward}
        }}""")
    return f"""
    server {{
        listen {listen};
        limit_conn per_client {connections};
        client_max_body_size {limits.small};
        default_type application/json;
        {_http_errors()}
        if ($http_content_encoding) {{ return 415; }}
        if ($mlpipe_body = bad) {{ return 400 '{_bad_header(header_digits)}'; }}
        rewrite ^/v2/models/({models})((/versions/[0-9]+)?/infer)$ /_mlpipe_$mlpipe_body/$1$2 last;
        location ~ ^/v2(/health/(live|ready)|/models/({models})(/versions/[0-9]+)?(/ready)?)?$ {{
            limit_except GET {{ deny all; }}
            proxy_pass http://triton_http;
        }}{"".join(infer)}
        location @triton_http {{
            client_max_body_size {largest};
            proxy_pass http://triton_http;
        }}
        location / {{ return 404; }}
    }}"""


def _grpc_server(
    listen: str, limits: BodyLimits, streams: int, connections: int, check: bool
) -> str:
    unary = "|".join(_GRPC_OPEN)
    forward = "js_content check.checkGrpc;" if check else "grpc_pass grpc://triton_grpc;"
    return f"""
    server {{
        listen {listen} http2;
        http2_max_concurrent_streams {streams};
        limit_conn per_client {connections};
        client_max_body_size {limits.small};
        {_grpc_errors()}
        if ($http_content_encoding) {{ return 415; }}
        if ($http_grpc_encoding !~ "^(identity)?$") {{ return 415; }}
        location = /inference.GRPCInferenceService/ModelInfer {{
            client_max_body_size {limits.grpc_infer};
            client_body_buffer_size {limits.grpc_infer + _SPILL_SLACK};
            client_body_in_single_buffer on;
            {forward}
        }}
        location @triton_grpc {{
            client_max_body_size {limits.grpc_infer};
            grpc_pass grpc://triton_grpc;
        }}
        location ~ ^/inference\\.GRPCInferenceService/({unary})$ {{
            grpc_pass grpc://triton_grpc;
        }}
        location / {{ return 404; }}
    }}"""


@dataclass(frozen=True)
class GatewayPaths:
    """Resolved ports and the files of one gateway instance."""

    http_port: int
    grpc_port: int
    runtime_dir: Path
    config: Path
    error_log: Path
    access_log: Path
    check_script: Path


@dataclass(frozen=True)
class Upstream:
    """Where tritonserver listens (loopback) and the header carrying its admin key."""

    host: str
    http_port: int
    grpc_port: int
    admin_header: str


def _client_settings(cfg: Mapping[str, Any], paths: GatewayPaths) -> str:
    """http-level settings: temp paths, header buffers, slow-loris timeouts, connection limit."""
    lim, t, runtime = cfg["limits"], cfg["timeouts"], paths.runtime_dir
    access = f"{paths.access_log} combined" if cfg["access_log"] else "off"
    large_headers = f"{int(lim['large_header_buffers'])} {int(lim['large_header_buffer_bytes'])}"
    return f"""
    access_log {access};
    server_tokens off;
    client_body_temp_path {runtime}/client_body;
    proxy_temp_path {runtime}/proxy;
    fastcgi_temp_path {runtime}/fastcgi;
    uwsgi_temp_path {runtime}/uwsgi;
    scgi_temp_path {runtime}/scgi;
    client_header_buffer_size {int(lim["client_header_buffer_bytes"])};
    large_client_header_buffers {large_headers};
    client_header_timeout {t["client_header_s"]}s;
    client_body_timeout {t["client_body_s"]}s;
    send_timeout {t["send_s"]}s;
    keepalive_timeout {t["keepalive_s"]}s;
    reset_timedout_connection on;
    limit_conn_zone $binary_remote_addr zone=per_client:1m;
    limit_conn_status 429;
    map $http_inference_header_content_length $mlpipe_body {{
        "" json;
        "~^[0-9]{{1,{int(lim["binary_header_max_digits"])}}}$" binary;
        default bad;
    }}"""


def _upstreams(cfg: Mapping[str, Any], upstream: Upstream) -> str:
    keepalive, host = int(cfg["timeouts"]["upstream_keepalive"]), bracketed(upstream.host)
    return f"""
    upstream triton_http {{
        server {host}:{upstream.http_port};
        keepalive {keepalive};
    }}
    upstream triton_grpc {{
        server {host}:{upstream.grpc_port};
        keepalive {keepalive};
    }}"""


def render_config(
    cfg: Mapping[str, Any], specs: Mapping[str, ModelSpec], upstream: Upstream, paths: GatewayPaths
) -> str:
    """The whole nginx.conf: one HTTP/1.1 server, one gRPC (h2c) server, both to tritonserver."""
    limits, lim = body_limits(specs, cfg["limits"]), cfg["limits"]
    host = bracketed(str(cfg["host"]))
    user = f"user {cfg['worker_user']} {cfg['worker_group']};" if os.geteuid() == 0 else ""
    conns = int(lim["connections_per_client"])
    check = bool(cfg["check"]["enabled"])
    digits = int(lim["binary_header_max_digits"])
    streams = int(lim["http2_max_concurrent_streams"])
    module = cfg["check"]["module"]  # null: njs is compiled into nginx (nixpkgs' nginxModules)
    load = f"load_module {module};" if check and module else ""
    js = f"js_import check from {paths.check_script};" if check else ""
    settings = "".join(
        [
            _client_settings(cfg, paths),
            _upstreams(cfg, upstream),
            _proxy_settings(cfg, upstream.admin_header),
        ]
    )
    return f"""# generated by mlpipe-serve (mlpipe.serving.gateway) -- do not edit
{load}
daemon off;
worker_processes {int(cfg["worker_processes"])};
{user}
pid {paths.runtime_dir}/nginx.pid;
error_log {paths.error_log} warn;
worker_rlimit_nofile {_open_files(int(cfg["worker_connections"]))};
events {{ worker_connections {int(cfg["worker_connections"])}; }}
http {{
    {js}{settings}
{_http_server(f"{host}:{paths.http_port}", specs, limits, conns, check, digits)}
{_grpc_server(f"{host}:{paths.grpc_port}", limits, streams, conns, check)}
}}
"""


def _open_files(connections: int) -> int:
    """Descriptors a worker needs: a client and an upstream side per connection, within the hard
    limit (nginx raises its soft limit to this when it may)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 2 * connections + 64
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


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


def _prepare_runtime(runtime: Path, cfg: Mapping[str, Any]) -> None:
    """Temp folders nginx's workers write request bodies to (theirs alone when run as root)."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        path = runtime / sub
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(path, str(cfg["worker_user"]), str(cfg["worker_group"]))
            path.chmod(0o700)


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
        self.paths.config.write_text(render_config(self.cfg, self.specs, self.upstream, self.paths))
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
        self._write_config()
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
        return self.terminate(signal.SIGQUIT, grace)


def from_config(
    gateway_cfg: Mapping[str, Any], specs: Mapping[str, ModelSpec], upstream: Upstream
) -> Gateway | None:
    """The gateway, or None with ``gateway=off``."""
    if not gateway_cfg.get("enabled", False):
        return None
    if not specs:
        raise ConfigError("invalid config value serve.models: the gateway needs at least one model")
    return Gateway(gateway_cfg, specs, upstream)
