"""Benchmark relu_module against numpy, torch, the original course design and copy references.

Every contender runs side by side in one process, round-robin within each repeat so that noise
from other processes hits all of them alike ("interleaved"). Reports, per size, dtype and form
(out-of-place, ``out=``, in place), relu_module's min and median time over the faster of numpy
and torch in the same form; a back-to-back ("warm") column where each side is called many times
in a row; and the CPU time an idle process pays after one call. Writes ``results.json``,
``summary.md`` and ``bench.png`` under ``relu_bench.out_dir`` (conf/relu_bench/).

    python -m mlpipe.measure.relu_bench                    # full sweep (a few minutes)
    python -m mlpipe.measure.relu_bench relu_bench=quick   # <= ~1 minute, the DVC stage
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import relu_module
from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.errors import ConfigError
from mlpipe.common.provenance import cpu_model

log = logging.getLogger("relu_bench")

FORMS = {  # form -> (relu_module, numpy, torch) contender names
    "out-of-place": ("relu_module.relu(x)", "np.maximum(x, 0)", "torch.relu(t)"),
    "out=": (
        "relu_module.relu(x, out=o)",
        "np.maximum(x, 0, out=o)",
        "torch.clamp_min(t, 0, out=o)",
    ),
    "in-place": ("relu_module.relu_(x)", "np.maximum(x, 0, out=x)", "torch.relu_(t)"),
}
COPY = "np.copyto(o, x)"
CEILING = "stream copy, threads"
ORIGINAL = "original list->vector->list"

# The original course project's kernel (list -> std::vector<double> -> list) and a multi-thread
# streaming copy, the practical memory-bandwidth ceiling. Built at bench time: they are
# references, not part of relu_module's API.
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
    m.def("relu_original", &relu_original, "The original design: list -> vector -> list.");
    m.def("stream_copy", &stream_copy, "Copy with non-temporal stores on `threads` threads.");
}
"""

# A fresh process: one call (the pool starts), then CPU time (all threads) across a sleep.
IDLE_PROBE = """
import resource, sys, time
import numpy as np
which, n, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
if which == "relu_module":
    import relu_module
    call = lambda: relu_module.relu(x)
elif which == "torch":
    import torch
    t = torch.from_numpy(x)
    call = lambda: torch.relu(t)
else:
    call = lambda: np.maximum(x, 0)
call()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
time.sleep(sleep_s)
print(cpu() - c0)
"""


#: A relu_bench config value that cannot work (the shared ConfigError; the message names the fix).
ReluBenchConfigError = ConfigError


@dataclass
class Row:
    """One contender at one size and dtype (interleaved timing)."""

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
    max_loops: int
    seed: int
    samples: dict[str, list[float]] = field(default_factory=dict)
    faults: dict[str, float] = field(default_factory=dict)

    def _loops(self, fn: Callable[[], object]) -> int:
        fn()  # warm-up: first touch, lazy pool start, allocator state
        t0 = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-9)
        return max(1, min(self.max_loops, int(self.min_sample_s / dt)))

    def run(self, fns: Mapping[str, Callable[[], object]]) -> None:
        loops = {name: self._loops(fn) for name, fn in fns.items()}
        for name in fns:
            self.samples[name], self.faults[name] = [], 0.0
        order = list(fns)
        rng = random.Random(self.seed)
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
    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    cmd = [*cxx, "-O3", "-shared", "-fPIC", "-std=c++17", "-pthread", *includes, str(src)]
    subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True, text=True)
    spec = importlib.util.spec_from_file_location("relu_bench_refs", out)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the compiled reference module {out}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def repeats_for(cfg: DictConfig, nbytes: int) -> int:
    """Repeats of the largest cfg.repeats tier whose min_bytes the array reaches."""
    for tier in sorted(cfg.repeats, key=lambda t: -t.min_bytes):
        if nbytes >= tier.min_bytes:
            return int(tier.repeats)
    raise ReluBenchConfigError("relu_bench.repeats needs a tier with min_bytes: 0")


@dataclass
class Operands:
    """The arrays of one size and dtype, as numpy arrays and zero-copy tensors."""

    x: np.ndarray
    out: np.ndarray
    buf: np.ndarray  # the in-place forms all work on this one; ReLU is idempotent

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.x), torch.from_numpy(self.out), torch.from_numpy(self.buf)


