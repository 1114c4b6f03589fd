"""Benchmark relu_module against numpy, torch, the original course design and copy references.

Every contender runs side by side in one process, round-robin within each repeat so that
noise from other processes hits all of them alike. Reports the min and median time per call,
effective bandwidth (one read plus one write of the array), and each relu_module form's ratio
to the faster of numpy and torch in the same form. Writes a table to the terminal and
``results.json`` + ``bench.png`` under ``--out-dir`` (default ``reports/relu``); the JSON's
``summary`` holds the target checks (documented in docs/relu_module.md).

    python benchmarks/relu_bench.py            # full run, n = 10 .. 1e8 (a few minutes)
    python benchmarks/relu_bench.py --quick    # <= ~1 minute, used by `make run`
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import relu_module
from mlpipe.common.provenance import cpu_model

log = logging.getLogger("relu_bench")

FULL_SIZES = [int(m * 10**e) for e in range(1, 8) for m in (1, 3)] + [100_000_000]  # 10, 30, ..., 3e7, 1e8
QUICK_SIZES = [10, 1_000, 100_000, 1_000_000, 10_000_000]
ORIGINAL_MAX_N = 10_000_000  # the list-based design needs ~GBs of Python floats beyond this
ORIGINAL_REPEATS = 5
CEILING_MIN_N = 1_000_000  # the streaming-copy reference spawns threads per call: meaningless below
SMALL_N = 16  # "per-call overhead" target applies at n <= this
TARGET_COPY_RATIO = 1.11  # out= and in-place: <= 1.11x np.copyto time (>= 90 % of its bandwidth)
TARGET_COPY_MIN_N = 1_000_000
TARGET_ORIGINAL_SPEEDUP = 50.0
TARGET_ORIGINAL_N = 1_000_000

# The original course project's kernel (list -> std::vector<double> -> list) and a 2-thread
# streaming copy, the practical memory-bandwidth ceiling on this machine. Built at bench time:
# they are references, not part of relu_module's API.
REFERENCE_CPP = r"""
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <emmintrin.h>
#include <cstdint>
#include <thread>
#include <vector>
namespace py = pybind11;

std::vector<double> relu_original(const std::vector<double>& x) {
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] > 0 ? x[i] : 0.0;
    return y;
}

