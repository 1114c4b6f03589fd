"""mlpipe-serve-targets: the serving targets, measured on one fresh tritonserver.

Start -> ready time; batch-1 p50 over loopback (HTTP and gRPC) next to in-process ONNX Runtime;
throughput with N requests in flight (:func:`mlpipe.measure.served.served_point`, the load
generator's async gRPC mode, like perf_analyzer's concurrency mode) of the config mlpipe-tune
chose and of both untuned ones (batcher on / off), all served from the tuned repository, in
interleaved rounds; the mean server batch of each is Triton's count over its window alone.
Targets: the chosen config lies on the tuner's measured Pareto front, and here its throughput is
at least that of both untuned configs (the median of the per-round ratios). Latency is
client-observed, serialization included. Writes ``targets.report_path``.
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
from mlpipe.common.config import one_of, plain, positive_int
from mlpipe.common.errors import ArtifactMissingError, ServerError
from mlpipe.common.stats import latency_summary, time_calls
from mlpipe.data import SPLITS, load_split
from mlpipe.export.reference import ort_session
from mlpipe.measure.loadgen import LoadSettings, Workers
from mlpipe.measure.pareto import at, on_front, pareto_front
from mlpipe.measure.rounds import Stability, interleaved
from mlpipe.measure.served import Requests, served_point
from mlpipe.serving.client import PROTOCOLS, TritonCaller, TritonClient
from mlpipe.serving.server import TritonServer
from mlpipe.serving.supervisor import gateway_for


def validate_targets_cfg(tcfg: DictConfig) -> LoadSettings:
    """Reject bad measurement values before the server starts; each error names its key."""
    for key in ("latency_requests", "concurrency", "requests_per_slot", "rounds"):
        positive_int(tcfg[key], f"targets.{key}")
    positive_int(tcfg.latency_warmup, "targets.latency_warmup", minimum=0)
    one_of(tcfg.split, SPLITS, "targets.split")
    return LoadSettings.from_config(tcfg.load, "targets.load")


def ort_batch1(cfg: DictConfig, one: np.ndarray) -> dict[str, float]:
    """In-process ONNX Runtime batch-1 latency: the floor every served figure is compared with."""
    session = ort_session(cfg.export.onnx_path, list(cfg.export.parity.providers))
    feed = {session.get_inputs()[0].name: one}
    tcfg = cfg.targets
    return latency_summary(
        time_calls(
            lambda: session.run(None, feed), int(tcfg.latency_warmup), int(tcfg.latency_requests)
        )
    )


def batch1(tcfg: DictConfig, protocol: str, address: str, one: np.ndarray) -> dict[str, float]:
    """Batch-1 latency of `targets.latency_model` over one protocol, one request at a time."""
    model, timeout_s = str(tcfg.latency_model), float(tcfg.load.timeout_s)
    with TritonClient(protocol, address, model, timeout_s) as client:
        return latency_summary(
            time_calls(
                lambda: client.infer(one), int(tcfg.latency_warmup), int(tcfg.latency_requests)
            )
        )


def throughput_row(point: Mapping[str, Any], settings: LoadSettings) -> dict[str, Any]:
    """A served point as a targets row; a point with failed requests is a failed measurement."""
    if point["status"] != "ok":
        raise ServerError(
            f"{point['errors']} requests to {point['model']!r} failed during the load run; "
            f"first: {point['reason']}"
        )
    keys = ("protocol", "model", "concurrency", "batch_size", "wall_s", "requests")
    return {
        **{key: point[key] for key in keys},
        "processes": min(settings.processes, point["concurrency"]),
        "throughput_rps": point["throughput_rps"],
        "latency": point["latency"],
        "server": point["server"],  # Triton's counters over this window alone
    }


def interleaved_throughput(
    cfg: DictConfig, server: TritonServer, one: np.ndarray, settings: LoadSettings
) -> dict[str, dict[str, Any]]:
    """`targets.rounds` windows per model with `targets.concurrency` async gRPC requests in
    flight, interleaved (:func:`mlpipe.measure.rounds.interleaved`) on one set of workers. Each
    model's row is its median-throughput window, with every round's figure beside it
    (``rounds_rps``)."""
    tcfg = cfg.targets
    models = {str(label): str(model) for label, model in tcfg.batching_models.items()}
    requests = Requests(one, int(tcfg.requests_per_slot), int(tcfg.latency_warmup))
    once = Stability(rel_tol=1.0, min_rounds=1, max_rounds=1)  # the rounds are the repeats
    first = TritonCaller(
        "grpc", server.grpc_address, next(iter(models.values())), one, settings.timeout_s
    )
    with Workers(first, int(tcfg.concurrency), settings) as workers:
        runs = interleaved(
            list(models),
            int(tcfg.rounds),
            lambda label: throughput_row(
                served_point(server, models[label], workers, once, requests), settings
            ),
        )
    rows = {}
    for label, windows in runs.items():
        ranked = sorted(windows, key=lambda run: run["throughput_rps"])
        rows[label] = {
            **ranked[len(ranked) // 2],
            "rounds_rps": [run["throughput_rps"] for run in windows],
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
    results = json.loads(Path(tcfg.tuning_results).read_text())
    chosen = results["chosen"]
    front = pareto_front(at(results["rows"], int(chosen["concurrency"])))
    # The tuner may keep a hand-written config: then "tuned" and that model are one config, and
    # their measured ratio is the machine's noise, not a verdict.
    same = [k for k, m in tcfg.batching_models.items() if k != "tuned" and m == chosen["untuned"]]
    rounds = {label: round_ratios(runs, "tuned", label) for label in ("batched", "unbatched")}
    return {
        "chosen": chosen["config"],
        "same_config_as": same[0] if same else None,
        "chosen_at_concurrency": chosen["concurrency"],
        "front": front,
        # within the tuner's measured ε: a hand-written config it kept is on the front
        "on_front": on_front(
            at(results["rows"], int(chosen["concurrency"])),
            chosen["config"],
            (results.get("decision") or {}).get("epsilon") or 0.0,
        ),
        "concurrency": int(tcfg.concurrency),
        "rounds": len(runs["tuned"]["rounds_rps"]),
        "throughput_ratio_tuned_vs": {
            label: paired_ratio(runs, "tuned", label) for label in ("batched", "unbatched")
        },
        # the spread says whether a miss is beyond the machine's noise or within it
        "throughput_ratio_tuned_vs_rounds": rounds,
        # tuned >= untuned within the measured spread: half the range of the per-round ratios
        "throughput_ratio_spread": {
            label: (max(r) - min(r)) / 2 if r else 0.0 for label, r in rounds.items()
        },
    }


def gateway_batch1(cfg: DictConfig, server: TritonServer, one: np.ndarray) -> dict[str, Any]:
    """Batch-1 p50 through the nginx gateway next to the same server direct: what it adds."""
    gateway = gateway_for(plain(cfg.gateway), server)
    if gateway is None:
        return {"enabled": False}
    report: dict[str, Any] = {"enabled": True}
    gateway.start()  # returns once nginx proxies /v2/health/live
    try:
        for protocol in PROTOCOLS:
            address = gateway.http_address if protocol == "http" else gateway.grpc_address
            report[protocol] = batch1(cfg.targets, protocol, address, one)
    finally:
        gateway.stop()
    return report


def meets(report: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, bool]:
    """Each target met or not."""
    overhead = float(targets["batch1_overhead_ms"])
    tuning = report["tuning"]
    spread = tuning.get("throughput_ratio_spread", {})  # absent: a report from before the rule
    return {
        "ready": report["ready_seconds"] <= float(targets["ready_seconds"]),
        "http_batch1_overhead": report["http_batch1"]["overhead_vs_ort_p50_ms"] <= overhead,
        "grpc_batch1_overhead": report["grpc_batch1"]["overhead_vs_ort_p50_ms"] <= overhead,
        "tuned_on_front": bool(tuning["on_front"]),
        "tuned_beats_untuned": all(
            ratio + spread.get(label, 0.0) >= float(targets["tuned_vs_untuned_throughput"])
            or label == tuning["same_config_as"]  # a config is as fast as itself
            for label, ratio in tuning["throughput_ratio_tuned_vs"].items()
        ),
    }


def measure_targets(cfg: DictConfig) -> dict[str, Any]:
    """The serving targets on one fresh server; writes ``targets.report_path``."""
    tcfg = cfg.targets
    settings = validate_targets_cfg(tcfg)
    images, _ = load_split(cfg.data, str(tcfg.split))
    one = np.ascontiguousarray(images[:1])  # (1, 1, 8, 8)
    report: dict[str, Any] = {"targets": OmegaConf.to_container(tcfg.goals)}
    report["ort_in_process_batch1"] = ort_batch1(cfg, one)
    with TritonServer.from_config(tuned_serve_config(cfg)) as server:
        report["ready_seconds"] = server.ready_seconds
        for protocol in PROTOCOLS:
            address = server.http_address if protocol == "http" else server.grpc_address
            report[f"{protocol}_batch1"] = served = batch1(tcfg, protocol, address, one)
            served["overhead_vs_ort_p50_ms"] = (
                served["p50_ms"] - report["ort_in_process_batch1"]["p50_ms"]
            )
        if tcfg.gateway_batch1:  # optional block: what the gateway adds to batch-1 p50
            report["gateway_batch1"] = via = gateway_batch1(cfg, server, one)
            for protocol in PROTOCOLS if via["enabled"] else ():
                via[protocol]["overhead_vs_direct_p50_ms"] = (
                    via[protocol]["p50_ms"] - report[f"{protocol}_batch1"]["p50_ms"]
                )
        runs: dict[str, Any] = interleaved_throughput(cfg, server, one, settings)
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
        f"target >= {goals['tuned_vs_untuned_throughput']}x each within the measured spread, "
        "half the range of the rounds)",
    ]
    return lines


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve_targets")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-serve-targets [targets.concurrency=16] ...``."""
    print("\n".join(summary_lines(measure_targets(cfg))))


if __name__ == "__main__":
    main()
