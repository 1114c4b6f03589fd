"""What the relu_module benchmark's measurements say: per-cell ratios and the targets.

The contenders (:data:`FORMS` and the references), one measured :class:`Row` per contender, size
and dtype, and from the rows: relu_module's time over the faster of numpy and torch in the same
form (:func:`ratio_table`), and each target of ``relu_bench.targets`` with its worst case
(:func:`summarize`). Measuring is :mod:`mlpipe.measure.relu_bench`; tables and the plot are
:mod:`mlpipe.measure.relu_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

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
