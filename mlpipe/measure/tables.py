"""Tables and plots of measurements: the bench table, the per-layer table, the shared plot style.

No torch import: the report renders these from the stages' JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PlotStyle:
    """Figure size and resolution of every PNG (config group `plot`)."""

    width_in: float
    height_in: float
    dpi: int

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> PlotStyle:
        return cls(float(node["width_in"]), float(node["height_in"]), int(node["dpi"]))


def github_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, cells as given (no number re-formatting)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def bench_table(rows: Sequence[Mapping[str, Any]], baseline: str) -> str:
    """Measured bench rows first, then one line per unavailable/skipped backend or cell."""
    ok = [r for r in rows if r["status"] == "ok"]
    table = github_table(
        [
            "backend",
            "served config",
            "batch",
            "conc",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "samples/s",
            f"x vs {baseline}",
            "MFU %",
            "p50/roofline",
            "stable",
        ],
        [
            [
                r["backend"],
                served_config(r),
                r["batch"],
                r["concurrency"],
                _fmt(r["p50_ms"], ".3f"),
                _fmt(r["p90_ms"], ".3f"),
                _fmt(r["p99_ms"], ".3f"),
                _fmt(r["throughput_samples_s"], ".0f"),
                _fmt(r.get("speedup_vs_baseline"), ".2f"),
                _fmt(r.get("mfu") and 100 * r["mfu"], ".3f"),
                _fmt(r.get("p50_over_roofline"), ".0f"),
                "yes" if r["stable"] else "no",
            ]
            for r in ok
        ],
    )
    other = [
        f"- **{r['backend']}**"
        + (f" (batch {r['batch']}, conc {r['concurrency']})" if "batch" in r else "")
        + f": {r['status']}: {r['reason']}"
        for r in rows
        if r["status"] != "ok"
    ]
    return table + ("\n\n" + "\n".join(other) if other else "") + "\n"


def served_config(row: Mapping[str, Any]) -> str:
    """A Triton row's model config in words (batcher, queue delay, instances); "in-process"
    for the others."""
    config = row.get("model_config")
    if not config:
        return "in-process"
    if not config["dynamic_batching"]:
        return f"batcher off, {config['instances']} inst."
    return f"batcher on, delay {config['max_queue_delay_us']} µs, {config['instances']} inst."


def layer_table(result: Mapping[str, Any], device: str) -> str:
    """One row per leaf layer of a profile, with its bound and flip batch on `device`."""
    return github_table(
        ["name", "type", "flops", "params", "bytes", "intensity", "bound", "flip_batch"],
        [
            [
                r["name"],
                r["type"],
                f"{r['flops']:.4g}",
                r["params"],
                f"{r['bytes']:.4g}",
                f"{r['intensity']:.3g}",
                r["bound"][device],
                "never" if r["flip_batch"][device] is None else r["flip_batch"][device],
            ]
            for r in result["layers"]
        ],
    )


def new_figure(style: PlotStyle) -> tuple[Any, Any]:
    """A headless (Agg) figure and axes of the configured size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(style.width_in, style.height_in))


def int_ticks(ax: Any, values: Sequence[int]) -> None:
    """Tick a log x axis at exactly the measured values, labelled as plain integers."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    if values:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())


def save_plot(fig: Any, ax: Any, path: Path, style: PlotStyle) -> Path:
    """Legend (if any), grid, tight layout, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=style.dpi)
    plt.close(fig)
    return path


def _latency_plot(ok: Sequence[Mapping[str, Any]], path: Path, style: PlotStyle) -> Path:
    fig, ax = new_figure(style)
    for backend in sorted({r["backend"] for r in ok}):
        pts = sorted(
            (r["batch"], r["p50_ms"], r["p99_ms"])
            for r in ok
            if r["backend"] == backend and r["concurrency"] == 1
        )
        if pts:
            xs, p50, p99 = zip(*pts, strict=True)
            (line,) = ax.plot(xs, p50, marker="o", label=f"{backend} p50")
            ax.plot(xs, p99, ls=":", color=line.get_color(), lw=1)
    ticks = sorted({r["batch"] for r in ok})
    labels = ("batch size", "latency [ms] (p50; dotted p99)", "latency vs batch (concurrency 1)")
    return _save_loglog(fig, ax, ticks, labels, path, style)


