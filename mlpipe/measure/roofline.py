"""Roofline math: device peaks, arithmetic intensity, regime and the batch where it flips.

Kept apart from `mlpipe.measure.profile` so the bench (MFU-style estimates) and the tests can use
the formulas without fvcore. The counting convention is :data:`FLOP_CONVENTION`, written into every
profile JSON; the report and docs/measure.md quote it from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mlpipe.common.errors import ConfigError
from mlpipe.measure.consistency import roof_for
from mlpipe.measure.tables import PlotStyle, new_figure, save_plot

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
class CacheRoof:
    """The memory roof of one cache level: bandwidth measured with a working set that fits it."""

    level: str  # "L1d", "L2", "L3" (sysfs names)
    max_bytes: int  # working sets up to this size are served from this level
    bandwidth: float  # byte/s


@dataclass(frozen=True)
class DevicePeaks:
    """Peak compute and memory bandwidth of one device for one dtype; `peak_bandwidth` is the
    large-copy (DRAM) figure, `roofs` the higher ones of the cache levels (smallest first)."""

    name: str
    dtype: str
    peak_flops: float  # FLOP/s
    peak_bandwidth: float  # byte/s
    source: str  # where the figures come from (datasheet URL, measurement)
    kind: str  # "measured" (stored), "datasheet" or "runtime" (measured by this run)
    roofs: tuple[CacheRoof, ...] = ()

    @property
    def ridge(self) -> float:
        """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.peak_flops / self.peak_bandwidth

    def bandwidth_for(self, nbytes: float) -> float:
        """The memory roof (byte/s) of the level a working set of `nbytes` fits."""
        return roof_for(self.as_dict(), nbytes)[0]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; `roofs` only when measured, so a stored preset's profile (a root DVC
        output) keeps its bytes."""
        d = {k: v for k, v in asdict(self).items() if k != "roofs"}
        if self.roofs:
            d["roofs"] = [asdict(r) for r in self.roofs]
        return {**d, "ridge": self.ridge}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DevicePeaks:
        """Back from :meth:`as_dict` (a results JSON's `device` / `peaks` entry)."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "roofs"}
        return cls(**fields, roofs=tuple(CacheRoof(**r) for r in d.get("roofs") or ()))


def check_dtype(dtype: str) -> torch.dtype:
    """Storage dtype for a dtype name, or a clear error listing the valid names."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; valid choices: {sorted(DTYPES)}")
    return DTYPES[dtype]


def available_presets(device_dir: str | Path) -> list[str]:
    """Names of the device presets (`conf/profile/device/*.yaml`)."""
    return sorted(p.stem for p in Path(device_dir).glob("*.yaml"))


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
    beyond = f" (working set > {_size(peaks.roofs[-1].max_bytes)})" if peaks.roofs else ""
    ax.plot(
        grid,
        [min(peaks.peak_flops, x * peaks.peak_bandwidth) for x in grid],
        "k-",
        lw=2,
        label=f"roof: {peaks.peak_flops / 1e12:.3g} TFLOP/s, {peaks.peak_bandwidth / 1e9:.4g} GB/s"
        + (f" DRAM{beyond}" if peaks.roofs else ""),
    )
    _cache_roofs(ax, grid, peaks)
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


def _size(nbytes: float) -> str:
    """Bytes in KiB/MiB/GiB, as sysfs names cache sizes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def _cache_roofs(ax: Any, grid: Sequence[float], peaks: DevicePeaks) -> None:
    """One dashed memory roof per cache level (levels with one figure share a line), labelled
    with the working sets it bounds."""
    lower, groups = 0, []
    for roof in peaks.roofs:
        if groups and groups[-1][0].bandwidth == roof.bandwidth:
            groups[-1].append(roof)
        else:
            groups.append([roof])
    for group in groups:
        names = group[0].level + (f"–{group[-1].level}" if len(group) > 1 else "")
        bandwidth, upper = group[0].bandwidth, group[-1].max_bytes
        ax.plot(
            grid,
            [min(peaks.peak_flops, x * bandwidth) for x in grid],
            ls="--",
            lw=1,
            label=f"{names} roof {bandwidth / 1e9:.4g} GB/s (working set "
            f"{_size(lower)}–{_size(upper)})",
        )
        lower = upper


def _analytic_points(ax: Any, pts: Sequence[Mapping[str, Any]], peaks: DevicePeaks) -> None:
    """Identical layers sit on one point: one marker, one label listing them. A layer's
    attainable rate is under the roof of the memory level its bytes fit (DRAM without roofs)."""
    groups: dict[tuple[float, str, str, float], list[str]] = {}
    for r in pts:
        key = (round(r["intensity"], 9), r["type"], r["bound"], peaks.bandwidth_for(r["bytes"]))
        groups.setdefault(key, []).append(r["name"])
    for (x, typ, regime, bandwidth), names in groups.items():
        attainable = min(peaks.peak_flops, x * bandwidth)
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
