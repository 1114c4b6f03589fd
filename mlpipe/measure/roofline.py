"""Roofline math: device peaks, arithmetic intensity, regime and the batch where it flips.

Kept apart from `mlpipe.measure.profile` so the bench (MFU-style estimates) and the tests can use
the formulas without fvcore. The counting convention is :data:`FLOP_CONVENTION`, written into every
profile JSON; the report and docs/measure.md quote it from there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mlpipe.common.errors import ConfigError
from mlpipe.common.stats import time_calls
from mlpipe.measure.tables import PlotStyle, new_figure, save_plot

log = logging.getLogger(__name__)

#: How FLOPs and bytes are counted and when a layer counts as compute-bound. The one statement
#: of it: the profile JSON carries it and the report prints it from there.
FLOP_CONVENTION = (
    "FLOPs = 2 x fvcore's count for multiply-accumulate ops (linear, matmul, conv, einsum, bmm; "
    "fvcore counts one multiply-add as one flop), fvcore's own figure for the other ops it "
    "counts, 1 FLOP per output element for elementwise ops it skips (max-pool: per input "
    "element); bytes = weights (params + float buffers) + input + output activations at the "
    "dtype; a layer is compute-bound when FLOP/B >= ridge = peak FLOP/s / peak bandwidth; flip "
    "batch = smallest batch that is compute-bound (never: the layer's FLOP/B limit stays below "
    "the ridge)."
)

#: dtype name -> storage dtype (what bytes are counted in). The name also picks the peak FLOP/s
#: figure of a device preset: tf32 stores fp32 but runs matmuls on tensor cores with a 10-bit
#: mantissa, so it has its own peak; on a CPU it is plain fp32.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class DevicePeaks:
    """Peak compute and memory bandwidth of one device for one dtype."""

    name: str
    dtype: str
    peak_flops: float  # FLOP/s
    peak_bandwidth: float  # byte/s
    source: str  # where the figures come from (datasheet URL, measurement)
    kind: str  # "measured" (stored), "datasheet" or "runtime" (measured by this run)

    @property
    def ridge(self) -> float:
        """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.peak_flops / self.peak_bandwidth

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ridge": self.ridge}


def check_dtype(dtype: str) -> torch.dtype:
    """Storage dtype for a dtype name, or a clear error listing the valid names."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid choices: {sorted(DTYPES)}")
    return DTYPES[dtype]


def available_presets(device_dir: str | Path) -> list[str]:
    """Names of the device presets (`conf/profile/device/*.yaml`)."""
    return sorted(p.stem for p in Path(device_dir).glob("*.yaml"))


def measure_matmul_flops(dtype: str, size: int, repeats: int, device: str = "cpu") -> float:
    """Best-of-`repeats` FLOP/s of a (size x size) @ (size x size) matmul on `device`."""
    storage = check_dtype(dtype)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    a = torch.randn(size, size, device=device).to(storage)
    b = torch.randn(size, size, device=device).to(storage)
    torch.matmul(a, b)  # warm-up: first call allocates and picks kernels
    return 2.0 * size**3 / _best_seconds(lambda: torch.matmul(a, b), repeats, device)


def measure_copy_bandwidth(nbytes: int, repeats: int, device: str = "cpu") -> float:
    """Best-of-`repeats` byte/s of a device copy: reads + writes, so 2 * nbytes per copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2.0 * nbytes / _best_seconds(lambda: dst.copy_(src), repeats, device)


def _best_seconds(call: Callable[[], Any], repeats: int, device: str) -> float:
    """Best of `repeats` timings of `call` (the one timing primitive), the device synchronized
    before and after each, so a CUDA call is timed to its end."""

    def synced() -> None:
        call()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.synchronize()
    return min(time_calls(synced, 0, repeats))


def device_peaks(device_cfg: Mapping[str, Any], dtype: str) -> DevicePeaks:
    """Peaks for `dtype` from a device preset node (`conf/profile/device/<name>.yaml`).

    `use` picks the figure set: `measured` / `datasheet` (stored in the preset) or `runtime`
    (measured now on this machine with the preset's `measure` settings).
    """
    check_dtype(dtype)
    name = str(device_cfg["name"])
    use = str(device_cfg["use"])
    if use == "runtime":
        m = device_cfg["measure"]
        if m["device"] == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device preset {name!r} measures a CUDA GPU, and torch sees none here; "
                "use cpu_measured or a datasheet preset (h100_sxm, a100, t4, rtx3090)"
            )
        flops = measure_matmul_flops(dtype, int(m["matmul_size"]), int(m["repeats"]), m["device"])
        bw = measure_copy_bandwidth(int(m["copy_bytes"]), int(m["repeats"]), m["device"])
        source = (
            f"measured now on this machine ({m['device']}): best of {m['repeats']} "
            f"{m['matmul_size']}^3 matmuls in {dtype}, {m['copy_bytes']} B copy"
        )
        log.info("%s %s: %.3g FLOP/s, %.3g B/s", name, dtype, flops, bw)
        return DevicePeaks(name, dtype, flops, bw, source, "runtime")
    sets = {k: device_cfg[k] for k in ("measured", "datasheet") if device_cfg.get(k)}
    if use not in sets:
        raise ConfigError(
            f"device preset {name!r}: use={use!r} has no figures; valid choices: "
            f"{sorted(sets) + ['runtime'] if 'measure' in device_cfg else sorted(sets)}"
        )
    figures = sets[use]
    if dtype not in figures["flops"]:
        raise ConfigError(
            f"device preset {name!r} ({use}) has no peak for dtype {dtype!r}; "
            f"valid choices: {sorted(figures['flops'])}"
        )
    return DevicePeaks(
        name,
        dtype,
        float(figures["flops"][dtype]),
        float(figures["bandwidth"]),
        str(figures["source"]),
        use,
    )


