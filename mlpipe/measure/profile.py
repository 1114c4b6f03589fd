"""mlpipe-profile: FLOPs, bytes and roofline regime of every leaf layer of a configured model.

Counting follows `mlpipe.measure.roofline.FLOP_CONVENTION` (2 FLOPs per multiply-add, the
convention of `torch.utils.flop_counter.FlopCounterMode`, which cross-checks the total).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.common import repro
from mlpipe.common.cli import entry_point
from mlpipe.common.config import names, positive_int
from mlpipe.common.errors import ConfigError
from mlpipe.measure.peaks import device_peaks
from mlpipe.measure.roofline import (
    FLOP_CONVENTION,
    DevicePeaks,
    available_presets,
    bound,
    check_dtype,
    flip_batch,
    intensity,
    plot_roofline,
)
from mlpipe.measure.tables import PlotStyle, layer_table

log = logging.getLogger(__name__)

#: fvcore ops whose count is multiply-adds (fvcore reports them without the `aten::`): x2.
MAC_OPS = frozenset({"addmm", "bmm", "conv", "_convolution", "einsum", "matmul", "mm", "linear"})
#: Elementwise ops fvcore ignores or skips: (input_scale, output_scale) FLOPs per element.
ELEMENTWISE_OPS: dict[str, tuple[float, float]] = {
    **{
        op: (0, 1)
        for op in (
            "aten::relu",
            "aten::relu_",
            "relu_module::relu",  # relu_module.torch.ReLU: the kernel's torch operators
            "relu_module::relu_",
            "aten::leaky_relu",
            "aten::gelu",
            "aten::silu",
            "aten::sigmoid",
            "aten::tanh",
            "aten::hardtanh",
            "aten::add",
            "aten::add_",
            "aten::mul",
            "aten::mul_",
            "aten::softmax",
            "aten::log_softmax",
        )
    },
    "aten::max_pool2d": (1, 0),
    "aten::avg_pool2d": (1, 0),
}


def _flop_analysis(net: nn.Module, example: torch.Tensor):
    """fvcore analysis with our elementwise handles; imported lazily (its import is slow/noisy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import elementwise_flop_counter

    analysis = FlopCountAnalysis(net, (example,))
    for op, (i, o) in ELEMENTWISE_OPS.items():
        analysis.set_op_handle(op, elementwise_flop_counter(i, o))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.total()
    skipped = list(analysis.unsupported_ops())
    if skipped:
        log.warning("ops without a FLOP formula, counted as 0: %s", sorted(skipped))
    return analysis


def _reported_flops(op_counts: Mapping[str, int]) -> float:
    """fvcore per-op counts -> FLOPs under our convention (x2 for multiply-accumulate ops)."""
    return float(sum(2 * n if op in MAC_OPS else n for op, n in op_counts.items()))


def leaf_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Modules without children, by qualified name (the rows of the profile)."""
    return {name: m for name, m in net.named_modules() if name and not list(m.children())}


def _activation_numel(net: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """(input numel, output numel) of each leaf for one forward pass, via forward hooks."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def numel(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel()
        if isinstance(obj, (list, tuple)):
            return sum(numel(o) for o in obj)
        return 0

    def hook(name: str):
        def fn(_m: nn.Module, inputs: Any, output: Any) -> None:
            counts[name][0] += numel(inputs)
            counts[name][1] += numel(output)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in leaf_modules(net).items()]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    return {n: (c[0], c[1]) for n, c in counts.items()}


