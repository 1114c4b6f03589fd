"""The report's roofline section (mlpipe-report): per model, the analytic profile on the stored
device presets and this CPU's measured one, each a per-layer table of FLOPs, bytes, intensity and
the regime (bound / flip batch) per device, with its roofline plots.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlpipe.measure.sections import Missing, Section, image_link, read_json
from mlpipe.measure.tables import github_table


def _profile_rows(layers: list[Mapping[str, Any]], devices: list[str]) -> list[list[str]]:
    def regime(layer: Mapping[str, Any], d: str) -> str:
        flip = layer["flip_batch"][d]
        return f"{layer['bound'][d]} / {'never' if flip is None else flip}"

    return [
        [
            layer["name"],
            layer["type"],
            f"{layer['flops']:.4g}",
            str(layer["params"]),
            f"{layer['bytes']:.4g}",
            f"{layer['intensity']:.3g}",
            *[regime(layer, d) for d in devices],
        ]
        for layer in layers
    ]


def _profile_totals(p: Mapping[str, Any]) -> str:
    t, nan = p.get("totals", {}), float("nan")
    ratio = t.get("cross_check_ratio")
    devices = "; ".join(
        f"{d}: {v['peak_flops'] / 1e12:.4g} TFLOP/s, {v['peak_bandwidth'] / 1e9:.4g} GB/s, "
        f"ridge {v['ridge']:.3g} FLOP/B ({v['kind']}; {v['source']})"
        for d, v in p["devices"].items()
    )
    return (
        f"Total {t.get('flops', nan):.4g} FLOPs, {t.get('params')} params; matmul/conv FLOPs "
        f"fvcore×2 {t.get('mac_flops_fvcore_x2', nan):.4g} vs FlopCounterMode "
        f"{t.get('mac_flops_torch_flop_counter', nan):.4g} (ratio "
        f"{'n/a' if ratio is None else f'{ratio:.4f}'}). Devices: {devices}."
    )


def _profile_part(p: Mapping[str, Any], name: str, pdir: Path, out_dir: Path) -> str:
    """One model's markdown: totals, the per-layer table, its roofline plots."""
    devices = list(p["devices"])
    headers = [
        "layer",
        "type",
        "FLOPs",
        "params",
        "bytes",
        "FLOP/B",
        *[f"{d}: bound / flip batch" for d in devices],
    ]
    plots = " ".join(
        image_link(pdir / v["plot"], out_dir, f"roofline {name} {d}")
        for d, v in p["devices"].items()
        if v.get("plot")
    )
    return "\n".join(
        [
            f"### {p.get('model', name)} ({p['dtype']}, batch {p['batch_size']})",
            "",
            _profile_totals(p),
            "",
            github_table(headers, _profile_rows(p["layers"], devices)),
            "",
            plots,
        ]
    )


def _flip_summary(p: Mapping[str, Any], name: str) -> str:
    flips = []
    for d in p["devices"]:
        fb = sorted({x["flip_batch"][d] for x in p["layers"] if x["flip_batch"][d] is not None})
        flips.append(f"{d} {fb if fb else 'never'}")
    return f"{p.get('model', name)} flip batches: {', '.join(flips)}"


def section_profile(rc: Mapping[str, Any], reports: Path, out_dir: Path) -> Section:
    # The analytic profile (stored device presets) and this CPU's, measured at run time.
    dirs = [reports / rc["inputs"]["profile_dir"], reports / rc["inputs"]["profile_cpu_dir"]]
    files = [f for d in dirs if d.is_dir() for f in sorted(d.glob("*.json"))]
    pdir = dirs[0]
    if not files:
        return Section(
            "Roofline per layer", f"not run: `{rc['how_to']['profile']}` writes {pdir}/<model>.json"
        )
    parts, summary, conventions = [], [], set()
    for f in files:
        try:
            p = read_json(f, rc["how_to"]["profile"])
            part, line = _profile_part(p, f.stem, f.parent, out_dir), _flip_summary(p, f.stem)
        except (Missing, KeyError, TypeError) as err:
            parts.append(f"### {f.stem}\n\nunreadable: {f}: {err}")
            continue
        conventions.add(str(p.get("convention", "(no convention recorded)")))
        parts.append(part)
        summary.append(line)
    conv = conventions.pop() if len(conventions) == 1 else "; ".join(sorted(conventions))
    return Section(
        "Roofline per layer", conv + "\n\n" + "\n\n".join(parts), "; ".join(summary) or None
    )