def _throughput_plot(ok: Sequence[Mapping[str, Any]], path: Path, style: PlotStyle) -> Path:
    fig, ax = new_figure(style)
    for backend in sorted({r["backend"] for r in ok}):
        for batch in sorted({r["batch"] for r in ok if r["backend"] == backend}):
            pts = sorted(
                (r["concurrency"], r["throughput_samples_s"])
                for r in ok
                if r["backend"] == backend and r["batch"] == batch
            )
            if len(pts) > 1:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=f"{backend} batch {batch}")
    ticks = sorted({r["concurrency"] for r in ok})
    labels = ("client concurrency", "throughput [samples/s]", "throughput vs concurrency")
    return _save_loglog(fig, ax, ticks, labels, path, style)


def _save_loglog(
    fig: Any, ax: Any, ticks: list[int], labels: tuple[str, str, str], path: Path, style: PlotStyle
) -> Path:
    """Log-log axes with integer ticks, labelled (x, y, title), saved."""
    xlabel, ylabel, title = labels
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    int_ticks(ax, ticks)
    return save_plot(fig, ax, path, style)


def bench_plots(rows: Sequence[Mapping[str, Any]], out_dir: Path, style: PlotStyle) -> list[Path]:
    """latency_vs_batch.png (p50, p99 dotted, concurrency 1) and throughput_vs_concurrency.png."""
    ok = [r for r in rows if r["status"] == "ok"]
    return [
        _latency_plot(ok, out_dir / "latency_vs_batch.png", style),
        _throughput_plot(ok, out_dir / "throughput_vs_concurrency.png", style),
    ]


def _batch(value: int | None, cap: int | None) -> str:
    """A knee batch, or `> cap` when the sweep ended before it."""
    if value is not None:
        return str(value)
    return f"> {cap}" if cap is not None else "n/a"


def knee_table(result: Mapping[str, Any]) -> str:
    """Measured knees beside the analytic flip batch, one row per measured layer."""
    pct = f"{100 * result['settings']['peak_fraction']:.0f} %"
    step = f"{100 * result['settings']['time_step']:.0f} %"
    rows = []
    for r in result["layers"]:
        limit = "FLOP/s" if r["kind"] == "compute" else "copy B/s"
        best = r["best_fraction_of_peak"]
        rows.append(
            [
                r["name"],
                r["type"],
                "never" if r["flip_batch"] is None else r["flip_batch"],
                _batch(r["knee_peak"], r["largest_batch"]),
                _batch(r["knee_time"], r["largest_batch"]),
                "" if best is None else f"{100 * best:.0f} % {limit} (batch {r['best_batch']})",
                f"{r['largest_batch']} ({r['stopped_by']})",
            ]
        )
    return github_table(
        [
            "layer",
            "type",
            "analytic flip batch",
            f"measured knee: ≥ {pct} of peak",
            f"measured knee: time/sample stops falling (< {step})",
            "best share of peak",
            "largest batch (stopped by)",
        ],
        rows,
    )


def knee_points_table(layer: Mapping[str, Any]) -> str:
    """One row per measured batch of one layer: time, achieved FLOP/s and B/s, share of peak and
    of the roof that applies (the memory level its working set fits)."""
    return github_table(
        ["batch", "µs/call", "µs/sample", "GFLOP/s", "GB/s", "% of peak", "% of roof", "stable"],
        [
            [
                p["batch"],
                f"{1e6 * p['seconds']:.3g}",
                f"{1e6 * p['seconds_per_sample']:.3g}",
                f"{p['achieved_flops'] / 1e9:.4g}",
                f"{p['achieved_bandwidth'] / 1e9:.4g}",
                f"{100 * p['fraction_of_peak']:.1f}",
                _share_of_roof(p),
                "yes" if p["stable"] else "no",
            ]
            for p in layer["points"]
        ],
    )


def _share_of_roof(point: Mapping[str, Any]) -> str:
    if point.get("fraction_of_roof") is None:  # a JSON from before the cache roofs
        return "n/a"
    return f"{100 * point['fraction_of_roof']:.1f} ({point['roof_level']})"


def tune_table(result: Mapping[str, Any], concurrency: int) -> str:
    """Every measured config at one concurrency, best throughput first; front and choice marked."""
    front = set(result["front"].get(str(concurrency), []))
    chosen = result["chosen"]
    rows = sorted(
        (r for r in result["rows"] if r["concurrency"] == concurrency),
        key=lambda r: -(r["throughput_rps"] if r["status"] == "ok" else -1.0),
    )
    return github_table(
        [
            "config",
            "req/s",
            "p50 ms",
            "p99 ms",
            "mean server batch",
            "windows (median of)",
            "Pareto front",
            "chosen",
        ],
        [
            [
                r["config"],
                _fmt(r["throughput_rps"], ".0f") if r["status"] == "ok" else r["status"],
                _fmt(r["p50_ms"], ".2f"),
                _fmt(r["p99_ms"], ".2f"),
                _fmt(r.get("mean_server_batch"), ".2f"),
                r.get("runs", 1),
                "yes" if r["config"] in front else "",
                "**chosen**"
                if (r["config"], r["concurrency"]) == (chosen["config"], chosen["concurrency"])
                else "",
            ]
            for r in rows
        ],
    )