def make_operands(dtype: type, n: int) -> Operands:
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    return Operands(x=x, out=np.empty_like(x), buf=x.copy())


def contenders(ops: Operands) -> dict[str, Callable[[], object]]:
    """Every form of every library, plus np.copyto, keyed by the names in FORMS."""
    x, out, buf = ops.x, ops.out, ops.buf
    tx, tout, tbuf = ops.tensors
    fns: dict[str, Callable[[], object]] = {
        FORMS["out-of-place"][0]: lambda: relu_module.relu(x),
        FORMS["out-of-place"][1]: lambda: np.maximum(x, 0),
        FORMS["out-of-place"][2]: lambda: torch.relu(tx),
        FORMS["out="][0]: lambda: relu_module.relu(x, out=out),
        FORMS["out="][1]: lambda: np.maximum(x, 0, out=out),
        FORMS["out="][2]: lambda: torch.clamp_min(tx, 0, out=tout),
        FORMS["in-place"][0]: lambda: relu_module.relu_(buf),
        FORMS["in-place"][1]: lambda: np.maximum(buf, 0, out=buf),
        FORMS["in-place"][2]: lambda: torch.relu_(tbuf),
        COPY: lambda: np.copyto(out, x),
    }
    return fns


def bench_size(cfg: DictConfig, refs: ModuleType | None, dtype: type, n: int) -> list[Row]:
    """Interleaved timing of every contender at one size and dtype."""
    ops = make_operands(dtype, n)
    fns = contenders(ops)
    if refs is not None and n >= cfg.ceiling_min_n:
        fns[CEILING] = lambda: refs.stream_copy(ops.x, ops.out, int(cfg.ceiling_threads))
    timer = Timer(repeats_for(cfg, n * ops.x.itemsize), cfg.min_sample_s, cfg.max_loops, cfg.seed)
    timer.run(fns)
    if refs is not None and n <= cfg.original_max_n:
        # ~70 ns per element: a few repeats pin it down, many would dominate the run time.
        xs = ops.x.tolist()
        repeats = min(int(cfg.original_repeats), timer.repeats)
        slow = Timer(repeats, cfg.min_sample_s, cfg.max_loops, cfg.seed)
        slow.run({ORIGINAL: lambda: refs.relu_original(xs)})
        timer.samples.update(slow.samples)
        timer.faults.update(slow.faults)
    return rows_of(timer, dtype, n)


def rows_of(timer: Timer, dtype: type, n: int) -> list[Row]:
    form_of = {c: f for f, cs in FORMS.items() for c in cs}
    nbytes = 2 * n * np.dtype(dtype).itemsize  # one read + one write
    rows = []
    for name, samples in timer.samples.items():
        mn = min(samples)
        rows.append(
            Row(
                dtype=np.dtype(dtype).name,
                n=n,
                form=form_of.get(name, "reference"),
                contender=name,
                min_s=mn,
                median_s=statistics.median(samples),
                repeats=len(samples),
                gbps=nbytes / mn / 1e9,
                faults_per_call=timer.faults[name],
            )
        )
    return rows


