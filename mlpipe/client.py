"""mlpipe-client: the test split through Triton (HTTP or gRPC), accuracy vs offline ORT, latency.

``run_client(cfg) -> dict`` sends the real test split in batches to a running server (or one it
starts itself with ``client.start_server=true``), checks that the served accuracy equals the
offline ONNX Runtime accuracy, reports per-request latency and writes
``reports/serve/client.json``.

``measure(cfg) -> dict`` (``client.measure.enabled=true``) measures the serving targets on one
server: start -> ready time, batch-1 p50 over loopback (HTTP and gRPC) next to in-process ORT,
and throughput with N concurrent requests (perf_analyzer's concurrency mode, over async gRPC)
with the dynamic batcher on vs off, measuring client-observed latency, serialisation included.
The functions are public so ``mlpipe.bench`` can reuse them. torch-dependent imports
(``mlpipe.export``, ``mlpipe.data``) happen inside the functions that need them, so the spawned
load processes start in well under a second.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir

from mlpipe.serve import TritonServer

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")


def _client_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"client.protocol={protocol!r} is not one of {PROTOCOLS}")
    return module


class TritonInfer:
    """One tritonclient connection that sends float32 batches to one model and returns logits.

    HTTP uses the binary tensor extension both ways (no JSON number formatting).
    """

    def __init__(self, protocol: str, address: str, model: str, input_name: str, output_name: str, timeout_s: float):
        self.module = _client_module(protocol)
        self.protocol = protocol
        self.model, self.input_name, self.output_name = model, input_name, output_name
        if protocol == "http":
            self.client = self.module.InferenceServerClient(address, connection_timeout=timeout_s, network_timeout=timeout_s)
            self._outputs = [self.module.InferRequestedOutput(output_name, binary_data=True)]
        else:
            self.client = self.module.InferenceServerClient(address)
            self._outputs = [self.module.InferRequestedOutput(output_name)]
        self.timeout_s = timeout_s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits (B, classes) for a (B, C, H, W) float32 batch."""
        tensor = self.module.InferInput(self.input_name, list(batch.shape), "FP32")
        if self.protocol == "http":
            tensor.set_data_from_numpy(batch, binary_data=True)
            result = self.client.infer(self.model, [tensor], outputs=self._outputs)
        else:
            tensor.set_data_from_numpy(batch)
            result = self.client.infer(self.model, [tensor], outputs=self._outputs, client_timeout=self.timeout_s)
        return result.as_numpy(self.output_name)

    def close(self) -> None:
        self.client.close()


