"""mlpipe-report: one markdown report (reports/REPORT.md) from every stage's JSON, with plots.

Sections: data version and training metrics, export parity, serving latency/throughput, roofline
per model, measured knee vs analytic flip batch, the Triton config chosen by measurement,
relu_module benchmark, GPU results (committed under reports/gpu/), provenance. A
stage that has not run yet gives a `not run: <command that makes it>` line, never a crash, so the
report can be built at any point of the pipeline (and from the small fixtures in the tests).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.common.cli import entry_point
from mlpipe.common.config import require
from mlpipe.common.errors import ArtifactError, ConsistencyError, DataError
from mlpipe.common.provenance import data_version, git_revision, machine_info, sha256_file
from mlpipe.measure import consistency
from mlpipe.measure.consistency import Finding
from mlpipe.measure.tables import bench_table, github_table, knee_table, tune_intro, tune_table

log = logging.getLogger(__name__)


@dataclass
class Section:
    """One report section: markdown body plus a one-line screen summary (None: nothing to say)."""

    title: str
    body: str
    summary: str | None = None


class Missing(Exception):
    """An input of a section is absent or unreadable; the message is the line shown instead."""


def read_json(path: Path, how_to: str) -> Any:
    """Parsed JSON, or Missing('not run: <how_to>') / Missing('unreadable: ...')."""
    if not path.is_file():
        raise Missing(f"not run: `{how_to}` writes {path.name} ({path})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise Missing(f"unreadable: {path}: {err}; rerun `{how_to}`") from err


def data_version_or_missing(data_dvc: Path) -> dict[str, Any]:
    """The data version `data.dvc` records, or Missing with the line to show instead."""
    try:
        return data_version(data_dvc)
    except DataError as err:
        raise Missing(str(err)) from None


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _image(path: Path, out_dir: Path, alt: str) -> str:
    if path.is_file():
        return f"![{alt}]({_rel(path, out_dir)})"
    return f"_(plot {path.name} missing)_"


# -- sections ----------------------------------------------------------------------------------
def section_data_and_training(rc: Mapping[str, Any], reports: Path) -> Section:
    lines, summary = [], []
    try:
        d = data_version_or_missing(Path(rc["data_dvc"]))
        lines.append(
            f"Data: `{d['path']}` md5 `{d['md5']}` ({d['nfiles']} files, {d['size']} bytes), "
            "from `data.dvc`."
        )
        summary.append(f"data md5 {str(d['md5'])[:12]}")
    except Missing as err:
        lines.append(f"Data: {err}")
    try:
        m = read_json(reports / rc["inputs"]["train_metrics"], rc["how_to"]["train"])
        scalars = {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool))}
        lines.append(
            "\n"
            + github_table(
                ["metric", "value"],
                [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in scalars.items()],
            )
        )
        if "test_acc" in m:
            summary.append(f"test acc {m['test_acc']:.4f}")
    except Missing as err:
        lines.append(f"Training metrics: {err}")
    return Section("Data and training", "\n".join(lines), ", ".join(summary) or None)


def section_export(rc: Mapping[str, Any], reports: Path) -> Section:
    try:
        p = read_json(reports / rc["inputs"]["parity"], rc["how_to"]["export"])
    except Missing as err:
        return Section("Export parity", str(err))
    rows = []
    for key, label in (
        ("onnx_vs_torch", "ONNX Runtime vs torch"),
        ("tensorrt_vs_ort", "TensorRT vs ONNX Runtime"),
    ):
        if key in p:
            c = p[key]
            rows.append(
                [
                    label,
                    f"{c.get('max_abs_diff', float('nan')):.3g}",
                    f"{c.get('argmax_agreement', float('nan')):.4%}",
                    f"{c.get('reference_acc', float('nan')):.4f}",
                    f"{c.get('candidate_acc', float('nan')):.4f}",
                ]
            )
    limits = p.get("limits", {})
    body = (
        f"`{p.get('onnx_path', '?')}` (opset {p.get('opset', '?')}, exporter "
        f"{p.get('exporter', '?')}, split `{p.get('split', '?')}`), passed: "
        f"**{p.get('passed')}**, limits: atol {limits.get('atol')}, argmax agreement ≥ "
        f"{limits.get('min_argmax_agreement')}.\n\n"
        + github_table(
            ["comparison", "max abs diff", "argmax agreement", "reference acc", "candidate acc"],
            rows,
        )
    )
    summary = None
    if "onnx_vs_torch" in p:
        summary = (
            f"ONNX parity max|diff| {p['onnx_vs_torch'].get('max_abs_diff', float('nan')):.2g}"
        )
    return Section("Export parity", body, summary)


def section_bench(rc: Mapping[str, Any], reports: Path, out_dir: Path) -> Section:
    path = reports / rc["inputs"]["bench"]
    try:
        b = read_json(path, rc["how_to"]["bench"])
    except Missing as err:
        return Section("Serving latency and throughput", str(err))
    meta, rows = b.get("meta", {}), b.get("rows", [])
    baseline = meta.get("config", {}).get("baseline", "ort_cpu")
    peaks = "; ".join(
        f"{d}: {p['name']} {p['peak_flops'] / 1e9:.4g} GFLOP/s, "
        f"{p['peak_bandwidth'] / 1e9:.4g} GB/s DRAM{_roofs(p)} ({p['kind']})"
        for d, p in meta.get("peaks", {}).items()
    )
    machine = meta.get("machine", {})
    body = "\n".join(
        [
            f"Measured on {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores, GPU: "
            f"{machine.get('gpu') or 'none'}) in {meta.get('wall_s', '?')} s. Client-observed "
            "latency (serialization included for Triton); throughput = samples / wall time of the "
            "window. MFU = achieved FLOP/s / peak; p50/roofline = p50 / max(FLOPs/peak, "
            "bytes/bandwidth of the memory level one call's bytes fit). "
            f"Peaks: {peaks or 'n/a'}.",
            "",
            bench_table(rows, baseline),
            _image(path.parent / "latency_vs_batch.png", out_dir, "latency vs batch"),
            _image(
                path.parent / "throughput_vs_concurrency.png", out_dir, "throughput vs concurrency"
            ),
        ]
    )
    summary = _batch1_headline([r for r in rows if r.get("status") == "ok"])
    unavailable = sorted({r["backend"] for r in rows if r.get("status") == "unavailable"})
    if unavailable:
        summary += f" (unavailable: {', '.join(unavailable)})"
    return Section(
        "Serving latency and throughput", body, f"batch-1 p50: {summary}" if summary else None
    )


def _batch1_headline(ok: Sequence[Mapping[str, Any]]) -> str:
    """Batch-1 p50 per backend at one client. A served config with a queue delay is left out:
    alone, each request waits that delay for a batch that never forms, so its p50 measures the
    delay (1.85 ms on `digits` against 0.58 ms without it); the headline says so."""
    best, waiting = {}, set()
    for r in ok:
        if r["batch"] != 1 or r["concurrency"] != 1:
            continue
        if (r.get("model_config") or {}).get("max_queue_delay_us", 0) > 0:
            waiting.add(r["model_config"]["model"])
            continue
        best[r["backend"]] = r["p50_ms"]
    summary = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(best.items(), key=lambda kv: kv[1]))
    if waiting and summary:
        summary += (
            f" (Triton configs without a queue delay; {', '.join(sorted(waiting))} left out: "
            "batch 1 alone waits its full queue delay)"
        )
    return summary


def _roofs(peaks: Mapping[str, Any]) -> str:
    """The cache-level roofs of a peaks entry, as ', L2 (≤ 1 MiB) 96 GB/s, ...'."""
    return "".join(
        f", {r['level']} (≤ {r['max_bytes'] / 2**20:.3g} MiB) {r['bandwidth'] / 1e9:.4g} GB/s"
        for r in peaks.get("roofs") or ()
    )


def section_served(rc: Mapping[str, Any], reports: Path) -> Section:
    """Served accuracy (mlpipe-client) and the serving targets (mlpipe-serve-targets: readiness,
    batch-1 overhead, gateway overhead, tuned vs untuned throughput)."""
    lines, summary = [], []
    try:
        c = read_json(reports / rc["inputs"]["client"], rc["how_to"]["client"])
        lines.append(
            f"Served accuracy over {c.get('protocol', '?')} on the `{c.get('split', '?')}` split "
            f"({c.get('n', '?')} images, model `{c.get('model', '?')}`): "
            f"{c.get('served_acc', float('nan')):.4f}, offline ORT "
            f"{c.get('offline_ort_acc', float('nan')):.4f}, "
            f"equal: **{c.get('accuracy_matches_offline')}**."
        )
        summary.append(f"served acc {c.get('served_acc', float('nan')):.4f}")
    except Missing as err:
        lines.append(f"Served accuracy: {err}")
    try:
        m = read_json(reports / rc["inputs"]["serving_targets"], rc["how_to"]["serving_targets"])
        targets, meets = m.get("targets", {}), m.get("meets", {})
        rows = [
            [
                "server ready [s]",
                f"{m.get('ready_seconds', float('nan')):.2f}",
                f"≤ {targets.get('ready_seconds')}",
                meets.get("ready"),
            ]
        ]
        for proto in ("http", "grpc"):
            r = m.get(f"{proto}_batch1", {})
            rows.append(
                [
                    f"{proto} batch-1 p50 − in-process ORT p50 [ms]",
                    f"{r.get('overhead_vs_ort_p50_ms', float('nan')):.3f}",
                    f"≤ {targets.get('batch1_overhead_ms')}",
                    meets.get(f"{proto}_batch1_overhead"),
                ]
            )
        rows += _tuning_rows(m.get("tuning", {}), targets, meets)
        lines.append(
            "\n"
            + github_table(
                ["serving target", "measured", "target", "met"],
                [[a, b, c, "yes" if d else "no"] for a, b, c, d in rows],
            )
        )
        summary.append(f"serving targets met {sum(bool(v) for v in meets.values())}/{len(meets)}")
    except Missing as err:
        lines.append(f"Serving targets: {err}")
    return Section("Served model", "\n".join(lines), ", ".join(summary) or None)


def _spread(values: Sequence[float] | None) -> str:
    """The lowest-highest range of per-round figures in brackets, or nothing without any."""
    return f" ({min(values):.2f}–{max(values):.2f})" if values else ""


def _tuning_rows(
    tuning: Mapping[str, Any], targets: Mapping[str, Any], meets: Mapping[str, Any]
) -> list[list[Any]]:
    """The two tuning targets: the tuner's choice on its front; its throughput vs the untuned."""
    ratios = tuning.get("throughput_ratio_tuned_vs", {})
    spread = tuning.get("throughput_ratio_tuned_vs_rounds", {})
    return [
        [
            f"tuned config ({tuning.get('chosen', '?')}) on the tuner's measured Pareto front",
            str(tuning.get("on_front")),
            "True",
            meets.get("tuned_on_front"),
        ],
        [
            f"throughput tuned / untuned at {tuning.get('concurrency', '?')} clients "
            f"({', '.join(ratios)}; median of {tuning.get('rounds', '?')} interleaved rounds, "
            "range)",
            " / ".join(
                f"{v:.2f}{_spread(spread.get(k))}"
                + (" same config" if k == tuning.get("same_config_as") else "")
                for k, v in ratios.items()
            )
            or "n/a",
            f"≥ {targets.get('tuned_vs_untuned_throughput')} each, within the measured spread "
            "(± half the rounds' range)",
            meets.get("tuned_beats_untuned"),
        ],
    ]


