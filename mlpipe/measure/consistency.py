"""Self-checks over the measured figures: no figure may contradict its bound or another figure.

Every check takes the JSON a stage wrote (the same files `mlpipe-report` prints from) and yields
one :class:`Finding` per figure it bounds, so the report can say how many figures were checked
and name each violation:

- MFU <= 100 % (bench rows; the knee's matmul/conv points against the measured peak FLOP/s);
- measured <= roof: a knee point's achieved FLOP/s at most the roof of the memory level its
  working set fits (`device.roofs`; the large-copy bandwidth where none is recorded), a bench
  call no faster than its roofline time;
- p50 <= p90 <= p99 of every latency summary;
- overhead >= 0: served batch-1 minus in-process ONNX Runtime, gateway minus direct;
- Little's law: a closed loop of N clients, each waiting for its answer, completes at most
  N / latency requests a second: throughput <= concurrency / p50 x (1 + band) (the mean where
  lower than the p50), the band the larger of the configured floor and the spread of the row's
  own p50 windows;
- served accuracy == ONNX Runtime accuracy on the same images.

Timing comparisons between two measurements (Little's law, overheads) allow the noise band; a
figure against a bound it cannot exceed by definition (MFU, roof, percentile order, accuracy)
does not. Pure Python: no torch, so the report starts fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MFU = "MFU ≤ 100 %"
ROOF = "measured ≤ roof"
PERCENTILES = "p50 ≤ p90 ≤ p99"
OVERHEAD = "overhead ≥ 0"
LITTLE = "throughput ≤ concurrency / p50 (Little's law)"
ACCURACY = "served accuracy = ONNX Runtime"
CHECKS = (MFU, ROOF, PERCENTILES, OVERHEAD, LITTLE, ACCURACY)


@dataclass(frozen=True)
class Finding:
    """One figure held to one bound."""

    check: str  # one of CHECKS
    where: str  # which figure: "bench torch_compile batch 64 × 1"
    figure: str  # the measured value, formatted
    bound: str  # the bound it is held to, formatted
    ok: bool

    def line(self) -> str:
        return f"{self.check}: {self.where}: {self.figure}, bound {self.bound}"


def roof_for(device: Mapping[str, Any], nbytes: float) -> tuple[float, str]:
    """The memory roof (byte/s, name) that applies to a working set of `nbytes`: the first
    measured cache level (smallest first) it fits, else the device's large-copy bandwidth."""
    for level in device.get("roofs") or ():
        if nbytes <= level["max_bytes"]:
            return float(level["bandwidth"]), str(level["level"])
    return float(device["peak_bandwidth"]), "DRAM"


def percentiles(where: str, summary: Mapping[str, Any]) -> Iterator[Finding]:
    """p50 <= p90 <= p99 over the percentiles the summary has."""
    keys = [k for k in ("p50_ms", "p90_ms", "p99_ms") if summary.get(k) is not None]
    values = [float(summary[k]) for k in keys]
    if len(values) >= 2:
        yield Finding(
            PERCENTILES,
            where,
            " ≤ ".join(f"{k[:-3]} {v:.3f} ms" for k, v in zip(keys, values, strict=True)),
            "non-decreasing",
            all(a <= b for a, b in zip(values, values[1:], strict=False)),
        )


def band_of(history_ms: Sequence[float] | None, floor: float) -> float:
    """The noise band of a row: its p50 windows' spread (max/min - 1), at least `floor`."""
    spread = max(history_ms) / min(history_ms) - 1 if history_ms and min(history_ms) > 0 else 0
    return max(floor, spread)


def little(where: str, row: Mapping[str, Any], floor: float) -> Iterator[Finding]:
    """Closed-loop throughput (requests/s) at most concurrency / latency within the noise band.
    The latency is the p50, or the mean where lower: Little's law bounds throughput by
    N / mean latency exactly, and a bimodal window (half its requests waiting for a batch) can
    have a mean well below its p50."""
    rps, p50, conc = row.get("throughput_rps"), row.get("p50_ms"), row.get("concurrency")
    if rps is None or not p50 or not conc:
        return
    mean = row.get("mean_ms")
    lat, which = (mean, "mean") if mean and mean < p50 else (p50, "p50")
    band = band_of(row.get("p50_history_ms"), floor)
    limit = float(conc) / (float(lat) / 1e3) * (1 + band)
    yield Finding(
        LITTLE,
        where,
        f"{float(rps):.4g} req/s",
        f"≤ {conc} / {float(lat):.3f} ms ({which}) × (1 + {band:.2f}) = {limit:.4g} req/s",
        float(rps) <= limit,
    )