def back_to_back(
    cfg: DictConfig, fns: Mapping[str, Callable[[], object]]
) -> dict[str, list[float]]:
    """Per-call times, each contender called cfg.warm.calls times in a row, rounds alternating."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(int(cfg.warm.rounds)):
        for name, fn in fns.items():
            for _ in range(int(cfg.warm.calls)):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return samples


def warm_column(cfg: DictConfig, ratios: list[dict]) -> None:
    """Adds warm_min_s / warm_ratio_min / warm_ratio_median to each ratio cell (in place)."""
    for cell in ratios:
        if cell["n"] > cfg.warm.max_n:
            continue
        ops = make_operands(np.dtype(cell["dtype"]).type, cell["n"])
        fns = contenders(ops)
        ours = FORMS[cell["form"]][0]
        theirs = cell["best_competitor"]
        samples = back_to_back(cfg, {ours: fns[ours], theirs: fns[theirs]})
        cell["warm_ours_min_s"] = min(samples[ours])
        cell["warm_best_min_s"] = min(samples[theirs])
        cell["warm_ratio_min"] = min(samples[ours]) / min(samples[theirs])
        cell["warm_ratio_median"] = statistics.median(samples[ours]) / statistics.median(
            samples[theirs]
        )


def idle_cpu(cfg: DictConfig) -> dict[str, float]:
    """CPU seconds a fresh process spends sleeping cfg.idle.sleep_s after one call, per library."""
    result = {}
    for which in ("relu_module", "torch", "numpy"):
        argv = [sys.executable, "-c", IDLE_PROBE, which, str(cfg.idle.n), str(cfg.idle.sleep_s)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=cfg.idle.timeout_s)
        if proc.returncode != 0:
            log.warning("idle probe for %s failed: %s", which, proc.stderr[-500:])
            continue
        result[which] = float(proc.stdout.split()[-1])
    return result


def ratio_table(rows: list[Row]) -> list[dict]:
    """Per (dtype, n, form): relu_module's time over the faster of numpy and torch."""
    out = []
    keys = sorted({(r.dtype, r.n, r.form) for r in rows if r.form != "reference"})
    for dtype, n, form in keys:
        group = [r for r in rows if (r.dtype, r.n, r.form) == (dtype, n, form)]
        ours = next(r for r in group if r.contender.startswith("relu_module"))
        others = [r for r in group if r is not ours]
        best_min = min(others, key=lambda r: r.min_s)
        best_med = min(others, key=lambda r: r.median_s)
        out.append(
            {
                "dtype": dtype,
                "n": n,
                "form": form,
                "ours_min_s": ours.min_s,
                "ours_median_s": ours.median_s,
                "ours_gbps": ours.gbps,
                "ours_faults_per_call": ours.faults_per_call,
                "best_competitor": best_min.contender,
                "best_min_s": best_min.min_s,
                "best_median_s": best_med.median_s,
                "ratio_min": ours.min_s / best_min.min_s,
                "ratio_median": ours.median_s / best_med.median_s,
            }
        )
    return out


def find(rows: list[Row], dtype: str, n: int, contender: str) -> Row | None:
    return next(
        (r for r in rows if r.dtype == dtype and r.n == n and r.contender == contender), None
    )


def _target(
    name: str, limit: float, worst: float, where: str, higher_is_better: bool = False
) -> dict:
    ok = worst >= limit if higher_is_better else worst <= limit
    return {"name": name, "limit": limit, "worst": worst, "where": where, "pass": ok}


def target_copy(t: DictConfig, rows: list[Row], ratios: list[dict]) -> list[dict]:
    """out= and in place vs np.copyto at n >= copy_min_n."""
    worst: tuple[float, str] | None = None
    for r in ratios:
        copy = find(rows, r["dtype"], r["n"], COPY)
        if r["form"] in ("out=", "in-place") and r["n"] >= t.copy_min_n and copy is not None:
            val = r["ours_min_s"] / copy.min_s
            if worst is None or val > worst[0]:
                worst = (val, f"{r['form']} {r['dtype']} n={r['n']}")
    if worst is None:
        return []
    name = f"out=/in-place time vs np.copyto at n>={t.copy_min_n:.0e}"
    return [_target(name, t.copy_ratio, worst[0], worst[1])]


def target_competitors(t: DictConfig, ratios: list[dict]) -> list[dict]:
    """Every cell vs the faster of numpy/torch: min and median ratios."""
    out = []
    for key, limit, label in (
        ("ratio_min", t.ratio_min, "min"),
        ("ratio_median", t.ratio_median, "median"),
    ):
        w = max(ratios, key=lambda r: r[key])
        where = f"{w['form']} {w['dtype']} n={w['n']} vs {w['best_competitor']}"
        name = f"time vs faster of numpy/torch, every form and n ({label})"
        out.append(_target(name, limit, w[key], where))
    return out


def target_small(t: DictConfig, rows: list[Row], ratios: list[dict]) -> list[dict]:
    """Per-call overhead at n <= small_n vs the numpy ufunc of the same form."""
    vals = []
    for r in ratios:
        if r["n"] <= t.small_n:
            ref = find(rows, r["dtype"], r["n"], FORMS[r["form"]][1])
            where = f"{r['form']} {r['dtype']} n={r['n']} ({r['ours_min_s'] * 1e6:.2f} us)"
            vals.append((r["ours_min_s"] / ref.min_s, where))
    if not vals:
        return []
    v = max(vals)
    return [_target(f"per-call time at n<={t.small_n} vs numpy ufunc", 1.0, v[0], v[1])]