def knee_gap(result: Mapping[str, Any]) -> str:
    """One sentence on how far the measured knees of the matmul/conv layers fall from the
    analytic flip batch."""
    compute = [r for r in result["layers"] if r["kind"] == "compute"]
    both = [r for r in compute if r["knee_peak"] is not None and r["flip_batch"] is not None]
    missed = [r for r in compute if r["knee_peak"] is None and r["flip_batch"] is not None]
    share = f"{100 * result['settings']['peak_fraction']:.0f} %"
    parts = []
    if both:
        ratios = sorted(r["knee_peak"] / r["flip_batch"] for r in both)
        span = f"{ratios[0]:.2g}×" + (f"–{ratios[-1]:.2g}×" if ratios[-1] != ratios[0] else "")
        parts.append(
            f"the measured knee (≥ {share} of peak) of {len(both)} matmul/conv layer(s) is "
            f"{span} the analytic flip batch"
        )
    if missed:
        names = ", ".join(f"{r['name']} (flip batch {r['flip_batch']})" for r in missed)
        parts.append(f"{len(missed)} predicted to turn compute-bound never reach {share}: {names}")
    gap = "; ".join(parts) or "no matmul/conv layer both flips analytically and was measured"
    return (
        f"On {result['device']['name']}, {gap}: the roofline counts FLOPs and bytes only, not "
        "the per-call overhead and the low kernel efficiency of small shapes that dominate "
        "narrow layers."
    )


