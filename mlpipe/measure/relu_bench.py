"""Benchmark relu_module against numpy, torch, the original course design and copy references.

Every contender runs side by side in one process, round-robin within each repeat so that noise
from other processes hits all of them alike ("interleaved"). Reports, per size, dtype and form
(out-of-place, ``out=``, in place), relu_module's min and median time over the faster of numpy
and torch in the same form; a back-to-back ("warm") column where each side is called many times
in a row; and the CPU time an idle process pays after one call. Writes ``results.json``,
``summary.md`` and ``bench.png`` under ``relu_bench.out_dir`` (conf/relu_bench/).

    mlpipe-relu-bench                    # full sweep (a few minutes)
    mlpipe-relu-bench relu_bench=quick   # <= ~1 minute, the DVC stage

Here: the timing (interleaved, back to back, idle) and the run. What the rows say (ratios,
targets) is :mod:`mlpipe.measure.relu_targets`, the tables and the plot
:mod:`mlpipe.measure.relu_tables`; the compiled references are ``relu_reference.cpp``, the idle
probe :mod:`mlpipe.measure.relu_idle`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import relu_module
from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, positive_int, positive_ints, require
from mlpipe.common.errors import ConfigError
from mlpipe.common.provenance import machine_info
from mlpipe.common.stats import Timer, time_calls, timed
from mlpipe.measure.relu_tables import log_lines, plot, summary_markdown
from mlpipe.measure.relu_targets import CEILING, COPY, FORMS, ORIGINAL, Row, ratio_table, summarize
from mlpipe.measure.relu_torch_bench import run_tensor_path, table_lines
from relu_module import _ext

log = logging.getLogger("relu_bench")

#: The original design and the stream-copy ceiling, compiled at bench time (clang-format sees it).
REFERENCE_CPP = Path(__file__).with_name("relu_reference.cpp")


def build_references(workdir: Path) -> ModuleType:
    """Compile REFERENCE_CPP with the interpreter's compiler and pybind11, and import it."""
    import pybind11

    src = REFERENCE_CPP
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
    raise ConfigError("relu_bench.repeats needs a tier with min_bytes: 0")


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
            samples[name] += time_calls(fn, 0, int(cfg.warm.calls))
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
        probe = [sys.executable, "-m", "mlpipe.measure.relu_idle"]
        argv = [*probe, which, str(cfg.idle.n), str(cfg.idle.sleep_s)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=cfg.idle.timeout_s)
        if proc.returncode != 0:
            log.warning("idle probe for %s failed: %s", which, proc.stderr[-500:])
            continue
        result[which] = float(proc.stdout.split()[-1])
    return result


def bench_machine(cfg: DictConfig) -> dict:
    """The one machine record (:func:`mlpipe.common.provenance.machine_info`) plus what decides
    these figures: relu_module's SIMD level and threads, torch's threads, the load."""
    return {
        **machine_info(),
        "simd": relu_module.simd_level(),
        "policy": _ext.policy(),  # mid-size thresholds from this CPU's caches, and why
        "relu_module_threads": relu_module.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "ceiling_threads": int(cfg.ceiling_threads),
        "load_avg_at_start": os.getloadavg(),
    }


def check_config(cfg: DictConfig) -> None:
    """Config mistakes as one-line errors naming the key and the fix."""
    positive_ints(cfg.sizes, "relu_bench.sizes")
    dtypes = list(cfg.dtypes)
    require(
        bool(dtypes) and all(d in ("float32", "float64") for d in dtypes),
        "relu_bench.dtypes",
        f"must be float32 and/or float64, got {dtypes}",
    )
    for key in ("max_loops", "warm.rounds", "warm.calls", "idle.n", "ceiling_threads",
                "original_repeats"):  # fmt: skip
        positive_int(OmegaConf.select(cfg, key), f"relu_bench.{key}")
    seconds = as_float(cfg.min_sample_s, "relu_bench.min_sample_s")
    require(seconds > 0, "relu_bench.min_sample_s", f"must be > 0, got {cfg.min_sample_s!r}")
    require(
        any(t.min_bytes == 0 for t in cfg.repeats),
        "relu_bench.repeats",
        "needs a tier with min_bytes: 0 (the smallest arrays)",
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
            dtype = np.dtype(dtype_name).type
            for n in cfg.sizes:
                done, seconds = timed(lambda d=dtype, n=int(n): bench_size(cfg, refs, d, n))
                rows.extend(done)
                log.info("%s n=%.0e done in %.1f s", dtype_name, n, seconds)
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
        f"relu_module's out-of-place outputs >= {_ext.CACHE_MIN_BYTES / 2**20:g} MiB reuse cached "
        "huge-page blocks (RELU_MODULE_CACHE_MB=0 measures without the cache)",
        "figures from a shared machine are noisy: compare min times, re-run when quiet",
    ]


def run(cfg: DictConfig) -> dict:
    """The whole benchmark (interleaved sweep, warm column, idle CPU); writes cfg.out_dir."""
    check_config(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine = bench_machine(cfg)
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
    if cfg.tensor_path.enabled:  # the torch operators, per call and per byte
        result["tensor_path"] = run_tensor_path(cfg.tensor_path)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "summary.md").write_text(summary_markdown(result))
    plot(cfg, rows, out_dir / "bench.png")
    return result


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="relu_bench")
@entry_point
def main(cfg: DictConfig) -> None:
    result = run(cfg.relu_bench)
    for line in log_lines(result):
        log.info("%s", line)
    if "tensor_path" in result:
        for line in table_lines(result["tensor_path"]):
            log.info("%s", line)
    log.info(
        "wrote %s/results.json, summary.md and bench.png in %.0f s",
        cfg.relu_bench.out_dir,
        result["elapsed_s"],
    )


if __name__ == "__main__":
    main()