def target_original(t: DictConfig, rows: list[Row]) -> list[dict]:
    """Speed-up over the original design at n = original_n (out-of-place)."""
    sp = []
    for dtype in sorted({r.dtype for r in rows}):
        orig = find(rows, dtype, t.original_n, ORIGINAL)
        ours = find(rows, dtype, t.original_n, FORMS["out-of-place"][0])
        if orig and ours:
            sp.append((orig.min_s / ours.min_s, dtype))
    if not sp:
        return []
    v = min(sp)
    name = f"speed-up over the original design at n={t.original_n:.0e} (out-of-place)"
    return [_target(name, t.original_speedup, v[0], v[1], higher_is_better=True)]


def summarize(cfg: DictConfig, rows: list[Row], ratios: list[dict]) -> dict:
    """The targets, each with the worst measured case, and the bandwidth digests."""
    t = cfg.targets
    targets = [
        *target_copy(t, rows, ratios),
        *target_competitors(t, ratios),
        *target_small(t, rows, ratios),
        *target_original(t, rows),
    ]
    ceiling = []
    for r in ratios:
        ref = find(rows, r["dtype"], r["n"], CEILING)
        if ref is not None and r["n"] >= 10 * cfg.ceiling_min_n:
            frac = ref.min_s / r["ours_min_s"]
            ceiling.append(
                {
                    "dtype": r["dtype"],
                    "n": r["n"],
                    "form": r["form"],
                    "fraction_of_ceiling_bandwidth": frac,
                }
            )
    best = {}
    for dtype in sorted({r.dtype for r in rows}):
        big = max(r.n for r in rows if r.dtype == dtype)
        best[dtype] = {
            r.contender: round(r.gbps, 2) for r in rows if r.dtype == dtype and r.n == big
        }
        best[dtype]["n"] = big
    return {
        "targets": targets,
        "all_pass": all(x["pass"] for x in targets),
        "vs_stream_copy_ceiling": ceiling,
        "gbps_at_largest_n": best,
    }


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
    m = result["machine"]
    lines = [
        f"# relu_module benchmark ({result['mode']} run)",
        "",
        f"{m['processor']}, {m['cpus']} CPUs, load {m['load_avg_at_start'][0]:.1f} at start, "
        f"{m['load_avg_at_end'][0]:.1f} at end; relu_module {m['relu_module']} ({m['simd']}, "
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


def machine_info(cfg: DictConfig) -> dict:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "relu_module": relu_module.__version__,
        "simd": relu_module.simd_level(),
        "policy": relu_module._ext.policy(),  # mid-size thresholds from this CPU's caches
        "relu_module_threads": relu_module.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "ceiling_threads": int(cfg.ceiling_threads),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "load_avg_at_start": os.getloadavg(),
    }


def check_config(cfg: DictConfig) -> None:
    """Config mistakes as one-line errors naming the key and the fix."""
    if not cfg.sizes or any(not isinstance(n, int) or n < 1 for n in cfg.sizes):
        raise ReluBenchConfigError(
            f"relu_bench.sizes must be positive integers, got {list(cfg.sizes)}"
        )
    bad = [d for d in cfg.dtypes if d not in ("float32", "float64")]
    if not cfg.dtypes or bad:
        raise ReluBenchConfigError(
            f"relu_bench.dtypes must be float32 and/or float64, got {list(cfg.dtypes)}"
        )
    positive = {
        "min_sample_s": cfg.min_sample_s,
        "max_loops": cfg.max_loops,
        "warm.rounds": cfg.warm.rounds,
        "warm.calls": cfg.warm.calls,
        "idle.n": cfg.idle.n,
        "ceiling_threads": cfg.ceiling_threads,
        "original_repeats": cfg.original_repeats,
    }
    for key, value in positive.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ReluBenchConfigError(f"relu_bench.{key} must be a positive number, got {value!r}")
    if not any(t.min_bytes == 0 for t in cfg.repeats):
        raise ReluBenchConfigError(
            "relu_bench.repeats needs a tier with min_bytes: 0 (the smallest arrays)"
        )


