"""mlpipe-knee: the measured knee of every layer, beside the analytic flip batch.

The profile (`mlpipe.measure.profile`) predicts where a layer turns compute-bound: the smallest
batch whose FLOP/byte reaches the device's ridge. This stage measures it: every matmul/conv
layer runs alone on the profiled device over batch 1, 2, 4, ... up to a cap (largest batch, a
time budget per layer, a memory budget), each batch timed best-of-N over rounds that repeat until
the best settles. Per batch: achieved FLOP/s, achieved bytes/s (the analytic counts over the
measured time) and the fraction of the device's measured peak. Two knees per layer:

- ``knee_peak``: the smallest batch reaching ``peak_fraction`` of the peak FLOP/s;
- ``knee_time``: the batch after which no larger batch cuts the time per sample by
  ``time_step`` or more (where time per sample stops falling).

Elementwise layers are held against the copy bandwidth instead of the FLOP/s peak.

The figures are measured, so they live apart from the deterministic profile:
``<knee.out_dir>/<model>.json`` and ``.md`` and a roofline PNG with one marker per measured
batch over the analytic roof. On a CUDA preset (``profile/knee=gpu``) the same code times with
CUDA events.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, positive_int, require
from mlpipe.common.provenance import machine_info
from mlpipe.common.stats import time_calls
from mlpipe.measure.consistency import roof_for
from mlpipe.measure.cost import ModelCost
from mlpipe.measure.peaks import knee_peaks, observed_vs_peak
from mlpipe.measure.profile import profile_network, untrained_network
from mlpipe.measure.roofline import (
    FLOP_CONVENTION,
    DevicePeaks,
    check_dtype,
    plot_roofline,
)
from mlpipe.measure.rounds import Stability, until_settled
from mlpipe.measure.tables import PlotStyle, knee_points_table, knee_table

log = logging.getLogger(__name__)

#: One timed sample at a fixed batch: seconds per call of the layer.
Sampler = Callable[[], float]
#: Batch size -> the sampler of that batch (builds the input, warms up, calibrates).
SamplerFactory = Callable[[int], Sampler]


@dataclass(frozen=True)
class KneeSettings:
    """How a layer is swept and where its knees are read (config group `profile/knee`)."""

    max_batch: int
    time_budget_s: float  # per layer: no larger batch starts once this much time has passed
    memory_budget_bytes: float  # a batch whose weights + activations exceed this is not run
    warmup: int  # untimed calls per batch before calibration
    repeats: int  # timed samples per round; a round keeps the best
    min_sample_s: float  # one timed sample loops the call until it lasts this long
    max_inner: int  # at most this many calls per timed sample
    stability: Stability  # rounds until the best moves less than rel_tol
    peak_fraction: float
    time_step: float

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> KneeSettings:
        k = "profile.knee"
        settings = cls(
            max_batch=positive_int(node["max_batch"], f"{k}.max_batch"),
            time_budget_s=as_float(node["time_budget_s"], f"{k}.time_budget_s"),
            memory_budget_bytes=as_float(node["memory_budget_bytes"], f"{k}.memory_budget_bytes"),
            warmup=positive_int(node["warmup"], f"{k}.warmup", minimum=0),
            repeats=positive_int(node["repeats"], f"{k}.repeats"),
            min_sample_s=as_float(node["min_sample_s"], f"{k}.min_sample_s"),
            max_inner=positive_int(node["max_inner"], f"{k}.max_inner"),
            stability=Stability.from_config(node["stability"], f"{k}.stability"),
            peak_fraction=as_float(node["peak_fraction"], f"{k}.peak_fraction"),
            time_step=as_float(node["time_step"], f"{k}.time_step"),
        )
        require(0 < settings.peak_fraction <= 1, f"{k}.peak_fraction", "must lie in (0, 1]")
        require(0 < settings.time_step < 1, f"{k}.time_step", "must lie in (0, 1)")
        require(settings.time_budget_s > 0, f"{k}.time_budget_s", "must be > 0")
        require(settings.memory_budget_bytes > 0, f"{k}.memory_budget_bytes", "must be > 0")
        return settings


@dataclass(frozen=True)
class LayerCost:
    """One layer's analytic cost (flops(B) = f*B, bytes(B) = w + c*B) and what it is held to."""

    name: str
    type: str
    kind: str  # "compute": against peak FLOP/s; "elementwise": against the copy bandwidth
    cost: ModelCost
    flip_batch: int | None  # the analytic prediction on the same device peaks


