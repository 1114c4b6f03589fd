"""Request fuzz generated from the model signature, against the real nginx gateway and tritonserver.

Every case of :mod:`helpers.signature_requests` (each dim off by one, zero, negative, huge; every
other datatype; keys twice at every level; wrong types; unknown fields; broken binary headers;
output parameters out of range; the same over gRPC) must get a 4xx with Triton's
``{"error": ...}`` body (gRPC: a non-OK status) while tritonserver keeps its PID: 0 wrong answers,
0 deaths. Then the gateway's own error statuses are checked to be JSON a client can read.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
from helpers.compose import EPHEMERAL
from helpers.serving import open_socket, raw_request, served_stack
from helpers.signature_requests import (
    dump,
    good_grpc,
    good_request,
    good_shape,
    grpc_cases,
    http_case,
    http_cases,
    sample_bytes,
)
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from mlpipe.common.config import plain
from mlpipe.serving.client import TritonClient
from mlpipe.serving.gateway import Gateway
from mlpipe.serving.network import free_port
from mlpipe.serving.nginx_conf import Upstream
from mlpipe.serving.repository import ModelSpec
from mlpipe.serving.server import TritonServer

GATEWAY = ("gateway.http_port=0", "gateway.grpc_port=0", "gateway.timeouts.client_body_s=3")


@pytest.fixture(scope="module")
def stack(hardening_export: Path) -> Iterator[tuple[Any, TritonServer, Gateway]]:
    with served_stack(hardening_export, *EPHEMERAL, *GATEWAY) as stack:
        yield stack


def _answers_one_sample(server: TritonServer, address: str, name: str) -> None:
    """The control: the signature's own good request is answered (JSON, binary, gRPC)."""
    spec = server.specs[name]
    for binary in (False, True):
        size = sample_bytes(spec, good_shape(spec)) if binary else None
        case = http_case("good", good_request(spec, binary), size)
        path = f"/v2/models/{name}/infer"
        status, text = raw_request(address, "POST", path, case.body, case.headers)
        assert status == 200, (binary, text)
        assert json.loads(text)["outputs"][0]["shape"] == [1, *spec.outputs[0].dims]


def test_every_generated_bad_http_request_gets_a_json_4xx(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    cfg, server, gateway = stack
    pid, wrong = server.process.pid, []
    depth = int(cfg.gateway.check.max_json_depth)
    for name, spec in server.specs.items():
        _answers_one_sample(server, gateway.http_address, name)
        cases = http_cases(spec, depth)
        assert len(cases) > 150
        for case in cases:
            path = f"/v2/models/{name}/infer"
            status, text = raw_request(gateway.http_address, "POST", path, case.body, case.headers)
            try:
                error = json.loads(text).get("error")
            except ValueError:
                error = None
            # A JSON 4xx, and never one for a bug in the check itself
            if not (400 <= status < 500 and error) or "could not be checked" in error:
                wrong.append((name, case.id, status, text[:200]))
            assert server.process.pid == pid and server.is_running(), (case.id, wrong)
        _answers_one_sample(server, gateway.http_address, name)
    assert not wrong, "\n".join(map(str, wrong))


def test_duplicate_keys_are_named(stack: tuple[Any, TritonServer, Gateway]) -> None:
    """The issue's request: shape twice, the huge one first (Triton read it, the check the last)."""
    _, server, gateway = stack
    spec = server.specs["digits"]
    request = good_request(spec, True)
    entry = request["inputs"][0]
    text = dump(request).replace(
        '"shape":', f'"shape":[4294967297,{",".join(map(str, entry["shape"][1:]))}],"shape":', 1
    )
    case = http_case("dup", text, sample_bytes(spec, good_shape(spec)))
    status, body = raw_request(
        gateway.http_address, "POST", "/v2/models/digits/infer", case.body, case.headers
    )
    assert status == 400 and 'key \\"shape\\" appears twice' in body.decode(), body


def test_every_generated_bad_grpc_request_is_refused(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    _, server, gateway = stack
    pid, wrong = server.process.pid, []
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        for spec in server.specs.values():
            good = infer(good_grpc(spec).SerializeToString(), timeout=30)
            assert list(good.outputs[0].shape) == [1, *spec.outputs[0].dims]
            cases = grpc_cases(spec)
            assert len(cases) > 40
            for case_id, raw in cases:
                try:
                    answer = infer(raw, timeout=30)
                    wrong.append((case_id, "OK", list(answer.outputs[0].shape)))
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.OK:
                        wrong.append((case_id, err))
                assert server.process.pid == pid and server.is_running(), (case_id, wrong)
    assert not wrong, "\n".join(map(str, wrong))


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v2/nothing", 404),
        ("GET", "/v2/models/digits/infer", 403),
        ("DELETE", "/v2/health/ready", 403),
        ("TRACE", "/v2/health/ready", 403),
        ("TRACE", "/v2/models/digits/infer", 403),
    ],
)
def test_gateway_errors_are_triton_json(
    stack: tuple[Any, TritonServer, Gateway], method: str, path: str, status: int
) -> None:
    _, _, gateway = stack
    got, text = raw_request(gateway.http_address, method, path, b"{}" if method == "GET" else None)
    assert got == status, text
    assert json.loads(text)["error"].startswith("refused by the mlpipe gateway"), text