def _decision(decision: Mapping[str, Any] | None) -> str:
    """The noise-aware rule's verdict in one sentence (nothing for results from before it)."""
    if not decision:
        return ""
    kept = "replaces the hand-written config" if decision["replaced"] else "hand-written kept"
    return f"Decision ({kept}): {decision['reason']}.\n\n"


def tune_intro(result: Mapping[str, Any]) -> str:
    """The choice in words, and the two checks on the tuner's own measurement."""
    cfg, c, chk = result["meta"]["config"], result["chosen"], result["checks"]
    ratios = ", ".join(
        f"{k} {v:.2f}x" for k, v in chk["throughput_vs_untuned"].items() if v is not None
    )
    batcher = (
        f", max queue delay {c['max_queue_delay_microseconds']} µs, preferred batch sizes "
        f"{list(c['preferred_batch_size']) or 'none'}"
        if c["dynamic_batching"]
        else ""
    )
    skipped = result["meta"]["not_measured"]
    return (
        f"Chosen at {c['concurrency']} clients (p99 budget {cfg['p99_budget_ms']} ms): "
        f"**{c['config']}** ({c['instance_count']} instance(s), dynamic batching "
        f"{'on' if c['dynamic_batching'] else 'off'}{batcher}): {c['throughput_rps']:.0f} req/s, "
        f"p99 {c['p99_ms']:.2f} ms; served as model `{c['model']}` from "
        f"`{Path(result['tuned_config']).parent.parent}`.\n\n"
        + _decision(result.get("decision"))
        + f"Checks: on the measured Pareto front: **{chk['on_front']}**; throughput vs the untuned "
        f"configs: {ratios} (≥ both: **{chk['beats_untuned']}**). "
        f"Sweep: {len(result['candidates'])} configs, {result['meta']['wall_s']} s"
        + (f", not measured (time budget): {', '.join(skipped)}" if skipped else "")
        + "."
    )


def tune_markdown(result: Mapping[str, Any], png_name: str) -> str:
    """results.md: the choice, the two checks, every point per concurrency and the plot."""
    lines = [tune_intro(result)]
    for conc in result["meta"]["config"]["concurrency"]:
        lines += ["", f"#### {conc} clients", "", tune_table(result, int(conc))]
    return "\n".join(lines + ["", f"![Pareto front]({png_name})", ""])


def pareto_plot(result: Mapping[str, Any], path: Path, style: PlotStyle) -> Path:
    """Throughput vs p99 per concurrency, each front joined, the chosen point starred."""
    fig, ax = new_figure(style)
    for conc in result["meta"]["config"]["concurrency"]:
        pts = {
            r["config"]: r
            for r in result["rows"]
            if r["concurrency"] == conc and r["status"] == "ok"
        }
        (dots,) = ax.plot(
            [r["p99_ms"] for r in pts.values()],
            [r["throughput_rps"] for r in pts.values()],
            "o",
            ms=4,
            alpha=0.6,
            label=f"{conc} clients",
        )
        front = [pts[name] for name in result["front"][str(conc)] if name in pts]
        ax.plot(
            [r["p99_ms"] for r in front],
            [r["throughput_rps"] for r in front],
            "-",
            color=dots.get_color(),
            lw=1,
        )
        for name, r in pts.items():
            if name.startswith("untuned_"):
                ax.annotate(name, (r["p99_ms"], r["throughput_rps"]), fontsize=6)
    c = result["chosen"]
    ax.plot(c["p99_ms"], c["throughput_rps"], "*", ms=14, color="k", label=f"chosen: {c['config']}")
    ax.axvline(
        result["meta"]["config"]["p99_budget_ms"], color="grey", ls="--", lw=1, label="p99 budget"
    )
    ax.set(
        xscale="log",
        xlabel="p99 latency [ms]",
        ylabel="throughput [req/s]",
        title="Triton configs: throughput vs p99 (lines: Pareto fronts)",
    )
    return save_plot(fig, ax, path, style)