def section_knees(rc: Mapping[str, Any], reports: Path, out_dir: Path) -> Section:
    """Analytic flip batch vs measured knee per layer (mlpipe-knee), one table per model."""
    kdir = reports / rc["inputs"]["knee_dir"]
    files = sorted(kdir.glob("*.json")) if kdir.is_dir() else []
    title = "Measured knee vs analytic flip batch"
    if not files:
        return Section(title, f"not run: `{rc['how_to']['knee']}` writes {kdir}/<model>.json")
    parts, summary = [], []
    for f in files:
        try:
            k = read_json(f, rc["how_to"]["knee"])
            table, gap = knee_table(k), knee_gap(k)
        except (Missing, KeyError, TypeError) as err:
            parts.append(f"### {f.stem}\n\nunreadable: {f}: {err}")
            continue
        dev = k["device"]
        png = kdir / f"{k['model']}_{dev['name']}.png"
        image = _image(png, out_dir, f"measured roofline {k['model']}")
        parts.append(
            f"### {k['model']} ({k['dtype']}, {k['clock']}; peaks {dev['peak_flops'] / 1e9:.4g} "
            f"GFLOP/s, {dev['peak_bandwidth'] / 1e9:.4g} GB/s DRAM{_roofs(dev)}: "
            f"{dev['source']})\n\n{gap}\n\n"
            f"{table}\n\n{image}"
        )
        knees = [
            f"{r['name']} {r['flip_batch']}→{r['knee_peak'] or '>' + str(r['largest_batch'])}"
            for r in k["layers"]
            if r["kind"] == "compute"
        ]
        summary.append(f"{k['model']} flip→knee: {', '.join(knees)}")
    body = (
        "Every matmul/conv layer timed alone over batch 1, 2, 4, … (best of N, until stable); "
        "elementwise layers are held to a copy of the same bytes. Details per batch: "
        f"`{kdir}/<model>.md`.\n\n" + "\n\n".join(parts)
    )
    return Section(title, body, "; ".join(summary) or None)


