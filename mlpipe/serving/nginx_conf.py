"""The gateway's nginx.conf, rendered from the model signature and ``conf/gateway/``.

Pure text: a TCP (stream) front on the public ports that caps connections per client address
and hands each connection on (PROXY protocol) to the HTTP and gRPC servers on unix sockets; routes
(inference, health and metadata only); per-model body limits, timeouts and request caps; every
gateway-made error as Triton's ``{"error": ...}`` body. :class:`mlpipe.serving.gateway.Gateway`
writes it and runs nginx on it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipe.serving.admin import GRPC_HEADER_PREFIX
from mlpipe.serving.network import bracketed
from mlpipe.serving.repository import ModelSpec

log = logging.getLogger(__name__)

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
    429: "too many requests in progress from this client (gateway.limits.connections_per_client)",
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
    requests: int,
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
        listen {listen} proxy_protocol;
        limit_conn per_client {requests};
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


def _grpc_server(listen: str, limits: BodyLimits, streams: int, requests: int, check: bool) -> str:
    unary = "|".join(_GRPC_OPEN)
    forward = "js_content check.checkGrpc;" if check else "grpc_pass grpc://triton_grpc;"
    return f"""
    server {{
        listen {listen} http2 proxy_protocol;
        http2_max_concurrent_streams {streams};
        limit_conn per_client {requests};
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
    sockets: Path  # the HTTP and gRPC servers' unix sockets behind the TCP front

    def socket(self, which: str) -> Path:
        return self.sockets / f"{which}.sock"


@dataclass(frozen=True)
class Upstream:
    """Where tritonserver listens (loopback) and the header carrying its admin key."""

    host: str
    http_port: int
    grpc_port: int
    admin_header: str


def _client_settings(cfg: Mapping[str, Any], paths: GatewayPaths) -> str:
    """http-level settings: temp paths, header buffers, slow-loris timeouts, request limit; the
    client's address from the TCP front's PROXY protocol header, so per-address limits and the
    access log see the client, not the unix socket."""
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
    set_real_ip_from unix:;
    real_ip_header proxy_protocol;
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


def _tcp_front(cfg: Mapping[str, Any], paths: GatewayPaths) -> str:
    """The public ports: at most tcp_connections_per_client open connections per address (under
    HTTP/2 nginx's http limit_conn counts streams, so only a TCP-level cap bounds connections),
    each handed to its server's unix socket with the client's address in a PROXY header."""
    host, cap = bracketed(str(cfg["host"])), int(cfg["limits"]["tcp_connections_per_client"])
    servers = "".join(
        f"""
    server {{
        listen {host}:{port};
        limit_conn tcp_per_client {cap};
        proxy_pass unix:{paths.socket(which)};
        proxy_protocol on;
        proxy_connect_timeout {cfg["timeouts"]["upstream_connect_s"]}s;
    }}"""
        for which, port in (("http", paths.http_port), ("grpc", paths.grpc_port))
    )
    return f"""stream {{
    limit_conn_zone $binary_remote_addr zone=tcp_per_client:1m;{servers}
}}"""


def _modules(cfg: Mapping[str, Any], stream_module: str | None) -> str:
    """load_module lines for the modules this nginx has as dynamic ones (Debian), none where they
    are compiled in (nixpkgs)."""
    njs = cfg["check"]["module"] if cfg["check"]["enabled"] else None  # null: compiled in
    return "\n".join(f"load_module {m};" for m in (stream_module, njs) if m)


def render_config(
    cfg: Mapping[str, Any],
    specs: Mapping[str, ModelSpec],
    upstream: Upstream,
    paths: GatewayPaths,
    stream_module: str | None = None,
) -> str:
    """The whole nginx.conf: the TCP front, one HTTP/1.1 server, one gRPC (h2c) server, both to
    tritonserver. ``stream_module``: the path to load_module, None where stream is compiled in."""
    limits, lim = body_limits(specs, cfg["limits"]), cfg["limits"]
    user = f"user {cfg['worker_user']} {cfg['worker_group']};" if os.geteuid() == 0 else ""
    requests = int(lim["connections_per_client"])
    check = bool(cfg["check"]["enabled"])
    digits = int(lim["binary_header_max_digits"])
    streams = int(lim["http2_max_concurrent_streams"])
    js = f"js_import check from {paths.check_script};" if check else ""
    settings = "".join(
        [
            _client_settings(cfg, paths),
            _upstreams(cfg, upstream),
            _proxy_settings(cfg, upstream.admin_header),
        ]
    )
    http_listen, grpc_listen = (f"unix:{paths.socket(w)}" for w in ("http", "grpc"))
    return f"""# generated by mlpipe-serve (mlpipe.serving.gateway) -- do not edit
{_modules(cfg, stream_module)}
daemon off;
worker_processes {int(cfg["worker_processes"])};
{user}
pid {paths.runtime_dir}/nginx.pid;
error_log {paths.error_log} warn;
worker_rlimit_nofile {_open_files(int(cfg["worker_connections"]))};
events {{ worker_connections {int(cfg["worker_connections"])}; }}
{_tcp_front(cfg, paths)}
http {{
    {js}{settings}
{_http_server(http_listen, specs, limits, requests, check, digits)}
{_grpc_server(grpc_listen, limits, streams, requests, check)}
}}
"""


def _open_files(connections: int) -> int:
    """Descriptors a worker needs: a client and an upstream side per connection, within the hard
    limit (nginx raises its soft limit to this when it may)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 2 * connections + 64
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
