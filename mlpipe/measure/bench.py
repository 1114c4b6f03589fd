"""mlpipe-bench: latency p50/p90/p99 and throughput of the trained model on every backend.

Each (backend, batch, concurrency) cell runs closed-loop windows of the one load generator
(`mlpipe.measure.loadgen`) until p50 settles. Measured time is related to the model's analytic
FLOPs and bytes against the device peak (`mlpipe.measure.cost`), like nanoGPT's `estimate_mfu`.
Backends live in `mlpipe.measure.backends`; one that cannot run here gets a row
`unavailable: <reason>` and the run goes on. Inputs are random images of the served shape
(seeded): speed does not depend on pixel values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.common.cli import entry_point
from mlpipe.common.config import positive_int, positive_ints, require
from mlpipe.common.provenance import machine_info
from mlpipe.measure.backends import BACKENDS, BenchContext, Target, Unavailable
from mlpipe.measure.cost import analytic_columns, best_of, device_peaks_for, model_cost
from mlpipe.measure.loadgen import LoadSettings, Workers, run_until_stable
from mlpipe.measure.peaks import observed_vs_peak
from mlpipe.measure.roofline import DevicePeaks
from mlpipe.measure.rounds import Stability
from mlpipe.measure.served import Requests, served_point, window_row
from mlpipe.measure.tables import PlotStyle, bench_plots, bench_table

log = logging.getLogger(__name__)


def check_bench_config(bench_cfg: Mapping[str, Any]) -> None:
    """Reject unknown backends and bad batch/concurrency lists before anything starts."""
    backends = list(bench_cfg["backends"])
    unknown = [b for b in backends if b not in BACKENDS]
    require(
        bool(backends) and not unknown,
        "bench.backends",
        f"unknown backend(s) {unknown or backends!r}; valid choices: {list(BACKENDS)}",
    )
    for key in ("batch_sizes", "concurrency", "inprocess_concurrency"):
        positive_ints(bench_cfg[key], f"bench.{key}")
    models = bench_cfg["triton_models"]
    require(
        bool(models) and all(isinstance(m, str) and m for m in models),
        "bench.triton_models",
        f"must be a non-empty list of served model names, e.g. [digits, digits_nobatch], "
        f"got {models!r}",
    )
    positive_int(bench_cfg["requests"], "bench.requests")
    positive_int(bench_cfg["warmup"], "bench.warmup", minimum=0)
    LoadSettings.from_config(bench_cfg["load"], "bench.load")
    Stability.from_config(bench_cfg["stability"], "bench.stability")


def measure_cell(
    target: Target, batch: int, concurrency: int, bcfg: Mapping[str, Any], factory: Any
) -> dict[str, Any]:
    """Run the stability loop for one cell and summarise it as a row: a served backend through
    the one served-point measurement (with Triton's mean server batch), the others in-process."""
    load = LoadSettings.from_config(bcfg["load"], "bench.load")
    settings = dataclasses.replace(load, mode=target.mode)
    stability = Stability.from_config(bcfg["stability"], "bench.stability")
    requests, warmup = int(bcfg["requests"]), int(bcfg["warmup"])
    if target.server is not None:
        sends = Requests(factory.images, requests, warmup, factory.protocol)
        with Workers(factory, concurrency, settings) as workers:
            point = served_point(target.server, factory.model, workers, stability, sends)
    else:
        res = run_until_stable(factory, concurrency, requests, warmup, stability, settings)
        point = window_row(res.window, res.p50_history_ms, res.stable)
    return bench_row(target, batch, concurrency, point)


def bench_row(
    target: Target, batch: int, concurrency: int, point: Mapping[str, Any]
) -> dict[str, Any]:
    """One bench row from a measured point (its last window)."""
    lat, timed = point["latency"], point["wall_s"] > 0
    row: dict[str, Any] = {
        "backend": target.backend,
        "device": target.device,
        "status": point["status"],
        "batch": batch,
        "concurrency": concurrency,
        "requests": point["requests"],
        "errors": point["errors"],
        **{k: lat[k] for k in ("p50_ms", "p90_ms", "p99_ms")},
        "mean_ms": lat["mean_ms"] if point["requests"] else None,
        "throughput_req_s": point["throughput_rps"] if timed else None,
        "throughput_samples_s": point["throughput_rps"] * batch if timed else None,
        "windows": point["windows"],
        "stable": point["stable"],
        "p50_history_ms": point["p50_history_ms"],
    }
    if "server" in point:
        row["mean_server_batch"] = point["server"]["mean_server_batch"]
    if "model_config" in target.notes:  # which served config: batcher, queue delay, instances
        row["model_config"] = target.notes["model_config"]
    if point["status"] != "ok":
        row["reason"] = point["reason"]
    return row


def _start_targets(
    ctx: BenchContext, names: Sequence[str], rows: list[dict[str, Any]]
) -> list[Target]:
    targets: list[Target] = []
    for name in names:
        try:
            made = BACKENDS[name](ctx)
            targets += made if isinstance(made, list) else [made]
        except Unavailable as err:
            log.info("%s unavailable: %s", name, err)
            rows.append({"backend": name, "status": "unavailable", "reason": str(err)})
    return targets


def _run_cell(
    target: Target, batch: int, conc: int, bcfg: Mapping[str, Any], dead: set[str]
) -> dict[str, Any] | None:
    """One cell's row (None: its backend already failed to prepare)."""
    if target.backend in dead:
        return None
    base = {"backend": target.backend, "batch": batch, "concurrency": conc}
    if target.max_batch is not None and batch > target.max_batch:
        return {
            **base,
            "status": "skipped",
            "reason": f"batch {batch} > max_batch_size {target.max_batch}",
        }
    try:
        factory = target.prepare(batch)
    except Unavailable as err:
        dead.add(target.backend)
        return {"backend": target.backend, "status": "unavailable", "reason": str(err)}
    try:
        return measure_cell(target, batch, conc, bcfg, factory)
    except (TimeoutError, RuntimeError, OSError) as err:  # hung or broken cell: go on
        log.warning("%s batch %d conc %d failed: %s", target.backend, batch, conc, err)
        return {**base, "status": "error", "reason": f"{type(err).__name__}: {err}"}


def _add_analytic(
    rows: list[dict[str, Any]], cost: Any, peaks: Mapping[str, DevicePeaks | None]
) -> None:
    for row in rows:
        if row["status"] == "ok":
            row.update(
                analytic_columns(
                    cost,
                    peaks.get(row["device"]),
                    row["batch"],
                    row["p50_ms"] / 1e3,
                    row["throughput_samples_s"],
                )
            )


def run_cells(ctx: BenchContext, bcfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every backend over batches x concurrency, with the analytic columns added."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    targets = _start_targets(ctx, list(bcfg["backends"]), rows)
    cost = model_cost(ctx)
    devices = sorted({t.device for t in targets})
    peaks = {d: device_peaks_for(ctx.cfg, d) for d in devices}
    dead: set[str] = set()
    cells = [(t, b, c) for t in targets for b in bcfg["batch_sizes"] for c in t.concurrency]
    for target, batch, conc in tqdm(cells, desc="bench", unit="cell"):
        if (row := _run_cell(target, batch, conc, bcfg, dead)) is not None:
            rows.append(row)
    # Peaks measured at run time are best-of-N: measure again after the load and keep the
    # better figures, so one busy moment of a shared machine does not inflate the MFU.
    peaks = {
        d: best_of(p, device_peaks_for(ctx.cfg, d)) if p and p.kind == "runtime" else p
        for d, p in peaks.items()
    }
    _add_analytic(rows, cost, peaks)
    return {
        "rows": rows,
        "cost": cost,
        "peaks": peaks,
        "observed": {
            d: observed_vs_peak(
                [r["achieved_gflops"] * 1e9 for r in rows if r.get("device") == d and "mfu" in r],
                p,
            )
            for d, p in peaks.items()
            if p
        },
        "notes": {t.backend: t.notes for t in targets if t.notes},
    }


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured backend over batches x concurrency; write JSON, markdown and PNGs."""
    bcfg = cfg.bench
    check_bench_config(bcfg)
    ctx = BenchContext(
        cfg, tuple(int(s) for s in bcfg.sample_shape), np.random.default_rng(int(bcfg.seed))
    )
    started = time.perf_counter()
    try:
        run = run_cells(ctx, bcfg)
    finally:
        ctx.close()
    add_ratios(run["rows"], str(bcfg.baseline))
    result = {
        "meta": {
            "machine": machine_info(),
            "wall_s": round(time.perf_counter() - started, 2),
            "config": OmegaConf.to_container(bcfg, resolve=True),
            "model_cost": run["cost"].__dict__ if run["cost"] else None,
            "peaks": {d: p.as_dict() for d, p in run["peaks"].items() if p},
            "observed": run["observed"],  # best achieved FLOP/s per device vs its peak
            "notes": run["notes"],
        },
        "rows": run["rows"],
    }
    write_outputs(result, Path(bcfg.out_dir), PlotStyle.from_config(cfg.plot))
    return result


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> None:
    """`speedup_vs_baseline`: baseline p50 / this p50 at the same batch and concurrency."""
    base = {
        (r["batch"], r["concurrency"]): r["p50_ms"]
        for r in rows
        if r["backend"] == baseline and r["status"] == "ok"
    }
    for r in rows:
        if r["status"] == "ok" and (r["batch"], r["concurrency"]) in base:
            r["speedup_vs_baseline"] = base[(r["batch"], r["concurrency"])] / r["p50_ms"]


#: Columns of latency.csv, the DVC plot's data: one row per measured cell, nothing else.
LATENCY_COLUMNS: tuple[str, ...] = ("backend", "batch", "concurrency", "p50_ms", "p99_ms")


def latency_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The measured rows as CSV for `dvc plots`: DVC plots a list only when every entry has the
    same keys, which results.json's rows (unavailable backends carry a reason instead) do not."""
    lines = [",".join(LATENCY_COLUMNS)]
    for row in rows:
        if row.get("status") == "ok":
            lines.append(",".join(str(row[column]) for column in LATENCY_COLUMNS))
    return "\n".join(lines) + "\n"


def write_outputs(result: Mapping[str, Any], out_dir: Path, style: PlotStyle) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = bench_table(result["rows"], result["meta"]["config"]["baseline"])
    m = result["meta"]["machine"]
    header = (
        f"Measured on {m['cpu']} ({m['cores']} cores), GPU: {m['gpu'] or 'none'}; torch "
        f"{m['torch']}, onnxruntime {m['onnxruntime']}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
    )
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(header + table)
    (out_dir / "latency.csv").write_text(latency_csv(result["rows"]))
    bench_plots(result["rows"], out_dir, style)
    print(table)
    log.info(
        "wrote %s/results.json, results.md, latency.csv and PNGs in %.1f s",
        out_dir,
        result["meta"]["wall_s"],
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="bench")
@entry_point
def main(cfg: DictConfig) -> None:
    bench(cfg)


if __name__ == "__main__":
    main()