def measure(cfg: DictConfig) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        refs = None
        if cfg.references:
            try:
                refs = build_references(Path(tmp))
            except (subprocess.CalledProcessError, OSError, ImportError) as err:
                detail = getattr(err, "stderr", "") or str(err)
                log.warning(
                    "could not build the reference extension; skipping it: %s", detail[-2000:]
                )
        for dtype_name in cfg.dtypes:
            for n in cfg.sizes:
                t0 = time.perf_counter()
                rows.extend(bench_size(cfg, refs, np.dtype(dtype_name).type, int(n)))
                log.info("%s n=%.0e done in %.1f s", dtype_name, n, time.perf_counter() - t0)
    return rows


def notes(cfg: DictConfig) -> list[str]:
    return [
        f"original design measured only up to n={cfg.original_max_n:.0e} "
        "(a Python list of 1e8 floats needs ~3 GB and minutes)",
        f"stream copy ceiling ({cfg.ceiling_threads} threads) measured from "
        f"n={cfg.ceiling_min_n:.0e} "
        "(it spawns threads per call)",
        "bandwidth counts one read and one write of the array (2 * n * itemsize bytes)",
        "torch.relu has no out=; torch's out= form is torch.clamp_min(t, 0, out=o)",
        "ratio: interleaved timing (contenders round-robin, shuffled); warm: each side called "
        f"{cfg.warm.calls}x back to back per round, {cfg.warm.rounds} rounds, "
        f"up to n={cfg.warm.max_n:.0e}",
        "relu_module's out-of-place outputs >= 32 MiB reuse cached huge-page blocks "
        "(RELU_MODULE_CACHE_MB=0 measures without the cache)",
        "figures from a shared machine are noisy: compare min times, re-run when quiet",
    ]


def run(cfg: DictConfig) -> dict:
    """The whole benchmark (interleaved sweep, warm column, idle CPU); writes cfg.out_dir."""
    check_config(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine = machine_info(cfg)
    rows = measure(cfg)
    ratios = ratio_table(rows)
    warm_column(cfg, ratios)
    idle = {"n": int(cfg.idle.n), "sleep_s": float(cfg.idle.sleep_s), "by_library": idle_cpu(cfg)}
    machine["load_avg_at_end"] = os.getloadavg()
    result = {
        "mode": cfg.mode,
        "machine": machine,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "elapsed_s": time.time() - started,
        "summary": summarize(cfg, rows, ratios),
        "idle_cpu_s": idle,
        "notes": notes(cfg),
        "ratios": ratios,
        "rows": [asdict(r) for r in rows],
    }
    if cfg.tensor_path.enabled:  # the torch operators: mlpipe/measure/relu_torch_bench.py
        from mlpipe.measure.relu_torch_bench import run_tensor_path

        result["tensor_path"] = run_tensor_path(cfg.tensor_path)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "summary.md").write_text(summary_markdown(result))
    plot(cfg, rows, out_dir / "bench.png")
    return result


def log_result(result: dict, out_dir: str) -> None:
    for line in (
        ratio_lines(result["ratios"]) + [""] + reference_lines([Row(**r) for r in result["rows"]])
    ):
        log.info("%s", line)
    for t in result["summary"]["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        log.info(
            "[%s] %s: worst %.3g (limit %s) at %s",
            verdict,
            t["name"],
            t["worst"],
            t["limit"],
            t["where"],
        )
    for which, cpu_s in result["idle_cpu_s"]["by_library"].items():
        log.info("idle process after one call: %s used %.1f ms CPU in %.1f s", which, cpu_s * 1e3,
                 result["idle_cpu_s"]["sleep_s"])  # fmt: skip
    if "tensor_path" in result:
        from mlpipe.measure.relu_torch_bench import table_lines

        for line in table_lines(result["tensor_path"]):
            log.info("%s", line)
    log.info(
        "wrote %s/results.json, summary.md and bench.png in %.0f s", out_dir, result["elapsed_s"]
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="relu_bench")
@entry_point
def main(cfg: DictConfig) -> None:
    log_result(run(cfg.relu_bench), cfg.relu_bench.out_dir)


if __name__ == "__main__":
    main()
