"""mlpipe-client: the test split through Triton (HTTP or gRPC); served accuracy must equal the
offline ONNX Runtime accuracy on the same ONNX file.

``run_client(cfg) -> dict`` sends the split in batches to a running server (or one it starts
itself with ``client.start_server=true``), compares with ORT, reports per-batch latency and
writes ``client.report_path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, one_of, positive_int, require
from mlpipe.common.errors import ConfigError, ParityError
from mlpipe.common.stats import latency_summary, timed
from mlpipe.data import SPLITS, load_split
from mlpipe.export.reference import reference_logits
from mlpipe.serving.client import PROTOCOLS, TritonClient
from mlpipe.serving.server import TritonServer


def validate_client_cfg(ccfg: DictConfig) -> None:
    """Reject bad client values before any server starts; each error names its key."""
    one_of(ccfg.protocol, PROTOCOLS, "client.protocol")
    one_of(ccfg.split, SPLITS, "client.split")
    positive_int(ccfg.batch_size, "client.batch_size")
    positive_int(ccfg.warmup, "client.warmup", minimum=0)
    require(as_float(ccfg.timeout_s, "client.timeout_s") > 0, "client.timeout_s", "must be > 0")


def server_address(cfg: DictConfig, server: TritonServer | None, protocol: str) -> str:
    """Where to send requests: the server started here, or the configured host and port."""
    if server is not None:
        return server.http_address if protocol == "http" else server.grpc_address
    port = int(cfg.client[f"{protocol}_port"])
    if port == 0:
        raise ConfigError(
            f"client.{protocol}_port is 0; give the port of the running server or set "
            "client.start_server=true"
        )
    return f"{cfg.client.host}:{port}"


def served_logits(
    client: TritonClient, images: np.ndarray, batch: int, warmup: int
) -> tuple[np.ndarray, list[float]]:
    """The server's logits for `images` in batches, and each batch's round-trip seconds."""
    for _ in range(warmup):
        client.infer(images[:batch])
    answers = [
        timed(lambda s=s: client.infer(images[s : s + batch])) for s in range(0, len(images), batch)
    ]
    return np.concatenate([out for out, _ in answers], axis=0), [t for _, t in answers]


def classify_split(cfg: DictConfig, server: TritonServer | None) -> dict[str, Any]:
    """Send the configured split in batches; compare with offline ORT on the same ONNX."""
    ccfg = cfg.client
    images, labels = load_split(cfg.data, str(ccfg.split))  # (N, 1, 8, 8), (N,)
    providers = list(cfg.export.parity.providers)
    offline = reference_logits(cfg.export.onnx_path, providers, images, int(ccfg.batch_size))
    protocol = str(ccfg.protocol)
    address = server_address(cfg, server, protocol)
    with TritonClient(protocol, address, str(ccfg.model), float(ccfg.timeout_s)) as client:
        served, times = served_logits(client, images, int(ccfg.batch_size), int(ccfg.warmup))
    served_acc = float(np.mean(served.argmax(1) == labels))
    offline_acc = float(np.mean(offline.argmax(1) == labels))
    return {
        "protocol": protocol,
        "model": str(ccfg.model),
        "split": str(ccfg.split),
        "n": int(len(labels)),
        "batch_size": int(ccfg.batch_size),
        "served_acc": served_acc,
        "offline_ort_acc": offline_acc,
        "accuracy_matches_offline": served_acc == offline_acc,
        "max_abs_diff_vs_ort": float(np.max(np.abs(served - offline))),
        "latency_per_batch": latency_summary(times),
    }


def run_client(cfg: DictConfig) -> dict[str, Any]:
    """Classify the split through the server; writes ``client.report_path`` and returns the dict."""
    validate_client_cfg(cfg.client)
    if cfg.client.start_server:
        with TritonServer.from_config(cfg.serve) as server:
            result = classify_split(cfg, server)
    else:
        result = classify_split(cfg, None)
    path = Path(cfg.client.report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="client")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-client [client.protocol=grpc] [client.start_server=true]``."""
    result = run_client(cfg)
    lat = result["latency_per_batch"]
    print(
        f"{result['protocol']}: served acc {result['served_acc']:.4f}, offline ORT acc "
        f"{result['offline_ort_acc']:.4f} "
        f"({'equal' if result['accuracy_matches_offline'] else 'DIFFERENT'}); batch "
        f"{result['batch_size']} latency p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms; "
        f"report {cfg.client.report_path}"
    )
    if not result["accuracy_matches_offline"]:
        raise ParityError(
            "served accuracy differs from offline ONNX Runtime accuracy; re-export with "
            "`mlpipe-export` and restart the server"
        )


if __name__ == "__main__":
    main()
