"""Supervision and process lifecycles of `mlpipe-serve` (a real subprocess, real signals).

Cases 5-8 and 16 of the hardening issue: a killed python stub is noticed by the watchdog's real
inference and the service is back within 15 s; restarts are bounded and a spent budget exits
non-zero with a one-line reason; SIGKILL of mlpipe-serve leaves no process, port or /dev/shm
region behind; SIGTERM under load drains through the gateway with no SIGSEGV; logs are appended.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers.compose import EPHEMERAL, compose_app, tmp_path_overrides
from helpers.serving import alive, banner_address, descendants, drain_output, start_cli

from mlpipe.data import load_split
from mlpipe.serving.client import TritonClient
from mlpipe.serving.lifecycle import process_tree, shm_regions
from mlpipe.serving.network import check_port_free
from mlpipe.serving.server import TritonServer

CLI = (*EPHEMERAL, "gateway.http_port=0", "gateway.grpc_port=0")
RESTART = re.compile(r"\brestart \d+/\d+|restarted after|giving up")
_OVERLOAD_CLIENTS, _OVERLOAD_S = 240, 15.0
pytestmark = pytest.mark.slow


def _images(root: Path) -> np.ndarray:
    return load_split(compose_app("client", root).data, "test")[0][:8]


def _triton(proc_pid: int) -> psutil.Process:
    (server,) = [p.process for p in descendants(proc_pid) if p.name == "tritonserver"]
    return server


def _stub_of(proc_pid: int, model: str) -> psutil.Process:
    (stub,) = [
        p.process
        for p in descendants(proc_pid)
        if p.name == "triton_python_backend_stub" and f"/{model}/1/model.py" in p.cmdline
    ]
    return stub


def _nginx_masters(proc_pid: int) -> list[psutil.Process]:
    return [p.process for p in descendants(proc_pid) if p.name == "nginx" and p.ppid == proc_pid]


def _answer_within(address: str, images: np.ndarray, seconds: float) -> tuple[np.ndarray, float]:
    """First successful answer through `address`, and how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            with TritonClient("http", address, "digits", 2.0) as client:
                return client.infer(images), time.monotonic() - start
        except Exception:
            time.sleep(0.2)
    raise AssertionError(f"no answer through {address} within {seconds} s")


def _wait_for_output(output: list[str], text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not any(text in line for line in output):
        assert time.monotonic() < deadline, f"no {text!r} within {seconds} s: " + "".join(output)
        time.sleep(0.1)


def _wait_gone(pids: list[int], paths: set[Path], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        running = [pid for pid in pids if alive(pid)]
        left = [p for p in paths if p.exists()]
        if not running and not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"still there after {seconds} s: processes {running}, files {left}")


def test_stub_kill_recovered_within_15s_then_spent_retries_exit_1(hardening_export: Path) -> None:
    """Case 5, a dead gateway, and the restart budget: each back within 15 s; then exit 1."""
    overrides = [
        *tmp_path_overrides(hardening_export),
        *CLI,
        "serve.watchdog.max_restarts=2",
        "serve.watchdog.healthy_reset_s=600",
    ]
    proc, banner = start_cli(overrides)
    output = drain_output(proc)
    gateway = banner_address(banner, "gateway HTTP")
    images = _images(hardening_export)
    try:
        before, _ = _answer_within(gateway, images, 10)
        _stub_of(proc.pid, "digits").kill()  # kill -9 of the model's python stub
        after, took = _answer_within(gateway, images, 15)
        np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
        assert took < 15
        _wait_for_output(output, "restarted after: model 'digits'", 15)  # as below, restart 1
        (nginx,) = _nginx_masters(proc.pid)
        nginx.kill()  # the gateway dies: restarted on the same ports
        deadline = time.monotonic() + 15
        while [p.pid for p in _nginx_masters(proc.pid)] in ([], [nginx.pid]):
            assert time.monotonic() < deadline, (
                "the gateway was not restarted: " + "".join(output)[-3000:]
            )
            time.sleep(0.1)
        again, _ = _answer_within(gateway, images, 15)
        np.testing.assert_allclose(again, before, atol=1e-6, rtol=0)
        # The new nginx can answer before the watchdog's own readiness check has: a kill then
        # would fail restart 2 instead of being the third failure in a row.
        _wait_for_output(output, "restarted after: the gateway (nginx) exited", 15)
        triton = _triton(proc.pid)
        regions = shm_regions(process_tree(triton.pid))
        triton.kill()  # a third failure in a row: the budget (2 restarts) is spent
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)  # the output thread reads the last lines
    text = "".join(output)
    assert "restart 1/2" in text and "did not answer a probe inference" in text, text
    assert "restart 2/2" in text and "the gateway (nginx) exited (killed by SIGKILL)" in text
    last = text.strip().splitlines()[-1]
    assert "error: giving up after 2 restarts in a row" in last, text
    assert "tritonserver exited (killed by SIGKILL)" in last
    _wait_gone([], regions, 10)  # the second server's /dev/shm regions were removed


