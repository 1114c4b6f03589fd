"""mlpipe-serve: the real ``tritonserver`` binary on the generated python-backend repository.

:class:`TritonServer` starts the tritonserver shipped in the nvidia-pytriton wheel *directly*
(not through PyTriton's proxy, which costs ~3x latency), on loopback, with the admin APIs
restricted behind a per-start key (:mod:`mlpipe.serving.admin`), waits for
``/v2/health/ready``, and stops the whole process group (server + python stubs) on exit. The
children die with this process even on SIGKILL, and the python backend's /dev/shm regions are
removed on every exit path (:mod:`mlpipe.serving.lifecycle`). It is a context manager for tests
and the bench::

    with TritonServer.from_config(cfg.serve) as server:
        tritonclient.http.InferenceServerClient(server.http_address)
        tritonclient.grpc.InferenceServerClient(server.grpc_address)

``serve(cfg)`` is the CLI's work: server + gateway (:mod:`mlpipe.serving.gateway`) under the
watchdog (:mod:`mlpipe.serving.supervisor`) until SIGINT/SIGTERM, then a draining stop.

Environment the wheel's server needs (found by experiment, see docs/serving.md): the python
stub links ``libpython3.x.so`` (``sysconfig LIBDIR`` on ``LD_LIBRARY_PATH``, with the wheel's
bundled ``nvidia_pytriton.libs``), and the stub's embedded interpreter finds the venv's
site-packages (numpy, onnxruntime) through the venv's ``bin`` first on ``PATH``. The stub
matching this interpreter's version is linked into a generated backend directory.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import plain
from mlpipe.common.errors import ConfigError, PortInUseError, ServerError
from mlpipe.serving.admin import GRPC_HEADER_PREFIX, AdminSettings, make_key, restricted_args
from mlpipe.serving.lifecycle import (
    Reaper,
    describe_exit,
    die_with_parent,
    process_tree,
    remove_files,
    shm_regions,
)
from mlpipe.serving.network import bracketed, check_port_free, free_port, is_loopback
from mlpipe.serving.repository import ModelSpec, check_repository

__all__ = [
    "PortInUseError",
    "TritonServer",
    "check_port_free",
    "free_port",
    "is_loopback",
    "serve",
]

log = logging.getLogger(__name__)

_PORTS = ("http", "grpc", "metrics")
# Triton's own error lines: 'E1201 21:07:13.1 123 model_lifecycle.cc:642] "failed to load ..."'.
_ERROR_LINE = re.compile(r'^E\d{4} [^\]]*\] "?(?P<message>.*?)"?$')
# Harmless on a CPU machine; never the reason a start failed.
_NOISE = ("CudaDriverHelper", "NVML", "DCGM")


def pytriton_root() -> Path:
    """The ``tritonserver`` folder inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as err:
        raise ServerError(
            "the nvidia-pytriton wheel is not installed; `make setup` installs it"
        ) from err
    return Path(pytriton.__file__).parent / "tritonserver"


def _read_since(path: Path | None, since: int) -> list[str]:
    """The lines of ``path`` written after byte offset ``since`` (this run's part of the log)."""
    if path is None or not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(since)
        return handle.read().decode(errors="replace").splitlines()


def startup_failure(log_lines: list[str], console_lines: list[str]) -> tuple[str, list[str]]:
    """(the reason in one line, Triton's error lines) from a failed start's log and console.

    The reason is the first model that failed to load, quoting its real error (ONNX Runtime's,
    the sha256 mismatch, a traceback's last line), else the first error line."""
    errors = [
        m["message"]
        for m in map(_ERROR_LINE.match, log_lines)
        if m and not any(noise in m["message"] for noise in _NOISE)
    ]
    errors += [line for line in console_lines if line.startswith("error:")]
    loads = [e for e in errors if e.startswith("failed to load")]
    reason = (loads or errors or ["no error line in the log"])[0]
    return reason.split("\\n\\nAt:")[0], errors  # the stub's escaped traceback follows "At:"