# -- one batch ---------------------------------------------------------------------------------
def best_of_rounds(sample: Sampler, repeats: int, stability: Stability) -> tuple[float, bool, int]:
    """(best seconds per call, settled?, rounds): rounds of best-of-`repeats` samples until two
    consecutive round bests settle (the one convergence loop, `until_settled`)."""
    bests, settled = until_settled(lambda _: min(sample() for _ in range(repeats)), stability)
    return min(bests), settled, len(bests)


def point(
    layer: LayerCost, batch: int, seconds: float, peaks: DevicePeaks, copy_bw: float | None
) -> dict[str, Any]:
    """Achieved FLOP/s and bytes/s of one batch, and the share of the limit that applies: the
    peak FLOP/s for a compute layer; for an elementwise one, the bandwidth of a plain copy moving
    the same bytes (`copy_bw`; the device's large-copy peak when not measured)."""
    flops, nbytes = layer.cost.flops(batch), layer.cost.nbytes(batch)
    achieved_flops, achieved_bw = flops / seconds, nbytes / seconds
    bandwidth, level = roof_for(peaks.as_dict(), nbytes)  # the roof of the level it fits
    copy_limit = copy_bw or bandwidth
    fraction = (
        achieved_flops / peaks.peak_flops if layer.kind == "compute" else achieved_bw / copy_limit
    )
    roof = min(peaks.peak_flops, flops / nbytes * bandwidth) if nbytes else peaks.peak_flops
    return {
        "batch": batch,
        "seconds": seconds,
        "seconds_per_sample": seconds / batch,
        "flops": flops,
        "bytes": nbytes,
        "intensity": flops / nbytes if nbytes else 0.0,
        "achieved_flops": achieved_flops,
        "achieved_bandwidth": achieved_bw,
        "copy_bandwidth": copy_bw if layer.kind == "elementwise" else None,
        "fraction_of_peak": fraction,
        "roof_level": level,
        "fraction_of_roof": achieved_flops / roof,
    }


# -- the knees ---------------------------------------------------------------------------------
def knee_peak(points: Sequence[Mapping[str, Any]], fraction: float) -> int | None:
    """Smallest measured batch whose achieved share of the peak reaches `fraction`."""
    return next((p["batch"] for p in points if p["fraction_of_peak"] >= fraction), None)


def knee_time(points: Sequence[Mapping[str, Any]], step: float) -> int | None:
    """Smallest measured batch after which no larger batch cuts the time per sample by `step`
    (a share: 0.1 = 10 %) or more; None if the last doubling still did. Taking the minimum over
    every larger batch, not just the next one, keeps a single slow sample from ending the fall."""
    for i, cur in enumerate(points[:-1]):
        later = min(p["seconds_per_sample"] for p in points[i + 1 :])
        if later > (1.0 - step) * cur["seconds_per_sample"]:
            return int(cur["batch"])
    return None


