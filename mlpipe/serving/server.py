"""The real ``tritonserver`` binary on the generated python-backend repository.

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

Its ports, spawn, readiness wait and stop are the one child-process lifecycle
(:class:`mlpipe.serving.process.ManagedProcess`). ``mlpipe-serve`` itself (server + gateway under
the watchdog) lives in :mod:`mlpipe.serving.supervisor`.

Environment the wheel's server needs (found by experiment, see docs/serving.md): the python
stub links ``libpython3.x.so`` (``sysconfig LIBDIR`` on ``LD_LIBRARY_PATH``, with the wheel's
bundled ``nvidia_pytriton.libs``), and the stub's embedded interpreter finds the venv's
site-packages (numpy, onnxruntime) through the venv's ``bin`` first on ``PATH``. The stub
matching this interpreter's version is linked into a generated backend directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlpipe.common.config import as_float, plain, positive_int, require
from mlpipe.common.errors import ConfigError, ServerError
from mlpipe.serving.admin import GRPC_HEADER_PREFIX, AdminSettings, make_key, restricted_args
from mlpipe.serving.lifecycle import Reaper, describe_exit, process_tree, remove_files, shm_regions
from mlpipe.serving.network import is_loopback, port_number
from mlpipe.serving.process import ManagedProcess
from mlpipe.serving.repository import ModelSpec, check_repository

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


@dataclass(frozen=True)
class ServeSettings:
    """``cfg.serve``: what tritonserver serves, where it listens, its time limits and logs."""

    model_repository: Path
    models: tuple[str, ...]  # every one must be READY before start() returns
    host: str
    ports: dict[str, int]  # http, grpc, metrics; 0: a free one
    ready_timeout_s: float
    stop_timeout_s: float
    exit_timeout_s: int
    poll_interval_s: float
    health_timeout_s: float
    log_dir: Path
    log_verbose: int
    log_tail_lines: int
    backend_directory: Path
    python_backend: dict[str, Any]
    admin: AdminSettings
    binary: Path | None  # None: the tritonserver inside the nvidia-pytriton wheel

    @classmethod
    def from_config(cls, node: DictConfig | Mapping[str, Any]) -> ServeSettings:
        """Checked values of a ``serve`` node (each error names its ``serve.<key>``)."""
        node = plain(node)
        host = str(node["host"])
        if not is_loopback(host):
            raise ConfigError(
                f"serve.host={host!r} is not a loopback address; tritonserver itself listens on "
                "loopback only. Serve beyond loopback through the gateway: "
                f"gateway=nginx gateway.host={host}"
            )
        seconds = {
            key: as_float(node[key], f"serve.{key}")
            for key in ("ready_timeout_s", "stop_timeout_s", "poll_interval_s", "health_timeout_s")
        }
        for key, value in seconds.items():
            require(value > 0, f"serve.{key}", f"must be > 0, got {node[key]!r}")
        return cls(
            model_repository=Path(node["model_repository"]),
            models=tuple(node["models"]),
            host=host,
            ports={which: port_number(node, f"{which}_port", "serve") for which in _PORTS},
            exit_timeout_s=positive_int(node["exit_timeout_s"], "serve.exit_timeout_s", 0),
            log_dir=Path(node["log_dir"]),
            log_verbose=positive_int(node["log_verbose"], "serve.log_verbose", 0),
            log_tail_lines=positive_int(node["log_tail_lines"], "serve.log_tail_lines", 0),
            backend_directory=Path(node["backend_directory"]),
            python_backend=dict(node["python_backend"]),
            admin=AdminSettings.from_config(node["admin"]),
            binary=Path(node["binary"]) if node.get("binary") else None,
            **seconds,
        )


class TritonServer(ManagedProcess):
    """A tritonserver child process on a generated model repository (context manager).

    Attributes after :meth:`start`: ``http_url``/``grpc_url``/``metrics_url`` (URLs with scheme),
    ``http_address``/``grpc_address`` (``host:port``, what ``tritonclient`` wants),
    ``log_path``, ``ready_seconds`` (start -> ready wall time), ``specs`` (model signatures),
    ``admin_headers`` (the header that opens the restricted admin APIs).
    """

    name, group = "tritonserver", "serve"

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(settings.host, settings.ports)
        self.settings = settings
        self.model_repository = settings.model_repository
        self.models = list(settings.models)
        self.admin = settings.admin
        self.binary = settings.binary or pytriton_root() / "bin" / "tritonserver"
        self.log_path: Path | None = None
        self.ready_seconds: float | None = None
        self.specs: dict[str, ModelSpec] = {}
        self.admin_key: str | None = None
        self.admin_key_file: Path | None = None
        self.shm: set[Path] = set()
        self._log_offsets = (0, 0)

    @classmethod
    def from_config(cls, serve_cfg: DictConfig | Mapping[str, Any]) -> TritonServer:
        """Build from the composed ``cfg.serve`` node (``watchdog`` is the supervisor's)."""
        return cls(ServeSettings.from_config(serve_cfg))

    # -- addresses (http_address, grpc_address, http_url: ManagedProcess) ---------------------
    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_address}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.hostport('metrics')}/metrics"

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
        target = self.settings.backend_directory / "python"
        target.mkdir(parents=True, exist_ok=True)
        backend = root / "backends" / "python"
        for link, source in {
            "libtriton_python.so": backend / "libtriton_python.so",
            "triton_python_backend_utils.py": backend / "triton_python_backend_utils.py",
            "triton_python_backend_stub": stub,
        }.items():
            path = target / link
            if path.is_symlink() and Path(os.readlink(path)) == source:
                continue  # already right: never unlink under a server starting concurrently
            staging = target / f".{link}.{os.getpid()}"
            staging.unlink(missing_ok=True)
            staging.symlink_to(source)
            os.replace(staging, path)  # atomic swap
        return self.settings.backend_directory

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
        s = self.settings
        cmd = [
            str(self.binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={s.backend_directory.resolve()}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            *(f"--{which}-port={self.ports[which]}" for which in _PORTS),
            f"--log-file={self.log_path}",
            f"--log-verbose={s.log_verbose}",
            f"--exit-timeout-secs={s.exit_timeout_s}",
            "--allow-gpu-metrics=false",
        ]
        cmd += restricted_args(self.admin.restricted, self.admin.header, self.admin_key or "")
        cmd += [f"--backend-config=python,{key}={value}" for key, value in s.python_backend.items()]
        return cmd

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.http_url}/v2/health/ready", timeout=self.settings.health_timeout_s
            ) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _launch(self) -> None:
        """Start tritonserver: own process group, dies with us, logs appended, key 0600."""
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = (self.settings.log_dir / f"tritonserver-{self.ports['http']}.log").resolve()
        key_file = Path(str(self.admin.key_file).format(port=self.ports["http"]))
        self.admin_key = make_key(dataclasses.replace(self.admin, key_file=key_file))
        self.admin_key_file = key_file.resolve()  # the banner prints absolute paths
        self._prepare_backends()
        stamp = f"=== mlpipe-serve {time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()} ===\n"
        with self.console_path.open("ab") as console:  # appended: a crash trace survives restarts
            console.write(stamp.encode())
            console.flush()
            self._log_offsets = (_size(self.log_path), console.tell())
            self.spawn(self.command(), env=self._env(), stdout=console, stderr=subprocess.STDOUT)

    def start(self) -> TritonServer:
        """Launch tritonserver in its own process group and wait until every model is ready."""
        with self._lock:
            if self.process is not None:
                raise ServerError("this TritonServer is already running; stop() it first")
            self.specs = check_repository(self.model_repository, self.models)
            self.resolve_ports()
            started = time.perf_counter()
            self._launch()
        s = self.settings
        self.ready_seconds = self.wait_ready(
            started, s.ready_timeout_s, s.poll_interval_s, self._ready
        )
        log.info(
            "tritonserver ready in %.2f s: %s, %s; log %s",
            self.ready_seconds,
            self.http_url,
            self.grpc_url,
            self.log_path,
        )
        self.shm = shm_regions(process_tree(self.process.pid))  # the python stubs' regions
        Reaper.shared().watch_files(self.shm)
        for region in self.shm:  # request tensors pass through them: 0600 even if the creator
            with contextlib.suppress(FileNotFoundError):  # set its own mode past the umask
                region.chmod(0o600)
        return self

    def failure(self, why: str) -> ServerError:
        """One line with the real reason (what the CLI prints), then the log's error lines."""
        log_lines = _read_since(self.log_path, self._log_offsets[0])
        console = _read_since(self.console_path, self._log_offsets[1])
        reason, errors = startup_failure(log_lines, console)
        tail = log_lines[-self.settings.log_tail_lines :]
        return ServerError(
            f"tritonserver {why}: {reason} (log {self.log_path}, console {self.console_path})\n"
            + "\n".join([*errors, "--- last lines of the log ---", *tail])
        )

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (it unloads models, stops its stubs), SIGKILL the group if needed.

        Removes the server's /dev/shm regions. Returns tritonserver's exit status (negative:
        the signal that ended it), or None if it was not running."""
        grace = self.settings.stop_timeout_s if timeout_s is None else timeout_s
        code = self.terminate(signal.SIGTERM, grace)
        if code is None:
            return None
        Reaper.shared().forget_files(remove_files(self.shm))
        self.shm = set()
        log.info("tritonserver stopped (%s); log %s", describe_exit(code), self.log_path)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.is_file() else 0