def section_tune(rc: Mapping[str, Any], reports: Path, out_dir: Path) -> Section:
    """The tuner's choice, its two checks and the Pareto front at the selection concurrency."""
    title = "Triton config chosen by measurement"
    path = reports / rc["inputs"]["tune"]
    try:
        t = read_json(path, rc["how_to"]["tune"])
        conc = int(t["chosen"]["concurrency"])
        c, chk = t["chosen"], t["checks"]
    except Missing as err:
        return Section(title, str(err))
    except (KeyError, TypeError, ValueError) as err:
        return Section(title, f"unreadable: {path}: {err}")
    front = t["front"][str(conc)]
    body = "\n\n".join(
        [
            tune_intro(t),
            f"Pareto front at {conc} clients (every point: `{path.parent / 'results.md'}`):",
            tune_table({**t, "rows": [r for r in t["rows"] if r["config"] in front]}, conc),
            _image(path.parent / "pareto.png", out_dir, "Pareto front"),
        ]
    )
    summary = (
        f"tuned {c['config']}: {c['throughput_rps']:.0f} req/s, p99 {c['p99_ms']:.1f} ms at "
        f"{conc} clients, on front {chk['on_front']}, beats untuned {chk['beats_untuned']}"
        + _decision_brief(t.get("decision"))
    )
    return Section(title, body, summary)


def _decision_brief(decision: Mapping[str, Any] | None) -> str:
    """The noise-aware rule's verdict for the summary line (nothing before the rule existed)."""
    if not decision or decision.get("epsilon") is None:
        return ""
    verdict = "replaced" if decision["replaced"] else "kept"
    return f", hand-written {decision['hand_written']} {verdict} (ε {decision['epsilon']:.1%})"


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
        _image(pdir / v["plot"], out_dir, f"roofline {name} {d}")
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