def latency_stats(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "n": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _address(cfg: DictConfig, server: TritonServer | None, protocol: str) -> str:
    if server is not None:
        return server.http_address if protocol == "http" else server.grpc_address
    port = int(cfg.client[f"{protocol}_port"])
    if port == 0:
        raise ValueError(f"client.{protocol}_port is 0; give the port of the running server or set client.start_server=true")
    return f"{cfg.client.host}:{port}"


def classify_split(cfg: DictConfig, server: TritonServer | None) -> dict[str, Any]:
    """Send the configured split in batches; compare with offline ORT on the same ONNX."""
    from mlpipe.data import load_split
    from mlpipe.export import ort_session, run_ort

    ccfg = cfg.client
    images, labels = load_split(cfg.data, str(ccfg.split))  # (N, 1, 8, 8), (N,)
    onnx_path = Path(cfg.export.onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found at {onnx_path}; create it with `mlpipe-export` (or `make export`)")
    offline = run_ort(ort_session(onnx_path), images, int(ccfg.batch_size))  # (N, classes)

    infer = TritonInfer(
        str(ccfg.protocol), _address(cfg, server, str(ccfg.protocol)), str(ccfg.model),
        str(cfg.export.onnx.input_name), str(cfg.export.onnx.output_name), float(ccfg.timeout_s),
    )
    try:
        for _ in range(int(ccfg.warmup)):
            infer(images[: int(ccfg.batch_size)])
        outs, times = [], []
        for start in range(0, len(images), int(ccfg.batch_size)):
            batch = images[start : start + int(ccfg.batch_size)]
            t0 = time.perf_counter()
            outs.append(infer(batch))
            times.append(time.perf_counter() - t0)
    finally:
        infer.close()
    served = np.concatenate(outs, axis=0)
    served_acc = float(np.mean(served.argmax(1) == labels))
    offline_acc = float(np.mean(offline.argmax(1) == labels))
    return {
        "protocol": str(ccfg.protocol),
        "model": str(ccfg.model),
        "split": str(ccfg.split),
        "n": int(len(labels)),
        "batch_size": int(ccfg.batch_size),
        "served_acc": served_acc,
        "offline_ort_acc": offline_acc,
        "accuracy_matches_offline": served_acc == offline_acc,
        "max_abs_diff_vs_ort": float(np.max(np.abs(served - offline))),
        "latency_per_batch": latency_stats(times),
    }


# -- load generation ---------------------------------------------------------------------------
def _async_window(
    address: str, model: str, input_name: str, output_name: str, sample: np.ndarray,
    concurrency: int, duration_s: float, warmup: int, timeout_s: float, ready: Any = None, go: Any = None,
) -> dict[str, Any]:
    """Keep ``concurrency`` async gRPC requests in flight for ``duration_s``; latencies and wall time.

    ``ready`` (a Queue) and ``go`` (an Event) let several processes warm up, report, and start
    their timed windows together.
    """
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(address)
    tensor = tg.InferInput(input_name, list(sample.shape), "FP32")
    tensor.set_data_from_numpy(sample)
    outputs = [tg.InferRequestedOutput(output_name)]
    window = threading.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    def done(started: float, result: Any, error: Any) -> None:  # tritonclient passes result=, error=
        if error is None:
            latencies.append(time.perf_counter() - started)
        else:
            errors.append(str(error))
        window.release()

    try:
        for _ in range(warmup):
            client.infer(model, [tensor], outputs=outputs)
        if ready is not None:
            ready.put(1)
            go.wait(timeout=timeout_s * 4)
        start = time.perf_counter()
        stop_at = start + duration_s
        while time.perf_counter() < stop_at:
            if not window.acquire(timeout=timeout_s):
                raise TimeoutError(f"no response from {model!r} at {address} within {timeout_s} s")
            client.async_infer(model, [tensor], partial(done, time.perf_counter()), outputs=outputs, client_timeout=timeout_s)
        for _ in range(concurrency):  # drain: every request in flight has answered
            window.acquire(timeout=timeout_s)
        wall = time.perf_counter() - start
    finally:
        client.close()
    return {"latencies": latencies, "wall_s": wall, "errors": errors}


def _window_process(kwargs: dict[str, Any], ready: Any, go: Any, results: Any) -> None:
    try:
        results.put(_async_window(ready=ready, go=go, **kwargs))
    except Exception as err:  # reported by the parent, which raises with the message
        ready.put(0)  # never leave the parent waiting for a warm-up that failed
        results.put({"latencies": [], "wall_s": 0.0, "errors": [f"{type(err).__name__}: {err}"]})


def concurrent_throughput(
    address: str, model: str, input_name: str, output_name: str, sample: np.ndarray,
    concurrency: int, duration_s: float, warmup: int, timeout_s: float, processes: int = 1,
) -> dict[str, Any]:
    """Requests/s and latency with ``concurrency`` requests in flight over gRPC, for ``duration_s``.

    Same semantics as ``perf_analyzer --concurrency-range N``: exactly N asynchronous requests
    outstanding, a new one sent as each completes, i.e. N closed-loop clients. Async gRPC costs
    the client far less CPU per request than N blocking clients; ``processes`` > 1 splits the N
    over several processes (started together after warm-up) when one Python process's GIL is
    the limit.
    """
    if concurrency < 1 or processes < 1:
        raise ValueError(f"client.measure.concurrency ({concurrency}) and processes ({processes}) must be >= 1")
    processes = min(processes, concurrency)
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    common = dict(address=address, model=model, input_name=input_name, output_name=output_name,
                  sample=sample, duration_s=duration_s, warmup=warmup, timeout_s=timeout_s)
    if processes == 1:
        outs = [_async_window(concurrency=concurrency, **common)]
    else:
        ctx = mp.get_context("spawn")  # never fork a process that holds gRPC threads
        ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_window_process, args=({**common, "concurrency": n}, ready, go, results)) for n in shares]
        for proc in procs:
            proc.start()
        try:
            for _ in procs:  # all warmed up (or failed: then the result carries the error)
                ready.get(timeout=timeout_s * 4)
            go.set()
            outs = [results.get(timeout=duration_s + timeout_s * 4) for _ in procs]
        finally:
            for proc in procs:
                proc.join(timeout=timeout_s)
                if proc.is_alive():
                    proc.kill()
    errors = [e for o in outs for e in o["errors"]]
    if errors:
        raise RuntimeError(f"{len(errors)} requests to {model!r} failed during the load run; first: {errors[0]}")
    latencies = [x for o in outs for x in o["latencies"]]
    wall = max(o["wall_s"] for o in outs)
    return {
        "protocol": "grpc",
        "model": model,
        "concurrency": concurrency,
        "processes": processes,
        "batch_size": int(sample.shape[0]),
        "wall_s": wall,
        "requests": len(latencies),
        "throughput_rps": len(latencies) / wall,
        "latency": latency_stats(latencies),
    }


def model_batch_stats(server: TritonServer, model: str) -> dict[str, float]:
    """Triton's own counters: inferences vs executions (their ratio is the mean server batch)."""
    import tritonclient.http as th

    client = th.InferenceServerClient(server.http_address)
    try:
        stats = client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()
    inferences, executions = int(stats["inference_count"]), int(stats["execution_count"])
    return {"inference_count": inferences, "execution_count": executions,
            "mean_server_batch": inferences / executions if executions else 0.0}