def _oversize_input(client_module: Any, spec: ModelSpec) -> Any:
    """An InferInput of `client_module` (tritonclient.http or .grpc) 64x past max_batch_size."""
    too_big = np.zeros((spec.max_batch_size * 64, *spec.sample_dims), spec.dtype)
    tensor = client_module.InferInput(
        spec.input_name, list(too_big.shape), np_to_triton_dtype(spec.dtype)
    )
    tensor.set_data_from_numpy(too_big)
    return tensor


def test_tritonclient_reads_the_gateway_errors(stack: tuple[Any, TritonServer, Gateway]) -> None:
    """413 and 404 made by nginx reach tritonclient as messages, not "Parse error at offset 0"."""
    _, server, gateway = stack
    client = th.InferenceServerClient(gateway.http_address)
    tensor = _oversize_input(th, server.specs["digits"])
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits", [tensor])
        assert caught.value.status() == "413" and "too large" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_metadata("nosuch")
        assert caught.value.status() == "404" and "not found" in caught.value.message()
    finally:
        client.close()


def test_grpc_gateway_errors_carry_status_and_reason(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    """A message over the gRPC body limit: RESOURCE_EXHAUSTED with the reason, not INTERNAL."""
    import tritonclient.grpc as tg

    _, server, gateway = stack
    client = tg.InferenceServerClient(gateway.grpc_address)
    tensor = _oversize_input(tg, server.specs["digits"])
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits", [tensor])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value
        assert "too large" in caught.value.message(), caught.value
    finally:
        client.close()


def test_too_many_requests_is_a_json_429(stack: tuple[Any, TritonServer, Gateway]) -> None:
    """Half-sent requests up to gateway.limits.connections_per_client: the next one is 429."""
    cfg, _, gateway = stack
    limit = int(cfg.gateway.limits.connections_per_client)
    head = b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    socks = [open_socket(gateway.http_address, 30) for _ in range(limit)]
    try:
        for sock in socks:
            sock.sendall(head)
        status, text = raw_request(gateway.http_address, "GET", "/v2/health/ready")
        assert status == 429 and "too many requests" in json.loads(text)["error"], text
    finally:
        for sock in socks:
            sock.close()


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b"")  # and SETTINGS


