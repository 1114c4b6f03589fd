"""mlpipe-serve-soak: load through the gateway with bad requests mixed in.

``mlpipe-serve-soak`` starts tritonserver and the nginx gateway on free loopback
ports and runs the one load generator (:mod:`mlpipe.measure.loadgen`, thread mode) with
``soak.clients`` closed-loop clients through the gateway. Every ``soak.bad_every``-th request is
a bad one (NaN input, deep JSON, compressed body, a 2**32+1 batch, an unknown model), which must
get a 4xx; every good one (HTTP binary or gRPC, alternating) must equal ONNX Runtime. Anything
else raises inside the timed call, so the load generator's error count *is* the number of wrong
answers, 5xx and lost requests. RSS of tritonserver (+ stubs) and nginx is read around each
window. Writes ``soak.report_path``.
"""

from __future__ import annotations

import gzip
import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import psutil
from omegaconf import DictConfig

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, one_of, positive_int, require
from mlpipe.common.errors import ServerError
from mlpipe.data import SPLITS, load_split
from mlpipe.export.reference import reference_logits
from mlpipe.measure.loadgen import LoadSettings, Workers
from mlpipe.serving.client import TritonClient
from mlpipe.serving.gateway import Gateway
from mlpipe.serving.server import TritonServer
from mlpipe.serving.supervisor import shutdown, start_stack


class UnexpectedAnswer(RuntimeError):
    """A wrong answer, or a status a request of its kind must never get."""


def _nested_json(depth: int) -> bytes:
    head = b'{"inputs":[{"name":"images","shape":[1,1,8,8],"datatype":"FP32","data":'
    return head + b"[" * depth + b"]" * depth + b"}]}"