def measure(cfg: DictConfig) -> dict[str, Any]:
    """The serving targets on one fresh server; writes ``client.measure.report_path``."""
    from mlpipe.data import load_split
    from mlpipe.export import ort_session

    mcfg = cfg.client.measure
    in_name, out_name = str(cfg.export.onnx.input_name), str(cfg.export.onnx.output_name)
    images, _ = load_split(cfg.data, str(cfg.client.split))
    one = np.ascontiguousarray(images[:1])  # (1, 1, 8, 8)
    session = ort_session(Path(cfg.export.onnx_path))
    ort_in = session.get_inputs()[0].name
    warmup, repeats = int(mcfg.latency_warmup), int(mcfg.latency_requests)

    report: dict[str, Any] = {"targets": OmegaConf.to_container(mcfg.targets)}
    report["ort_in_process_batch1"] = latency_stats(time_calls(lambda: session.run(None, {ort_in: one}), warmup, repeats))
    server = TritonServer.from_config(cfg.serve)
    with server:
        report["ready_seconds"] = server.ready_seconds
        for protocol in PROTOCOLS:
            address = server.http_address if protocol == "http" else server.grpc_address
            infer = TritonInfer(protocol, address, str(mcfg.latency_model), in_name, out_name, float(cfg.client.timeout_s))
            try:
                report[f"{protocol}_batch1"] = latency_stats(time_calls(lambda: infer(one), warmup, repeats))
            finally:
                infer.close()
            report[f"{protocol}_batch1"]["overhead_vs_ort_p50_ms"] = (
                report[f"{protocol}_batch1"]["p50_ms"] - report["ort_in_process_batch1"]["p50_ms"]
            )
        runs = {}
        for label, model in mcfg.batching_models.items():
            runs[label] = concurrent_throughput(
                server.grpc_address, str(model), in_name, out_name, one, int(mcfg.concurrency),
                float(mcfg.duration_s), warmup, float(cfg.client.timeout_s), int(mcfg.processes),
            )
            runs[label]["server"] = model_batch_stats(server, str(model))
        report["dynamic_batching"] = runs
        report["dynamic_batching"]["throughput_ratio_batched_vs_unbatched"] = runs["batched"]["throughput_rps"] / runs["unbatched"]["throughput_rps"]
    targets = mcfg.targets
    report["meets"] = {
        "ready": report["ready_seconds"] <= float(targets.ready_seconds),
        "http_batch1_overhead": report["http_batch1"]["overhead_vs_ort_p50_ms"] <= float(targets.batch1_overhead_ms),
        "grpc_batch1_overhead": report["grpc_batch1"]["overhead_vs_ort_p50_ms"] <= float(targets.batch1_overhead_ms),
        "dynamic_batching_ratio": report["dynamic_batching"]["throughput_ratio_batched_vs_unbatched"] >= float(targets.batching_ratio),
    }
    path = Path(mcfg.report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_client(cfg: DictConfig) -> dict[str, Any]:
    """Classify the split through the server; writes ``client.report_path`` and returns the dict."""
    if cfg.client.start_server:
        with TritonServer.from_config(cfg.serve) as server:
            result = classify_split(cfg, server)
    else:
        result = classify_split(cfg, None)
    path = Path(cfg.client.report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _print_measure(report: Mapping[str, Any]) -> None:
    ort_p50 = report["ort_in_process_batch1"]["p50_ms"]
    db = report["dynamic_batching"]
    print(f"ready after start: {report['ready_seconds']:.2f} s (target <= {report['targets']['ready_seconds']} s)")
    print(f"batch-1 p50: ORT in-process {ort_p50:.3f} ms")
    for protocol in PROTOCOLS:
        r = report[f"{protocol}_batch1"]
        print(f"  {protocol:4s} {r['p50_ms']:.3f} ms (+{r['overhead_vs_ort_p50_ms']:.3f} ms; target <= +{report['targets']['batch1_overhead_ms']} ms)")
    for label in ("batched", "unbatched"):
        r = db[label]
        print(f"{label:9s}: {r['throughput_rps']:.0f} req/s, p50 {r['latency']['p50_ms']:.2f} ms, "
              f"mean server batch {r['server']['mean_server_batch']:.2f}")
    print(f"throughput ratio batched/unbatched: {db['throughput_ratio_batched_vs_unbatched']:.2f}x (target >= {report['targets']['batching_ratio']}x)")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="client")
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-client [client.protocol=grpc] [client.start_server=true] [client.measure.enabled=true]``."""
    if cfg.client.measure.enabled:
        _print_measure(measure(cfg))
        return
    result = run_client(cfg)
    lat = result["latency_per_batch"]
    print(
        f"{result['protocol']}: served acc {result['served_acc']:.4f}, offline ORT acc {result['offline_ort_acc']:.4f} "
        f"({'equal' if result['accuracy_matches_offline'] else 'DIFFERENT'}); batch {result['batch_size']} "
        f"latency p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms; report {cfg.client.report_path}"
    )
    if not result["accuracy_matches_offline"]:
        raise SystemExit("served accuracy differs from offline ONNX Runtime accuracy")


if __name__ == "__main__":
    main()