def _hpack_literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing (names and values < 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _half_sent_model_infer(address: str, source: str, message: bytes) -> socket.socket:
    """One h2c connection with one ModelInfer stream: headers and half the message, no end."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    headers = b"".join(
        _hpack_literal(k, v)
        for k, v in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    framed = b"\x00" + struct.pack(">I", len(message)) + message
    with contextlib.suppress(OSError):  # a connection past the per-address cap is closed at once
        sock.sendall(
            _H2_PREFACE
            + _h2_frame(1, 4, 1, headers)  # HEADERS, END_HEADERS
            + _h2_frame(0, 0, 1, framed[: len(framed) // 2])  # DATA, no END_STREAM
        )
    return sock


def test_h2_flood_leaves_room_for_legitimate_clients(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    """The issue's flood: 1,100 h2 connections from one address (127.0.0.2), each half a
    ModelInfer (the TCP front keeps tcp_connections_per_client of them); HTTP and gRPC clients
    from another address are still answered."""
    _, server, gateway = stack
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1500:
        pytest.skip(f"needs 1,500 open files for the flood, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1500), hard))
    message = good_grpc(server.specs["digits"]).SerializeToString()
    images = np.zeros((1, *server.specs["digits"].sample_dims), np.float32)
    flood: list[socket.socket] = []
    try:
        for _ in range(1100):
            flood.append(_half_sent_model_infer(gateway.grpc_address, "127.0.0.2", message))
        answer = (1, *server.specs["digits"].outputs[0].dims)
        for _ in range(3):  # the flood trickles on (1 byte per stream per round); clients come
            for sock in flood:
                with contextlib.suppress(OSError):  # a stream nginx refused or timed out
                    sock.sendall(_h2_frame(0, 0, 1, b"\0"))
            for protocol in ("http", "grpc"):
                address = gateway.http_address if protocol == "http" else gateway.grpc_address
                with TritonClient(protocol, address, "digits", 30.0) as client:
                    assert client.infer(images).shape == answer
            time.sleep(1.0)
    finally:
        for sock in flood:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _answered_h2(sock: socket.socket) -> bool:
    """True when nginx's HTTP/2 server answered the preface (its SETTINGS frame), False when
    the connection was closed unanswered."""
    try:
        return bool(sock.recv(9))
    except OSError:  # reset: closed with the preface unread
        return False


def test_tcp_cap_per_address_closes_the_extra_connections(
    stack: tuple[Any, TritonServer, Gateway],
) -> None:
    """One address (127.0.0.3) opens tcp_connections_per_client + 16 h2 connections: exactly the
    cap is served (nginx's SETTINGS), the 16 are closed on accept, and clients from 127.0.0.1
    are answered meanwhile over HTTP and gRPC."""
    cfg, server, gateway = stack
    cap, extra = int(cfg.gateway.limits.tcp_connections_per_client), 16
    host, port = gateway.grpc_address.rsplit(":", 1)
    socks: list[socket.socket] = []
    try:
        for _ in range(cap + extra):
            sock = socket.create_connection((host, int(port)), 30, source_address=("127.0.0.3", 0))
            socks.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(_H2_PREFACE)
        answered = [_answered_h2(sock) for sock in socks]
        assert (answered.count(True), answered.count(False)) == (cap, extra)
        images = np.zeros((1, *server.specs["digits"].sample_dims), np.float32)
        for protocol, address in (("http", gateway.http_address), ("grpc", gateway.grpc_address)):
            with TritonClient(protocol, address, "digits", 30.0) as client:
                assert client.infer(images).shape == (1, *server.specs["digits"].outputs[0].dims)
    finally:
        for sock in socks:
            sock.close()


def test_stream_infer_is_not_routed(stack: tuple[Any, TritonServer, Gateway]) -> None:
    """ModelStreamInfer is UNIMPLEMENTED through the gateway (docs/serving.md says why)."""
    import grpc
    from tritonclient.grpc import service_pb2

    _, server, gateway = stack
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda request: request.SerializeToString(),
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(iter([good_grpc(server.specs["digits"])]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unreachable_upstream_is_a_json_502(
    stack: tuple[Any, TritonServer, Gateway], tmp_path: Path
) -> None:
    """A second gateway whose tritonserver port has nothing behind it: 502 as Triton's JSON."""
    cfg, server, _ = stack
    dead = Upstream(server.host, free_port(server.host), free_port(server.host), "x-admin")
    other = Gateway({**plain(cfg.gateway), "runtime_dir": str(tmp_path)}, server.specs, dead)
    other.resolve_ports()
    other.paths = other._paths()
    other._write_config()  # what start() does, without waiting for a healthy upstream
    other.spawn(other._nginx(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, text = raw_request(other.http_address, "GET", "/v2/health/ready")
                break
            except OSError:
                assert time.monotonic() < deadline, "the second gateway did not listen"
                time.sleep(0.1)
        assert status == 502 and "not answering" in json.loads(text)["error"], text
    finally:
        other.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scheduling_parameters_pass(
    stack: tuple[Any, TritonServer, Gateway], protocol: str
) -> None:
    """What tritonclient sends for `priority` and `timeout` is a request the gateway allows."""
    import tritonclient.grpc as tg

    _, server, gateway = stack
    module = th if protocol == "http" else tg
    address = gateway.http_address if protocol == "http" else gateway.grpc_address
    client = module.InferenceServerClient(address)
    tensor = module.InferInput("images", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    try:
        result = client.infer("digits", [tensor], request_id="7", priority=1, timeout=10_000_000)
        assert result.as_numpy("logits").shape == (1, 10)
    finally:
        client.close()


def test_binary_header_length_twice_is_refused(stack: tuple[Any, TritonServer, Gateway]) -> None:
    """Two Inference-Header-Content-Length headers: the check and Triton could read different
    ones, so the request is refused."""
    _, server, gateway = stack
    spec = server.specs["digits"]
    case = http_case("twice", good_request(spec, True), sample_bytes(spec, good_shape(spec)))
    length = case.headers["Inference-Header-Content-Length"]
    head = (
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(case.body)}\r\nInference-Header-Content-Length: 10\r\n"
        f"Inference-Header-Content-Length: {length}\r\n\r\n"
    )
    with open_socket(gateway.http_address, 30) as sock:
        sock.sendall(head.encode() + case.body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"sent twice" in answer, answer[:300]