def section_relu(rc: Mapping[str, Any], reports: Path, out_dir: Path) -> Section:
    path = reports / rc["inputs"]["relu"]
    try:
        r = read_json(path, rc["how_to"]["relu"])
        targets = r["summary"]["targets"]
    except Missing as err:
        return Section("relu_module benchmark", str(err))
    except (KeyError, TypeError) as err:
        return Section("relu_module benchmark", f"unreadable: {path}: no summary.targets ({err})")
    rows = [
        [t["name"], f"{t['worst']:.3g}", t["limit"], t["where"], "pass" if t["pass"] else "MISS"]
        for t in targets
    ]
    machine = r.get("machine", {})
    body = "\n".join(
        [
            f"Mode `{r.get('mode', '?')}`, {r.get('elapsed_s', 0):.0f} s"
            + (", machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()) if machine else "")
            + ".",
            "",
            github_table(["target", "worst", "limit", "where", "result"], rows),
            "",
            _image(path.parent / "bench.png", out_dir, "relu_module benchmark"),
        ]
    )
    passed = sum(bool(t["pass"]) for t in targets)
    return Section(
        "relu_module benchmark", body, f"relu_module targets {passed}/{len(targets)} pass"
    )


def section_gpu(rc: Mapping[str, Any], reports: Path, out_dir: Path) -> Section:
    gdir = reports / rc["inputs"]["gpu_dir"]
    docs = sorted(gdir.rglob("*.md")) if gdir.is_dir() else []
    if not docs:
        return Section("GPU results", f"not run: {rc['how_to']['gpu']}")

    def embed(doc: Path) -> str:
        # image links inside the file are relative to it: make them relative to the report
        prefix = _rel(doc.parent, out_dir)
        text = re.sub(
            r"(!\[[^\]]*\]\()(?![a-z]+://|/)([^)]+\))",
            rf"\g<1>{prefix}/\g<2>",
            doc.read_text().strip(),
        )
        return f"#### {_rel(doc, gdir)}\n\n{text}"

    body = "\n\n".join(embed(d) for d in docs)
    return Section(
        "GPU results (committed, measured on the device named in each file)",
        body,
        f"GPU results: {len(docs)} file(s) in {gdir}",
    )


def _measured_inputs(rc: Mapping[str, Any], reports: Path) -> list[tuple[str, Any]]:
    """(kind, parsed JSON) of every measured input that is there; absent ones are skipped (their
    sections say `not run`), unreadable ones too (their sections say so)."""
    inputs = rc["inputs"]
    paths = [(kind, reports / inputs[kind]) for kind in ("bench", "serving_targets", "client")]
    paths.append(("tune", reports / inputs["tune"]))
    kdir = reports / inputs["knee_dir"]
    paths += [("knee", f) for f in (sorted(kdir.glob("*.json")) if kdir.is_dir() else [])]
    found = []
    for kind, path in paths:
        try:
            found.append((kind, read_json(path, "")))
        except Missing:
            continue
    return found


def findings(rc: Mapping[str, Any], reports: Path) -> list[Finding]:
    """Every check over every measured figure the report prints."""
    band = float(rc["checks"]["noise_band"])
    runs = {
        "bench": lambda d: consistency.bench_findings(d, band),
        "serving_targets": lambda d: consistency.served_findings(d, band),
        "client": consistency.client_findings,
        "tune": lambda d: consistency.tune_findings(d, band),
        "knee": consistency.knee_findings,
    }
    out: list[Finding] = []
    for kind, data in _measured_inputs(rc, reports):
        try:
            out += list(runs[kind](data))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            out.append(Finding("readable input", kind, f"malformed ({err!r})", "readable", False))
    return out


def section_consistency(found: Sequence[Finding], band: float) -> Section:
    """How many figures each check held, and every violation by name."""
    title = "Consistency checks"
    rows = [
        [
            check,
            sum(f.check == check for f in found),
            sum(f.check == check and not f.ok for f in found),
        ]
        for check in (*consistency.CHECKS, "readable input")
        if any(f.check == check for f in found) or check != "readable input"
    ]
    bad = [f for f in found if not f.ok]
    verdict = (
        "Violations (each a figure that contradicts its bound: a peak measured too low, a "
        "wrong roof, or a broken measurement):\n\n" + "\n".join(f"- **{f.line()}**" for f in bad)
        if bad
        else "No violation: every figure lies within its bound."
    )
    body = (
        "Every measured figure of this report held to the bound it cannot exceed "
        "(mlpipe.measure.consistency). Comparisons of two timings (Little's law, overheads) "
        f"allow a noise band of {band:.0%} or the row's own p50 spread, whichever is larger.\n\n"
        + github_table(["check", "figures checked", "violations"], rows)
        + "\n\n"
        + verdict
    )
    summary = f"{len(found)} figures checked, " + (
        f"{len(bad)} VIOLATION(S): {bad[0].line()}" if bad else "no violation"
    )
    return Section(title, body, summary)


def section_provenance(rc: Mapping[str, Any]) -> Section:
    root = Path(rc["root_dir"])
    rows = [["git revision", git_revision(root)]]
    for name in rc["lock_files"]:
        rows.append(
            [f"sha256 {name}", sha256_file(root / name) if (root / name).is_file() else "absent"]
        )
    try:
        rows.append(["data md5 (data.dvc)", data_version_or_missing(Path(rc["data_dvc"]))["md5"]])
    except Missing as err:
        rows.append(["data md5 (data.dvc)", str(err)])
    for k, v in machine_info().items():
        rows.append([f"machine {k}", v])
    rows.append(["report written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")])
    return Section("Provenance", github_table(["item", "value"], rows))


