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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


#: What psutil raises for a process that exits (or turns zombie, or is reaped) while it is read:
#: between listing the children and reading a name, any of them may go, most of all on a loaded
#: machine. A test that needs quiet is a test that fails in CI.
GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class Seen:
    """A process as read once (it may exit right after): name, parent and command line, and the
    psutil handle to signal it (psutil refuses to signal a reused pid)."""

    process: psutil.Process
    name: str
    ppid: int
    cmdline: str

    @property
    def pid(self) -> int:
        return self.process.pid


def children_of(pid: int, names: Iterable[str] | None = None) -> list[Seen]:
    """Processes below ``pid`` (all, or those called one of ``names``) that were still there when
    read; one that vanished meanwhile is left out, as if listed a moment later."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except GONE:
        return []
    seen = []
    for p in children:
        try:
            with p.oneshot():
                seen.append(Seen(p, p.name(), p.ppid(), " ".join(p.cmdline())))
        except GONE:
            continue
    wanted = None if names is None else set(names)
    return [s for s in seen if wanted is None or s.name in wanted]


def descendants(pid: int) -> list[Seen]:
    """Server processes (tritonserver, stubs, nginx) below ``pid``."""
    return children_of(pid, SERVER_NAMES)


def alive(pid: int) -> bool:
    """``pid`` runs and is not a zombie (False if it goes while we look)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except GONE:
        return False


def start_cli(
    overrides: list[str], timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`python -m mlpipe.serving.supervisor` (mlpipe-serve) until its banner; (process, banner).
    `env` adds to (or replaces in) this process's environment."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipe.serving.supervisor", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
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


@contextmanager
def served_stack(root: Path, *overrides: str) -> Iterator[tuple[Any, Any, Any]]:
    """(cfg, TritonServer, Gateway) started as mlpipe-serve starts them, stopped afterwards."""
    from helpers.compose import compose_app
    from mlpipe.serving.server import TritonServer
    from mlpipe.serving.supervisor import shutdown, start_stack

    cfg = compose_app("serve", root, *overrides)
    server = TritonServer.from_config(cfg.serve)
    gateway = start_stack(cfg, server)
    assert gateway is not None
    try:
        yield cfg, server, gateway
    finally:
        shutdown(server, gateway)
