"""mlpipe.measure.bench / mlpipe.measure.loadgen: the load generator's timing, the stability rule,
config
errors, unavailable backends, and a minimal bench end to end against the real tritonserver."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from mlpipe.common.errors import ConfigError
from mlpipe.measure.backends import BACKENDS, BenchContext, Unavailable
from mlpipe.measure.bench import LATENCY_COLUMNS, bench, check_bench_config, latency_csv
from mlpipe.measure.consistency import bench_findings
from mlpipe.measure.cost import ModelCost, analytic_columns
from mlpipe.measure.loadgen import (
    LoadSettings,
    WindowResult,
    Workers,
    run_until_stable,
    run_window,
    until_stable,
)
from mlpipe.measure.roofline import DevicePeaks
from mlpipe.measure.rounds import Stability
from mlpipe.measure.tune import candidate, write_tuned_repository

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="bench", overrides=overrides)


THREADS = LoadSettings("thread", 30.0, 5.0)


def _sleeper(seconds: float):
    def factory():
        return lambda: time.sleep(seconds)

    return factory


# -- load generator ----------------------------------------------------------------------------
def test_loadgen_threads_time_each_request_and_overlap() -> None:
    w = run_window(_sleeper(0.01), concurrency=4, requests=5, warmup=1, settings=THREADS)
    assert w.requests == 20 and w.errors == 0
    assert np.all(w.latencies_s >= 0.01)
    # 4 workers x 5 sequential 10 ms requests overlap: about 50 ms, far below 200 ms serial
    assert 0.05 <= w.wall_s < 0.15
    p = w.latency()
    assert 10 <= p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]


def test_loadgen_counts_errors_and_keeps_the_first_message() -> None:
    calls = iter(range(1000))

    def factory():
        def call():
            if next(calls) % 2:
                raise RuntimeError("boom")

        return call

    w = run_window(factory, concurrency=1, requests=10, warmup=0, settings=THREADS)
    assert w.errors == 5 and w.requests == 5 and w.first_error == "RuntimeError: boom"


class _ScriptedWorkers:
    """Stands in for the load workers, not for the rule under test: each window answers the next
    scripted p50 (ms), so the stability rule is checked exactly, whatever the machine's load."""

    def __init__(self, p50s_ms: list[float], errors_at: int | None = None) -> None:
        self.p50s_ms, self.errors_at, self.calls = p50s_ms, errors_at, []

    def window(self, warmup: int, requests: int) -> WindowResult:
        i = len(self.calls)
        self.calls.append((warmup, requests))
        latencies = np.full(requests, self.p50s_ms[i] / 1e3)
        return WindowResult(latencies, float(latencies.sum()), int(i == self.errors_at))


def test_stability_rule_stops_when_p50_settles_and_caps_windows() -> None:
    # settles at the first pair within 10 % (after min_rounds); warm-up before the first window only
    settles = _ScriptedWorkers([5.0, 3.0, 2.8, 2.8, 2.8])
    steady = until_stable(settles, 10, 3, Stability(0.1, 2, 5))
    assert steady.stable and steady.p50_history_ms == pytest.approx([5.0, 3.0, 2.8])
    assert settles.calls == [(3, 10), (0, 10), (0, 10)]
    # min_rounds holds even when the first two already agree
    late = until_stable(_ScriptedWorkers([2.0, 2.0, 2.0, 2.0]), 4, 0, Stability(0.1, 3, 5))
    assert late.stable and len(late.p50_history_ms) == 3
    # p50 doubling every window never settles: capped at max_rounds, reported unstable
    drifting = until_stable(
        _ScriptedWorkers([2.0**i for i in range(10)]), 2, 0, Stability(0.05, 2, 3)
    )
    assert not drifting.stable and drifting.p50_history_ms == pytest.approx([1.0, 2.0, 4.0])
    # a window with errors ends the loop unsettled, and it is the window returned
    broken = until_stable(
        _ScriptedWorkers([2.0, 2.0, 2.0], errors_at=1), 2, 0, Stability(0.1, 2, 5)
    )
    assert not broken.stable and broken.p50_history_ms == [2.0] and broken.window.errors == 1


