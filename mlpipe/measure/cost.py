"""The bench's analytic side, like nanoGPT's `estimate_mfu`: a forward pass's FLOPs and bytes
(from `mlpipe.measure.profile`) against the device's peaks, so measured time reads as MFU and as a
multiple of the roofline time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from mlpipe.common.errors import ConfigError
from mlpipe.measure.backends import BenchContext, Unavailable
from mlpipe.measure.roofline import DevicePeaks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCost:
    """Analytic FLOPs and bytes of one forward pass: flops(B) = f*B, bytes(B) = w + c*B."""

    flops_per_sample: float
    weight_bytes: float
    activation_bytes_per_sample: float

    def flops(self, batch: int) -> float:
        return self.flops_per_sample * batch

    def nbytes(self, batch: int) -> float:
        return self.weight_bytes + self.activation_bytes_per_sample * batch


def model_cost(ctx: BenchContext) -> ModelCost | None:
    """From mlpipe.measure.profile on the trained net at batch 1, fp32 (what every backend here
    runs)."""
    from mlpipe.measure.profile import profile_network

    try:
        net = ctx.network()
    except Unavailable as err:
        log.warning("no analytic FLOPs/bytes: %s", err)
        return None
    res = profile_network(net, ctx.sample_shape, 1, "fp32", [])
    return ModelCost(
        res["totals"]["flops"],
        float(sum(r["weight_bytes"] for r in res["layers"])),
        float(sum(r["activation_bytes"] for r in res["layers"])),
    )


def device_peaks_for(cfg: DictConfig, device: str) -> DevicePeaks | None:
    from mlpipe.measure.profile import resolve_devices

    try:
        (peaks,) = resolve_devices([cfg.bench.peaks[device]], cfg.bench.device_dir, "fp32")
    except ConfigError as err:
        log.warning("no %s peaks for the MFU estimate: %s", device, err)
        return None
    return peaks


def best_of(a: DevicePeaks, b: DevicePeaks | None) -> DevicePeaks:
    """Best-of both measurements, figure by figure."""
    if b is None:
        return a
    roofs = {r.level: r for r in a.roofs}
    for r in b.roofs:  # level by level
        if r.level not in roofs or r.bandwidth > roofs[r.level].bandwidth:
            roofs[r.level] = r
    return DevicePeaks(
        a.name,
        a.dtype,
        max(a.peak_flops, b.peak_flops),
        max(a.peak_bandwidth, b.peak_bandwidth),
        a.source + "; best of a measurement before and after the load",
        a.kind,
        tuple(sorted(roofs.values(), key=lambda r: r.max_bytes)),
    )


def analytic_columns(
    cost: ModelCost | None,
    peaks: DevicePeaks | None,
    batch: int,
    p50_s: float,
    samples_per_s: float,
) -> dict[str, Any]:
    """Achieved FLOP/s and bandwidth vs the device peak and the memory roof of the level one
    call's bytes fit; p50 vs the roofline time of one call."""
    if cost is None or peaks is None:
        return {}
    flops, nbytes = cost.flops(batch), cost.nbytes(batch)
    bandwidth = peaks.bandwidth_for(nbytes)  # weights that fit a cache level stream from it
    roofline_s = max(flops / peaks.peak_flops, nbytes / bandwidth)
    achieved = samples_per_s * cost.flops_per_sample
    return {
        "flops_per_call": flops,
        "bytes_per_call": nbytes,
        "achieved_gflops": achieved / 1e9,
        "mfu": achieved / peaks.peak_flops,
        "bandwidth_util": (samples_per_s / batch) * nbytes / bandwidth,
        "roofline_ms": roofline_s * 1e3,
        "p50_over_roofline": p50_s / roofline_s if roofline_s > 0 else None,
        "peaks": peaks.name,
    }
