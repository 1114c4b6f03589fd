"""Raw HTTP requests (the bodies tritonclient would never send), sockets, process inspection:
shared by the serving hardening tests."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
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


def start_cli(overrides: list[str], timeout: float = 120) -> tuple[subprocess.Popen[str], str]:
    """`python -m mlpipe.serving.supervisor` (mlpipe-serve) until its banner; (process, banner)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipe.serving.supervisor", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "stops it" in line:
            break
    text = "".join(lines)
    if "stops it" not in text:
        proc.kill()
        raise AssertionError(f"mlpipe-serve did not come up:\n{text}{proc.stdout.read()}")
    return proc, text


def banner_address(banner: str, label: str) -> str:
    """`host:port` after `label` in mlpipe-serve's banner (`HTTP`, `gateway HTTP`, ...)."""
    match = re.search(rf"^\s*{label}\s+(?:\w+://)?(\S+?)(?:/\S*)?\s", banner, re.MULTILINE)
    assert match, f"{label!r} not in banner:\n{banner}"
    return match.group(1)


def drain_output(proc: subprocess.Popen[str]) -> list[str]:
    """Read the rest of a process's output on a thread (so a full pipe never blocks it)."""
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    return out
