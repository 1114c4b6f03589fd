"""mlpipe-tune: the Triton model configuration chosen by measurement, not by hand.

What Triton's model_analyzer does (it needs perf_analyzer, which needs glibc 2.38), on the real
tritonserver through the project's one load generator: every candidate of the search space in
`conf/tune/` (instance count x dynamic batcher on/off x max queue delay x preferred batch sizes,
plus the two hand-written configs of `export.triton.models` as baselines) is served from one
sweep repository on one server and measured at each client concurrency: throughput, p50 and p99,
client-observed. The sweep is bounded in time: the baselines first, then no new candidate starts
once `tune.time_budget_s` has passed.

The chosen config is the highest-throughput one at `tune.select_concurrency` whose p99 meets
`tune.p99_budget_ms`. It is written as model `tune.tuned_model` into `tune.repository`, a copy of
the exported python repository (the DVC-tracked export outputs stay as they are); serve it with
``mlpipe-serve serve.model_repository=<tune.repository>`` and send to that model name. Outputs:
``results.json``, ``results.md`` (Pareto front of throughput vs p99, the chosen point marked)
and ``pareto.png`` under `tune.out_dir`.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir
from mlpipe.common.cli import entry_point
from mlpipe.common.config import as_float, one_of, plain, positive_int, positive_ints, require
from mlpipe.common.errors import ArtifactMissingError
from mlpipe.common.provenance import machine_info
from mlpipe.data import SPLITS, load_split
from mlpipe.export.triton_repo import write_python_model
from mlpipe.measure.decision import checks, select
from mlpipe.measure.loadgen import LoadSettings, Workers
from mlpipe.measure.pareto import at, choose, pareto_front
from mlpipe.measure.rounds import Stability, interleaved
from mlpipe.measure.served import Requests, served_point
from mlpipe.measure.tables import PlotStyle, pareto_plot, tune_markdown
from mlpipe.serving.client import TritonCaller
from mlpipe.serving.server import TritonServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One model configuration of the sweep, served under `name`."""

    name: str
    instance_count: int
    dynamic_batching: bool
    max_queue_delay_microseconds: int | None  # batcher on only
    preferred_batch_size: tuple[int, ...]  # batcher on only; () = none
    untuned: str | None = None  # the export.triton model this is (a baseline), if any

    def key(self) -> tuple[Any, ...]:
        return (
            self.instance_count,
            self.dynamic_batching,
            self.max_queue_delay_microseconds,
            self.preferred_batch_size,
        )

    def batcher(self) -> dict[str, Any] | None:
        """The `dynamic_batching` node for `build_model_config` (None: batcher off)."""
        if not self.dynamic_batching:
            return None
        return {
            "preferred_batch_size": list(self.preferred_batch_size),
            "max_queue_delay_microseconds": self.max_queue_delay_microseconds,
        }


def candidate(count: int, batching: bool, delay: int | None, preferred: Sequence[int]) -> Candidate:
    """A search-space point, named after its settings (`i2_q500_p8_16`, `i1_off`)."""
    if not batching:
        return Candidate(f"i{count}_off", count, False, None, ())
    pref = "_".join(str(int(b)) for b in preferred) or "none"
    return Candidate(f"i{count}_q{delay}_p{pref}", count, True, int(delay or 0), tuple(preferred))


def untuned_candidates(triton_cfg: Mapping[str, Any]) -> list[Candidate]:
    """The hand-written configs of `export.triton.models`: the baselines the tuned one must beat."""
    count = int(triton_cfg["instance_group"]["count"])
    batcher = triton_cfg["dynamic_batching"]
    out = []
    for model, batching in triton_cfg["models"].items():
        c = candidate(
            count,
            bool(batching),
            int(batcher["max_queue_delay_microseconds"]),
            [int(b) for b in batcher["preferred_batch_size"]],
        )
        out.append(Candidate(f"untuned_{model}", *c.key(), untuned=str(model)))
    return out