def flop_counter_total(net: nn.Module, example: torch.Tensor) -> float:
    """Model FLOPs from torch's FlopCounterMode (2 x MACs of mm/conv/bmm only): the cross-check."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with torch.no_grad(), mode:
        net(example)
    return float(mode.get_total_flops())


def _layer_row(
    name: str, module: nn.Module, flops: float, numel: tuple[int, int], itemsize: int
) -> dict[str, Any]:
    """One leaf layer's counts: FLOPs, params, bytes (weights + float buffers + activations)."""
    params = sum(p.numel() for p in module.parameters(recurse=False))
    states = params + sum(b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
    weight_bytes, act_bytes = states * itemsize, (numel[0] + numel[1]) * itemsize
    nbytes = weight_bytes + act_bytes
    return {
        "name": name,
        "type": type(module).__name__,
        "flops": flops,
        "params": params,
        "bytes": nbytes,
        "weight_bytes": weight_bytes,
        "activation_bytes": act_bytes,
        "intensity": intensity(flops, nbytes),
        "bound": {},
        "flip_batch": {},
    }


def _add_regimes(row: dict[str, Any], devices: Sequence[DevicePeaks], batch_size: int) -> None:
    """Bound at this batch and the flip batch, per device (weights fixed, the rest per sample)."""
    for dev in devices:
        row["bound"][dev.name] = bound(row["flops"], row["bytes"], dev.ridge)
        row["flip_batch"][dev.name] = flip_batch(
            row["flops"] / batch_size,
            row["weight_bytes"],
            row["activation_bytes"] / batch_size,
            dev.ridge,
        )


def _totals(
    net: nn.Module,
    example: torch.Tensor,
    by_module: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Whole-model totals, with fvcore's matmul/conv count cross-checked by FlopCounterMode."""
    total_reported = _reported_flops(by_module.get("", {}))
    mac_total = 2.0 * sum(n for op, n in by_module.get("", {}).items() if op in MAC_OPS)
    torch_total = flop_counter_total(net, example)
    leaf_sum = sum(r["flops"] for r in rows)
    if abs(total_reported - leaf_sum) > 1e-9 * max(1.0, total_reported):
        log.warning(
            "%.0f FLOPs happen in functional calls outside any leaf module (counted in "
            "the total, not in a row)",
            total_reported - leaf_sum,
        )
    return {
        "flops": total_reported,
        "mac_flops_fvcore_x2": mac_total,
        "mac_flops_torch_flop_counter": torch_total,
        "cross_check_ratio": (mac_total / torch_total) if torch_total else None,
        "params": sum(p.numel() for p in net.parameters()),
        "bytes": sum(r["bytes"] for r in rows),
    }


def profile_network(
    net: nn.Module,
    sample_shape: Sequence[int],
    batch_size: int,
    dtype: str,
    devices: Sequence[DevicePeaks],
) -> dict[str, Any]:
    """Per-leaf FLOPs/params/bytes at `batch_size`, with bound and flip_batch on each device.

    Counting runs in fp32 on the CPU: FLOPs do not depend on the dtype, bytes scale by its itemsize.
    """
    itemsize = torch.empty((), dtype=check_dtype(dtype)).element_size()
    positive_int(batch_size, "profile.batch_size")
    net = net.eval().float().cpu()
    example = torch.zeros((batch_size, *sample_shape), dtype=torch.float32)  # (B, C, H, W)
    by_module = _flop_analysis(net, example).by_module_and_operator()
    acts = _activation_numel(net, example)
    rows: list[dict[str, Any]] = []
    for name, module in leaf_modules(net).items():
        if name not in acts:  # defined but never called in forward
            continue
        row = _layer_row(
            name, module, _reported_flops(by_module.get(name, {})), acts[name], itemsize
        )
        _add_regimes(row, devices, batch_size)
        rows.append(row)
    return {
        "batch_size": batch_size,
        "dtype": dtype,
        "itemsize": itemsize,
        "sample_shape": list(sample_shape),
        "convention": FLOP_CONVENTION,
        "totals": _totals(net, example, by_module, rows),
        "devices": {d.name: d.as_dict() for d in devices},
        "layers": rows,
    }


def resolve_devices(names: Sequence[str], device_dir: str | Path, dtype: str) -> list[DevicePeaks]:
    """Device presets by name from `device_dir`, or an error listing the valid names.

    `name:figures` picks another figure set of the preset than its `use`, e.g. `h100_sxm:datasheet`.
    """
    valid = available_presets(device_dir)
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n.split(":")[0] not in valid]
    if not names or unknown:
        raise ConfigError(
            f"unknown device preset(s) {unknown or names!r}; valid choices: {valid} "
            f"(files in {device_dir}; add ':measured' or ':datasheet' to pick a figure set)"
        )
    peaks = []
    for entry in names:
        name, _, use = entry.partition(":")
        cfg = OmegaConf.load(Path(device_dir) / f"{name}.yaml")
        if use:
            cfg.use = use
        p = device_peaks(cfg, dtype)
        peaks.append(dataclasses.replace(p, name=entry) if use else p)
    return peaks


def untrained_network(cfg: DictConfig) -> nn.Module:
    """The plain nn.Module the model config describes (the one training wraps), untrained:
    FLOPs and bytes depend on the architecture only."""
    return hydra.utils.instantiate(cfg.model.net)


def profile(cfg: DictConfig) -> dict[str, Any]:
    """Profile the configured model; write `<out_dir>/<model>.json`, `.md` and the roofline PNG."""
    pc = cfg.profile
    repro.guard(cfg.repro, Path(cfg.paths.root_dir), [pc.out_dir])
    devices = resolve_devices(names(pc.devices, "profile.devices"), pc.device_dir, pc.dtype)
    net = untrained_network(cfg)
    result = profile_network(net, list(pc.sample_shape), pc.batch_size, pc.dtype, devices)
    result["model"] = str(pc.model_name)
    out = Path(pc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / str(pc.model_name)
    sections = []
    for dev in devices:
        png = plot_roofline(
            [{**r, "bound": r["bound"][dev.name]} for r in result["layers"]],
            dev,
            f"{stem}_{dev.name.replace(':', '-')}.png",
            f"{pc.model_name} on {dev.name} ({pc.dtype}, batch {pc.batch_size})",
            PlotStyle.from_config(cfg.plot),
        )
        result["devices"][dev.name]["plot"] = png.name
        sections.append(
            f"### {pc.model_name} on {dev.name} ({pc.dtype}, batch {pc.batch_size}, "
            f"ridge {dev.ridge:.3g} FLOP/B)\n\n{layer_table(result, dev.name)}\n\n"
            f"![roofline]({png.name})\n"
        )
    (stem.with_suffix(".json")).write_text(json.dumps(result, indent=2))
    (stem.with_suffix(".md")).write_text("\n".join(sections))
    t = result["totals"]
    log.info(
        "%s: %.4g FLOPs at batch %d (fvcore x2 %.4g vs FlopCounterMode %.4g), wrote %s",
        pc.model_name,
        t["flops"],
        pc.batch_size,
        t["mac_flops_fvcore_x2"],
        t["mac_flops_torch_flop_counter"],
        stem.with_suffix(".json"),
    )
    print("\n".join(sections))
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="profile")
@entry_point
def main(cfg: DictConfig) -> None:
    profile(cfg)


if __name__ == "__main__":
    main()
