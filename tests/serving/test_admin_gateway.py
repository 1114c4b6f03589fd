"""Admin APIs behind the per-start key, and the nginx gateway in front of tritonserver.

One real tritonserver + one real nginx (ephemeral loopback ports) for the module. The requests
are the issue's cases 1-4 and 9 (nested JSON, compressed bodies, the shared-memory and logging
APIs, oversize and half-sent bodies): each gets a 4xx (from the gateway where the issue says
so) and the server keeps answering correctly afterwards.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as tg
from helpers.compose import EPHEMERAL, compose_app
from helpers.serving import open_socket, raw_request, rss_mib, served_stack
from tritonclient.utils import InferenceServerException

from mlpipe.common.config import plain
from mlpipe.common.errors import ConfigError, ServerError
from mlpipe.data import load_split
from mlpipe.export.reference import ort_session, run_ort
from mlpipe.serving.admin import AdminSettings, make_key
from mlpipe.serving.client import TritonClient
from mlpipe.serving.gateway import Gateway, stream_module
from mlpipe.serving.nginx_conf import GatewayPaths, Upstream, render_config
from mlpipe.serving.server import TritonServer

GATEWAY = (
    "gateway.http_port=0",
    "gateway.grpc_port=0",
    "gateway.timeouts.client_header_s=2",  # slow-loris cut-off, short for the test
    "gateway.timeouts.client_body_s=2",
)


@pytest.fixture(scope="module")
def stack(hardening_export: Path) -> Iterator[tuple[Any, TritonServer, Gateway]]:
    with served_stack(hardening_export, *EPHEMERAL, *GATEWAY) as stack:
        yield stack


@pytest.fixture(scope="module")
def reference(stack: tuple[Any, TritonServer, Gateway]) -> tuple[np.ndarray, np.ndarray]:
    """64 test images and ONNX Runtime's logits for them."""
    cfg, _, _ = stack
    images = load_split(compose_app("client", Path(cfg.paths.root_dir)).data, "test")[0][:64]
    onnx_path = Path(cfg.serve.model_repository) / "digits" / "1" / "model.onnx"
    return images, run_ort(ort_session(onnx_path, ["CPUExecutionProvider"]), images, 64)


def assert_still_correct(server: TritonServer, reference: tuple[np.ndarray, np.ndarray]) -> None:
    images, expected = reference
    assert server.is_running()
    with TritonClient("http", server.http_address, "digits", 30.0) as client:
        np.testing.assert_allclose(client.infer(images[:8]), expected[:8], atol=1e-5, rtol=0)