class TritonServer:
    """A tritonserver child process on a generated model repository (context manager).

    Attributes after :meth:`start`: ``http_url``/``grpc_url``/``metrics_url`` (URLs with scheme),
    ``http_address``/``grpc_address`` (``host:port``, what ``tritonclient`` wants),
    ``log_path``, ``ready_seconds`` (start -> ready wall time), ``specs`` (model signatures),
    ``admin_headers`` (the header that opens the restricted admin APIs).
    """

    def __init__(
        self,
        model_repository: str | Path,
        models: Mapping[str, Any],
        host: str,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        ready_timeout_s: float,
        stop_timeout_s: float,
        exit_timeout_s: int,
        poll_interval_s: float,
        health_timeout_s: float,
        log_dir: str | Path,
        log_verbose: int,
        log_tail_lines: int,
        backend_directory: str | Path,
        python_backend: Mapping[str, Any],
        admin: Mapping[str, Any],
        binary: str | None = None,
    ) -> None:
        if not is_loopback(host):
            raise ConfigError(
                f"serve.host={host!r} is not a loopback address; tritonserver itself listens on "
                "loopback only. Serve beyond loopback through the gateway: "
                f"gateway=nginx gateway.host={host}"
            )
        self.model_repository = Path(model_repository)
        self.models = list(models)
        self.host = host
        self.ports = {"http": int(http_port), "grpc": int(grpc_port), "metrics": int(metrics_port)}
        self.ready_timeout_s = float(ready_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.exit_timeout_s = int(exit_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        self.health_timeout_s = float(health_timeout_s)
        self.log_dir = Path(log_dir)
        self.log_verbose = int(log_verbose)
        self.log_tail_lines = int(log_tail_lines)
        self.backend_directory = Path(backend_directory)
        self.python_backend = dict(python_backend)
        self.admin = AdminSettings.from_config(admin)
        self.binary = Path(binary) if binary else pytriton_root() / "bin" / "tritonserver"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.ready_seconds: float | None = None
        self.specs: dict[str, ModelSpec] = {}
        self.admin_key: str | None = None
        self.shm: set[Path] = set()
        self._log_offsets = (0, 0)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, serve_cfg: DictConfig | Mapping[str, Any]) -> TritonServer:
        """Build from the composed ``cfg.serve`` node (``_target_`` and ``watchdog`` ignored)."""
        kwargs = plain(serve_cfg)
        kwargs.pop("_target_", None)
        kwargs.pop("watchdog", None)
        return cls(**kwargs)

    # -- addresses ---------------------------------------------------------------------------
    def _hostport(self, which: str) -> str:
        return f"{bracketed(self.host)}:{self.ports[which]}"

    @property
    def http_address(self) -> str:
        return self._hostport("http")

    @property
    def grpc_address(self) -> str:
        return self._hostport("grpc")

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._hostport('metrics')}/metrics"

    @property
    def console_path(self) -> Path | None:
        return self.log_path.with_suffix(".stdout") if self.log_path else None

    @property
    def admin_headers(self) -> dict[str, str]:
        """``{header: key}``: what opens the restricted APIs (statistics, shared memory, ...)."""
        return {self.admin.header: self.admin_key} if self.admin_key else {}

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        """The same for gRPC (metadata key ``triton-grpc-protocol-<header>`` in Triton 2.51)."""
        if not self.admin_key:
            return {}
        return {f"{GRPC_HEADER_PREFIX}{self.admin.header}": self.admin_key}

    # -- lifecycle ---------------------------------------------------------------------------
    def _prepare_backends(self) -> Path:
        """A backend folder holding the wheel's python backend and the stub for *this* Python."""
        root = pytriton_root()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(
                f"the nvidia-pytriton wheel has no python backend stub for Python {version} "
                f"({stub})"
            )
        target = self.backend_directory / "python"
        target.mkdir(parents=True, exist_ok=True)
        for link, source in {
            "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
            "triton_python_backend_utils.py": root
            / "backends"
            / "python"
            / "triton_python_backend_utils.py",
            "triton_python_backend_stub": stub,
        }.items():
            path = target / link
            if path.is_symlink() and Path(os.readlink(path)) == source:
                continue  # already right: never unlink under a server starting concurrently
            staging = target / f".{link}.{os.getpid()}"
            staging.unlink(missing_ok=True)
            staging.symlink_to(source)
            os.replace(staging, path)  # atomic swap
        return self.backend_directory

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [
            str(sysconfig.get_config_var("LIBDIR")),
            str(pytriton_root().parent.parent / "nvidia_pytriton.libs"),
        ]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def command(self) -> list[str]:
        """The tritonserver command line (ports and the admin key must already be resolved)."""
        cmd = [
            str(self.binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={self.backend_directory.resolve()}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            f"--log-file={self.log_path}",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--allow-gpu-metrics=false",
        ]
        cmd += restricted_args(self.admin.restricted, self.admin.header, self.admin_key or "")
        cmd += [
            f"--backend-config=python,{key}={value}" for key, value in self.python_backend.items()
        ]
        return cmd

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.http_url}/v2/health/ready", timeout=self.health_timeout_s
            ) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _resolve_ports(self) -> None:
        if self.ready_seconds is not None:
            # A restart on the ports this server already held: the old connections' TIME_WAIT
            # ends still block a plain bind() here for up to a minute, while tritonserver's own
            # SO_REUSEADDR listeners take them at once (it fails loudly if they really are taken).
            return
        for which in _PORTS:
            if self.ports[which] == 0:
                self.ports[which] = free_port(self.host)
            else:
                check_port_free(self.host, self.ports[which], f"{which}_port")

    def _launch(self) -> None:
        """Start tritonserver: own process group, dies with us, logs appended, key 0600."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = (self.log_dir / f"tritonserver-{self.ports['http']}.log").resolve()
        key_file = Path(str(self.admin.key_file).format(port=self.ports["http"]))
        self.admin_key = make_key(dataclasses.replace(self.admin, key_file=key_file))
        self.admin_key_file = key_file
        self._prepare_backends()
        stamp = f"=== mlpipe-serve {time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()} ===\n"
        with self.console_path.open("ab") as console:  # appended: a crash trace survives restarts
            console.write(stamp.encode())
            console.flush()
            self._log_offsets = (_size(self.log_path), console.tell())
            self.process = subprocess.Popen(
                self.command(),
                env=self._env(),
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() kills it all
                preexec_fn=die_with_parent(),  # SIGKILL of this process kills tritonserver too
            )
        Reaper.shared().watch_group(self.process.pid)  # ...and the stubs, and the shm regions
        atexit.register(self.stop)

    def start(self) -> TritonServer:
        """Launch tritonserver in its own process group and wait until every model is ready."""
        with self._lock:
            if self.process is not None:
                raise ServerError("this TritonServer is already running; stop() it first")
            self.specs = check_repository(self.model_repository, self.models)
            self._resolve_ports()
            started = time.perf_counter()
            self._launch()
        self._wait_ready(started)
        self.shm = shm_regions(process_tree(self.process.pid))
        Reaper.shared().watch_files(self.shm)
        return self

    def _failure(self, why: str) -> ServerError:
        """One line with the real reason (what the CLI prints), then the log's error lines."""
        log_lines = _read_since(self.log_path, self._log_offsets[0])
        console = _read_since(self.console_path, self._log_offsets[1])
        reason, errors = startup_failure(log_lines, console)
        tail = log_lines[-self.log_tail_lines :]
        return ServerError(
            f"tritonserver {why}: {reason} (log {self.log_path}, console {self.console_path})\n"
            + "\n".join([*errors, "--- last lines of the log ---", *tail])
        )

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.ready_timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise self._failure(f"exited ({describe_exit(code)}) before becoming ready")
            if self._ready():
                self.ready_seconds = time.perf_counter() - started
                log.info(
                    "tritonserver ready in %.2f s: %s, %s; log %s",
                    self.ready_seconds,
                    self.http_url,
                    self.grpc_url,
                    self.log_path,
                )
                return
            time.sleep(self.poll_interval_s)
        self.stop()
        raise self._failure(f"not ready within serve.ready_timeout_s={self.ready_timeout_s:g} s")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (it unloads models, stops its stubs), SIGKILL the group if needed.

        Removes the server's /dev/shm regions. Returns tritonserver's exit status (negative:
        the signal that ended it), or None if it was not running."""
        with self._lock:
            process, self.process = self.process, None
            atexit.unregister(self.stop)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in time; killing its process group")
        try:
            os.killpg(process.pid, signal.SIGKILL)  # any stub or the server itself still alive
        except ProcessLookupError:
            pass
        process.wait()
        reaper = Reaper.shared()
        reaper.release_group(process.pid)
        reaper.forget_files(remove_files(self.shm))
        self.shm = set()
        log.info(
            "tritonserver stopped (%s); log %s", describe_exit(process.returncode), self.log_path
        )
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.is_file() else 0


def serve(cfg: DictConfig) -> None:
    """mlpipe-serve: server (+ gateway) under the watchdog until SIGINT/SIGTERM, then drain."""
    from mlpipe.serving.supervisor import run_service

    run_service(cfg)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-serve [serve.http_port=8000] [gateway.host=0.0.0.0] ...``."""
    serve(cfg)


if __name__ == "__main__":
    main()