def _bad_requests(model: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(what, path, body, headers) for each kind of bad request, cycled through."""
    infer = f"/v2/models/{model}/infer"
    huge, nan = _binary_header(2**32 + 1), _binary_header(1)
    nan_pixels = np.full(64, np.nan, np.float32).tobytes()
    return [
        ("nested JSON", infer, _nested_json(50_000), {}),
        ("gzip body", infer, gzip.compress(b"x" * 65536), {"Content-Encoding": "gzip"}),
        ("batch 2**32+1", infer, huge + bytes(256), _header_length(huge)),
        ("unknown model", "/v2/models/nope/infer", b"{}", {}),
        ("NaN pixels", infer, nan + nan_pixels, _header_length(nan)),
    ]


def _binary_header(batch: int) -> bytes:
    """The JSON part of a binary-tensor request with one sample's bytes (1x8x8 FP32)."""
    tensor = {"name": "images", "shape": [batch, 1, 8, 8], "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": 256}
    return json.dumps({"inputs": [tensor]}).encode()


def _header_length(header: bytes) -> dict[str, str]:
    return {"Inference-Header-Content-Length": str(len(header))}


@dataclass(frozen=True)
class SoakCaller:
    """Caller factory for the load generator: one HTTP + one gRPC client per worker."""

    http_address: str
    grpc_address: str
    model: str
    images: np.ndarray  # (N, C, H, W)
    expected: np.ndarray  # (N, classes) ONNX Runtime's logits
    bad_every: int
    atol: float
    timeout_s: float

    def __call__(self) -> _SoakCall:
        return _SoakCall(self)


class _SoakCall:
    def __init__(self, spec: SoakCaller) -> None:
        self.spec, self.n = spec, 0
        self.clients = {
            "http": TritonClient("http", spec.http_address, spec.model, spec.timeout_s),
            "grpc": TritonClient("grpc", spec.grpc_address, spec.model, spec.timeout_s),
        }
        self.bad = _bad_requests(spec.model)

    def _send_bad(self, index: int) -> None:
        what, path, body, headers = self.bad[index % len(self.bad)]
        host, port = self.spec.http_address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=self.spec.timeout_s)
        try:
            conn.request("POST", path, body=body, headers=headers)
            status = conn.getresponse().status
        finally:
            conn.close()
        if not 400 <= status < 500:
            raise UnexpectedAnswer(f"{what}: HTTP {status}, expected a 4xx")

    def __call__(self) -> None:
        self.n += 1
        spec = self.spec
        if self.n % spec.bad_every == 0:
            return self._send_bad(self.n // spec.bad_every)
        i = self.n % len(spec.images)
        got = self.clients["http" if self.n % 2 else "grpc"].infer(spec.images[i : i + 1])
        if not np.allclose(got, spec.expected[i : i + 1], atol=spec.atol, rtol=0):
            raise UnexpectedAnswer(f"wrong logits for test image {i}")
        return None


def stack_rss_mib(server: TritonServer, gateway: Gateway) -> dict[str, float]:
    """Resident memory of tritonserver + its stubs, and of nginx (master + workers)."""

    def rss(p: psutil.Process) -> int:
        try:
            return p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return 0  # a worker or stub that exited between listing and reading holds nothing

    def tree(pid: int) -> float:
        root = psutil.Process(pid)
        return (root.memory_info().rss + sum(map(rss, root.children(recursive=True)))) / 2**20

    return {"tritonserver": tree(server.process.pid), "gateway": tree(gateway.process.pid)}


def validate_soak_cfg(scfg: DictConfig) -> LoadSettings:
    """Reject bad soak values before anything starts; each error names its key."""
    for key in ("clients", "requests_per_client", "windows"):
        positive_int(scfg[key], f"soak.{key}")
    positive_int(scfg.warmup, "soak.warmup", minimum=0)
    positive_int(scfg.bad_every, "soak.bad_every", minimum=2)
    require(as_float(scfg.atol, "soak.atol") >= 0, "soak.atol", f"must be >= 0, got {scfg.atol}")
    one_of(scfg.split, SPLITS, "soak.split")
    return LoadSettings.from_config(scfg.load, "soak.load")


def _caller(cfg: DictConfig, gateway: Gateway) -> SoakCaller:
    scfg, parity = cfg.soak, cfg.export.parity
    images, _ = load_split(cfg.data, str(scfg.split))
    expected = reference_logits(
        cfg.export.onnx_path, list(parity.providers), images, int(parity.batch_size)
    )
    return SoakCaller(
        gateway.http_address,
        gateway.grpc_address,
        str(scfg.model),
        images,
        expected,
        int(scfg.bad_every),
        float(scfg.atol),
        float(scfg.load.timeout_s),
    )


def _windows(
    scfg: DictConfig, workers: Workers, server: TritonServer, gateway: Gateway
) -> list[dict[str, Any]]:
    """`soak.windows` windows of load, resident memory read around each."""
    windows = []
    for i in range(int(scfg.windows)):
        before = stack_rss_mib(server, gateway)
        window = workers.window(int(scfg.warmup) if i == 0 else 0, int(scfg.requests_per_client))
        windows.append(
            {
                "requests": window.requests + window.errors,
                "unexpected": window.errors,
                "first_unexpected": window.first_error,
                "wall_s": window.wall_s,
                "latency": window.latency(),
                "rss_mib_before": before,
                "rss_mib_after": stack_rss_mib(server, gateway),
            }
        )
    return windows


def soak(cfg: DictConfig) -> dict[str, Any]:
    """Windows of load through the gateway; requests, unexpected outcomes, latency, RSS."""
    scfg = cfg.soak
    settings = validate_soak_cfg(scfg)
    server = TritonServer.from_config(cfg.serve)
    gateway = start_stack(cfg, server)
    report: dict[str, Any] = {"clients": int(scfg.clients), "bad_every": int(scfg.bad_every)}
    try:
        with Workers(_caller(cfg, gateway), int(scfg.clients), settings) as workers:
            report["windows"] = _windows(scfg, workers, server, gateway)
        report["server_still_running"] = server.is_running() and gateway.is_running()
    finally:
        shutdown(server, gateway)
    path = Path(scfg.report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['clients']} clients through the gateway, 1 in {report['bad_every']} bad"]
    for i, w in enumerate(report["windows"], 1):
        lat, before, after = w["latency"], w["rss_mib_before"], w["rss_mib_after"]
        lines.append(
            f"window {i}: {w['requests']} requests, {w['unexpected']} unexpected "
            f"(wrong/5xx/lost), p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
            f"RSS tritonserver {before['tritonserver']:.0f}->{after['tritonserver']:.0f} MiB, "
            f"nginx {before['gateway']:.0f}->{after['gateway']:.0f} MiB"
        )
    return lines


def check_outcome(report: dict[str, Any], path: str) -> None:
    """A soak that saw an unexpected answer, or lost its server, fails in one line."""
    unexpected = sum(w["unexpected"] for w in report["windows"])
    if unexpected:
        first = next(w["first_unexpected"] for w in report["windows"] if w["unexpected"])
        raise ServerError(
            f"{unexpected} unexpected outcomes under load (first: {first}); see {path}"
        )
    if not report["server_still_running"]:
        raise ServerError(f"tritonserver or the gateway died under load; see {path} and their logs")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve_soak")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-serve-soak [soak.clients=32] [soak.requests_per_client=200]``."""
    report = soak(cfg)
    print("\n".join(summary_lines(report)))
    check_outcome(report, str(cfg.soak.report_path))


if __name__ == "__main__":
    main()
