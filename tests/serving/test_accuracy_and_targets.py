"""mlpipe-client and mlpipe-serve-targets against the real tritonserver: served accuracy ==
offline ORT accuracy, the async load generator, the serving targets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.compose import EPHEMERAL, compose_app
from helpers.serving import children_of
from omegaconf import OmegaConf

from mlpipe.common.errors import ArtifactMissingError, ConfigError, ServerError
from mlpipe.measure.loadgen import LoadSettings, Workers, run_window
from mlpipe.measure.rounds import Stability
from mlpipe.measure.served import Requests, served_point
from mlpipe.measure.targets import measure_targets, meets
from mlpipe.measure.tune import tune
from mlpipe.serving.accuracy import run_client
from mlpipe.serving.client import TritonCaller, TritonClient
from mlpipe.serving.server import TritonServer


@pytest.fixture(scope="module")
def exported_dir(hardening_export: Path) -> Path:
    """The session's export of the trained checkpoint (tests/serving/conftest.py)."""
    return hardening_export


@pytest.fixture(scope="module")
def server(exported_dir: Path) -> Iterator[TritonServer]:
    with TritonServer.from_config(compose_app("serve", exported_dir, *EPHEMERAL).serve) as running:
        yield running
    leftovers = children_of(os.getpid(), ("tritonserver", "triton_python_backend_stub"))
    assert not leftovers, f"server processes outlived the tests: {leftovers}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_accuracy_equals_offline_ort(
    exported_dir: Path, server: TritonServer, protocol: str
) -> None:
    """The CLI's default path: a running server at configured ports."""
    port = server.ports[protocol]
    cfg = compose_app(
        "client", exported_dir, f"client.protocol={protocol}", f"client.{protocol}_port={port}"
    )
    result = run_client(cfg)
    assert result["accuracy_matches_offline"] is True
    assert result["served_acc"] == result["offline_ort_acc"] > 0.5
    assert result["max_abs_diff_vs_ort"] <= 1e-5
    assert result["n"] > 300 and result["latency_per_batch"]["n"] == -(
        -result["n"] // cfg.client.batch_size
    )
    assert json.loads(Path(cfg.client.report_path).read_text()) == result


@pytest.mark.parametrize("processes", [1, 2])
def test_async_load_keeps_n_requests_in_flight(server: TritonServer, processes: int) -> None:
    """The load generator's async gRPC mode (what the serving targets use)."""
    caller = TritonCaller(
        "grpc", server.grpc_address, "digits", np.zeros((1, 1, 8, 8), np.float32), 30.0
    )
    window = run_window(caller, 8, 10, 2, LoadSettings("async", 30.0, 5.0, processes))
    assert window.errors == 0 and window.requests == 80 and window.throughput_rps > 0
    assert window.latency()["n"] == window.requests


def test_async_load_reports_server_errors(server: TritonServer) -> None:
    bad = np.zeros((1, 1, 8, 7), np.float32)
    caller = TritonCaller("grpc", server.grpc_address, "digits", bad, 30.0)
    window = run_window(caller, 2, 3, 0, LoadSettings("async", 30.0, 5.0, 2))
    assert window.errors == 6 and window.requests == 0
    assert "unexpected shape" in window.first_error


@pytest.mark.parametrize("model", ["digits", "digits_nobatch"])
def test_served_point_counts_its_own_window_only(server: TritonServer, model: str) -> None:
    """Triton's statistics of a served point cover its reported window alone: not the warm-up,
    not the earlier windows, not an earlier measurement of the same model (bug (b) of issue 17:
    statistics accumulated since the start mixed them all)."""
    batch = np.zeros((2, 1, 8, 8), np.float32)
    sends = Requests(batch, per_window=5, warmup=3)
    twice = Stability(rel_tol=1e-9, min_rounds=2, max_rounds=2)  # two windows, never settled
    caller = TritonCaller("grpc", server.grpc_address, model, batch, 30.0)
    with Workers(caller, 4, LoadSettings("async", 30.0, 5.0, 2)) as workers:
        points = [served_point(server, model, workers, twice, sends) for _ in range(2)]
    for point in points:
        assert point["status"] == "ok" and point["windows"] == 2 and point["requests"] == 20
        stats = point["server"]
        assert stats["inference_count"] == point["requests"] * 2  # samples of this window alone
        assert 1 <= stats["execution_count"] <= point["requests"]
        assert stats["mean_server_batch"] == stats["inference_count"] / stats["execution_count"]
    if model == "digits_nobatch":  # batcher off: one request per execution
        assert points[-1]["server"]["mean_server_batch"] == 2.0


def test_unknown_protocol_lists_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown protocol 'udp'; valid choices: \['http', 'grpc'\]"
    ):
        TritonClient("udp", "127.0.0.1:1", "digits", 1.0)


def test_client_to_nothing_names_the_server(exported_dir: Path) -> None:
    with pytest.raises(ServerError, match=r"model 'digits' metadata unavailable.*server running"):
        TritonClient("http", "127.0.0.1:9", "digits", 1.0)


def test_port_zero_without_a_server_is_explained(exported_dir: Path) -> None:
    cfg = compose_app("client", exported_dir, *EPHEMERAL)
    with pytest.raises(ConfigError, match=r"client.http_port is 0.*client.start_server=true"):
        run_client(cfg)