# -- the sweep ---------------------------------------------------------------------------------
def sweep_layer(
    layer: LayerCost,
    sampler_for: SamplerFactory,
    peaks: DevicePeaks,
    settings: KneeSettings,
    copy_for: Callable[[float], Sampler] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Batch 1, 2, 4, ... up to the cap; each batch timed by `sampler_for(batch)`. For an
    elementwise layer, `copy_for(nbytes)` times a copy moving the same bytes: its limit."""
    points: list[dict[str, Any]] = []
    started, batch, stopped_by = clock(), 1, "max_batch"
    while batch <= settings.max_batch:
        if layer.cost.nbytes(batch) > settings.memory_budget_bytes:
            stopped_by = "memory_budget"
            break
        if points and clock() - started > settings.time_budget_s:
            stopped_by = "time_budget"
            break
        seconds, stable, rounds = best_of_rounds(
            sampler_for(batch), settings.repeats, settings.stability
        )
        copy_bw = None
        if layer.kind == "elementwise" and copy_for is not None:
            nbytes = layer.cost.nbytes(batch)
            copy_s, _, _ = best_of_rounds(copy_for(nbytes), settings.repeats, settings.stability)
            copy_bw = nbytes / copy_s
        p = point(layer, batch, seconds, peaks, copy_bw)
        points.append({**p, "stable": stable, "rounds": rounds})
        batch *= 2
    best = max(points, key=lambda p: p["fraction_of_peak"]) if points else None
    return {
        "name": layer.name,
        "type": layer.type,
        "kind": layer.kind,
        "flip_batch": layer.flip_batch,
        "knee_peak": knee_peak(points, settings.peak_fraction),
        "knee_time": knee_time(points, settings.time_step),
        "best_fraction_of_peak": best["fraction_of_peak"] if best else None,
        "best_batch": best["batch"] if best else None,
        "largest_batch": points[-1]["batch"] if points else None,
        "stopped_by": stopped_by,
        "points": points,
    }


# -- timing a real layer -----------------------------------------------------------------------
def _clocked(call: Callable[[], Any], device: str) -> Callable[[int], float]:
    """inner -> seconds per call of `inner` back-to-back calls: the one timing primitive on the
    CPU (`mlpipe.common.stats.time_calls`), CUDA events on a GPU (device time, no host sync
    inside the loop)."""
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def cuda_timed(inner: int) -> float:
            start.record()
            for _ in range(inner):
                call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner  # elapsed_time is in ms

        return cuda_timed

    def cpu_timed(inner: int) -> float:
        (seconds,) = time_calls(call, 0, 1, inner)
        return seconds

    return cpu_timed


def _calibrated(call: Callable[[], Any], device: str, settings: KneeSettings) -> Sampler:
    """Warm up, then loop short calls so one sample is long enough for the clock to resolve."""
    timed = _clocked(call, device)
    for _ in range(settings.warmup):
        call()
    once = timed(1)
    inner = min(settings.max_inner, max(1, math.ceil(settings.min_sample_s / max(once, 1e-9))))
    return lambda: timed(inner)


def layer_sampler(
    module: nn.Module, in_shape: Sequence[int], device: str, dtype: str, settings: KneeSettings
) -> SamplerFactory:
    """Batch -> a sampler timing `module` alone on a random (B, *in_shape) input."""
    storage = check_dtype(dtype)
    module = copy.deepcopy(module).eval().to(device=device, dtype=storage)

    def for_batch(batch: int) -> Sampler:
        x = torch.randn((batch, *in_shape), device=device).to(storage)

        def call() -> Any:
            with torch.inference_mode():
                return module(x)

        return _calibrated(call, device, settings)

    return for_batch


def copy_sampler(device: str, settings: KneeSettings) -> Callable[[float], Sampler]:
    """Bytes moved -> a sampler of a plain tensor copy moving that many (half read, half
    written): the limit an elementwise layer of that size is held to."""

    def for_bytes(nbytes: float) -> Sampler:
        src = torch.ones(max(1, int(nbytes) // 2), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        return _calibrated(lambda: dst.copy_(src), device, settings)

    return for_bytes


def layer_inputs(net: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of every leaf module called with one tensor, via forward hooks."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, inputs: Any, _out: Any) -> None:
            if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor):
                shapes.setdefault(name, tuple(inputs[0].shape[1:]))

        return fn

    leaves = {n: m for n, m in net.named_modules() if n and not list(m.children())}
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    return shapes


# -- the stage ---------------------------------------------------------------------------------
def layer_kinds(node: Mapping[str, Any]) -> dict[str, str]:
    """Module type name -> "compute" / "elementwise", from `compute_types`/`elementwise_types`."""
    kinds = {str(t): "elementwise" for t in node["elementwise_types"]}
    kinds.update({str(t): "compute" for t in node["compute_types"]})
    return kinds


def layer_costs(
    profile_result: Mapping[str, Any], peaks: DevicePeaks, kinds: Mapping[str, str]
) -> list[LayerCost]:
    """The measured layers' analytic costs per sample, from a profile at any batch size."""
    batch = profile_result["batch_size"]
    return [
        LayerCost(
            r["name"],
            r["type"],
            kinds[r["type"]],
            ModelCost(r["flops"] / batch, r["weight_bytes"], r["activation_bytes"] / batch),
            r["flip_batch"][peaks.name],
        )
        for r in profile_result["layers"]
        if r["type"] in kinds
    ]


def measure_knees(cfg: DictConfig) -> dict[str, Any]:
    """Sweep every matmul/conv and elementwise layer of the configured model (untrained: speed
    does not depend on the weights) on the `profile.knee.device` preset's device."""
    pc, kc = cfg.profile, cfg.profile.knee
    settings = KneeSettings.from_config(kc)
    if kc.torch_threads is not None:
        torch.set_num_threads(positive_int(kc.torch_threads, "profile.knee.torch_threads"))
    peaks, device = knee_peaks(pc.device_dir, str(kc.device), str(pc.dtype), kc)
    net = untrained_network(cfg).eval()
    sample_shape = [int(s) for s in pc.sample_shape]
    shapes = layer_inputs(net, torch.zeros((1, *sample_shape)))
    prof = profile_network(net, sample_shape, int(pc.batch_size), str(pc.dtype), [peaks])
    modules = dict(net.named_modules())
    layers = []
    for layer in layer_costs(prof, peaks, layer_kinds(kc)):
        sampler = layer_sampler(modules[layer.name], shapes[layer.name], device, pc.dtype, settings)
        copies = copy_sampler(device, settings)
        layers.append(sweep_layer(layer, sampler, peaks, settings, copies))
        log.info(
            "%s %s: flip batch %s, knee %s (>= %.0f%% of peak), %s (time/sample)",
            layer.name,
            layer.type,
            layer.flip_batch,
            layers[-1]["knee_peak"],
            100 * settings.peak_fraction,
            layers[-1]["knee_time"],
        )
    return {
        "model": str(pc.model_name),
        "dtype": str(pc.dtype),
        "observed": observed_vs_peak(
            [p["achieved_flops"] for r in layers if r["kind"] == "compute" for p in r["points"]],
            peaks,
        ),
        "timing_device": device,
        "clock": "cuda events" if device == "cuda" else "perf_counter",
        "device": peaks.as_dict(),
        "settings": {**asdict(settings), "stability": asdict(settings.stability)},
        "convention": FLOP_CONVENTION,
        "machine": machine_info(),
        "layers": layers,
    }


def write_knees(result: Mapping[str, Any], out_dir: Path, style: PlotStyle) -> Path:
    """`<model>.json`, `<model>.md` and `<model>_<device>.png` (measured points, analytic roof)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / str(result["model"])
    dev = result["device"]
    peaks = DevicePeaks.from_dict(dev)
    measured = {
        f"{r['name']} ({r['type']})": [
            (p["batch"], p["intensity"], p["achieved_flops"]) for p in r["points"]
        ]
        for r in result["layers"]
        if r["points"] and r["points"][0]["flops"] > 0
    }
    png = plot_roofline(
        [],
        peaks,
        f"{stem}_{peaks.name}.png",
        f"{result['model']} on {peaks.name} ({result['dtype']}): measured, one marker per batch",
        style,
        measured=measured,
    )
    details = "\n\n".join(
        f"#### {r['name']} ({r['type']})\n\n{knee_points_table(r)}" for r in result["layers"]
    )
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(
        f"### {result['model']} on {peaks.name} ({result['dtype']}): measured knee vs analytic "
        f"flip batch\n\n{knee_table(result)}\n\n![measured roofline]({png.name})\n\n{details}\n"
    )
    return stem.with_suffix(".json")


def knee(cfg: DictConfig) -> dict[str, Any]:
    """Measure, write, print the summary table."""
    result = measure_knees(cfg)
    path = write_knees(result, Path(cfg.profile.knee.out_dir), PlotStyle.from_config(cfg.plot))
    log.info("wrote %s", path)
    print(f"{result['model']} on {result['device']['name']}:\n{knee_table(result)}")
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="knee")
@entry_point
def main(cfg: DictConfig) -> None:
    knee(cfg)


if __name__ == "__main__":
    main()
