"""The one child-process lifecycle under every process mlpipe-serve starts (tritonserver, nginx).

:class:`ManagedProcess` owns what the two have in common: the ports (``0`` picks a free one; a
taken one is named with its config key before anything starts), the spawn (an own process group
that dies with this process, registered with the :class:`~mlpipe.serving.lifecycle.Reaper`),
the readiness wait (poll until the process answers; one line naming why not) and the stop (a
polite signal, a grace period, then SIGKILL of the whole group). A subclass says what its
command, its readiness probe and its failure message are.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlpipe.common.errors import ServerError
from mlpipe.serving.lifecycle import Reaper, describe_exit, die_with_parent
from mlpipe.serving.network import bracketed, check_port_free, free_port

log = logging.getLogger(__name__)


class ManagedProcess:
    """One child process with named ports on one host; ``start``/``stop`` live in subclasses."""

    #: How logs and errors call the process ("tritonserver", "nginx").
    name = "process"
    #: The config group whose ``<which>_port`` keys these ports are ("serve", "gateway").
    group = "serve"

    def __init__(self, host: str, ports: Mapping[str, int]) -> None:
        self.host = host
        self.ports = {which: int(port) for which, port in ports.items()}
        self.process: subprocess.Popen[bytes] | None = None
        self._spawned = False  # ports held before: a restart reuses them
        self._lock = threading.Lock()

    def hostport(self, which: str) -> str:
        """``host:port`` of one port (``[::1]:port`` for IPv6), what clients connect to."""
        return f"{bracketed(self.host)}:{self.ports[which]}"

    @property
    def http_address(self) -> str:
        """``host:port`` of HTTP: what ``tritonclient.http`` wants."""
        return self.hostport("http")

    @property
    def grpc_address(self) -> str:
        """``host:port`` of gRPC: what ``tritonclient.grpc`` wants."""
        return self.hostport("grpc")

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    def resolve_ports(self) -> None:
        """Port 0 becomes a free one; a configured port that is taken is named before start."""
        if self._spawned:
            # A restart on ports this process held: the old connections' TIME_WAIT ends can still
            # block a plain bind() here, while the child's own SO_REUSEADDR listeners take them at
            # once (and it fails loudly if they really are taken).
            return
        for which, port in self.ports.items():
            if port == 0:
                self.ports[which] = free_port(self.host)
            else:
                check_port_free(self.host, port, f"{which}_port", self.group)

    def spawn(self, command: Sequence[str], **popen: Any) -> None:
        """Start ``command`` in its own process group; it dies with this process even on SIGKILL
        (PR_SET_PDEATHSIG), and the reaper kills its group should this process die first."""
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() kills it all
            preexec_fn=die_with_parent(),
            **popen,
        )
        self._spawned = True
        Reaper.shared().watch_group(self.process.pid)
        atexit.register(self.stop)

    def wait_ready(
        self, started: float, timeout_s: float, poll_s: float, ready: Callable[[], bool]
    ) -> float:
        """Poll ``ready()`` until it holds; seconds since ``started`` (a ``perf_counter``).

        A process that exits first, or one not ready by the deadline, is stopped and reported
        through :meth:`failure` (one line naming why, then the details)."""
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise self.failure(f"exited ({describe_exit(code)}) before becoming ready")
            if ready():
                return time.perf_counter() - started
            time.sleep(poll_s)
        self.stop()
        raise self.failure(f"not ready within {self.group}.ready_timeout_s={timeout_s:g} s")

    def failure(self, why: str) -> ServerError:
        """The error a failed start raises (subclasses name their log)."""
        return ServerError(f"{self.name} {why}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of a process that ended (None while it runs or when never started)."""
        return self.process.returncode if self.process is not None else None

    def terminate(self, signum: int, timeout_s: float) -> int | None:
        """``signum``, up to ``timeout_s`` to exit, then SIGKILL of the whole group (children
        included). Returns the exit status (negative: the signal that ended it), or None if it
        was not running."""
        with self._lock:
            process, self.process = self.process, None
            atexit.unregister(self.stop)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s; killing its group", self.name, timeout_s)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any child of it, or itself, still alive
        except ProcessLookupError:
            pass
        process.wait()
        Reaper.shared().release_group(process.pid)
        return process.returncode

    def stop(self) -> int | None:
        """Each subclass stops its own way (the signal, the grace, what it cleans up)."""
        raise NotImplementedError
