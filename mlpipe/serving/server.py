"""mlpipe-serve: the real ``tritonserver`` binary on the generated python-backend repository.

:class:`TritonServer` starts the tritonserver shipped in the nvidia-pytriton wheel *directly*
(not through PyTriton's proxy, which costs ~3x latency), on loopback by default, waits for
``/v2/health/ready``, and stops the whole process group (server + python stubs) on exit. It is
a context manager for tests and the bench::

    with TritonServer.from_config(cfg.serve) as server:
        tritonclient.http.InferenceServerClient(server.http_address)
        tritonclient.grpc.InferenceServerClient(server.grpc_address)

``serve(cfg)`` is the CLI's work: start, print where it listens and where the log is, block
until SIGINT/SIGTERM, stop cleanly.

Environment the wheel's server needs (found by experiment, see docs/serving.md): the python
stub links ``libpython3.x.so`` (``sysconfig LIBDIR`` on ``LD_LIBRARY_PATH``, with the wheel's
bundled ``nvidia_pytriton.libs``), and the stub's embedded interpreter finds the venv's
site-packages (numpy, onnxruntime) through the venv's ``bin`` first on ``PATH``. The stub
matching this interpreter's version is linked into a generated backend directory.
"""

from __future__ import annotations

import atexit
import errno
import ipaddress
import logging
import os
import signal
import socket
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
from mlpipe.common.errors import ArtifactMissingError, ConfigError, PortInUseError, ServerError

log = logging.getLogger(__name__)

_PORTS = ("http", "grpc", "metrics")


