"""Raw HTTP requests (the bodies tritonclient would never send), sockets, process inspection:
shared by the serving hardening tests."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping

import psutil

SERVER_NAMES = ("tritonserver", "triton_python_backend_stub", "nginx")


def raw_request(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 request, whatever the status."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def open_socket(address: str, timeout: float) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def descendants(pid: int) -> list[psutil.Process]:
    """Server processes (tritonserver, stubs, nginx) below ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if p.is_running() and p.name() in SERVER_NAMES]
