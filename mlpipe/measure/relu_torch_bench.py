"""relu_module's torch path (the ``torch.ops.relu_module`` operators) against torch and numpy.

Per dtype, size and form (out-of-place, in place, ``out=``), interleaved with the shared
:class:`~mlpipe.common.stats.Timer`: relu_module through its torch operator, torch's own op
(``torch.relu``, ``torch.relu_``, ``torch.clamp_min(out=)``) and numpy on the same memory. It
reports per-call time, time per byte (one read and one write) and two ratios, with the targets
of conf/relu_bench (``tensor_path.targets``): at n <= small_max_n, ours over torch's per call;
at n >= large_min_n, ours over the faster of numpy and torch. It also records the kernels'
mid-size policy (thresholds from this CPU's caches, and why).

Run inside the relu benchmark (``relu_bench.tensor_path.enabled``), or alone:

    python -m mlpipe.measure.relu_torch_bench                       # the full sweep's sizes
    python -m mlpipe.measure.relu_torch_bench relu_bench=quick      # fewer repeats
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

import relu_module
from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.stats import Timer

log = logging.getLogger("relu_torch_bench")

FORMS = ("out-of-place", "in-place", "out=")
OURS, TORCH, NUMPY = "relu_module.torch", "torch", "numpy"


def contenders(x: torch.Tensor, form: str) -> dict[str, Callable[[], object]]:
    """The three libraries in one form, on one input (in place: each on its own buffer)."""
    import relu_module.torch as rt

    a, out = x.numpy(), torch.empty_like(x)
    o = out.numpy()
    if form == "out-of-place":
        return {
            OURS: lambda: rt.relu(x),
            TORCH: lambda: torch.relu(x),
            NUMPY: lambda: np.maximum(a, 0),
        }
    if form == "in-place":  # ReLU is idempotent: repeated calls redo the same work
        bufs = {k: x.clone() for k in (OURS, TORCH, NUMPY)}
        nb = bufs[NUMPY].numpy()
        return {
            OURS: lambda: rt.relu(bufs[OURS], inplace=True),
            TORCH: lambda: torch.relu_(bufs[TORCH]),
            NUMPY: lambda: np.maximum(nb, 0, out=nb),
        }
    return {
        OURS: lambda: rt.relu_out(x, out),
        TORCH: lambda: torch.clamp_min(x, 0, out=out),
        NUMPY: lambda: np.maximum(a, 0, out=o),
    }


def cell(cfg: DictConfig, dtype: str, n: int, form: str) -> dict:
    """One (dtype, n, form): min and median per call of each library, and the ratios."""
    x = torch.from_numpy(np.random.default_rng(n).standard_normal(n).astype(dtype))
    timer = Timer(int(cfg.repeats), float(cfg.min_sample_s), int(cfg.max_loops), int(cfg.seed))
    timer.run(contenders(x, form))
    mins = {k: min(v) for k, v in timer.samples.items()}
    medians = {k: float(np.median(v)) for k, v in timer.samples.items()}
    nbytes = 2 * n * x.element_size()  # one read and one write
    best = min(mins[TORCH], mins[NUMPY])
    return {
        "dtype": dtype,
        "n": n,
        "form": form,
        "min_s": mins,
        "median_s": medians,
        "ours_ns_per_byte": mins[OURS] / nbytes * 1e9,
        "ours_gbps": nbytes / mins[OURS] / 1e9,
        "ratio_vs_torch": mins[OURS] / mins[TORCH],
        "ratio_vs_best": mins[OURS] / best,
        "median_ratio_vs_torch": medians[OURS] / medians[TORCH],
    }


def targets(t: DictConfig, cells: list[dict]) -> list[dict]:
    """The issue's two targets, each with its worst cell."""

    def worst(name: str, key: str, limit: float, chosen: list[dict]) -> dict:
        if not chosen:
            return {"name": name, "limit": limit, "worst": None, "where": "no cell", "pass": True}
        c = max(chosen, key=lambda c: c[key])
        where = f"{c['dtype']} n={c['n']:.0e} {c['form']}"
        return {"name": name, "limit": limit, "worst": c[key], "where": where,
                "pass": c[key] <= limit}  # fmt: skip

    small = [c for c in cells if c["n"] <= t.small_max_n]
    large = [c for c in cells if c["n"] >= t.large_min_n]
    return [
        worst(
            f"per call vs torch at n<={t.small_max_n:.0e} (min)",
            "ratio_vs_torch",
            float(t.per_call_ratio),
            small,
        ),  # fmt: skip
        worst(
            f"vs faster of numpy/torch at n>={t.large_min_n:.0e} (min)",
            "ratio_vs_best",
            float(t.large_ratio),
            large,
        ),  # fmt: skip
    ]


def run_tensor_path(cfg: DictConfig) -> dict:
    """The whole tensor-path sweep; ``cfg`` is ``relu_bench.tensor_path``."""
    cells = []
    for dtype in cfg.dtypes:
        for n in cfg.sizes:
            for form in FORMS:
                cells.append(cell(cfg, dtype, int(n), form))
            log.info("tensor path %s n=%.0e done", dtype, n)
    return {
        "policy": {
            **relu_module._ext.policy(),
            "threads": relu_module.get_num_threads(),
            "simd": relu_module.simd_level(),
        },  # fmt: skip
        "targets": targets(cfg.targets, cells),
        "cells": cells,
        "notes": [
            "relu_module.torch: torch.ops.relu_module.relu / relu_ / relu.out through "
            "relu_module.torch.relu / relu_out; torch's out= form is torch.clamp_min(t, 0, out=o)",
            "interleaved (round-robin, shuffled) min and median per call; a shared machine "
            "is noisy: compare min times, re-run when quiet",
        ],
    }


def table_lines(result: dict) -> list[str]:
    lines = ["dtype    n      form          ours      torch     numpy   vs torch  vs best  ns/B"]
    for c in result["cells"]:
        m = c["min_s"]
        lines.append(
            f"{c['dtype']:8s} {c['n']:<6.0e} {c['form']:12s} {m[OURS] * 1e6:8.2f}us "
            f"{m[TORCH] * 1e6:8.2f}us {m[NUMPY] * 1e6:8.2f}us {c['ratio_vs_torch']:7.2f}x "
            f"{c['ratio_vs_best']:7.2f}x {c['ours_ns_per_byte']:6.3f}"
        )
    for t in result["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        worst = "n/a" if t["worst"] is None else f"{t['worst']:.3g}"
        lines.append(f"[{verdict}] {t['name']}: worst {worst} (limit {t['limit']}) at {t['where']}")
    lines.append(f"policy: {result['policy']['why']} ({result['policy']['source']})")
    return lines


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="relu_bench")
@entry_point
def main(cfg: DictConfig) -> None:
    result = run_tensor_path(cfg.relu_bench.tensor_path)
    out = Path(cfg.relu_bench.out_dir) / "tensor_path.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for line in table_lines(result):
        log.info("%s", line)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