# -- 1. admin APIs -----------------------------------------------------------------------------
ADMIN_HTTP = [
    ("GET", "/v2/models/digits/stats"),
    ("GET", "/v2/models/digits/config"),
    ("GET", "/v2/logging"),  # case 4: shows the log path, raises the log level
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/systemsharedmemory/status"),  # case 3: read/write any /dev/shm file
    ("GET", "/v2/trace/setting"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_HTTP)
def test_admin_http_api_needs_the_key(
    stack: tuple[Any, TritonServer, Gateway], method: str, path: str
) -> None:
    _, server, _ = stack
    body = b"{}" if method == "POST" else None
    status, text = raw_request(server.http_address, method, path, body)
    assert status == 403, text
    assert b"restricted" in text.lower() or b"permission" in text.lower(), text
    status, text = raw_request(server.http_address, method, path, body, server.admin_headers)
    assert status == 200, text


def test_shared_memory_register_and_log_level_refused_without_key(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    """Cases 3 and 4: registering a region of a stub, raising the log level."""
    _, server, _ = stack
    region = sorted(server.shm)[0].name
    register = json.dumps({"key": region, "offset": 0, "byte_size": 4096}).encode()
    status, _ = raw_request(
        server.http_address, "POST", "/v2/systemsharedmemory/region/x/register", register
    )
    assert status == 403
    level = json.dumps({"log_verbose_level": 1}).encode()
    assert raw_request(server.http_address, "POST", "/v2/logging", level)[0] == 403
    assert_health = raw_request(server.http_address, "GET", "/v2/health/ready")[0]
    assert assert_health == 200  # health stays open


def test_admin_grpc_api_needs_the_key(stack: tuple[Any, TritonServer, Gateway]) -> None:
    _, server, _ = stack
    client = tg.InferenceServerClient(server.grpc_address)
    try:
        for call in (
            lambda **kw: client.get_inference_statistics("digits", **kw),
            lambda **kw: client.get_system_shared_memory_status(**kw),
            lambda **kw: client.get_log_settings(**kw),
            lambda **kw: client.get_model_repository_index(**kw),
        ):
            with pytest.raises(InferenceServerException) as denied:
                call()
            # Triton 2.51 answers UNAVAILABLE (not PERMISSION_DENIED) for a restricted protocol
            assert denied.value.status() == "StatusCode.UNAVAILABLE", denied.value.message()
            assert "This protocol is restricted" in denied.value.message()
            call(headers=server.admin_grpc_headers)  # succeeds with the key
        assert client.is_model_ready("digits") and client.get_model_metadata("digits")
    finally:
        client.close()


def test_key_file_is_private_and_per_start(stack: tuple[Any, TritonServer, Gateway]) -> None:
    _, server, _ = stack
    mode = stat.S_IMODE(os.stat(server.admin_key_file).st_mode)
    assert mode == 0o600, oct(mode)
    assert server.admin_key_file.read_text().strip() == server.admin_key
    assert server.admin_key not in server.log_path.read_text()  # not logged


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = AdminSettings(
        ("statistics",), "mlpipe-admin-key", "MLPIPE_TEST_KEY", tmp_path / "k", 32
    )
    monkeypatch.setenv("MLPIPE_TEST_KEY", "from-the-vault_1")
    assert make_key(settings) == "from-the-vault_1"
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    monkeypatch.setenv("MLPIPE_TEST_KEY", "bad key;")
    with pytest.raises(ConfigError, match="MLPIPE_TEST_KEY"):
        make_key(settings)
    monkeypatch.delenv("MLPIPE_TEST_KEY")
    first, second = make_key(settings), make_key(settings)
    assert first != second and len(first) >= 32  # generated per start


# -- 2. the gateway ----------------------------------------------------------------------------
def test_gateway_serves_the_same_logits(
    stack: tuple[Any, TritonServer, Gateway], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    """Binary HTTP and gRPC at max_batch_size, and JSON, through nginx equal ONNX Runtime."""
    _, _, gateway = stack
    images, expected = reference
    for protocol, address in (("http", gateway.http_address), ("grpc", gateway.grpc_address)):
        with TritonClient(protocol, address, "digits", 30.0) as client:
            np.testing.assert_allclose(client.infer(images), expected, atol=1e-5, rtol=0)
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [4, 1, 8, 8],
                "datatype": "FP32",
                "data": images[:4].ravel().tolist(),
            }
        ]
    }
    status, text = raw_request(
        gateway.http_address, "POST", "/v2/models/digits/infer", json.dumps(body).encode()
    )
    assert status == 200, text
    got = np.array(json.loads(text)["outputs"][0]["data"], np.float32).reshape(4, -1)
    np.testing.assert_allclose(got, expected[:4], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("method", "path"),
    [*ADMIN_HTTP, ("GET", "/metrics"), ("POST", "/v2/models/digits/load"), ("GET", "/")],
)
def test_gateway_proxies_only_inference_health_metadata(
    stack: tuple[Any, TritonServer, Gateway], method: str, path: str
) -> None:
    _, server, gateway = stack
    body = b"{}" if method == "POST" else None
    status, _ = raw_request(gateway.http_address, method, path, body, server.admin_headers)
    assert status == 404  # even with the key: the admin APIs are not routed at all


def test_gateway_grpc_refuses_admin_methods(stack: tuple[Any, TritonServer, Gateway]) -> None:
    _, server, gateway = stack
    client = tg.InferenceServerClient(gateway.grpc_address)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_repository_index(headers=server.admin_grpc_headers)
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        assert client.is_server_ready() and client.get_model_metadata("digits")
    finally:
        client.close()


def nested(depth: int) -> bytes:
    """Case 1: `data` nested `depth` levels deep (2 bytes per level)."""
    head = b'{"inputs":[{"name":"images","shape":[1,1,8,8],"datatype":"FP32","data":'
    return head + b"[" * depth + b"]" * depth + b"}]}"