def candidates(space: Mapping[str, Any], triton_cfg: Mapping[str, Any]) -> list[Candidate]:
    """Baselines first, then the search space (a point equal to a baseline is measured once)."""
    out = untuned_candidates(triton_cfg)
    seen = {c.key() for c in out}
    for count, batching in itertools.product(space["instance_count"], space["dynamic_batching"]):
        combos = (
            itertools.product(space["max_queue_delay_microseconds"], space["preferred_batch_size"])
            if batching
            else [(None, ())]
        )
        for delay, preferred in combos:
            c = candidate(int(count), bool(batching), delay, [int(b) for b in preferred])
            if c.key() not in seen:
                seen.add(c.key())
                out.append(c)
    return out


def check_tune_config(tc: Mapping[str, Any], max_batch_size: int) -> None:
    """Reject a bad search space or budget before the server starts; each error names its key."""
    space = tc["space"]
    positive_ints(space["instance_count"], "tune.space.instance_count")
    flags = list(space["dynamic_batching"])
    require(
        bool(flags) and all(isinstance(f, bool) for f in flags),
        "tune.space.dynamic_batching",
        f"must be a non-empty list of true/false, got {flags!r}",
    )
    for d in space["max_queue_delay_microseconds"]:
        positive_int(d, "tune.space.max_queue_delay_microseconds", minimum=0)
    for pref in space["preferred_batch_size"]:
        require(
            all(isinstance(b, int) and 1 <= b <= max_batch_size for b in pref),
            "tune.space.preferred_batch_size",
            f"each entry is a list of batch sizes in [1, {max_batch_size}], got {list(pref)!r}",
        )
    conc = positive_ints(tc["concurrency"], "tune.concurrency")
    require(
        tc["select_concurrency"] in conc,
        "tune.select_concurrency",
        f"must be one of tune.concurrency {conc}, got {tc['select_concurrency']!r}",
    )
    for key in ("p99_budget_ms", "time_budget_s"):
        require(as_float(tc[key], f"tune.{key}") > 0, f"tune.{key}", "must be > 0")
    positive_int(tc["confirm"]["top"], "tune.confirm.top")
    positive_int(tc["confirm"]["rounds"], "tune.confirm.rounds", minimum=0)
    positive_int(tc["requests_per_slot"], "tune.requests_per_slot")
    positive_int(tc["warmup"], "tune.warmup", minimum=0)
    one_of(tc["split"], SPLITS, "tune.split")
    Stability.from_config(tc["stability"], "tune.stability")
    LoadSettings.from_config(tc["load"], "tune.load")


# -- measuring ---------------------------------------------------------------------------------
def build_sweep_repository(
    cands: Sequence[Candidate], onnx_path: Path, triton_cfg: Mapping[str, Any], path: Path
) -> None:
    """One python-backend model per candidate, in a fresh folder."""
    if not onnx_path.is_file():
        raise ArtifactMissingError(
            f"{onnx_path} not found: the tuner serves the exported model; run `mlpipe-export` "
            "(or `make export`)"
        )
    shutil.rmtree(path, ignore_errors=True)
    for c in cands:
        write_python_model(
            path,
            onnx_path,
            triton_cfg,
            c.name,
            instance_count=c.instance_count,
            dynamic_batching=c.batcher(),
        )


def measure_point(
    server: TritonServer,
    workers: Workers,
    cand: Candidate,
    tc: Mapping[str, Any],
    images: np.ndarray,
) -> dict[str, Any]:
    """Throughput, p50 and p99 of one candidate at the workers' concurrency: one served point
    (stability loop; the mean server batch of its last window alone)."""
    point = served_point(
        server,
        cand.name,
        workers,
        Stability.from_config(tc["stability"], "tune.stability"),
        Requests(images, int(tc["requests_per_slot"]), int(tc["warmup"])),
    )
    row = {
        "config": cand.name,
        "concurrency": point["concurrency"],
        "status": point["status"],
        "throughput_rps": point["throughput_rps"],
        "p50_ms": point["latency"]["p50_ms"],
        "p99_ms": point["latency"]["p99_ms"],
        "requests": point["requests"],
        "windows": point["windows"],
        "stable": point["stable"],
        "mean_server_batch": point["server"]["mean_server_batch"],
    }
    if "reason" in point:
        row["reason"] = point["reason"]
    return row


