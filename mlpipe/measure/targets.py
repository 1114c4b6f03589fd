"""mlpipe-serve-targets: the serving targets, measured on one fresh tritonserver.

Start -> ready time; batch-1 p50 over loopback (HTTP and gRPC) next to in-process ONNX Runtime;
throughput with N requests in flight (the load generator's async gRPC mode, like perf_analyzer's
concurrency mode) of the config mlpipe-tune chose and of both untuned ones (batcher on / off),
all served from the tuned repository, in interleaved rounds. Targets: the chosen config lies on
the tuner's measured Pareto front, and here its throughput is at least that of both untuned
configs (the median of the per-round ratios). Latency is client-observed, serialization
included. Writes ``targets.report_path``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import plain, positive_int
from mlpipe.common.errors import ArtifactMissingError
from mlpipe.common.stats import latency_summary, time_calls
from mlpipe.measure.loadgen import LoadSettings, run_window
from mlpipe.serving.client import PROTOCOLS, TritonCaller, TritonClient
from mlpipe.serving.server import TritonServer


def validate_targets_cfg(tcfg: DictConfig) -> None:
    """Reject bad measurement values before the server starts; each error names its key."""
    for key in ("latency_requests", "concurrency", "requests_per_slot", "rounds"):
        positive_int(tcfg[key], f"targets.{key}")
    positive_int(tcfg.latency_warmup, "targets.latency_warmup", minimum=0)
    positive_int(tcfg.load.processes, "targets.load.processes")


def load_settings(tcfg: DictConfig) -> LoadSettings:
    load = tcfg.load
    return LoadSettings(
        str(load.mode), float(load.timeout_s), float(load.join_timeout_s), int(load.processes)
    )


def ort_batch1(cfg: DictConfig, one: np.ndarray) -> dict[str, float]:
    """In-process ONNX Runtime batch-1 latency: the floor every served figure is compared with."""
    from mlpipe.export.run import ort_session

    session = ort_session(Path(cfg.export.onnx_path), list(cfg.export.parity.providers))
    feed = {session.get_inputs()[0].name: one}
    tcfg = cfg.targets
    return latency_summary(
        time_calls(
            lambda: session.run(None, feed), int(tcfg.latency_warmup), int(tcfg.latency_requests)
        )
    )


def served_batch1(
    cfg: DictConfig, server: TritonServer, protocol: str, one: np.ndarray
) -> dict[str, float]:
    """Batch-1 latency of `targets.latency_model` over one protocol."""
    tcfg = cfg.targets
    address = server.http_address if protocol == "http" else server.grpc_address
    with TritonClient(protocol, address, str(tcfg.latency_model), float(tcfg.load.timeout_s)) as c:
        return latency_summary(
            time_calls(lambda: c.infer(one), int(tcfg.latency_warmup), int(tcfg.latency_requests))
        )


def throughput(
    cfg: DictConfig, server: TritonServer, model: str, one: np.ndarray
) -> dict[str, Any]:
    """Requests/s and latency with `targets.concurrency` async gRPC requests in flight."""
    tcfg = cfg.targets
    caller = TritonCaller("grpc", server.grpc_address, model, one, float(tcfg.load.timeout_s))
    window = run_window(
        caller,
        int(tcfg.concurrency),
        int(tcfg.requests_per_slot),
        int(tcfg.latency_warmup),
        load_settings(tcfg),
    )
    if window.errors:
        raise RuntimeError(
            f"{window.errors} requests to {model!r} failed during the load run; "
            f"first: {window.first_error}"
        )
    timeout_s, admin = float(tcfg.load.timeout_s), server.admin_grpc_headers  # restricted API
    with TritonClient("grpc", server.grpc_address, model, timeout_s, admin) as client:
        server_stats = client.batch_stats()
    return {
        "protocol": "grpc",
        "model": model,
        "concurrency": int(tcfg.concurrency),
        "processes": min(int(tcfg.load.processes), int(tcfg.concurrency)),
        "batch_size": int(one.shape[0]),
        "wall_s": window.wall_s,
        "requests": window.requests,
        "throughput_rps": window.throughput_rps,
        "latency": window.latency(),
        "server": server_stats,
    }


def interleaved_throughput(
    cfg: DictConfig, server: TritonServer, one: np.ndarray
) -> dict[str, dict[str, Any]]:
    """`targets.rounds` windows per model, the order rotated each round.

    On a shared machine the load drifts within seconds: measured one after another, the first
    model and the last see different machines. Interleaved, each round compares the models
    under the same conditions; each model's row is its median-throughput window, with every
    round's figure beside it (``rounds_rps``)."""
    tcfg = cfg.targets
    labels = list(tcfg.batching_models)
    windows: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for round_index in range(int(tcfg.rounds)):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            model = str(tcfg.batching_models[label])
            windows[label].append(throughput(cfg, server, model, one))
    rows = {}
    for label, runs in windows.items():
        ranked = sorted(runs, key=lambda run: run["throughput_rps"])
        rows[label] = {
            **ranked[len(ranked) // 2],
            "rounds_rps": [run["throughput_rps"] for run in runs],
        }
    return rows


def round_ratios(runs: Mapping[str, Any], label: str, other: str) -> list[float]:
    """Throughput of `label` over `other`, round by round (each pair saw the same machine)."""
    pairs = zip(runs[label]["rounds_rps"], runs[other]["rounds_rps"], strict=True)
    return [a / b for a, b in pairs]


def paired_ratio(runs: Mapping[str, Any], label: str, other: str) -> float:
    """The median of :func:`round_ratios`."""
    return float(np.median(round_ratios(runs, label, other)))


def tuned_serve_config(cfg: DictConfig) -> dict[str, Any]:
    """The serve config on mlpipe-tune's repository (the export's models + the tuned one)."""
    tcfg = cfg.targets
    tuned = Path(tcfg.tuned_repository)
    model = str(tcfg.batching_models.tuned)
    if not (tuned / model / "config.pbtxt").is_file() or not Path(tcfg.tuning_results).is_file():
        raise ArtifactMissingError(
            f"no tuned config ({tuned / model} or {tcfg.tuning_results} is missing): the "
            "serving targets compare it with the untuned ones; run `mlpipe-tune` (or `make tune`)"
        )
    serve = plain(cfg.serve)
    serve["model_repository"] = str(tuned)
    serve["models"] = {**serve["models"], model: True}
    return serve


def tuning_checks(tcfg: DictConfig, runs: Mapping[str, Any]) -> dict[str, Any]:
    """Is the tuner's choice on its measured front; how does it compare here with the untuned?"""
    from mlpipe.measure.tune import at, pareto_front

    results = json.loads(Path(tcfg.tuning_results).read_text())
    chosen = results["chosen"]
    front = pareto_front(at(results["rows"], int(chosen["concurrency"])))
    # The tuner may keep a hand-written config: then "tuned" and that model are one config, and
    # their measured ratio is the machine's noise, not a verdict.
    same = [k for k, m in tcfg.batching_models.items() if k != "tuned" and m == chosen["untuned"]]
    return {
        "chosen": chosen["config"],
        "same_config_as": same[0] if same else None,
        "chosen_at_concurrency": chosen["concurrency"],
        "front": front,
        "on_front": chosen["config"] in front,
        "concurrency": int(tcfg.concurrency),
        "rounds": len(runs["tuned"]["rounds_rps"]),
        "throughput_ratio_tuned_vs": {
            label: paired_ratio(runs, "tuned", label) for label in ("batched", "unbatched")
        },
        # the spread says whether a miss is beyond the machine's noise or within it
        "throughput_ratio_tuned_vs_rounds": {
            label: round_ratios(runs, "tuned", label) for label in ("batched", "unbatched")
        },
    }


def gateway_batch1(cfg: DictConfig, server: TritonServer, one: np.ndarray) -> dict[str, Any]:
    """Batch-1 p50 through the nginx gateway next to the same server direct: what it adds."""
    from mlpipe.serving.gateway import Upstream
    from mlpipe.serving.gateway import from_config as gateway_from_config

    upstream = Upstream(
        server.host, server.ports["http"], server.ports["grpc"], server.admin.header
    )
    gateway = gateway_from_config(plain(cfg.gateway), server.specs, upstream)
    if gateway is None:
        return {"enabled": False}
    tcfg, report = cfg.targets, {"enabled": True}
    gateway.start()  # returns once nginx proxies /v2/health/live
    try:
        for protocol in PROTOCOLS:
            address = gateway.http_address if protocol == "http" else gateway.grpc_address
            model, timeout_s = str(tcfg.latency_model), float(tcfg.load.timeout_s)
            with TritonClient(protocol, address, model, timeout_s) as client:
                summary = latency_summary(
                    time_calls(
                        lambda c=client: c.infer(one),
                        int(tcfg.latency_warmup),
                        int(tcfg.latency_requests),
                    )
                )
            report[protocol] = summary
    finally:
        gateway.stop()
    return report


def meets(report: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, bool]:
    """Each target met or not."""
    overhead = float(targets["batch1_overhead_ms"])
    tuning = report["tuning"]
    return {
        "ready": report["ready_seconds"] <= float(targets["ready_seconds"]),
        "http_batch1_overhead": report["http_batch1"]["overhead_vs_ort_p50_ms"] <= overhead,
        "grpc_batch1_overhead": report["grpc_batch1"]["overhead_vs_ort_p50_ms"] <= overhead,
        "tuned_on_front": bool(tuning["on_front"]),
        "tuned_beats_untuned": all(
            ratio >= float(targets["tuned_vs_untuned_throughput"])
            or label == tuning["same_config_as"]  # a config is as fast as itself
            for label, ratio in tuning["throughput_ratio_tuned_vs"].items()
        ),
    }


def measure_targets(cfg: DictConfig) -> dict[str, Any]:
    """The serving targets on one fresh server; writes ``targets.report_path``."""
    from mlpipe.data import load_split

    tcfg = cfg.targets
    validate_targets_cfg(tcfg)
    images, _ = load_split(cfg.data, str(tcfg.split))
    one = np.ascontiguousarray(images[:1])  # (1, 1, 8, 8)
    report: dict[str, Any] = {"targets": OmegaConf.to_container(tcfg.goals)}
    report["ort_in_process_batch1"] = ort_batch1(cfg, one)
    with TritonServer.from_config(tuned_serve_config(cfg)) as server:
        report["ready_seconds"] = server.ready_seconds
        for protocol in PROTOCOLS:
            report[f"{protocol}_batch1"] = served = served_batch1(cfg, server, protocol, one)
            served["overhead_vs_ort_p50_ms"] = (
                served["p50_ms"] - report["ort_in_process_batch1"]["p50_ms"]
            )
        if tcfg.gateway_batch1:  # optional block: what the gateway adds to batch-1 p50
            report["gateway_batch1"] = via = gateway_batch1(cfg, server, one)
            for protocol in PROTOCOLS if via["enabled"] else ():
                via[protocol]["overhead_vs_direct_p50_ms"] = (
                    via[protocol]["p50_ms"] - report[f"{protocol}_batch1"]["p50_ms"]
                )
        runs: dict[str, Any] = interleaved_throughput(cfg, server, one)
    runs["throughput_ratio_batched_vs_unbatched"] = paired_ratio(runs, "batched", "unbatched")
    report["dynamic_batching"] = runs
    report["tuning"] = tuning_checks(tcfg, runs)
    report["meets"] = meets(report, tcfg.goals)
    path = Path(tcfg.report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """What the CLI prints: each figure next to its target."""
    goals, db = report["targets"], report["dynamic_batching"]
    lines = [
        f"ready after start: {report['ready_seconds']:.2f} s "
        f"(target <= {goals['ready_seconds']} s)",
        f"batch-1 p50: ORT in-process {report['ort_in_process_batch1']['p50_ms']:.3f} ms",
    ]
    for protocol in PROTOCOLS:
        r = report[f"{protocol}_batch1"]
        lines.append(
            f"  {protocol:4s} {r['p50_ms']:.3f} ms (+{r['overhead_vs_ort_p50_ms']:.3f} ms; "
            f"target <= +{goals['batch1_overhead_ms']} ms)"
        )
    for label in ("tuned", "batched", "unbatched"):
        r = db[label]
        lines.append(
            f"{label:9s}: {r['throughput_rps']:.0f} req/s, p50 {r['latency']['p50_ms']:.2f} "
            f"ms, mean server batch {r['server']['mean_server_batch']:.2f} ({r['model']})"
        )
    via = report.get("gateway_batch1", {})
    for protocol in PROTOCOLS if via.get("enabled") else ():
        r = via[protocol]
        lines.append(
            f"  {protocol:4s} via gateway {r['p50_ms']:.3f} ms "
            f"(+{r['overhead_vs_direct_p50_ms']:.3f} ms over direct)"
        )
    tuning = report["tuning"]
    spread = tuning["throughput_ratio_tuned_vs_rounds"]
    ratios = ", ".join(
        f"{k} {v:.2f}x (rounds {min(spread[k]):.2f}-{max(spread[k]):.2f}x"
        + ("; the same config: noise" if k == tuning["same_config_as"] else "")
        + ")"
        for k, v in tuning["throughput_ratio_tuned_vs"].items()
    )
    lines += [
        f"tuned ({tuning['chosen']}) on the tuner's measured Pareto front: {tuning['on_front']}",
        f"tuned throughput vs untuned at {tuning['concurrency']} clients: {ratios} "
        f"(median of {tuning['rounds']} interleaved rounds; "
        f"target >= {goals['tuned_vs_untuned_throughput']}x each)",
    ]
    return lines


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve_targets")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-serve-targets [targets.concurrency=16] ...``."""
    print("\n".join(summary_lines(measure_targets(cfg))))


if __name__ == "__main__":
    main()