def pytriton_root() -> Path:
    """The ``tritonserver`` folder inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as err:
        raise ServerError(
            "the nvidia-pytriton wheel is not installed; `make setup` installs it"
        ) from err
    return Path(pytriton.__file__).parent / "tritonserver"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, IPv4-mapped loopback (``::ffff:127.0.0.1``) and ``localhost``."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def free_port(host: str) -> int:
    """An ephemeral port the OS reports free on ``host`` (for ``port: 0`` in config)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, key: str) -> None:
    """Raise :class:`PortInUseError` naming ``port`` if something listens there already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # ignore TIME_WAIT, as tritonserver does
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    errno.EADDRINUSE,
                    f"port {port} on {host} is already in use (serve.{key}); stop whatever "
                    "listens there "
                    f"(`ss -ltnp 'sport = :{port}'`) or pick another port, e.g. serve.{key}=0 for "
                    "a free one",
                ) from err
            raise


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class TritonServer:
    """A tritonserver child process on a generated model repository (context manager).

    Attributes after :meth:`start`: ``http_url``/``grpc_url``/``metrics_url`` (URLs with scheme),
    ``http_address``/``grpc_address`` (``host:port``, what ``tritonclient`` wants),
    ``log_path``, ``ready_seconds`` (start -> ready wall time).
    """

    def __init__(
        self,
        model_repository: str | Path,
        models: Mapping[str, Any],
        host: str,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        allow_non_loopback: bool,
        ready_timeout_s: float,
        stop_timeout_s: float,
        exit_timeout_s: int,
        poll_interval_s: float,
        health_timeout_s: float,
        watch_interval_s: float,
        log_dir: str | Path,
        log_verbose: int,
        log_tail_lines: int,
        backend_directory: str | Path,
        python_backend: Mapping[str, Any],
        binary: str | None = None,
    ) -> None:
        if not is_loopback(host) and not allow_non_loopback:
            raise ConfigError(
                f"serve.host={host!r} is not a loopback address; the server would be reachable "
                "from the network. "
                "Set serve.allow_non_loopback=true as well if that is really intended."
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
        self.watch_interval_s = float(watch_interval_s)
        self.log_dir = Path(log_dir)
        self.log_verbose = int(log_verbose)
        self.log_tail_lines = int(log_tail_lines)
        self.backend_directory = Path(backend_directory)
        self.python_backend = dict(python_backend)
        self.binary = Path(binary) if binary else pytriton_root() / "bin" / "tritonserver"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.ready_seconds: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, serve_cfg: DictConfig | Mapping[str, Any]) -> TritonServer:
        """Build from the composed ``cfg.serve`` node (``_target_`` ignored)."""
        kwargs = plain(serve_cfg)
        kwargs.pop("_target_", None)
        return cls(**kwargs)

    # -- addresses ---------------------------------------------------------------------------
    def _hostport(self, which: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.ports[which]}"

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

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_repository(self) -> None:
        """Every configured model has a config and its model file, or say which path and what
        makes it."""
        from mlpipe.export.triton_repo import parse_pbtxt

        fix = "generate the repository with `mlpipe-export` (or `make export`)"
        for name in self.models:
            model_dir = self.model_repository / name
            config_path = model_dir / "config.pbtxt"
            if not config_path.is_file():
                raise ArtifactMissingError(
                    f"model {name!r} not found in the Triton repository ({config_path} is "
                    f"missing); {fix}"
                )
            config = parse_pbtxt(config_path.read_text())
            if config.backend == "python":
                needed = config.parameters["onnx_file"].string_value
            else:
                needed = "model.plan" if config.platform == "tensorrt_plan" else "model.onnx"
            versions = sorted(
                d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()
            ) or [model_dir / "1"]
            for version in versions:
                if not (version / needed).is_file():
                    raise ArtifactMissingError(f"model file {version / needed} is missing; {fix}")

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
        """The tritonserver command line (ports must already be resolved)."""
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

    def start(self) -> TritonServer:
        """Launch tritonserver in its own process group and wait until every model is ready."""
        with self._lock:
            if self.process is not None:
                raise ServerError("this TritonServer is already running; stop() it first")
            self._check_repository()
            for which in _PORTS:
                if self.ports[which] == 0:
                    self.ports[which] = free_port(self.host)
                else:
                    check_port_free(self.host, self.ports[which], f"{which}_port")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = (self.log_dir / f"tritonserver-{self.ports['http']}.log").resolve()
            self._prepare_backends()
            stdout_path = self.log_path.with_suffix(".stdout")
            started = time.perf_counter()
            with stdout_path.open("wb") as stdout:
                self.process = subprocess.Popen(
                    self.command(),
                    env=self._env(),
                    stdout=stdout,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # own process group: stop() kills it all
                )
            atexit.register(self.stop)
        deadline = started + self.ready_timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise ServerError(
                    f"tritonserver exited with code {code} before becoming ready; log "
                    f"{self.log_path}, "
                    f"console {stdout_path}:\n{_tail(self.log_path, self.log_tail_lines)}\n"
                    f"{_tail(stdout_path, self.log_tail_lines)}"
                )
            if self._ready():
                self.ready_seconds = time.perf_counter() - started
                log.info(
                    "tritonserver ready in %.2f s: %s, %s; log %s",
                    self.ready_seconds,
                    self.http_url,
                    self.grpc_url,
                    self.log_path,
                )
                return self
            time.sleep(self.poll_interval_s)
        self.stop()
        raise ServerError(
            f"tritonserver not ready within serve.ready_timeout_s={self.ready_timeout_s:g} s; log "
            f"{self.log_path}:\n"
            f"{_tail(self.log_path, self.log_tail_lines)}"
        )

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the server (it unloads models and stops its stubs), then SIGKILL the group if
        needed."""
        with self._lock:
            process, self.process = self.process, None
            atexit.unregister(self.stop)
        if process is None:
            return
        pgid = process.pid  # start_new_session: the server leads its own group
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "tritonserver did not stop within %.0f s; killing its process group",
                    self.stop_timeout_s,
                )
        try:
            os.killpg(pgid, signal.SIGKILL)  # any stub or the server itself still alive
        except ProcessLookupError:
            pass
        process.wait()
        log.info("tritonserver stopped (exit code %s); log %s", process.returncode, self.log_path)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(cfg: DictConfig) -> None:
    """Run the server until SIGINT/SIGTERM; every `serve.watch_interval_s`, check it still runs."""
    stop_event = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; stopping tritonserver", signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer.from_config(cfg.serve)
    try:
        with server:
            print(
                f"tritonserver ready in {server.ready_seconds:.2f} s; models "
                f"{', '.join(server.models)}\n"
                f"  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n  metrics "
                f"{server.metrics_url}\n"
                f"  log     {server.log_path}\nCtrl-C (SIGINT) or SIGTERM stops it.",
                flush=True,
            )
            while not stop_event.wait(server.watch_interval_s):
                if not server.is_running():
                    raise ServerError(f"tritonserver exited unexpectedly; see {server.log_path}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-serve [serve.http_port=8000] [serve.host=127.0.0.1] ...``."""
    serve(cfg)


if __name__ == "__main__":
    main()