def sweep_server_config(cfg: DictConfig, cands: Sequence[Candidate]) -> dict[str, Any]:
    """The serve config pointed at the sweep repository, waiting for every candidate."""
    serve = plain(cfg.serve)
    serve["model_repository"] = str(cfg.tune.sweep_repository)
    serve["models"] = {c.name: c.dynamic_batching for c in cands}
    return serve


def sweep(cfg: DictConfig, cands: Sequence[Candidate], images: np.ndarray) -> dict[str, Any]:
    """Every candidate at every concurrency on one server, until the time budget is spent.

    One set of load workers per concurrency serves the whole sweep (retargeted per candidate),
    so process start-up is paid once, not per point."""
    tc = plain(cfg.tune)
    settings = LoadSettings.from_config(tc["load"], "tune.load")
    started, rows, skipped = time.monotonic(), [], []
    with TritonServer.from_config(sweep_server_config(cfg, cands)) as server, ExitStack() as stack:
        first = TritonCaller("grpc", server.grpc_address, cands[0].name, images, settings.timeout_s)
        pools = [stack.enter_context(Workers(first, int(c), settings)) for c in tc["concurrency"]]
        for cand in cands:
            if cand.untuned is None and time.monotonic() - started > tc["time_budget_s"]:
                skipped.append(cand.name)
                continue
            for workers in pools:
                rows.append(measure_point(server, workers, cand, tc, images))
                log.info("%s @ %d clients: %s", cand.name, workers.concurrency, _brief(rows[-1]))
        select_at = list(tc["concurrency"]).index(tc["select_concurrency"])
        rows = confirm(server, pools[select_at], cands, rows, tc, images)
        ready_s = server.ready_seconds
    if skipped:
        log.warning("time budget spent: %d candidates not measured: %s", len(skipped), skipped)
    return {"rows": rows, "skipped": skipped, "ready_s": ready_s}


def confirm(
    server: TritonServer,
    workers: Workers,
    cands: Sequence[Candidate],
    rows: list[dict[str, Any]],
    tc: Mapping[str, Any],
    images: np.ndarray,
) -> list[dict[str, Any]]:
    """Give the `confirm.top` fastest unconfirmed configs within the p99 budget (and the untuned
    ones) `confirm.rounds` more windows at the selection concurrency, interleaved, until the
    config that would be chosen is a confirmed one. Load on a shared machine drifts over seconds:
    one window per config ranks close configs by luck, and the luckiest window would win. A
    confirmed config's row there becomes the median of its windows."""
    conc, budget = workers.concurrency, float(tc["p99_budget_ms"])
    if not int(tc["confirm"]["rounds"]):
        return rows
    confirmed: set[str] = set()
    untuned = [c.name for c in cands if c.untuned]
    while (chosen := choose(at(rows, conc), budget)) and chosen["config"] not in confirmed:
        within = [p for p in at(rows, conc) if p["status"] == "ok" and p["p99_ms"] <= budget]
        fastest = [
            p["config"]
            for p in sorted(within, key=lambda p: -p["throughput_rps"])
            if p["config"] not in confirmed
        ][: int(tc["confirm"]["top"])]
        names = list(dict.fromkeys(fastest + [n for n in untuned if n not in confirmed]))
        rows = _confirm_round(server, workers, cands, rows, names, tc, images)
        confirmed.update(names)
    return rows


def _confirm_round(
    server: TritonServer,
    workers: Workers,
    cands: Sequence[Candidate],
    rows: list[dict[str, Any]],
    names: Sequence[str],
    tc: Mapping[str, Any],
    images: np.ndarray,
) -> list[dict[str, Any]]:
    """`confirm.rounds` more interleaved windows of `names`; their rows become medians."""
    conc, by_name = workers.concurrency, {c.name: c for c in cands}
    more = interleaved(
        names,
        int(tc["confirm"]["rounds"]),
        lambda n: measure_point(server, workers, by_name[n], tc, images),
    )
    runs = {n: [r for r in at(rows, conc) if r["config"] == n] + more[n] for n in names}
    log.info(
        "confirmed at %d clients: %s", conc, {n: _brief(median_row(r)) for n, r in runs.items()}
    )
    kept = [r for r in rows if not (r["concurrency"] == conc and r["config"] in names)]
    return kept + [median_row(runs[n]) for n in names]


