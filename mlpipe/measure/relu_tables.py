"""Tables, the Markdown digest and the plot of the relu_module benchmark (from its rows and
ratios; no timing here)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mlpipe.measure.relu_targets import CEILING, COPY, ORIGINAL, Row


def _n(n: int) -> str:
    return f"{n:.0e}" if n >= 1e4 else str(n)


def ratio_lines(ratios: list[dict]) -> list[str]:
    """The per-cell table: min and median ratios (interleaved) and the warm column."""
    from tabulate import tabulate

    def warm(r: dict, key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "-"

    table = [
        [
            r["dtype"],
            _n(r["n"]),
            r["form"],
            f"{r['ours_min_s'] * 1e6:,.2f}",
            f"{r['ours_median_s'] * 1e6:,.2f}",
            f"{r['ours_gbps']:.1f}",
            r["best_competitor"],
            f"{r['best_min_s'] * 1e6:,.2f}",
            f"{r['ratio_min']:.2f}",
            f"{r['ratio_median']:.2f}",
            warm(r, "warm_ratio_min"),
            warm(r, "warm_ratio_median"),
        ]
        for r in ratios
    ]
    headers = ["dtype", "n", "form", "ours min us", "ours med us", "ours GB/s", "best competitor",
               "its min us", "ratio min", "ratio med", "warm min", "warm med"]  # fmt: skip
    return tabulate(table, headers=headers, tablefmt="github").splitlines()


def reference_lines(rows: list[Row]) -> list[str]:
    from tabulate import tabulate

    refs = [
        [r.dtype, _n(r.n), r.contender, f"{r.min_s * 1e6:,.2f}", f"{r.median_s * 1e6:,.2f}",
         f"{r.gbps:.1f}", f"{r.faults_per_call:.0f}"]
        for r in rows
        if r.form in ("reference", "out-of-place")
    ]  # fmt: skip
    headers = [
        "dtype",
        "n",
        "reference / out-of-place",
        "min us",
        "median us",
        "GB/s",
        "faults/call",
    ]
    return tabulate(refs, headers=headers, tablefmt="github").splitlines()


def _style(row: Row) -> dict:
    """Colour by form, line style by library, so that 13 lines stay readable."""
    colour = {"out-of-place": "tab:blue", "out=": "tab:orange", "in-place": "tab:green"}
    refs = {COPY: ("black", "--"), CEILING: ("grey", "--"), ORIGINAL: ("tab:brown", "-.")}
    if row.contender in refs:
        c, ls = refs[row.contender]
        return {"color": c, "linestyle": ls, "linewidth": 1.5}
    if row.contender.startswith("relu_module"):
        return {"color": colour[row.form], "linestyle": "-", "linewidth": 2.5}
    ls = "--" if row.contender.startswith("np.") else ":"
    return {"color": colour[row.form], "linestyle": ls, "linewidth": 1.2, "alpha": 0.8}


def plot(cfg: DictConfig, rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = cfg.plot
    dtypes = sorted({r.dtype for r in rows})
    width = p.width_per_dtype * len(dtypes) + p.legend_width
    fig, axes = plt.subplots(1, len(dtypes), figsize=(width, p.height), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes, strict=True):
        for name in dict.fromkeys(r.contender for r in rows):
            sel = sorted(
                (r for r in rows if r.dtype == dtype and r.contender == name), key=lambda r: r.n
            )
            if sel:
                xs, ys = [r.n for r in sel], [r.gbps for r in sel]
                ax.plot(xs, ys, marker="o", markersize=3, label=name, **_style(sel[0]))
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="elements n",
            ylabel="GB/s (read + write, min time)",
            title=dtype,
        )
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - p.legend_width / width, 1))
    fig.savefig(path, dpi=p.dpi)
    plt.close(fig)


def summary_markdown(result: dict) -> str:
    """A Markdown digest of the run: targets, the per-cell table, idle CPU, bandwidth at the top."""
    m = result["machine"]  # mlpipe.common.provenance.machine_info + the benchmark's own keys
    lines = [
        f"# relu_module benchmark ({result['mode']} run)",
        "",
        f"{m['cpu']}, {m['cores']} CPUs, load {m['load_avg_at_start'][0]:.1f} at start, "
        f"{m['load_avg_at_end'][0]:.1f} at end; relu_module {m['relu-module']} ({m['simd']}, "
        f"{m['relu_module_threads']} threads), numpy {m['numpy']}, torch {m['torch']} "
        f"({m['torch_threads']} threads).",
        "",
        "| target | limit | worst measured | where | |",
        "|---|---|---|---|---|",
    ]
    for t in result["summary"]["targets"]:
        verdict = "pass" if t["pass"] else "MISS"
        lines.append(
            f"| {t['name']} | {t['limit']} | {t['worst']:.3g} | {t['where']} | {verdict} |"
        )
    lines += ["", "Per cell: relu_module / the faster of numpy and torch in the same form; "
              "`ratio` interleaved, `warm` back to back.", ""]  # fmt: skip
    lines += ratio_lines(result["ratios"])
    idle = result["idle_cpu_s"]
    lines += ["", f"CPU time of an idle process in the {idle['sleep_s']} s after one call of "
              f"n = {idle['n']:.0e}:", ""]  # fmt: skip
    lines += [f"- {k}: {v * 1e3:.1f} ms" for k, v in idle["by_library"].items()]
    for dtype, d in result["summary"]["gbps_at_largest_n"].items():
        lines += ["", f"GB/s at n = {d['n']:.0e}, {dtype} (min time; read + write):", ""]
        lines += [f"- {k}: {v}" for k, v in d.items() if k != "n"]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def log_lines(result: dict) -> list[str]:
    """What the CLI logs: both tables, each target's verdict, the idle CPU."""
    rows = [Row(**r) for r in result["rows"]]
    lines = [*ratio_lines(result["ratios"]), "", *reference_lines(rows)]
    for t in result["summary"]["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        lines.append(
            f"[{verdict}] {t['name']}: worst {t['worst']:.3g} (limit {t['limit']}) at {t['where']}"
        )
    idle = result["idle_cpu_s"]
    for which, cpu_s in idle["by_library"].items():
        lines.append(
            f"idle process after one call: {which} used {cpu_s * 1e3:.1f} ms CPU in "
            f"{idle['sleep_s']:.1f} s"
        )
    return lines