def intensity(flops: float, nbytes: float) -> float:
    """FLOP per byte; 0 for a layer that moves bytes and computes nothing."""
    return flops / nbytes if nbytes > 0 else 0.0


def bound(flops: float, nbytes: float, ridge: float) -> str:
    """'compute' when the layer's intensity reaches the ridge point, else 'memory'."""
    return "compute" if intensity(flops, nbytes) >= ridge else "memory"


def flip_batch(
    flops_per_sample: float, weight_bytes: float, act_bytes_per_sample: float, ridge: float
) -> int | None:
    """Smallest batch B >= 1 with intensity(B) >= ridge, or None if no batch gets there.

    With f FLOPs and c activation bytes per sample plus w weight bytes read once per batch,
    intensity(B) = f*B / (w + c*B), rising towards f/c. If f/c <= ridge (elementwise ops:
    ReLU does 1 FLOP per 2*itemsize bytes) the layer never flips; otherwise
    B >= ridge*w / (f - ridge*c).
    """
    f, w, c = flops_per_sample, weight_bytes, act_bytes_per_sample
    if f <= 0 or f - ridge * c <= 0:
        return None
    b = max(1, math.ceil(ridge * w / (f - ridge * c)))

    # ceil of a float quotient can be off by one at exact integers: settle it on the inequality.
    def reached(n: int) -> bool:
        return f * n >= ridge * (w + c * n)

    while b > 1 and reached(b - 1):
        b -= 1
    while not reached(b):
        b += 1
    return b


#: Measured points of one layer: (batch, FLOP/byte at that batch, achieved FLOP/s).
MeasuredSeries = Sequence[tuple[int, float, float]]


def plot_roofline(
    layers: Sequence[Mapping[str, Any]],
    peaks: DevicePeaks,
    path: str | Path,
    title: str,
    style: PlotStyle,
    measured: Mapping[str, MeasuredSeries] | None = None,
) -> Path:
    """Log-log roofline with one point per layer (zero-FLOP layers cannot sit on a log axis),
    plus, per `measured` series, one marker per measured batch joined by a line."""
    pts = [r for r in layers if r["flops"] > 0 and r["bytes"] > 0]
    measured = measured or {}
    fig, ax = new_figure(style)
    xs = [r["intensity"] for r in pts] + [x for s in measured.values() for _, x, _ in s]
    xs = xs or [1.0]
    lo = min(min(xs), peaks.ridge) / 10
    hi = max(max(xs), peaks.ridge) * 10
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(
        grid,
        [min(peaks.peak_flops, x * peaks.peak_bandwidth) for x in grid],
        "k-",
        lw=2,
        label=f"roof: {peaks.peak_flops / 1e12:.3g} TFLOP/s, {peaks.peak_bandwidth / 1e9:.4g} GB/s",
    )
    ax.axvline(peaks.ridge, color="grey", ls=":", label=f"ridge {peaks.ridge:.3g} FLOP/B")
    _analytic_points(ax, pts, peaks)
    for label, series in measured.items():
        _measured_series(ax, label, series)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="arithmetic intensity [FLOP/byte]",
        ylabel="attainable / achieved [FLOP/s]",
    )
    ax.set_title(title, fontsize=9)
    return save_plot(fig, ax, Path(path), style)


def _analytic_points(ax: Any, pts: Sequence[Mapping[str, Any]], peaks: DevicePeaks) -> None:
    """Identical layers sit on one point: one marker, one label listing them."""
    groups: dict[tuple[float, str, str], list[str]] = {}
    for r in pts:
        groups.setdefault((round(r["intensity"], 9), r["type"], r["bound"]), []).append(r["name"])
    for (x, typ, regime), names in groups.items():
        attainable = min(peaks.peak_flops, x * peaks.peak_bandwidth)
        ax.scatter(x, attainable, marker="o" if regime == "compute" else "s", s=40, zorder=3)
        ax.annotate(
            f"{', '.join(names)} ({typ})",
            (x, attainable),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )


def _measured_series(ax: Any, label: str, series: MeasuredSeries) -> None:
    """One marker per measured batch, joined; the first and last batch written beside them."""
    if not series:
        return
    batches, xs, ys = zip(*series, strict=True)
    (line,) = ax.plot(xs, ys, marker=".", ms=6, lw=1, label=f"{label}, measured")
    for i in {0, len(series) - 1}:
        ax.annotate(
            f"B={batches[i]}",
            (xs[i], ys[i]),
            textcoords="offset points",
            xytext=(3, 3),
            fontsize=6,
            color=line.get_color(),
        )