def median_row(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row from repeated windows of a config: medians of throughput, p50 and p99."""
    ok = [r for r in runs if r["status"] == "ok"] or list(runs)
    row = dict(ok[0])
    for key in ("throughput_rps", "p50_ms", "p99_ms"):
        row[key] = float(np.median([r[key] for r in ok]))
    row["runs"] = len(runs)
    row["throughput_rps_runs"] = [r["throughput_rps"] for r in runs]
    return row


def _brief(row: Mapping[str, Any]) -> str:
    if row["status"] != "ok":
        return f"error: {row.get('reason')}"
    return (
        f"{row['throughput_rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
    )


# -- writing -----------------------------------------------------------------------------------
def write_tuned_repository(cfg: DictConfig, chosen: Candidate) -> Path:
    """A copy of the exported python repository plus the chosen config as `tune.tuned_model`:
    the export's DVC outputs are never modified; the baselines stay beside the tuned model."""
    source, target = Path(cfg.export.triton.python_repository), Path(cfg.tune.repository)
    if not source.is_dir():
        raise ArtifactMissingError(
            f"{source} not found: the tuned repository starts from the exported one; run "
            "`mlpipe-export` (or `make export`)"
        )
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return write_python_model(
        target,
        Path(cfg.export.onnx_path),
        cfg.export.triton,
        str(cfg.tune.tuned_model),
        instance_count=chosen.instance_count,
        dynamic_batching=chosen.batcher(),
    )


def tune(cfg: DictConfig) -> dict[str, Any]:
    """Sweep, choose, write the tuned repository and the report; returns the results."""
    tc = cfg.tune
    check_tune_config(tc, int(cfg.export.triton.max_batch_size))
    cands = candidates(tc.space, cfg.export.triton)
    images, _ = load_split(cfg.data, str(tc.split))
    batch = np.ascontiguousarray(images[: int(tc.request_batch)])  # (B, C, H, W)
    started = time.monotonic()
    build_sweep_repository(
        cands, Path(cfg.export.onnx_path), cfg.export.triton, Path(tc.sweep_repository)
    )
    swept = sweep(cfg, cands, batch)
    chosen_row, decision = select(cfg, swept["rows"])
    chosen = next(c for c in cands if c.name == chosen_row["config"])
    model_dir = write_tuned_repository(cfg, chosen)
    points = at(swept["rows"], int(tc.select_concurrency))
    result = {
        "meta": {
            "machine": machine_info(),
            "config": OmegaConf.to_container(tc, resolve=True),
            "wall_s": round(time.monotonic() - started, 1),
            "server_ready_s": swept["ready_s"],
            "not_measured": swept["skipped"],
        },
        "candidates": [asdict(c) for c in cands],
        "rows": swept["rows"],
        "front": {str(c): pareto_front(at(swept["rows"], int(c))) for c in tc.concurrency},
        "chosen": {**chosen_row, **asdict(chosen), "model": str(tc.tuned_model)},
        "tuned_config": str(model_dir / "config.pbtxt"),
        "checks": checks(points, chosen_row, decision["epsilon"] or 0.0),
        "decision": decision,
    }
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = pareto_plot(result, out / "pareto.png", PlotStyle.from_config(cfg.plot))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(tune_markdown(result, png.name))
    shutil.copyfile(model_dir / "config.pbtxt", out / "tuned.pbtxt")
    return result


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    c, chk = result["chosen"], result["checks"]
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in chk["throughput_vs_untuned"].items() if v)
    return [
        f"chosen {c['config']} (served as {c['model']}): {c['throughput_rps']:.0f} req/s, p99 "
        f"{c['p99_ms']:.2f} ms at {c['concurrency']} clients",
        f"on the measured Pareto front: {chk['on_front']}; vs untuned: {ratios}",
        f"decision: {result['decision']['reason']}",
        f"written: {result['tuned_config']} (serve with serve.model_repository=<that repository>)",
    ]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="tune")
@entry_point
def main(cfg: DictConfig) -> None:
    """CLI: ``mlpipe-tune [tune.time_budget_s=60] [tune.p99_budget_ms=30] ...``."""
    print("\n".join(summary_lines(tune(cfg))))


if __name__ == "__main__":
    main()