def test_sigkill_of_mlpipe_serve_leaves_nothing(hardening_export: Path) -> None:
    """Cases 7 and 8: no tritonserver, stub or nginx keeps running; regions, the gateway's unix
    sockets (and their folder) and ports free."""
    proc, banner = start_cli([*tmp_path_overrides(hardening_export), *CLI])
    children = descendants(proc.pid)
    assert {"tritonserver", "triton_python_backend_stub", "nginx"} <= {p.name for p in children}
    regions = shm_regions(process_tree(_triton(proc.pid).pid))
    assert len(regions) == 2  # one per model instance
    (master,) = _nginx_masters(proc.pid)
    sockets = {Path(c.laddr) for c in master.net_connections("unix") if c.laddr.endswith(".sock")}
    assert len(sockets) == 2 and len({s.parent for s in sockets}) == 1, sockets
    addresses = [banner_address(banner, label) for label in ("HTTP", "gRPC", "gateway HTTP")]
    proc.kill()
    proc.wait()
    _wait_gone([p.pid for p in children], regions | sockets | {next(iter(sockets)).parent}, 15)
    for address in addresses:
        host, port = address.rsplit(":", 1)
        check_port_free(host, int(port), "port")  # the next start will not hit PortInUseError


def test_a_private_tmpdir_still_serves_through_the_gateway(
    hardening_export: Path, tmp_path: Path
) -> None:
    """Started as root, nginx's workers run as gateway.worker_user, which cannot pass a private
    $TMPDIR (a build sandbox's, pytest's, `mktemp -d`'s): the gateway's socket folder then goes
    under /tmp, and requests through the gateway are answered (they timed out before)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    proc, banner = start_cli(
        [*tmp_path_overrides(hardening_export), *CLI], env={"TMPDIR": str(private)}
    )
    try:
        (master,) = _nginx_masters(proc.pid)
        conns = master.net_connections("unix")
        sockets = {Path(c.laddr) for c in conns if c.laddr.endswith(".sock")}
        expected = Path("/tmp") if os.geteuid() == 0 else private
        assert {s.parent.parent for s in sockets} == {expected}, sockets
        gateway = banner_address(banner, "gateway HTTP")
        with TritonClient("http", gateway, "digits", 30.0) as client:
            assert client.infer(_images(hardening_export)).shape == (8, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_sigterm_under_load_drains_without_segfault(hardening_export: Path) -> None:
    """Case 6: load through the gateway, SIGTERM: exit 0, every answer right, no SIGSEGV."""
    proc, banner = start_cli([*tmp_path_overrides(hardening_export), *CLI])
    output = drain_output(proc)
    gateway = banner_address(banner, "gateway HTTP")
    console = Path(re.search(r"^\s*log\s+(\S+)\.log$", banner, re.M).group(1) + ".stdout")
    console_start = console.stat().st_size
    images = _images(hardening_export)
    stop, results = threading.Event(), {"ok": 0, "wrong": 0, "server_errors": 0, "refused": 0}

    def load() -> None:
        while not stop.is_set():
            try:
                with TritonClient("http", gateway, "digits", 30.0) as client:
                    while not stop.is_set():
                        got = client.infer(images)
                        key = "ok" if np.allclose(got, expected, atol=1e-5, rtol=0) else "wrong"
                        results[key] += 1
            except Exception as err:  # refused/reset once the gateway stopped accepting
                status = str(getattr(err, "status", lambda: "")() or "")
                results["server_errors" if status.startswith("5") else "refused"] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        expected, _ = _answer_within(gateway, images, 10)
        for thread in threads:
            thread.start()
        time.sleep(2.0)
    except BaseException:
        proc.kill()
        raise
    in_load = results["ok"]
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=90) == 0, "".join(output)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
    assert in_load > 0 and results["wrong"] == 0 and results["server_errors"] == 0, results
    with console.open("rb") as handle:
        handle.seek(console_start)
        tail = handle.read().decode(errors="replace")
    assert "Signal (11)" not in tail and "Segmentation" not in tail, tail


def test_logs_appended_and_shm_removed_on_stop(hardening_export: Path) -> None:
    """Cases 7 and 16 on the library path: two runs on one port, one log holding both."""
    cfg = compose_app("serve", hardening_export, *EPHEMERAL)
    server = TritonServer.from_config(cfg.serve)
    with server:
        first = set(server.shm)
        assert first and all(p.exists() for p in first)
    assert not any(p.exists() for p in first)
    port = server.ports["http"]
    again = TritonServer.from_config(cfg.serve)
    again.ports = dict(server.ports)  # the same ports, so the same log files
    with again:
        pass
    assert again.log_path == server.log_path and port == again.ports["http"]
    assert server.log_path.read_text().count("Started HTTPService") == 2
    assert server.console_path.read_text().count("=== mlpipe-serve") == 2


def _load(address: str, images: np.ndarray, stop: threading.Event, results: dict) -> None:
    """Requests back to back until `stop`; counts answers and errors (never raises)."""
    while not stop.is_set():
        try:
            with TritonClient("http", address, "digits", 30.0) as client:
                while not stop.is_set():
                    client.infer(images)
                    results["ok"] += 1
        except Exception:
            results["errors"] += 1
            time.sleep(0.05)


def _overload_client(
    address: str, images: np.ndarray, want: np.ndarray, stop: threading.Event, counts: dict
) -> None:
    """One closed-loop client until `stop`: answers (each checked against `want`), 429s (the
    gateway's per-address cap on requests in progress) and every other failure (cut off)."""
    while not stop.is_set():
        try:
            with TritonClient("http", address, "digits", 60.0) as client:
                while not stop.is_set():
                    right = np.allclose(client.infer(images), want, atol=1e-5)
                    counts["ok" if right else "wrong"] += 1
        except Exception as err:  # the client's own, or mlpipe's around one (its metadata call)
            counts["refused" if "[429]" in str(err) else "cut off"] += 1
            time.sleep(0.05)


def test_four_times_the_sustained_concurrency_is_never_restarted(hardening_export: Path) -> None:
    """The issue's overload: 240 concurrent correct batch-64 requests through the gateway (240
    once cost two restarts in 35 s, 120 none), all of them let through to tritonserver (the
    per-address cap on requests in progress raised past 240; at its default 128 the rest get
    429). Every answer is right, none is refused or cut off, tritonserver keeps its PID."""
    cap = f"gateway.limits.connections_per_client={2 * _OVERLOAD_CLIENTS}"
    proc, banner = start_cli([*tmp_path_overrides(hardening_export), *CLI, cap])
    output = drain_output(proc)
    gateway = banner_address(banner, "gateway HTTP")
    images = np.repeat(_images(hardening_export), 8, axis=0)  # a full batch of 64
    want, _ = _answer_within(gateway, images, 30)
    stop, counts = threading.Event(), dict.fromkeys(("ok", "wrong", "refused", "cut off"), 0)
    threads = [
        threading.Thread(target=_overload_client, args=(gateway, images, want, stop, counts))
        for _ in range(_OVERLOAD_CLIENTS)
    ]
    try:
        pid = _triton(proc.pid).pid
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + _OVERLOAD_S
        while time.monotonic() < deadline and not RESTART.search("".join(output)):
            time.sleep(0.5)
        assert _triton(proc.pid).pid == pid, "".join(output)
    finally:
        _stop_load_and_serve(proc, stop, threads, join_s=90)
    assert not RESTART.search("".join(output)), "".join(output)
    assert counts["ok"] > 0 and counts["wrong"] == counts["refused"] == counts["cut off"] == 0, (
        counts
    )


def _stop_load_and_serve(
    proc: subprocess.Popen, stop: threading.Event, threads: list[threading.Thread], join_s: float
) -> None:
    """End a load test: stop the client threads, then mlpipe-serve (SIGTERM, as a user would)."""
    stop.set()
    for thread in threads:
        thread.join(timeout=join_s)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def _reaper(proc_pid: int) -> psutil.Process | None:
    """mlpipe-serve's live reaper process (tolerates one that just died)."""
    for child in psutil.Process(proc_pid).children():
        try:
            if "reaper.py" in " ".join(child.cmdline()):
                return child
        except psutil.Error:  # a zombie, or gone
            continue
    return None


def test_busy_server_is_never_restarted(hardening_export: Path) -> None:
    """Overload, not death: probes time out (5 ms deadline) behind 8 clients sending full
    batches, but the model keeps completing requests, so the server is never restarted."""
    proc, banner = start_cli(
        [*tmp_path_overrides(hardening_export), *CLI, "serve.watchdog.timeout_s=0.005"]
    )
    output = drain_output(proc)
    direct = banner_address(banner, "HTTP")
    images = np.repeat(_images(hardening_export), 8, axis=0)  # a full batch of 64
    stop, results = threading.Event(), {"ok": 0, "errors": 0}
    threads = [
        threading.Thread(target=_load, args=(direct, images, stop, results)) for _ in range(8)
    ]
    try:
        pid = _triton(proc.pid).pid
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum("busy, not restarting" in line for line in output) < 2:
            assert time.monotonic() < deadline, "no probe timed out under load: " + "".join(output)
            assert proc.poll() is None and not RESTART.search("".join(output)), "".join(output)
            time.sleep(0.2)
        assert _triton(proc.pid).pid == pid and results["ok"] > 0, results
    finally:
        _stop_load_and_serve(proc, stop, threads, join_s=60)
    assert not RESTART.search("".join(output)), "".join(output)


def test_hung_server_is_restarted_without_the_drain(hardening_export: Path) -> None:
    """SIGSTOP of tritonserver with requests in flight through the gateway: the watchdog sees a
    stopped process, kills it without waiting on nginx's drain, and serves again within 10 s."""
    proc, banner = start_cli([*tmp_path_overrides(hardening_export), *CLI])
    output = drain_output(proc)
    gateway = banner_address(banner, "gateway HTTP")
    images = _images(hardening_export)
    stop, results = threading.Event(), {"ok": 0, "errors": 0}
    threads = [
        threading.Thread(target=_load, args=(gateway, images, stop, results)) for _ in range(4)
    ]
    try:
        _answer_within(gateway, images, 10)
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        hung = _triton(proc.pid)
        hung.suspend()  # SIGSTOP, requests in flight
        stopped_at = time.monotonic()
        _wait_for_output(output, "restarted after: tritonserver is stopped", 30)
        _, took = _answer_within(gateway, images, 30)
        outage = time.monotonic() - stopped_at
        assert not psutil.pid_exists(hung.pid) or hung.status() == psutil.STATUS_ZOMBIE
        assert outage <= 10, f"serving again {outage:.1f} s after SIGSTOP: " + "".join(output)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        proc.kill()
        proc.wait()
    print(f"hang-to-serving {outage:.1f} s")


def test_killed_reaper_is_replaced_and_nothing_is_orphaned(hardening_export: Path) -> None:
    """kill -9 of the reaper, then of mlpipe-serve: a replacement reaper holds every group, so no
    nginx worker is left holding the gateway's ports."""
    proc, banner = start_cli([*tmp_path_overrides(hardening_export), *CLI])
    try:
        key_file = re.search(r"admin\s+key in (\S+)", banner).group(1)
        assert Path(key_file).is_absolute(), banner  # the banner's paths are all absolute
        children = descendants(proc.pid)
        assert len([p for p in children if p.name == "nginx"]) >= 2  # master + worker
        first = _reaper(proc.pid)
        assert first is not None
        first.kill()
        deadline = time.monotonic() + 15
        while (second := _reaper(proc.pid)) is None or second.pid == first.pid:
            assert time.monotonic() < deadline, "the reaper was not replaced"
            time.sleep(0.1)
        addresses = [banner_address(banner, label) for label in ("HTTP", "gateway HTTP")]
    finally:
        proc.kill()
        proc.wait()
    _wait_gone([p.pid for p in children], set(), 15)
    for address in addresses:
        host, port = address.rsplit(":", 1)
        check_port_free(host, int(port), "port")