def build_report(rc: Mapping[str, Any]) -> tuple[str, list[str], list[Finding]]:
    """Markdown text, the screen summary lines and the consistency violations."""
    reports = Path(rc["reports_dir"])
    out_dir = Path(rc["output"]).parent
    found = findings(rc, reports)
    sections = [
        section_data_and_training(rc, reports),
        section_export(rc, reports),
        section_served(rc, reports),
        section_bench(rc, reports, out_dir),
        section_profile(rc, reports, out_dir),
        section_knees(rc, reports, out_dir),
        section_tune(rc, reports, out_dir),
        section_relu(rc, reports, out_dir),
        section_gpu(rc, reports, out_dir),
        section_consistency(found, float(rc["checks"]["noise_band"])),
        section_provenance(rc),
    ]
    text = (
        "\n\n".join(
            [f"# {rc['title']}", rc["intro"].strip()]
            + [f"## {s.title}\n\n{s.body.strip()}" for s in sections]
        )
        + "\n"
    )
    summary = [
        f"{s.title}: {s.summary or s.body.splitlines()[0]}"
        for s in sections
        if s.title != "Provenance"
    ]
    return text, summary, [f for f in found if not f.ok]


def validate_report_cfg(rc: Mapping[str, Any]) -> None:
    """The values a typo breaks: the output file, the lock-file list, the write flag."""
    require(
        str(rc["output"]).endswith(".md"),
        "report.output",
        f"must be a markdown file path ending in .md, got {rc['output']!r}",
    )
    require(
        isinstance(rc["lock_files"], list),
        "report.lock_files",
        f"must be a list of file names, got {rc['lock_files']!r}",
    )
    for key in ("write", "fail_on_violation"):
        require(
            isinstance(rc[key], bool), f"report.{key}", f"must be true or false, got {rc[key]!r}"
        )
    band = rc["checks"]["noise_band"]
    require(
        isinstance(band, (int, float)) and 0 <= band < 1,
        "report.checks.noise_band",
        f"must be a fraction in [0, 1), got {band!r}",
    )


def write_text(path: Path, text: str) -> None:
    """Write the report, or say in one line why the path cannot take it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        raise ArtifactError(
            f"cannot write the report to {path} ({err.strerror}); set "
            "report.output to a writable path"
        ) from None


def report(cfg: DictConfig) -> Path:
    """Write the report (unless `report.write=false`: summary only, e.g. after a no-op
    `dvc repro`, leaving the DVC-tracked file alone); print a short summary; return its path.
    A figure that contradicts its bound raises ConsistencyError afterwards (one line, exit 1)
    unless `report.fail_on_violation=false`."""
    rc = OmegaConf.to_container(cfg.report, resolve=True)
    validate_report_cfg(rc)
    text, summary, violations = build_report(rc)
    out = Path(rc["output"])
    if rc["write"]:
        write_text(out, text)
    print("\n".join(["", f"== mlpipe report: {out} ==", *[f"  {line}" for line in summary]]))
    if violations and rc["fail_on_violation"]:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ConsistencyError(
            f"{len(violations)} measured figure(s) contradict their bounds, first: "
            f"{violations[0].line()}{more}; every one is named in the 'Consistency checks' "
            f"section of {out}: re-measure (a peak taken on a busy machine is too low) or fix "
            "the measurement it names"
        )
    return out


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="report")
@entry_point
def main(cfg: DictConfig) -> None:
    report(cfg)


if __name__ == "__main__":
    main()