static void stream_copy_part(const char* src, char* dst, std::size_t bytes) {
    std::size_t i = 0;
    while (i < bytes && (reinterpret_cast<std::uintptr_t>(dst + i) & 15u)) { dst[i] = src[i]; ++i; }
    for (; i + 64 <= bytes; i += 64) {
        __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
        __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
        __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    for (; i < bytes; ++i) dst[i] = src[i];
    _mm_sfence();
}

void stream_copy(py::array src, py::array dst, int threads) {
    const char* s = static_cast<const char*>(src.data());
    char* d = static_cast<char*>(dst.mutable_data());
    std::size_t bytes = static_cast<std::size_t>(src.nbytes());
    py::gil_scoped_release nogil;
    std::vector<std::thread> pool;
    std::size_t per = (bytes / threads) & ~std::size_t(63);
    for (int t = 1; t < threads; ++t) {
        std::size_t b = per * t, e = t + 1 == threads ? bytes : per * (t + 1);
        pool.emplace_back(stream_copy_part, s + b, d + b, e - b);
    }
    stream_copy_part(s, d, threads > 1 ? per : bytes);
    for (auto& th : pool) th.join();
}

PYBIND11_MODULE(relu_bench_refs, m) {
    m.def("relu_original", &relu_original, "The original design: list -> std::vector<double> -> list.");
    m.def("stream_copy", &stream_copy, "Copy with non-temporal stores on `threads` threads.");
}
"""


@dataclass
class Row:
    """One contender at one size and dtype."""

    dtype: str
    n: int
    form: str  # out-of-place | out= | in-place | reference
    contender: str
    min_s: float
    median_s: float
    repeats: int
    gbps: float = 0.0
    faults_per_call: float = 0.0  # minor page faults (whole process), the out-of-place cost


@dataclass
class Timer:
    """Round-robin timing of several callables: each repeat times every contender once.

    The order is shuffled every repeat (fixed seed): whoever runs right after torch meets its
    still-spinning OpenMP threads, and a fixed order would always hand that to the same one.
    """

    repeats: int
    min_sample_s: float
    samples: dict[str, list[float]] = field(default_factory=dict)
    faults: dict[str, float] = field(default_factory=dict)

    def run(self, fns: dict[str, Callable[[], object]]) -> None:
        loops = {}
        for name, fn in fns.items():
            fn()  # warm-up: first touch, lazy pool start, allocator state
            t0 = time.perf_counter()
            fn()
            dt = max(time.perf_counter() - t0, 1e-7)
            loops[name] = max(1, min(100_000, int(self.min_sample_s / dt)))
            self.samples[name] = []
            self.faults[name] = 0.0
        order = list(fns)
        rng = random.Random(0)
        for _ in range(self.repeats):
            rng.shuffle(order)
            for name in order:
                fn, k = fns[name], loops[name]
                f0 = _minor_faults()
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                self.samples[name].append((time.perf_counter() - t0) / k)
                self.faults[name] += (_minor_faults() - f0) / k / self.repeats


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def build_references(workdir: Path) -> ModuleType:
    """Compile REFERENCE_CPP with the interpreter's compiler and pybind11, and import it."""
    import pybind11

    src = workdir / "relu_bench_refs.cpp"
    src.write_text(REFERENCE_CPP)
    out = workdir / f"relu_bench_refs{sysconfig.get_config_var('EXT_SUFFIX')}"
    cxx = shlex.split(sysconfig.get_config_var("CXX") or "c++")
    cmd = [*cxx, "-O3", "-shared", "-fPIC", "-std=c++17", "-pthread",
           f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    spec = importlib.util.spec_from_file_location("relu_bench_refs", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def repeats_for(n: int, itemsize: int, quick: bool) -> int:
    """More repeats where calls are cheap, few where one call moves hundreds of MB."""
    nbytes = n * itemsize
    if nbytes >= 100e6:
        return 3 if quick else 7
    if nbytes >= 10e6:
        return 5 if quick else 11
    return 9 if quick else 41


def bench_size(refs: ModuleType | None, dtype: type, n: int, quick: bool, threads: int) -> list[Row]:
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    out = np.empty_like(x)
    buf = x.copy()  # in-place forms all work on this one; ReLU is idempotent, so data stays alike
    tx, tout, tbuf = torch.from_numpy(x), torch.from_numpy(out), torch.from_numpy(buf)
    fns: dict[str, Callable[[], object]] = {
        "relu_module.relu(x)": lambda: relu_module.relu(x),
        "np.maximum(x, 0)": lambda: np.maximum(x, 0),
        "torch.relu(t)": lambda: torch.relu(tx),
        "relu_module.relu(x, out=o)": lambda: relu_module.relu(x, out=out),
        "np.maximum(x, 0, out=o)": lambda: np.maximum(x, 0, out=out),
        "torch.clamp_min(t, 0, out=o)": lambda: torch.clamp_min(tx, 0, out=tout),
        "relu_module.relu_(x)": lambda: relu_module.relu_(buf),
        "np.maximum(x, 0, out=x)": lambda: np.maximum(buf, 0, out=buf),
        "torch.relu_(t)": lambda: torch.relu_(tbuf),
        "np.copyto(o, x)": lambda: np.copyto(out, x),
    }
    if refs is not None and n >= CEILING_MIN_N:
        fns["stream copy, 2 threads"] = lambda: refs.stream_copy(x, out, threads)
    timer = Timer(repeats=repeats_for(n, x.itemsize, quick), min_sample_s=2e-4 if quick else 5e-4)
    timer.run(fns)
    if refs is not None and n <= (ORIGINAL_MAX_N if not quick else TARGET_ORIGINAL_N):
        # ~70 ns per element: a few repeats pin it down, many would dominate the run time.
        xs = x.tolist()
        slow = Timer(repeats=min(ORIGINAL_REPEATS, timer.repeats), min_sample_s=timer.min_sample_s)
        slow.run({"original list->vector->list": lambda: refs.relu_original(xs)})
        timer.samples.update(slow.samples)
        timer.faults.update(slow.faults)
    forms = {
        "out-of-place": ("relu_module.relu(x)", "np.maximum(x, 0)", "torch.relu(t)"),
        "out=": ("relu_module.relu(x, out=o)", "np.maximum(x, 0, out=o)", "torch.clamp_min(t, 0, out=o)"),
        "in-place": ("relu_module.relu_(x)", "np.maximum(x, 0, out=x)", "torch.relu_(t)"),
    }
    form_of = {c: f for f, cs in forms.items() for c in cs}
    nbytes = 2 * n * x.itemsize  # one read + one write
    rows = []
    for name, samples in timer.samples.items():
        mn = min(samples)
        rows.append(Row(dtype=np.dtype(dtype).name, n=n, form=form_of.get(name, "reference"), contender=name,
                        min_s=mn, median_s=statistics.median(samples), repeats=len(samples), gbps=nbytes / mn / 1e9,
                        faults_per_call=timer.faults[name]))
    return rows


def ratio_table(rows: list[Row]) -> list[dict]:
    """Per (dtype, n, form): relu_module's time over the faster of numpy and torch."""
    out = []
    keys = sorted({(r.dtype, r.n, r.form) for r in rows if r.form != "reference"}, key=lambda k: (k[0], k[1], k[2]))
    for dtype, n, form in keys:
        group = [r for r in rows if (r.dtype, r.n, r.form) == (dtype, n, form)]
        ours = next(r for r in group if r.contender.startswith("relu_module"))
        others = [r for r in group if r is not ours]
        best_min = min(others, key=lambda r: r.min_s)
        best_med = min(others, key=lambda r: r.median_s)
        out.append({"dtype": dtype, "n": n, "form": form, "ours_min_s": ours.min_s, "ours_median_s": ours.median_s,
                    "ours_gbps": ours.gbps, "ours_faults_per_call": ours.faults_per_call, "best_competitor": best_min.contender, "best_min_s": best_min.min_s,
                    "ratio_min": ours.min_s / best_min.min_s, "ratio_median": ours.median_s / best_med.median_s})
    return out


def find(rows: list[Row], dtype: str, n: int, contender: str) -> Row | None:
    return next((r for r in rows if r.dtype == dtype and r.n == n and r.contender == contender), None)


def summarize(rows: list[Row], ratios: list[dict]) -> dict:
    """The issue's targets, each with the worst measured case (min times unless said otherwise)."""
    targets = []
    # 1. out= and in-place vs np.copyto at n >= 1e6.
    worst = None
    for r in ratios:
        if r["form"] in ("out=", "in-place") and r["n"] >= TARGET_COPY_MIN_N:
            copy = find(rows, r["dtype"], r["n"], "np.copyto(o, x)")
            if copy is not None:
                val = r["ours_min_s"] / copy.min_s
                if worst is None or val > worst[0]:
                    worst = (val, f"{r['form']} {r['dtype']} n={r['n']}")
    if worst:
        targets.append({"name": "out=/in-place time vs np.copyto at n>=1e6", "limit": TARGET_COPY_RATIO,
                        "worst": worst[0], "where": worst[1], "pass": worst[0] <= TARGET_COPY_RATIO})
    # 2. every form <= the faster of numpy/torch at every n.
    w = max(ratios, key=lambda r: r["ratio_min"])
    targets.append({"name": "time vs faster of numpy/torch, every form and n", "limit": 1.0, "worst": w["ratio_min"],
                    "where": f"{w['form']} {w['dtype']} n={w['n']} vs {w['best_competitor']}",
                    "pass": w["ratio_min"] <= 1.0})
    # 3. per-call overhead at n <= 16 vs the numpy ufunc.
    small = [r for r in ratios if r["n"] <= SMALL_N]
    if small:
        vals = []
        for r in small:
            np_name = {"out-of-place": "np.maximum(x, 0)", "out=": "np.maximum(x, 0, out=o)",
                       "in-place": "np.maximum(x, 0, out=x)"}[r["form"]]
            ref = find(rows, r["dtype"], r["n"], np_name)
            vals.append((r["ours_min_s"] / ref.min_s, f"{r['form']} {r['dtype']} n={r['n']}", r["ours_min_s"]))
        v = max(vals)
        targets.append({"name": "per-call time at n<=16 vs numpy ufunc", "limit": 1.0, "worst": v[0],
                        "where": f"{v[1]} ({v[2] * 1e6:.2f} us)", "pass": v[0] <= 1.0})
    # 4. speed-up over the original design at n = 1e6.
    sp = []
    for dtype in sorted({r.dtype for r in rows}):
        orig = find(rows, dtype, TARGET_ORIGINAL_N, "original list->vector->list")
        ours = find(rows, dtype, TARGET_ORIGINAL_N, "relu_module.relu(x)")
        if orig and ours:
            sp.append((orig.min_s / ours.min_s, dtype))
    if sp:
        v = min(sp)
        targets.append({"name": "speed-up over the original design at n=1e6 (out-of-place)",
                        "limit": TARGET_ORIGINAL_SPEEDUP, "worst": v[0], "where": v[1],
                        "pass": v[0] >= TARGET_ORIGINAL_SPEEDUP})
    ceiling = []
    for r in ratios:
        ref = find(rows, r["dtype"], r["n"], "stream copy, 2 threads")
        if ref is not None and r["n"] >= 10 * CEILING_MIN_N:
            ceiling.append({"dtype": r["dtype"], "n": r["n"], "form": r["form"],
                            "fraction_of_ceiling_bandwidth": ref.min_s / r["ours_min_s"]})
    best = {}
    for dtype in sorted({r.dtype for r in rows}):
        big = max(r.n for r in rows if r.dtype == dtype)
        best[dtype] = {r.contender: round(r.gbps, 2) for r in rows if r.dtype == dtype and r.n == big}
        best[dtype]["n"] = big
    return {"targets": targets, "all_pass": all(t["pass"] for t in targets),
            "vs_stream_copy_ceiling": ceiling, "gbps_at_largest_n": best}


def print_tables(rows: list[Row], ratios: list[dict]) -> None:
    from tabulate import tabulate

    table = [[r["dtype"], f"{r['n']:.0e}" if r["n"] >= 1e4 else r["n"], r["form"], f"{r['ours_min_s'] * 1e6:,.2f}",
              f"{r['ours_median_s'] * 1e6:,.2f}", f"{r['ours_gbps']:.1f}", r["best_competitor"],
              f"{r['best_min_s'] * 1e6:,.2f}", f"{r['ratio_min']:.2f}", f"{r['ratio_median']:.2f}"] for r in ratios]
    print(tabulate(table, headers=["dtype", "n", "form", "ours min us", "ours med us", "ours GB/s",
                                   "best competitor", "its min us", "ratio(min)", "ratio(med)"]))
    refs = [[r.dtype, f"{r.n:.0e}" if r.n >= 1e4 else r.n, r.contender, f"{r.min_s * 1e6:,.2f}",
             f"{r.median_s * 1e6:,.2f}", f"{r.gbps:.1f}", f"{r.faults_per_call:.0f}"]
            for r in rows if r.form == "reference" or r.form == "out-of-place"]
    print()
    print(tabulate(refs, headers=["dtype", "n", "reference / out-of-place", "min us", "median us", "GB/s", "faults/call"]))


def _style(row: Row) -> dict:
    """Colour by form, line style by library, so that 13 lines stay readable."""
    colour = {"out-of-place": "tab:blue", "out=": "tab:orange", "in-place": "tab:green"}
    refs = {"np.copyto(o, x)": ("black", "--"), "stream copy, 2 threads": ("grey", "--"),
            "original list->vector->list": ("tab:brown", "-.")}
    if row.contender in refs:
        c, ls = refs[row.contender]
        return {"color": c, "linestyle": ls, "linewidth": 1.5}
    if row.contender.startswith("relu_module"):
        return {"color": colour[row.form], "linestyle": "-", "linewidth": 2.5}
    ls = "--" if row.contender.startswith("np.") else ":"
    return {"color": colour[row.form], "linestyle": ls, "linewidth": 1.2, "alpha": 0.8}


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r.dtype for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes) + 3, 5.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for name in dict.fromkeys(r.contender for r in rows):
            sel = sorted((r for r in rows if r.dtype == dtype and r.contender == name), key=lambda r: r.n)
            if sel:
                ax.plot([r.n for r in sel], [r.gbps for r in sel], marker="o", markersize=3, label=name, **_style(sel[0]))
        ax.set(xscale="log", yscale="log", xlabel="elements n", ylabel="GB/s (read + write, min time)", title=dtype)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 3 / (6.5 * len(dtypes) + 3), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_markdown(result: dict) -> str:
    """A short Markdown digest of the run (targets, bandwidth at the largest n) for reports."""
    m = result["machine"]
    lines = [f"# relu_module benchmark ({result['mode']} run)", "",
             f"{m['processor']}, {m['cpus']} CPUs, load {m['load_avg_at_start'][0]:.1f} at start; "
             f"relu_module {m['relu_module']} ({m['simd']}, {m['relu_module_threads']} threads), "
             f"numpy {m['numpy']}, torch {m['torch']} ({m['torch_threads']} threads).", "",
             "| target | limit | worst measured | where | |", "|---|---|---|---|---|"]
    for t in result["summary"]["targets"]:
        lines.append(f"| {t['name']} | {t['limit']} | {t['worst']:.3g} | {t['where']} | {'pass' if t['pass'] else 'MISS'} |")
    for dtype, d in result["summary"]["gbps_at_largest_n"].items():
        lines += ["", f"GB/s at n = {d['n']:.0e}, {dtype} (min time; read + write):", ""]
        lines += [f"- {k}: {v}" for k, v in d.items() if k != "n"]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def machine_info(threads: int) -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "relu_module": relu_module.__version__, "simd": relu_module.simd_level(),
            "relu_module_threads": relu_module.get_num_threads(), "torch_threads": torch.get_num_threads(),
            "ceiling_threads": threads, "cpus": os.cpu_count(), "machine": platform.machine(),
            "processor": cpu_model(), "load_avg_at_start": os.getloadavg()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (<= ~1 min), for `make run`")
    p.add_argument("--sizes", type=float, nargs="+", help="element counts (default: 10..1e8, log steps)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2, help="threads of the streaming-copy ceiling reference")
    p.add_argument("--no-references", action="store_true", help="skip compiling the original design and ceiling")
    p.add_argument("--out-dir", type=Path, default=Path("reports/relu"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes] if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        refs = None
        if not args.no_references:
            try:
                refs = build_references(Path(tmp))
            except (subprocess.CalledProcessError, OSError) as err:
                detail = getattr(err, "stderr", "") or str(err)
                log.warning("could not build the reference extension; skipping it: %s", detail[-2000:])
        for dtype_name in args.dtypes:
            for n in sizes:
                t0 = time.perf_counter()
                rows.extend(bench_size(refs, np.dtype(dtype_name).type, n, args.quick, args.threads))
                log.info("%s n=%.0e done in %.1f s", dtype_name, n, time.perf_counter() - t0)
    ratios = ratio_table(rows)
    print_tables(rows, ratios)
    summary = summarize(rows, ratios)
    notes = [f"original design measured only up to n={ORIGINAL_MAX_N if not args.quick else TARGET_ORIGINAL_N:.0e} "
             "(a Python list of 1e8 floats needs ~3 GB and minutes)",
             f"stream copy ceiling measured from n={CEILING_MIN_N:.0e} (it spawns threads per call)",
             "bandwidth counts one read and one write of the array (2 * n * itemsize bytes)",
             "torch.relu has no out=; torch's out= form is torch.clamp_min(t, 0, out=o)",
             "relu_module's out-of-place outputs >= 32 MiB reuse cached huge-page blocks "
             "(RELU_MODULE_CACHE_MB=0 measures without the cache)",
             "figures from a shared machine are noisy: compare min times, re-run when quiet"]
    result = {"mode": "quick" if args.quick else "full", "machine": machine_info(args.threads),
              "elapsed_s": time.time() - started, "summary": summary, "notes": notes,
              "ratios": ratios, "rows": [asdict(r) for r in rows]}
    (args.out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (args.out_dir / "summary.md").write_text(summary_markdown(result))
    plot(rows, args.out_dir / "bench.png")
    print()
    for t in summary["targets"]:
        print(f"[{'PASS' if t['pass'] else 'MISS'}] {t['name']}: worst {t['worst']:.3g} (limit {t['limit']}) at {t['where']}")
    for c in summary["vs_stream_copy_ceiling"]:
        print(f"  {c['form']:<13} {c['dtype']} n={c['n']:.0e}: {c['fraction_of_ceiling_bandwidth']:.0%} of the 2-thread streaming-copy bandwidth")
    print(f"\nwrote {args.out_dir}/results.json, summary.md and bench.png in {result['elapsed_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
