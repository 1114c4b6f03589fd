"""Start the bundled tritonserver on a python-backend model and check the stub's interpreter.

checks.<system>.pytriton-stub (pkgs/pytriton-stub-check.nix) runs this with the flake's Python
environment; tests/test_nix.py runs it with the pip venv's. Triton's python backend runs each
model in a separate ``triton_python_backend_stub`` process that embeds CPython. The model in
``model_repository/stub_check`` imports numpy and onnxruntime there and reports what it sees;
this script then requires that the stub process

- runs this interpreter's Python version and imports numpy and onnxruntime from the same files
  as this interpreter does (one environment, not the wheel's or the host's);
- maps exactly one libpython, and that it is this interpreter's (``sysconfig`` LIBDIR and
  LDLIBRARY): under Nix, nixpkgs' python3 library, to which pkgs/nvidia-pytriton.nix points
  the 3.13 stub instead of the Ubuntu build bundled in the wheel;
- answers an inference request with ReLU computed by ONNX Runtime.

The server is started as mlpipe-serve starts it (its own backend directory holding the stub for
this Python, this interpreter's LIBDIR and the wheel's libraries on LD_LIBRARY_PATH, this
interpreter's bin first on PATH). Prints a JSON summary; exits 1 naming each problem.

Usage: python3 check.py --workdir DIR [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = "stub_check"
PROBE = [-2.0, -0.0, 0.5, 3.0]


def pytriton_root() -> Path:
    """The ``tritonserver`` folder of the installed nvidia-pytriton wheel."""
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def own_libpython() -> str | None:
    """This interpreter's shared libpython (resolved), or None for a statically linked one."""
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    path = Path(sysconfig.get_config_var("LIBDIR") or "") / name
    return os.path.realpath(path) if ".so" in name and path.exists() else None


def driver_facts() -> dict[str, Any]:
    """What the stub process must match: this interpreter's version, libpython and packages."""
    import onnxruntime

    return {
        "version": list(sys.version_info[:2]),
        "libpython": own_libpython(),
        "numpy": os.path.realpath(np.__file__),
        "onnxruntime": os.path.realpath(onnxruntime.__file__),
    }


def prepare(workdir: Path) -> tuple[Path, Path]:
    """A writable copy of the model repository and a backend folder with this Python's stub."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(
            f"nvidia-pytriton has no python-backend stub for Python {version} ({stub})"
        )
    repository = workdir / "model_repository"
    shutil.copytree(HERE / "model_repository", repository)
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    wheel_backend = root / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (backend / name).symlink_to(wheel_backend / name)
    (backend / "triton_python_backend_stub").symlink_to(stub)
    return repository, backend.parent


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    wheel_libs = pytriton_root().parent.parent / "nvidia_pytriton.libs"
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(wheel_libs), env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = ":".join(lib for lib in libs if lib)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(repository: Path, backends: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            env=server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            code = server.returncode
            raise SystemExit(
                f"tritonserver exited with {code} before {MODEL} was ready:\n{tail(log)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{MODEL} not ready within {timeout:g} s:\n{tail(log)}")


def infer(url: str, values: list[float]) -> list[float]:
    body = {"inputs": [{"name": "X", "shape": [len(values)], "datatype": "FP32", "data": values}]}
    request = urllib.request.Request(
        f"{url}/v2/models/{MODEL}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)["outputs"][0]["data"]


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server (it stops its stubs), then SIGKILL whatever of its group is left."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def verify(report: dict[str, Any], driver: dict[str, Any], output: list[float]) -> list[str]:
    """Every way the stub's process differs from what the check requires (empty: it passed)."""
    problems = []
    if report["version"][:2] != driver["version"]:
        problems.append(
            f"the stub runs Python {report['version']}, this interpreter {driver['version']}"
        )
    libs = report["libpython"]
    if len(libs) != 1:
        problems.append(f"the stub process maps {len(libs)} libpython files, not one: {libs}")
    elif driver["libpython"] is not None and libs[0] != driver["libpython"]:
        problems.append(f"the stub links {libs[0]}, not this interpreter's {driver['libpython']}")
    for module in ("numpy", "onnxruntime"):
        if report[module] != driver[module]:
            problems.append(
                f"the stub imported {module} from {report[module]}, not {driver[module]}"
            )
    expected = np.maximum(np.asarray(PROBE, dtype=np.float32), 0).tolist()
    if output != expected:
        problems.append(
            f"ReLU{PROBE} through the stub's ONNX Runtime gave {output}, not {expected}"
        )
    return problems


def run(workdir: Path, timeout: float) -> tuple[dict[str, Any], list[float]]:
    """Serve the model, send one request, stop; the stub's report and the response."""
    repository, backends = prepare(workdir)
    port, log = free_port(), workdir / "tritonserver.log"
    server = start_server(repository, backends, port, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server, log, timeout)
        output = infer(url, PROBE)
    finally:
        stop(server)
    return json.loads((repository / MODEL / "stub-report.json").read_text()), output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="an empty or missing folder")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the model"
    )
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report, output = run(args.workdir.resolve(), args.timeout)
    problems = verify(report, driver_facts(), output)
    print(json.dumps({"stub": report, "output": output, "problems": problems}, indent=2))
    for problem in problems:
        print(f"pytriton-stub check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