def test_missing_onnx_names_the_command(tmp_path: Path) -> None:
    cfg = compose_app("client", tmp_path, "client.start_server=false")
    with pytest.raises(ArtifactMissingError, match=r"model.onnx.*mlpipe-export"):
        run_client(cfg)


def test_serving_targets_without_the_tuner_name_it(exported_dir: Path, tmp_path: Path) -> None:
    cfg = compose_app(
        "serve_targets", exported_dir, *EPHEMERAL, f"tune.repository={tmp_path}/absent"
    )
    with pytest.raises(ArtifactMissingError, match=r"no tuned config.*run `mlpipe-tune`"):
        measure_targets(cfg)


@pytest.mark.parametrize(("same", "met"), [(None, False), ("batched", True), ("unbatched", False)])
def test_a_kept_hand_written_config_is_as_fast_as_itself(same: str | None, met: bool) -> None:
    """Tuned = untuned `digits` (the tuner kept it): 0.9x against it is noise, not a miss."""
    report = {
        "ready_seconds": 1.0,
        "http_batch1": {"overhead_vs_ort_p50_ms": 0.5},
        "grpc_batch1": {"overhead_vs_ort_p50_ms": 0.5},
        "tuning": {
            "on_front": True,
            "same_config_as": same,
            "throughput_ratio_tuned_vs": {"batched": 0.9, "unbatched": 1.3},
        },
    }
    goals = {"ready_seconds": 10, "batch1_overhead_ms": 1.0, "tuned_vs_untuned_throughput": 1.0}
    assert meets(report, goals)["tuned_beats_untuned"] is met


@pytest.mark.slow
def test_serving_targets_report_every_target(exported_dir: Path) -> None:
    """A short run on its own server; figures are reported, not asserted."""
    tune(  # a minimal sweep makes the tuned repository the targets compare
        compose_app(
            "tune",
            exported_dir,
            *EPHEMERAL,
            "tune.space.instance_count=[1]",
            "tune.space.dynamic_batching=[true]",
            "tune.space.max_queue_delay_microseconds=[0]",
            "tune.space.preferred_batch_size=[[]]",
            "tune.concurrency=[4]",
            "tune.select_concurrency=4",
            "tune.p99_budget_ms=1000",
            "tune.requests_per_slot=10",
        )
    )
    cfg = compose_app(
        "serve_targets",
        exported_dir,
        *EPHEMERAL,
        "targets.latency_requests=30",
        "targets.latency_warmup=5",
        "targets.requests_per_slot=20",
        "targets.concurrency=4",
        "targets.rounds=2",
    )
    report = measure_targets(cfg)
    assert report["ready_seconds"] > 0
    for key in ("ort_in_process_batch1", "http_batch1", "grpc_batch1"):
        assert report[key]["n"] == 30
    via = report["gateway_batch1"]  # the same batch-1 requests through the nginx gateway
    assert via["enabled"] and via["http"]["n"] == via["grpc"]["n"] == 30
    assert "overhead_vs_direct_p50_ms" in via["grpc"]
    db = report["dynamic_batching"]
    assert db["batched"]["server"]["inference_count"] >= db["batched"]["requests"]
    assert (
        db["unbatched"]["server"]["mean_server_batch"] == 1.0
    )  # batcher off: one request per execution
    assert set(report["meets"]) == {
        "ready",
        "http_batch1_overhead",
        "grpc_batch1_overhead",
        "tuned_on_front",
        "tuned_beats_untuned",
    }
    tuning = report["tuning"]
    assert tuning["on_front"] is report["meets"]["tuned_on_front"] is True
    assert db["tuned"]["model"] == "digits_tuned" and db["tuned"]["requests"] == 4 * 20
    assert tuning["rounds"] == 2
    kept = {"untuned_digits": "batched", "untuned_digits_nobatch": "unbatched"}
    assert tuning["same_config_as"] == kept.get(tuning["chosen"])
    assert all(len(db[k]["rounds_rps"]) == 2 for k in ("tuned", "batched", "unbatched"))
    for label, ratio in tuning["throughput_ratio_tuned_vs"].items():  # paired, round by round
        pairs = zip(db["tuned"]["rounds_rps"], db[label]["rounds_rps"], strict=True)
        per_round = [a / b for a, b in pairs]
        assert tuning["throughput_ratio_tuned_vs_rounds"][label] == pytest.approx(per_round)
        assert ratio == pytest.approx(np.median(per_round))
    assert set(tuning["throughput_ratio_tuned_vs"]) == {"batched", "unbatched"}
    assert db["batched"]["requests"] == 4 * 20
    assert json.loads(Path(cfg.targets.report_path).read_text()) == report
    assert OmegaConf.to_container(cfg.targets.goals) == report["targets"]


@pytest.mark.slow
def test_soak_through_the_gateway_has_no_unexpected_answer(exported_dir: Path) -> None:
    """A short soak: bad requests all get a 4xx, good ones equal ONNX Runtime, nothing lost."""
    from mlpipe.measure.soak import soak

    cfg = compose_app(
        "serve_soak",
        exported_dir,
        "soak.clients=4",
        "soak.requests_per_client=20",
        "soak.windows=1",
    )
    report = soak(cfg)
    (window,) = report["windows"]
    assert window["requests"] == 80 and window["unexpected"] == 0, window["first_unexpected"]
    assert report["server_still_running"]
    assert json.loads(Path(cfg.soak.report_path).read_text()) == report