def test_case1_deeply_nested_json(
    stack: tuple[Any, TritonServer, Gateway], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    """50,000 levels crash Triton 2.51 (SIGSEGV); the gateway's JSON cap refuses them."""
    cfg, server, gateway = stack
    path = "/v2/models/digits/infer"
    assert raw_request(gateway.http_address, "POST", path, nested(50_000))[0] == 413
    # The largest body the cap lets through nests json_max_bytes/2 deep: Triton refuses it.
    # Anything deeper than gateway.check.max_json_depth is refused before any parser runs.
    depth = (int(cfg.gateway.limits.json_max_bytes) - len(nested(0))) // 2
    for levels in (depth, int(cfg.gateway.check.max_json_depth) + 1):
        status, text = raw_request(gateway.http_address, "POST", path, nested(levels))
        assert status == 400 and b"nested deeper than" in text, (status, text)
    assert_still_correct(server, reference)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_case2_compressed_bodies_are_refused(
    stack: tuple[Any, TritonServer, Gateway],
    reference: tuple[np.ndarray, np.ndarray],
    encoding: str,
) -> None:
    """A compressed body that fails to parse leaked its inflated size in Triton 2.51."""
    _, server, gateway = stack
    raw = b"x" * (4 << 20)  # 4 MiB of not-JSON, ~4 KiB compressed
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    before = rss_mib(server.process.pid)
    for _ in range(5):
        status, _ = raw_request(
            gateway.http_address,
            "POST",
            "/v2/models/digits/infer",
            body,
            {"Content-Encoding": encoding, "Content-Type": "application/json"},
        )
        assert status == 415
    assert rss_mib(server.process.pid) - before < 16
    assert_still_correct(server, reference)


def test_case2_grpc_compression_is_refused(stack: tuple[Any, TritonServer, Gateway]) -> None:
    _, server, gateway = stack
    client = tg.InferenceServerClient(gateway.grpc_address)
    tensor = tg.InferInput("images", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    try:
        with pytest.raises(InferenceServerException):
            client.infer("digits", [tensor], compression_algorithm="gzip")
        assert client.infer("digits", [tensor]).as_numpy("logits").shape == (1, 10)
    finally:
        client.close()


def test_case9_oversize_bodies_get_413_before_triton(
    stack: tuple[Any, TritonServer, Gateway], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    """A 2 GiB Content-Length is refused from the headers; a too-large gRPC message too."""
    _, server, gateway = stack
    before = rss_mib(server.process.pid)
    with open_socket(gateway.http_address, 10) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n"
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 413")
    too_big = np.zeros((4096, 1, 8, 8), np.float32)  # 1 MiB, 64x max_batch_size
    client = tg.InferenceServerClient(gateway.grpc_address)
    tensor = tg.InferInput("images", list(too_big.shape), "FP32")
    tensor.set_data_from_numpy(too_big)
    try:
        with pytest.raises(InferenceServerException):
            client.infer("digits", [tensor])
    finally:
        client.close()
    assert rss_mib(server.process.pid) - before < 16
    assert_still_correct(server, reference)


def _triton_connections(server: TritonServer) -> int:
    return sum(
        1
        for c in psutil.Process(server.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.ports["http"]
    )


def test_case9_half_sent_requests_are_cut_off(
    stack: tuple[Any, TritonServer, Gateway], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    """Slow-loris: 50 half-sent requests; nginx closes them all, Triton never sees one."""
    cfg, server, gateway = stack
    before = _triton_connections(server)
    socks = [open_socket(gateway.http_address, 30) for _ in range(50)]
    try:
        for i, sock in enumerate(socks):
            head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            if i % 2:  # half the body
                sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b"{" * 100)
            else:  # half the headers
                sock.sendall(head + b"X-Slow: 1\r\n")
        assert _triton_connections(server) <= before  # nothing forwarded half-sent
        limit = max(cfg.gateway.timeouts.client_header_s, cfg.gateway.timeouts.client_body_s)
        deadline = time.monotonic() + limit + 10
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = sock.recv(4096)  # b"" (closed) or a 408 before closing
            except ConnectionResetError:  # reset_timedout_connection: RST, no lingering socket
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:60]
        assert time.monotonic() < deadline
    finally:
        for sock in socks:
            sock.close()
    assert_still_correct(server, reference)


def test_binary_header_length_must_be_small(stack: tuple[Any, TritonServer, Gateway]) -> None:
    """The JSON part of a binary request is bounded too (no deep nesting through it)."""
    _, _, gateway = stack
    status, _ = raw_request(
        gateway.http_address,
        "POST",
        "/v2/models/digits/infer",
        nested(30_000),
        {"Inference-Header-Content-Length": str(len(nested(30_000)))},
    )
    assert status in (400, 413)


def _binary_request(batch: int, samples: int) -> tuple[bytes, dict[str, str]]:
    """Case 10: a binary-tensor request declaring `batch` samples, carrying `samples`."""
    size = samples * 64 * 4
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [batch, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    body = header + np.zeros(samples * 64, np.float32).tobytes()
    return body, {"Inference-Header-Content-Length": str(len(header))}


def _grpc_infer(address: str, batch: int, samples: int) -> Any:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="images", datatype="FP32")
    tensor.shape.extend([batch, 1, 8, 8])
    request.raw_input_contents.append(np.zeros(samples * 64, np.float32).tobytes())
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as err:
            return err


def test_case10_triton_itself_truncates_the_batch_dimension(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    """The upstream bug the gateway contains (Triton 2.51, direct): 2**32+1 samples -> one."""
    _, server, _ = stack
    body, headers = _binary_request(2**32 + 1, 1)
    status, text = raw_request(
        server.http_address, "POST", "/v2/models/digits/infer", body, headers
    )
    assert status == 200 and json.loads(text)["outputs"][0]["shape"] == [1, 10]
    answer = _grpc_infer(server.grpc_address, 2**32 + 1, 1)
    assert list(answer.outputs[0].shape) == [1, 10]


@pytest.mark.parametrize("batch", [2**32 + 1, 2**31, 65])
def test_case10_gateway_refuses_a_batch_dimension_out_of_range(
    stack: tuple[Any, TritonServer, Gateway],
    reference: tuple[np.ndarray, np.ndarray],
    batch: int,
) -> None:
    _, server, gateway = stack
    body, headers = _binary_request(batch, 1)
    status, text = raw_request(
        gateway.http_address, "POST", "/v2/models/digits/infer", body, headers
    )
    assert status == 400 and b"refused by the mlpipe gateway" in text, text
    answer = _grpc_infer(gateway.grpc_address, batch, 1)
    assert answer.code().name == "INVALID_ARGUMENT", answer
    assert "refused by the mlpipe gateway" in answer.details()
    assert_still_correct(server, reference)


def test_gateway_refuses_bytes_that_disagree_with_the_shape(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    _, _, gateway = stack
    body, headers = _binary_request(2, 1)  # declares 2 samples, binary_data_size of 1
    status, text = raw_request(
        gateway.http_address, "POST", "/v2/models/digits/infer", body, headers
    )
    assert status == 400 and b"binary_data_size" in text, text
    good, headers = _binary_request(2, 2)
    assert (
        raw_request(gateway.http_address, "POST", "/v2/models/digits/infer", good, headers)[0]
        == 200
    )


def test_gateway_may_listen_beyond_loopback_triton_may_not(
    stack: tuple[Any, TritonServer, Gateway], tmp_path: Path
) -> None:
    """`gateway.host=0.0.0.0` is the one way beyond loopback; tritonserver stays upstream."""
    cfg, server, _ = stack
    wide = compose_app("serve", tmp_path, "gateway.host=0.0.0.0")
    upstream = Upstream(server.host, 8000, 8001, server.admin.header)
    files = (tmp_path / name for name in ("c", "e", "a", "j", "s"))
    paths = GatewayPaths(8080, 8081, tmp_path, *files)
    text = render_config(plain(wide.gateway), server.specs, upstream, paths)
    assert "listen 0.0.0.0:8080;" in text and "listen 0.0.0.0:8081;" in text  # the TCP front
    assert f"listen unix:{tmp_path}/s/grpc.sock http2 proxy_protocol;" in text
    assert "server 127.0.0.1:8000;" in text and "server 127.0.0.1:8001;" in text
    assert 'proxy_set_header mlpipe-admin-key "";' in text  # the key never passes the gateway


def test_a_missing_stream_module_names_the_package(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    """Debian's nginx without libnginx-mod-stream: one line naming the package (the TCP front's
    per-address cap has no fallback)."""
    binary = stack[2].binary
    flags = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr.split()
    if "--with-stream=dynamic" not in flags:
        pytest.skip(f"{binary} has the stream module compiled in: nothing to be missing")
    with pytest.raises(ServerError, match=r"apt-get install libnginx-mod-stream") as caught:
        stream_module(binary, "/nonexistent/ngx_stream_module.so")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("gateway.limits.json_max_bytes=-1", "gateway.limits.json_max_bytes"),
        ("gateway.timeouts.client_body_s=0", "gateway.timeouts.client_body_s"),
        ("serve.watchdog.interval_s=0", "serve.watchdog.interval_s"),
        ("serve.watchdog.progress_timeout_s=0", "serve.watchdog.progress_timeout_s"),
        ("serve.admin.restricted=[inference]", "serve.admin.restricted"),
    ],
)
def test_bad_hardening_config_names_the_key(
    stack: tuple[Any, TritonServer, Gateway], tmp_path: Path, override: str, key: str
) -> None:
    from mlpipe.serving.supervisor import WatchdogSettings

    _, server, _ = stack
    cfg = compose_app("serve", tmp_path, override)
    upstream = Upstream(server.host, 8000, 8001, server.admin.header)
    with pytest.raises(ConfigError, match=rf"invalid config value {re.escape(key)}"):
        WatchdogSettings.from_config(cfg.serve.watchdog)
        TritonServer.from_config(cfg.serve)
        Gateway(plain(cfg.gateway), server.specs, upstream)
