"""mlpipe-client against the real tritonserver: served accuracy == offline ORT accuracy, latency, measure mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil
import pytest
from omegaconf import OmegaConf

from helpers.compose import EPHEMERAL, compose_app
from mlpipe.client import TritonInfer, concurrent_throughput, measure, run_client
from mlpipe.export import export
from mlpipe.serve import TritonServer



@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory: pytest.TempPathFactory, trained_checkpoint: Any) -> Path:
    tmp = tmp_path_factory.mktemp("client")
    export(compose_app(
        "export", tmp, f"export.checkpoint_path={trained_checkpoint.ckpt_path}",
        f"export.provenance.train_metrics={trained_checkpoint.metrics_path}", "export.onnx.dynamo=false",
    ))
    return tmp


@pytest.fixture(scope="module")
def server(exported_dir: Path) -> Iterator[TritonServer]:
    with TritonServer.from_config(compose_app("serve", exported_dir, *EPHEMERAL).serve) as running:
        yield running
    leftovers = [p for p in psutil.Process().children(recursive=True)
                 if p.name() in ("tritonserver", "triton_python_backend_stub")]
    assert not leftovers, f"server processes outlived the tests: {leftovers}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_accuracy_equals_offline_ort(exported_dir: Path, server: TritonServer, protocol: str) -> None:
    """The CLI's default path: a running server at configured ports."""
    port = server.ports[protocol]
    cfg = compose_app("client", exported_dir, f"client.protocol={protocol}", f"client.{protocol}_port={port}")
    result = run_client(cfg)
    assert result["accuracy_matches_offline"] is True
    assert result["served_acc"] == result["offline_ort_acc"] > 0.5
    assert result["max_abs_diff_vs_ort"] <= 1e-5
    assert result["n"] > 300 and result["latency_per_batch"]["n"] == -(-result["n"] // cfg.client.batch_size)
    assert json.loads(Path(cfg.client.report_path).read_text()) == result


@pytest.mark.parametrize("processes", [1, 2])
def test_concurrent_load(server: TritonServer, processes: int) -> None:
    sample = np.zeros((1, 1, 8, 8), np.float32)
    result = concurrent_throughput(server.grpc_address, "digits", "images", "logits", sample, 8, 0.5, 2, 30.0, processes)
    assert result["requests"] > 0 and result["throughput_rps"] > 0
    assert result["latency"]["n"] == result["requests"]
    assert result["processes"] == processes


def test_concurrent_load_reports_server_errors(server: TritonServer) -> None:
    bad = np.zeros((1, 1, 8, 7), np.float32)
    with pytest.raises(RuntimeError, match=r"requests to 'digits' failed.*unexpected shape"):
        concurrent_throughput(server.grpc_address, "digits", "images", "logits", bad, 2, 0.2, 0, 30.0, 2)


def test_unknown_protocol_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"client.protocol='udp' is not one of \('http', 'grpc'\)"):
        TritonInfer("udp", "127.0.0.1:1", "digits", "images", "logits", 1.0)


def test_port_zero_without_a_server_is_explained(exported_dir: Path) -> None:
    cfg = compose_app("client", exported_dir, *EPHEMERAL)
    with pytest.raises(ValueError, match=r"client.http_port is 0.*client.start_server=true"):
        run_client(cfg)


def test_missing_onnx_names_the_command(tmp_path: Path) -> None:
    cfg = compose_app("client", tmp_path, "client.start_server=false")
    with pytest.raises(FileNotFoundError, match=r"model.onnx.*mlpipe-export"):
        run_client(cfg)


@pytest.mark.slow
def test_measure_mode_reports_every_target(exported_dir: Path) -> None:
    """A short measure run on its own server (start_server path); figures are reported, not asserted."""
    cfg = compose_app(
        "client", exported_dir, *EPHEMERAL, "client.measure.latency_requests=30", "client.measure.latency_warmup=5",
        "client.measure.duration_s=0.5", "client.measure.concurrency=4",
    )
    report = measure(cfg)
    assert report["ready_seconds"] > 0
    for key in ("ort_in_process_batch1", "http_batch1", "grpc_batch1"):
        assert report[key]["n"] == 30
    db = report["dynamic_batching"]
    assert db["batched"]["server"]["inference_count"] >= db["batched"]["requests"]
    assert db["unbatched"]["server"]["mean_server_batch"] == 1.0  # batcher off: one request per execution
    assert set(report["meets"]) == {"ready", "http_batch1_overhead", "grpc_batch1_overhead", "dynamic_batching_ratio"}
    assert json.loads(Path(cfg.client.measure.report_path).read_text()) == report
    assert OmegaConf.to_container(cfg.client.measure.targets) == report["targets"]
