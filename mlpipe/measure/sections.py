"""The report's sections on measurements (mlpipe-report, :mod:`mlpipe.report`): serving,
bench, measured knees, the tuned Triton config, the relu_module benchmark and the committed GPU
results, each from its stage's JSON (the roofline profile's is
:mod:`mlpipe.measure.profile_section`). A stage that has not run gives a
`not run: <command that makes it>` line (:class:`Missing`), never a crash.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipe.measure.tables import bench_table, github_table, knee_table, tune_intro, tune_table


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


def rel_path(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def image_link(path: Path, out_dir: Path, alt: str) -> str:
    if path.is_file():
        return f"![{alt}]({rel_path(path, out_dir)})"
    return f"_(plot {path.name} missing)_"


# -- sections ----------------------------------------------------------------------------------
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
            image_link(path.parent / "latency_vs_batch.png", out_dir, "latency vs batch"),
            image_link(
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
        image = image_link(png, out_dir, f"measured roofline {k['model']}")
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
            image_link(path.parent / "pareto.png", out_dir, "Pareto front"),
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
            image_link(path.parent / "bench.png", out_dir, "relu_module benchmark"),
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
        prefix = rel_path(doc.parent, out_dir)
        text = re.sub(
            r"(!\[[^\]]*\]\()(?![a-z]+://|/)([^)]+\))",
            rf"\g<1>{prefix}/\g<2>",
            doc.read_text().strip(),
        )
        return f"#### {rel_path(doc, gdir)}\n\n{text}"

    body = "\n\n".join(embed(d) for d in docs)
    return Section(
        "GPU results (committed, measured on the device named in each file)",
        body,
        f"GPU results: {len(docs)} file(s) in {gdir}",
    )