def test_stability_loop_runs_on_real_threads() -> None:
    # the same rule on real sleeping workers; margins wide enough for a loaded machine (a window
    # would have to be 10x its predecessor to miss), so only a broken loop fails
    steady = run_until_stable(_sleeper(0.005), 2, 5, 1, Stability(10.0, 2, 5), THREADS)
    assert steady.stable and len(steady.p50_history_ms) == 2
    assert steady.window.requests == 10 and min(steady.p50_history_ms) >= 5


def test_loadgen_retarget_swaps_the_caller_and_keeps_the_workers() -> None:
    def unreachable():
        raise OSError("no such model")

    with Workers(_sleeper(0.001), 2, THREADS) as workers:
        threads = list(workers._workers)
        first = workers.window(0, 3)
        workers.retarget(unreachable)
        broken = workers.window(0, 3)
        workers.retarget(_sleeper(0.02))
        slow = workers.window(0, 3)
        assert workers._workers == threads and all(t.is_alive() for t in threads)
    assert first.errors == 0 and first.requests == 6
    assert broken.errors == 6 and "OSError: no such model" in broken.first_error
    assert slow.errors == 0 and slow.latency()["p50_ms"] >= 20


def test_loadgen_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"valid choices: \['thread', 'process', 'async'\]"):
        LoadSettings("fiber", 1.0, 1.0)
    with pytest.raises(ConfigError, match="concurrency must be >= 1"):
        run_window(_sleeper(0), 0, 1, 0, THREADS)
    with pytest.raises(ConfigError, match="min_rounds <= max_rounds"):
        Stability(0.1, 3, 2)


# -- config and analytic columns ---------------------------------------------------------------
def test_unknown_backend_lists_valid_choices() -> None:
    cfg = _compose(["bench.backends=[ort_cpu,onnx_gpu_turbo]"])
    with pytest.raises(ConfigError) as err:
        check_bench_config(cfg.bench)
    assert "onnx_gpu_turbo" in str(err.value)
    assert all(name in str(err.value) for name in BACKENDS)


@pytest.mark.parametrize(
    "override",
    [
        "bench.batch_sizes=[]",
        "bench.batch_sizes=[0,4]",
        "bench.concurrency=[-2]",
        "bench.load.mode=fork",
    ],
)
def test_invalid_lists_and_mode_are_rejected(override: str) -> None:
    cfg = _compose([override])
    with pytest.raises(ConfigError, match="valid"):
        check_bench_config(cfg.bench)


@pytest.mark.parametrize("override", ["bench.triton_models=[]", "bench.triton_models=[3]"])
def test_triton_models_must_name_served_models(override: str) -> None:
    with pytest.raises(ConfigError, match=r"bench.triton_models: must be a non-empty list"):
        check_bench_config(_compose([override]).bench)


def test_every_bench_config_composes_and_validates() -> None:
    for name in ("default", "full", "minimal"):
        cfg = _compose([f"bench={name}"])
        check_bench_config(cfg.bench)
        assert OmegaConf.to_container(cfg.bench, resolve=True)["sample_shape"] == [1, 8, 8]


def test_analytic_columns_match_hand_computation() -> None:
    cost = ModelCost(flops_per_sample=1e6, weight_bytes=4e5, activation_bytes_per_sample=1e3)
    peaks = DevicePeaks("dev", "fp32", 1e12, 1e11, "test", "measured")
    cols = analytic_columns(cost, peaks, batch=10, p50_s=1e-3, samples_per_s=1e4)
    assert cols["flops_per_call"] == 1e7 and cols["bytes_per_call"] == 4.1e5
    assert cols["mfu"] == pytest.approx(1e4 * 1e6 / 1e12)
    assert cols["achieved_gflops"] == pytest.approx(10.0)
    # roofline: max(1e7/1e12, 4.1e5/1e11) = max(1e-5, 4.1e-6) s: compute-bound
    assert cols["roofline_ms"] == pytest.approx(1e-2)
    assert cols["p50_over_roofline"] == pytest.approx(100.0)
    assert cols["bandwidth_util"] == pytest.approx(1e3 * 4.1e5 / 1e11)