def bench_findings(bench: Mapping[str, Any], floor: float) -> Iterator[Finding]:
    """Every measured bench row: MFU, roofline time, percentiles, Little's law."""
    for r in bench.get("rows", []):
        if r.get("status") != "ok":
            continue
        where = f"bench {r['backend']} batch {r['batch']} × {r['concurrency']}"
        if r.get("mfu") is not None:
            yield Finding(MFU, where, f"MFU {100 * r['mfu']:.3g} %", "≤ 100 %", r["mfu"] <= 1)
        if r.get("p50_over_roofline") is not None:
            yield Finding(
                ROOF,
                where,
                f"p50 {r['p50_over_roofline']:.3g}× its roofline time",
                "≥ 1× (no call beats the roof)",
                r["p50_over_roofline"] >= 1,
            )
        yield from percentiles(where, r)
        yield from little(where, {**r, "throughput_rps": r.get("throughput_req_s")}, floor)


def knee_findings(knee: Mapping[str, Any]) -> Iterator[Finding]:
    """Every measured knee point: its share of the peak FLOP/s (matmul/conv layers) and its
    achieved FLOP/s against the roof of the level its working set fits."""
    device = knee["device"]
    for layer in knee.get("layers", []):
        for p in layer.get("points", []):
            where = f"knee {knee['model']} {layer['name']} ({layer['type']}) batch {p['batch']}"
            if layer.get("kind") == "compute":
                mfu = p["achieved_flops"] / device["peak_flops"]
                yield Finding(MFU, where, f"{100 * mfu:.3g} % of peak", "≤ 100 %", mfu <= 1)
            if p["flops"] <= 0:
                continue
            bandwidth, level = roof_for(device, p["bytes"])
            roof = min(device["peak_flops"], p["intensity"] * bandwidth)
            yield Finding(
                ROOF,
                where,
                f"{p['achieved_flops'] / 1e9:.4g} GFLOP/s at {p['intensity']:.3g} FLOP/B",
                f"≤ {roof / 1e9:.4g} GFLOP/s ({level} roof, {p['bytes'] / 2**20:.3g} MiB)",
                p["achieved_flops"] <= roof,
            )


def served_findings(measure: Mapping[str, Any], floor: float) -> Iterator[Finding]:
    """The serving targets' latency summaries and overheads."""
    ort = measure.get("ort_in_process_batch1", {})
    yield from percentiles("serve in-process ORT batch 1", ort)
    for proto in ("http", "grpc"):
        r = measure.get(f"{proto}_batch1")
        if not r:
            continue
        where = f"serve {proto} batch 1"
        yield from percentiles(where, r)
        if r.get("overhead_vs_ort_p50_ms") is not None:
            yield overhead(where + " − in-process ORT", r["overhead_vs_ort_p50_ms"], ort, floor)
    gateway = measure.get("gateway_batch1") or {}
    for proto in ("http", "grpc") if gateway.get("enabled") else ():
        r, direct = gateway.get(proto, {}), measure.get(f"{proto}_batch1", {})
        yield from percentiles(f"serve gateway {proto} batch 1", r)
        if r.get("overhead_vs_direct_p50_ms") is not None:
            where = f"serve gateway {proto} batch 1 − direct"
            yield overhead(where, r["overhead_vs_direct_p50_ms"], direct, floor)


def overhead(where: str, ms: float, reference: Mapping[str, Any], floor: float) -> Finding:
    """An overhead may dip below 0 by the noise band of the p50 it is taken over, no more."""
    slack = floor * float(reference.get("p50_ms") or 0)
    return Finding(
        OVERHEAD, where, f"{ms:+.3f} ms", f"≥ −{slack:.3f} ms (noise band)", ms >= -slack
    )


def client_findings(client: Mapping[str, Any]) -> Iterator[Finding]:
    """Served accuracy equals offline ONNX Runtime on the same images, exactly."""
    served, offline = client.get("served_acc"), client.get("offline_ort_acc")
    if served is not None and offline is not None:
        yield Finding(
            ACCURACY,
            f"client {client.get('protocol', '?')} on {client.get('n', '?')} images",
            f"served {served:.4f}",
            f"= ORT {offline:.4f}",
            served == offline,
        )


def tune_findings(tune: Mapping[str, Any], floor: float) -> Iterator[Finding]:
    """The tuner's measured points: percentiles and Little's law."""
    for r in tune.get("rows", []):
        if r.get("status", "ok") != "ok":
            continue
        where = f"tune {r['config']} at {r['concurrency']} clients"
        yield from percentiles(where, r)
        yield from little(where, r, floor)
