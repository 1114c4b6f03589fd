"""Peaks measured at run time: the compute and memory roofs a runtime device preset
(`conf/profile/device/cpu_measured.yaml`, `cuda_measured.yaml`) stands for.

On a shared machine a peak can only come out too low, and a peak below what a workload of the
same run achieved makes MFU exceed 100 %. So the compute peak is the best of several kernels
(square matmuls of several sizes, 3x3 convolutions) at several thread counts, in interleaved
rounds; the memory roofs are a large copy (DRAM) and one roof per cache level, measured with a
working set that fits the level (sizes from sysfs).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mlpipe.common.config import positive_int, positive_ints, require
from mlpipe.common.errors import ConfigError
from mlpipe.common.stats import time_calls
from mlpipe.measure.roofline import CacheRoof, DevicePeaks, check_dtype
from mlpipe.measure.rounds import interleaved

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 1 << 25  # bytes one timed sample of a small working set moves (32 MiB)
_MAX_INNER = 10_000  # at most this many calls in one sample


@dataclass(frozen=True)
class PeakSettings:
    """How a runtime preset measures its device (the preset's `measure:` node)."""

    device: str  # "cpu" or "cuda"
    matmul_sizes: tuple[int, ...]  # square matmuls; the peak FLOP/s is the best of them ...
    conv_probes: tuple[tuple[int, int, int], ...]  # ... and of 3x3 convs (batch, channels, size)
    threads: tuple[int, ...]  # torch thread counts to measure at (0: as set now)
    copy_bytes: int  # the DRAM roof: a copy far beyond the last cache level
    cache_fills: tuple[float, ...]  # cache roofs: working sets at these shares of each level
    repeats: int  # samples per measurement and round
    rounds: int  # interleaved rounds over every (size, threads) measurement

    @classmethod
    def from_config(cls, node: Mapping[str, Any], key: str) -> PeakSettings:
        fills = tuple(float(f) for f in node.get("cache_fills") or ())
        probes = node.get("conv_probes") or ()
        require(
            all(len(c) == 3 for c in probes),
            f"{key}.conv_probes",
            f"must be [batch, channels, size] triples, e.g. [[8, 256, 8]], got {probes!r}",
        )
        require(all(0 < f <= 1 for f in fills), f"{key}.cache_fills", "must be shares in (0, 1]")
        require(str(node["device"]) in ("cpu", "cuda"), f"{key}.device", "must be cpu or cuda")
        return cls(
            device=str(node["device"]),
            matmul_sizes=tuple(positive_ints(node["matmul_sizes"], f"{key}.matmul_sizes")),
            conv_probes=tuple(tuple(positive_ints(c, f"{key}.conv_probes")) for c in probes),
            threads=tuple(int(t) for t in node.get("threads") or (0,)),
            copy_bytes=positive_int(node["copy_bytes"], f"{key}.copy_bytes"),
            cache_fills=fills if node["device"] == "cpu" else (),
            repeats=positive_int(node["repeats"], f"{key}.repeats"),
            rounds=positive_int(node.get("rounds", 1), f"{key}.rounds"),
        )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch threads (0: leave as set), then restore."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_matmul_flops(dtype: str, size: int, repeats: int, device: str = "cpu") -> float:
    """Best-of-`repeats` FLOP/s of a (size x size) @ (size x size) matmul on `device`."""
    storage = check_dtype(dtype)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    a = torch.randn(size, size, device=device).to(storage)
    b = torch.randn(size, size, device=device).to(storage)
    torch.matmul(a, b)  # warm-up: first call allocates and picks kernels
    return 2.0 * size**3 / _best_seconds(lambda: torch.matmul(a, b), repeats, device)


def measure_conv_flops(
    dtype: str, probe: Sequence[int], repeats: int, device: str = "cpu"
) -> float:
    """Best-of-`repeats` FLOP/s of a 3x3 same-padding convolution, channels -> channels, on
    `probe` = (batch, channels, size) images: a library's direct convolution can beat its matmul
    (oneDNN here: 123 against 105 GFLOP/s on one core), so a peak from matmuls alone would sit
    below what a conv layer achieves."""
    batch, channels, size = (int(x) for x in probe)
    storage = check_dtype(dtype)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    conv = conv.to(device=device, dtype=storage).eval()
    x = torch.randn(batch, channels, size, size, device=device).to(storage)
    flops = 2.0 * batch * channels * channels * 9 * size * size
    with torch.inference_mode():
        conv(x)  # warm-up: first call picks the kernel
        return flops / _best_seconds(lambda: conv(x), repeats, device)


def measure_copy_bandwidth(nbytes: int, repeats: int, device: str = "cpu") -> float:
    """Best-of-`repeats` byte/s of a device copy: reads + writes, so 2 * nbytes per copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2.0 * nbytes / _best_seconds(lambda: dst.copy_(src), repeats, device)


def measure_memory_bandwidth(working_set: int, repeats: int, device: str = "cpu") -> float:
    """The best byte/s a working set of `working_set` bytes streams at: a copy (half read, half
    written) or a sum (all read; what a matrix-vector product does with its weights). A small
    working set is looped in one sample until ~`_SAMPLE_BYTES` have moved, so the clock
    resolves it; its per-call overhead stays in the figure, as in a small layer's."""
    half = max(1, working_set // 2)
    src = torch.ones(half, dtype=torch.uint8, device=device)
    dst, floats = torch.empty_like(src), torch.ones(max(1, working_set // 4), device=device)
    inner = max(1, min(_MAX_INNER, _SAMPLE_BYTES // working_set))
    best = 0.0
    for call, moved in ((lambda: dst.copy_(src), 2 * half), (lambda: floats.sum(), working_set)):
        call()  # warm-up: the working set into the level it fits
        seconds = min(time_calls(call, 1, repeats, inner))
        best = max(best, moved / seconds)
    return best


def cache_levels(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> list[tuple[str, int]]:
    """(name, bytes) of every data or unified cache level of cpu0, smallest first; [] where
    sysfs does not list them (then only the DRAM roof is drawn)."""
    levels = []
    for index in sorted(sysfs.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or not size:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1].upper(), 1)
        levels.append(
            (f"L{level}{'d' if kind == 'Data' else ''}", int(size.rstrip("KMGkmg")) * scale)
        )
    return sorted(levels, key=lambda lv: lv[1])


def measure_cache_roofs(settings: PeakSettings, dram: float) -> tuple[CacheRoof, ...]:
    """One roof per cache level: the best bandwidth at working sets of `cache_fills` of its size
    (every thread count). A level never reads slower than the ones behind it, so a level's roof
    is at least every larger level's (and DRAM's) figure: a per-call overhead that makes a tiny
    copy slow must not draw an L1 roof under the DRAM one."""
    roofs: list[CacheRoof] = []
    smaller = 0  # the level before: its working sets are that level's, not this one's
    for name, size in cache_levels():
        # A level's bandwidth falls as its working set grows, so its roof is taken at the small
        # end of its range too: just past what the level before holds on every core together (a
        # 4-8 MiB layer outran an L3 roof measured at 8 and 16 MiB by 9 % on a 2-core EPYC with
        # 1 MiB L2 per core and 32 MiB L3).
        sets = {int(size * fill) for fill in settings.cache_fills}
        past = 2 * smaller * (os.cpu_count() or 1)
        sets |= {past} if smaller and past < size else set()
        best = 0.0
        for threads in settings.threads:
            with torch_threads(threads):
                for ws in sorted(sets):
                    best = max(best, measure_memory_bandwidth(ws, settings.repeats))
        roofs.append(CacheRoof(name, size, best))
        smaller = size
    floor = dram
    for i in reversed(range(len(roofs))):
        floor = max(floor, roofs[i].bandwidth)
        roofs[i] = CacheRoof(roofs[i].level, roofs[i].max_bytes, floor)
    return tuple(roofs)


def measure_runtime_peaks(name: str, dtype: str, settings: PeakSettings) -> DevicePeaks:
    """The device's peaks, measured now: every matmul size at every thread count and the large
    copy, in `rounds` interleaved rounds (a busy moment hits one sample of each, not all of
    one), the best of all; then one roof per cache level. On a shared machine a peak is only
    ever measured too low, so the best of many short measurements is the closest bound."""
    check_dtype(dtype)
    sizes, threads = settings.matmul_sizes, settings.threads
    kernels = [f"mm{n}" for n in sizes] + [f"conv{i}" for i in range(len(settings.conv_probes))]
    labels = [f"{k}@{t}" for k in kernels for t in threads] + ["copy"]

    def measure(label: str) -> float:
        if label == "copy":
            return measure_copy_bandwidth(settings.copy_bytes, settings.repeats, settings.device)
        kernel, t = label.split("@")
        with torch_threads(int(t)):
            if kernel.startswith("conv"):
                probe = settings.conv_probes[int(kernel[4:])]
                return measure_conv_flops(dtype, probe, settings.repeats, settings.device)
            return measure_matmul_flops(dtype, int(kernel[2:]), settings.repeats, settings.device)

    runs = interleaved(labels, settings.rounds, measure)
    bandwidth = max(runs.pop("copy"))
    flops = max(v for vs in runs.values() for v in vs)
    roofs = measure_cache_roofs(settings, bandwidth) if settings.cache_fills else ()
    source = (
        f"measured now on this machine ({settings.device}): best of {settings.rounds} "
        f"interleaved rounds of {settings.repeats} matmuls of each size {list(sizes)}"
        + (
            f" and 3x3 convs {[list(c) for c in settings.conv_probes]}"
            if settings.conv_probes
            else ""
        )
        + f" at {_thread_names(threads)} in {dtype}, {settings.copy_bytes} B copy"
        + (f"; cache roofs at {list(settings.cache_fills)} of each level" if roofs else "")
    )
    log.info(
        "%s %s: %.3g FLOP/s, %.3g B/s, %d cache roofs", name, dtype, flops, bandwidth, len(roofs)
    )
    return DevicePeaks(name, dtype, flops, bandwidth, source, "runtime", roofs)


def observed_vs_peak(achieved: Sequence[float], peaks: DevicePeaks) -> dict[str, Any]:
    """The best FLOP/s any workload of the run achieved beside the measured peak: a peak below
    it was measured too low (the report's consistency section names every such figure)."""
    best = max(achieved, default=0.0)
    if best > peaks.peak_flops:
        log.warning(
            "a workload achieved %.3g FLOP/s, above the measured peak %.3g: the peak was "
            "measured too low (busy machine while measuring?)",
            best,
            peaks.peak_flops,
        )
    return {"best_flops": best, "peak_flops": peaks.peak_flops, "bounded": best <= peaks.peak_flops}


def _thread_names(threads: Sequence[int]) -> str:
    current = torch.get_num_threads()  # what 0 means: the thread count as set now
    return " and ".join(f"{t or current} thread(s)" for t in threads)


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
        settings = PeakSettings.from_config(device_cfg["measure"], f"{name}.measure")
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device preset {name!r} measures a CUDA GPU, and torch sees none here; "
                "use cpu_measured or a datasheet preset (h100_sxm, a100, t4, rtx3090)"
            )
        return measure_runtime_peaks(name, dtype, settings)
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


def knee_peaks(
    device_dir: str | Path, preset: str, dtype: str, node: Mapping[str, Any]
) -> tuple[DevicePeaks, str]:
    """Peaks of a runtime preset's device, measured now at the thread count the layers run
    with, and that device ("cpu"/"cuda"): the layers are timed there too. The FLOP/s peak is the
    best of `peak_repeats` matmuls at each of `peak_matmul_sizes` in the preset's interleaved
    rounds (short ones too: on a shared machine a long call is rarely left alone, which would
    depress the peak and inflate every share of it); the copy and cache roofs are the preset's."""
    path = Path(device_dir) / f"{preset}.yaml"
    cfg = OmegaConf.load(path) if path.is_file() else OmegaConf.create({})
    require(
        cfg.get("use") == "runtime",
        "profile.knee.device",
        f"{preset!r} is not a preset measured at run time (use: runtime) in {device_dir}: a "
        "knee is measured against the peaks of the device it runs on; choose cpu_measured or "
        "cuda_measured",
    )
    settings = replace(
        PeakSettings.from_config(cfg.measure, f"{preset}.measure"),
        matmul_sizes=tuple(
            positive_ints(node["peak_matmul_sizes"], "profile.knee.peak_matmul_sizes")
        ),
        repeats=positive_int(node["peak_repeats"], "profile.knee.peak_repeats"),
        threads=(0,),  # as profile.knee.torch_threads set them: the layers' own
    )
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"profile.knee.device={preset!r} measures a CUDA GPU and torch sees none here; "
            "use profile/knee=cpu"
        )
    return measure_runtime_peaks(preset, dtype, settings), settings.device