@pytest.mark.parametrize(
    "name", ["torch_eager_cuda", "torch_cuda_graphs", "torch_compile_cuda", "ort_cuda", "tensorrt"]
)
def test_gpu_backends_say_why_they_are_unavailable_here(name: str, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device; see the gpu-marked tests")
    cfg = _compose([f"paths.artifacts_dir={tmp_path}"])
    ctx = BenchContext(cfg, (1, 8, 8), np.random.default_rng(0))
    ctx._net = torch.nn.Linear(1, 1)  # never reached: availability is checked first
    with pytest.raises(Unavailable, match=r"CUDA|CUDAExecutionProvider|tensorrt"):
        BACKENDS[name](ctx)


# -- end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small untrained CNN saved as a DigitsClassifier checkpoint, exported to ONNX and to
    the python-backend Triton repository with the export area's own functions."""
    from mlpipe.export.run import export_onnx
    from mlpipe.export.triton_repo import build_repositories
    from mlpipe.train.module import DigitsClassifier

    root = tmp_path_factory.mktemp("bench_e2e")
    overrides = [
        f"paths.artifacts_dir={root}/artifacts",
        f"paths.reports_dir={root}/reports",
        f"paths.model_repository={root}/model_repository",
        f"paths.log_dir={root}/logs",
        f"export.triton.native_repository={root}/native",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        mcfg = compose(
            config_name="train", overrides=["model.net.channels=[4]", "model.net.hidden=16"]
        )
        cfg = compose(config_name="bench", overrides=overrides)
    torch.manual_seed(0)
    module = DigitsClassifier(net=mcfg.model.net, optimizer=None)
    ckpt = Path(cfg.bench.checkpoint_path)
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    net = module.net.eval()
    export_onnx(net, torch.zeros(2, 1, 8, 8), Path(cfg.bench.onnx_path), cfg.export.onnx)
    build_repositories(cfg.bench.onnx_path, cfg.export.triton)
    return {"root": root, "overrides": overrides}


TRITON_MODELS = ("digits", "digits_nobatch", "digits_tuned")


def _port_closed(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


@pytest.mark.slow
def test_minimal_bench_end_to_end_against_real_server(exported: dict) -> None:
    cfg = _compose(
        [
            *exported["overrides"],
            "bench=minimal",
            "bench.backends=[torch_eager,ort_cpu,triton_http,triton_grpc,tensorrt]",
            f"tune.repository={exported['root']}/tuned",
        ]
    )
    write_tuned_repository(cfg, candidate(2, True, 0, []))  # what mlpipe-tune would write
    result = bench(cfg)
    out = Path(cfg.bench.out_dir)
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    ok = [r for r in saved["rows"] if r["status"] == "ok"]
    cells = {(r["backend"], r["batch"], r["concurrency"]) for r in ok}
    expected = {(b, n, 1) for b in ("torch_eager", "ort_cpu") for n in (1, 8)}
    triton = [f"triton_{p}:{m}" for p in ("http", "grpc") for m in TRITON_MODELS]
    expected |= {(b, n, c) for b in triton for n in (1, 8) for c in (1, 2)}
    assert cells == expected
    # every Triton row names the served config it measured, read from the served repository
    configs = {r["backend"]: r["model_config"] for r in ok if "model_config" in r}
    assert set(configs) == set(triton)
    assert configs["triton_grpc:digits_tuned"] == {
        "model": "digits_tuned",
        "dynamic_batching": True,
        "max_queue_delay_us": 0,
        "instances": 2,
        "label": "digits_tuned: batcher on, queue delay 0 µs, 2 instance(s)",
    }
    assert configs["triton_http:digits_nobatch"]["dynamic_batching"] is False
    delay = cfg.export.triton.dynamic_batching.max_queue_delay_microseconds
    assert configs["triton_http:digits"]["max_queue_delay_us"] == delay
    for r in ok:
        assert r["errors"] == 0 and r["requests"] >= 10 * r["concurrency"]
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_samples_s"] > 0
        # analytic columns from the profile of the checkpoint's net: flops scale with the batch
        assert r["flops_per_call"] == saved["meta"]["model_cost"]["flops_per_sample"] * r["batch"]
        assert 0 < r["mfu"] < 1
    # the run's own figures pass the report's self-checks, and its best FLOP/s is under its peak
    assert [f.line() for f in bench_findings(saved, 0.10) if not f.ok] == []
    observed = saved["meta"]["observed"]["cpu"]
    assert observed["bounded"] and 0 < observed["best_flops"] <= observed["peak_flops"]
    trt = [r for r in saved["rows"] if r["backend"] == "tensorrt"]
    assert trt and trt[0]["status"] == "unavailable" and trt[0]["reason"]
    assert any(r.get("speedup_vs_baseline") == 1.0 for r in ok if r["backend"] == "ort_cpu")
    table = (out / "results.md").read_text()
    assert re.search(r"\| triton_grpc:digits_tuned +\| batcher on, delay 0 µs, 2 inst\. ", table)
    assert "tensorrt**: unavailable:" in table
    for png in ("latency_vs_batch.png", "throughput_vs_concurrency.png"):
        assert (out / png).stat().st_size > 10_000
    latency = (out / "latency.csv").read_text().splitlines()  # the DVC plot's data
    assert latency[0] == ",".join(LATENCY_COLUMNS) and len(latency) == 1 + len(ok)
    # the bench stopped its server: nothing listens on its ports any more
    logs = list((exported["root"] / "logs" / "triton").glob("tritonserver-*.log"))
    assert logs
    http_port = logs[-1].stem.split("-")[-1]
    assert _port_closed(f"127.0.0.1:{http_port}")


def test_committed_latency_plot_data_is_the_committed_runs_rows() -> None:
    """reports/gpu/latency.csv (the root dvc.yaml's latency plot) holds the measured rows of the
    committed GPU run's results.json, as mlpipe-bench writes them: unavailable backends left out
    (DVC plots a list only when every entry has the same keys)."""
    gpu = ROOT / "reports" / "gpu"
    rows = json.loads((gpu / "results.json").read_text())["rows"]
    assert any(r["status"] != "ok" for r in rows), "the committed run has unavailable rows"
    assert (gpu / "latency.csv").read_text() == latency_csv(rows)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["process", "async"])
def test_triton_clients_in_spawned_processes(exported: dict, mode: str) -> None:
    """process: 2 spawned blocking gRPC clients; async: the 2 requests kept in flight by the
    spawned async gRPC clients. Both persist across windows."""
    cfg = _compose(
        [
            *exported["overrides"],
            "bench=minimal",
            "bench.backends=[triton_grpc]",
            "bench.triton_models=[digits]",
            "bench.batch_sizes=[4]",
            "bench.concurrency=[2]",
            f"bench.load.mode={mode}",
            f"bench.out_dir={exported['root']}/{mode}",
        ]
    )
    (row,) = bench(cfg)["rows"]
    assert row["status"] == "ok" and row["errors"] == 0 and row["requests"] == 2 * 10
    assert 0 < row["p50_ms"] <= row["p99_ms"]


@pytest.mark.slow
def test_an_untuned_checkout_names_the_command_for_the_tuned_rows(exported: dict) -> None:
    cfg = _compose(
        [
            *exported["overrides"],
            "bench=minimal",
            "bench.backends=[triton_grpc]",
            "bench.triton_models=[digits_tuned]",
            f"tune.repository={exported['root']}/never_tuned",
            f"bench.out_dir={exported['root']}/untuned",
        ]
    )
    (row,) = bench(cfg)["rows"]
    assert row["backend"] == "triton_grpc:digits_tuned" and row["status"] == "unavailable"
    assert "has no tuned config: run `mlpipe-tune`" in row["reason"]


@pytest.mark.slow
def test_torch_compile_row_on_cpu(exported: dict) -> None:
    """inductor on CPU compiles C++ with gcc: measured where gcc exists, else a reason."""
    cfg = _compose(
        [
            *exported["overrides"],
            "bench=minimal",
            "bench.backends=[torch_compile]",
            "bench.batch_sizes=[4]",
            f"bench.out_dir={exported['root']}/compile",
        ]
    )
    rows = bench(cfg)["rows"]
    if shutil.which("gcc") or shutil.which("g++"):
        assert [r["status"] for r in rows] == ["ok"], rows
    else:
        assert rows[0]["status"] == "unavailable" and "torch_compile failed" in rows[0]["reason"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_backends_measure(exported: dict) -> None:
    cfg = _compose(
        [
            *exported["overrides"],
            "bench=minimal",
            "bench.backends=[torch_eager_cuda,torch_cuda_graphs,torch_compile_cuda]",
            f"bench.out_dir={exported['root']}/cuda",
        ]
    )
    rows = bench(cfg)["rows"]
    assert {r["backend"] for r in rows if r["status"] == "ok"} == {
        "torch_eager_cuda",
        "torch_cuda_graphs",
        "torch_compile_cuda",
    }
