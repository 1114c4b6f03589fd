"""mlpipe-bench: latency p50/p90/p99 and throughput of the trained model on every backend.

Backends (`BACKENDS`): torch eager, torch.compile, CUDA graphs / torch.compile on CUDA, ONNX
Runtime CPU / CUDA EP, TensorRT, and Triton over HTTP and gRPC (the real tritonserver, started
here via `mlpipe.serve.TritonServer`). One that cannot run here gets a row
`unavailable: <reason>` and the run goes on. Each (backend, batch, concurrency) cell runs
closed-loop windows (`mlpipe.loadgen`) until p50 settles. Measured time is related to the
model's analytic FLOPs and bytes (`mlpipe.profile`) against the device peak, like nanoGPT's
`estimate_mfu`: achieved FLOP/s / peak FLOP/s, and p50 / roofline time.

Inputs are random images of the served shape (seeded): speed does not depend on pixel values.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpipe import config_dir  # absolute conf/ path: console scripts need it
from mlpipe.loadgen import MODES, CallerFactory, TritonCaller, run_until_stable
from mlpipe.provenance import cpu_model
from mlpipe.roofline import DevicePeaks, ProfileConfigError, check_batch_sizes

log = logging.getLogger(__name__)


class BenchConfigError(ProfileConfigError):
    """Bad bench config (backend name, batch or concurrency list), with the valid choices."""


class Unavailable(Exception):
    """This backend cannot run here; the message is the reason shown in its row."""


@dataclass
class Target:
    """A runnable backend: `prepare(batch)` returns the loadgen caller factory for that batch."""

    backend: str
    device: str  # "cpu" or "cuda": whose peaks the MFU estimate uses
    concurrency: list[int]
    prepare: Callable[[int], CallerFactory]
    mode: str = "thread"
    max_batch: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


@dataclass
class BenchContext:
    """What backends share: config, model files, the sample shape, lazily started server."""

    cfg: DictConfig
    sample_shape: tuple[int, ...]
    input_name: str
    output_name: str
    rng: np.random.Generator
    _server: Any = None
    _net: Any = None

    def images(self, batch: int) -> np.ndarray:
        return self.rng.random((batch, *self.sample_shape), dtype=np.float32)  # (B, C, H, W)

    def network(self):
        """The trained torch net, loaded once and shared by the torch backends (CUDA ones copy it)."""
        if self._net is None:
            from mlpipe.model import load_network

            try:
                self._net = load_network(self.cfg.bench.checkpoint_path)
            except FileNotFoundError as err:
                raise Unavailable(str(err)) from err
        return self._net

    def server(self):
        """The Triton server, started on first use and stopped by `bench()`."""
        if self._server is None:
            from mlpipe.serve import TritonServer

            server = TritonServer.from_config(self.cfg.serve)
            try:
                server.start()
            except Exception as err:  # missing repository, binary, port...: reason in the row
                raise Unavailable(f"tritonserver did not start: {err}") from err
            self._server = server
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


# -- in-process backends -----------------------------------------------------------------------
def _torch_target(ctx: BenchContext, name: str, device: str, wrap: Callable[[Any], Any] | None,
                  cuda_graphs: bool = False) -> Target:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device (torch.cuda.is_available() is False)")
    net = ctx.network()
    if device == "cuda":
        import copy

        net = copy.deepcopy(net).to("cuda")
    model = wrap(net) if wrap else net
    notes: dict[str, Any] = {}

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def prepare(batch: int) -> CallerFactory:
        x = torch.from_numpy(ctx.images(batch)).to(device)  # (B, C, H, W), already on the device
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                if cuda_graphs:
                    graph, static_y = _capture_cuda_graph(net, x)
                    notes[f"capture_s_batch{batch}"] = time.perf_counter() - t0

                    def replay() -> Any:
                        graph.replay()
                        torch.cuda.synchronize()
                        return static_y

                    return lambda: replay
                model(x)  # first call: torch.compile compiles here, timed as setup
                sync()
        except Exception as err:
            raise Unavailable(f"{name} failed on batch {batch}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err
        notes[f"first_call_s_batch{batch}"] = round(time.perf_counter() - t0, 3)

        def call() -> Any:
            with torch.inference_mode():
                y = model(x)
            sync()
            return y

        return lambda: call

    return Target(name, device, list(ctx.cfg.bench.inprocess_concurrency), prepare, notes=notes)


def _capture_cuda_graph(net: Any, x: Any) -> tuple[Any, Any]:
    """Record one forward pass into a CUDA graph (warm-up on a side stream first, as documented)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            net(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = net(x)
    return graph, static_y


def _compile(ctx: BenchContext, key: str) -> Callable[[Any], Any]:
    import torch

    opts = OmegaConf.to_container(ctx.cfg.bench[key], resolve=True)

    def wrap(net: Any) -> Any:
        return torch.compile(net, **opts)

    return wrap


def torch_eager(ctx: BenchContext) -> Target:
    return _torch_target(ctx, "torch_eager", "cpu", None)


def torch_compile(ctx: BenchContext) -> Target:
    """torch.compile (inductor) on CPU: needs a C++ compiler; a failure becomes the row's reason."""
    return _torch_target(ctx, "torch_compile", "cpu", _compile(ctx, "torch_compile"))


def torch_eager_cuda(ctx: BenchContext) -> Target:
    return _torch_target(ctx, "torch_eager_cuda", "cuda", None)


def torch_cuda_graphs(ctx: BenchContext) -> Target:
    return _torch_target(ctx, "torch_cuda_graphs", "cuda", None, cuda_graphs=True)


def torch_compile_cuda(ctx: BenchContext) -> Target:
    return _torch_target(ctx, "torch_compile_cuda", "cuda", _compile(ctx, "torch_compile_cuda"))


def _ort_target(ctx: BenchContext, name: str, provider: str, device: str) -> Target:
    import onnxruntime as ort

    onnx_path = Path(ctx.cfg.bench.onnx_path)
    if provider not in ort.get_available_providers():
        raise Unavailable(
            f"onnxruntime {ort.__version__} has no {provider} (available: "
            f"{ort.get_available_providers()}); install onnxruntime-gpu on a CUDA machine"
        )
    if not onnx_path.is_file():
        raise Unavailable(f"{onnx_path} not found; create it with `mlpipe-export` (make export)")
    opts = ort.SessionOptions()
    for key, value in ctx.cfg.bench.ort.session_options.items():
        setattr(opts, key, value)
    session = ort.InferenceSession(str(onnx_path), opts, providers=[provider])
    if session.get_providers()[0] != provider:
        raise Unavailable(f"{provider} did not load (session uses {session.get_providers()})")

    def prepare(batch: int) -> CallerFactory:
        feed = {ctx.input_name: ctx.images(batch)}

        def call() -> Any:
            return session.run(None, feed)

        return lambda: call

    return Target(name, device, list(ctx.cfg.bench.inprocess_concurrency), prepare)


def ort_cpu(ctx: BenchContext) -> Target:
    return _ort_target(ctx, "ort_cpu", "CPUExecutionProvider", "cpu")


def ort_cuda(ctx: BenchContext) -> Target:
    return _ort_target(ctx, "ort_cuda", "CUDAExecutionProvider", "cuda")


def tensorrt(ctx: BenchContext) -> Target:
    """The serialized engine from `mlpipe-export export=tensorrt`, run with the TensorRT 10 API."""
    try:
        import tensorrt  # noqa: F401  (availability check; open_engine uses it)
    except ImportError as err:
        raise Unavailable(f"import tensorrt failed ({err}); needs TensorRT 10.x and a GPU") from err
    import torch

    if not torch.cuda.is_available():
        raise Unavailable("no CUDA device (torch.cuda.is_available() is False)")
    plan = Path(ctx.cfg.bench.plan_path)
    if not plan.is_file():
        raise Unavailable(f"{plan} not found; build it with `mlpipe-export export=tensorrt`")
    from mlpipe.tensorrt_engine import open_engine

    try:
        engine, context, in_name, out_name = open_engine(plan)
    except RuntimeError as err:
        raise Unavailable(str(err)) from err
    stream = torch.cuda.Stream()

    def prepare(batch: int) -> CallerFactory:
        x = torch.from_numpy(ctx.images(batch)).cuda()  # (B, C, H, W)
        context.set_input_shape(in_name, tuple(x.shape))
        y = torch.empty(tuple(context.get_tensor_shape(out_name)), device="cuda",
                        dtype=torch.float16 if engine.get_tensor_dtype(out_name).name == "HALF"
                        else torch.float32)
        context.set_tensor_address(in_name, x.data_ptr())
        context.set_tensor_address(out_name, y.data_ptr())

        def call() -> Any:
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            return y

        return lambda: call

    return Target("tensorrt", "cuda", list(ctx.cfg.bench.inprocess_concurrency), prepare)


# -- Triton ------------------------------------------------------------------------------------
def _triton_target(ctx: BenchContext, protocol: str) -> Target:
    server = ctx.server()
    address = server.http_address if protocol == "http" else server.grpc_address
    model = str(ctx.cfg.bench.triton_model)
    if model not in server.models:
        raise Unavailable(f"model {model!r} is not served; served: {server.models}")

    def prepare(batch: int) -> CallerFactory:
        return TritonCaller(protocol, address, model, ctx.input_name, ctx.output_name,
                            ctx.images(batch))

    return Target(
        f"triton_{protocol}", "cpu", list(ctx.cfg.bench.concurrency), prepare,
        mode=str(ctx.cfg.bench.loadgen_mode), max_batch=int(ctx.cfg.export.triton.max_batch_size),
        notes={"model": model, "server_ready_s": server.ready_seconds},
    )


def triton_http(ctx: BenchContext) -> Target:
    return _triton_target(ctx, "http")


def triton_grpc(ctx: BenchContext) -> Target:
    return _triton_target(ctx, "grpc")


BACKENDS: dict[str, Callable[[BenchContext], Target]] = {
    "torch_eager": torch_eager,
    "torch_compile": torch_compile,
    "torch_eager_cuda": torch_eager_cuda,
    "torch_cuda_graphs": torch_cuda_graphs,
    "torch_compile_cuda": torch_compile_cuda,
    "ort_cpu": ort_cpu,
    "ort_cuda": ort_cuda,
    "tensorrt": tensorrt,
    "triton_http": triton_http,
    "triton_grpc": triton_grpc,
}


# -- config checks and the analytic model ------------------------------------------------------
def check_bench_config(bench_cfg: Mapping[str, Any]) -> None:
    """Reject unknown backends and bad batch/concurrency lists before anything starts."""
    backends = list(bench_cfg["backends"])
    unknown = [b for b in backends if b not in BACKENDS]
    if not backends or unknown:
        raise BenchConfigError(
            f"unknown backend(s) {unknown or backends!r} in bench.backends; valid choices: "
            f"{list(BACKENDS)}"
        )
    for key in ("batch_sizes", "concurrency", "inprocess_concurrency"):
        try:
            check_batch_sizes(bench_cfg[key], key=f"bench.{key}")
        except ProfileConfigError as err:
            raise BenchConfigError(str(err)) from None
    if bench_cfg["loadgen_mode"] not in MODES:
        raise BenchConfigError(
            f"unknown bench.loadgen_mode {bench_cfg['loadgen_mode']!r}; valid choices: {list(MODES)}"
        )


@dataclass(frozen=True)
class ModelCost:
    """Analytic FLOPs and bytes of one forward pass: flops(B) = f*B, bytes(B) = w + c*B."""

    flops_per_sample: float
    weight_bytes: float
    activation_bytes_per_sample: float

    def flops(self, batch: int) -> float:
        return self.flops_per_sample * batch

    def nbytes(self, batch: int) -> float:
        return self.weight_bytes + self.activation_bytes_per_sample * batch


def model_cost(ctx: BenchContext) -> ModelCost | None:
    """From mlpipe.profile on the trained net at batch 1, fp32 (what every backend here runs)."""
    from mlpipe.profile import profile_network

    try:
        net = ctx.network()
    except Unavailable as err:
        log.warning("no analytic FLOPs/bytes: %s", err)
        return None
    res = profile_network(net, ctx.sample_shape, 1, "fp32", [])
    return ModelCost(
        res["totals"]["flops"],
        float(sum(r["weight_bytes"] for r in res["layers"])),
        float(sum(r["activation_bytes"] for r in res["layers"])),
    )


def _device_peaks(cfg: DictConfig, device: str) -> DevicePeaks | None:
    from mlpipe.profile import resolve_devices

    try:
        (peaks,) = resolve_devices([cfg.bench.peaks[device]], cfg.bench.device_dir, "fp32")
    except ProfileConfigError as err:
        log.warning("no %s peaks for the MFU estimate: %s", device, err)
        return None
    return peaks


def _better(a: DevicePeaks, b: DevicePeaks | None) -> DevicePeaks:
    """Best-of both measurements, figure by figure."""
    if b is None:
        return a
    return DevicePeaks(a.name, a.dtype, max(a.peak_flops, b.peak_flops),
                       max(a.peak_bandwidth, b.peak_bandwidth),
                       a.source + "; best of a measurement before and after the load", a.kind)


def analytic_columns(cost: ModelCost | None, peaks: DevicePeaks | None, batch: int,
                     p50_s: float, samples_per_s: float) -> dict[str, Any]:
    """Achieved FLOP/s and bandwidth vs the device peak; p50 vs the roofline time of one call."""
    if cost is None or peaks is None:
        return {}
    flops, nbytes = cost.flops(batch), cost.nbytes(batch)
    roofline_s = max(flops / peaks.peak_flops, nbytes / peaks.peak_bandwidth)
    achieved = samples_per_s * cost.flops_per_sample
    return {
        "flops_per_call": flops,
        "bytes_per_call": nbytes,
        "achieved_gflops": achieved / 1e9,
        "mfu": achieved / peaks.peak_flops,
        "bandwidth_util": (samples_per_s / batch) * nbytes / peaks.peak_bandwidth,
        "roofline_ms": roofline_s * 1e3,
        "p50_over_roofline": p50_s / roofline_s if roofline_s > 0 else None,
        "peaks": peaks.name,
    }


# -- the run -----------------------------------------------------------------------------------
def _cells(targets: Sequence[Target], batch_sizes: Sequence[int]) -> list[tuple[Target, int, int]]:
    return [(t, b, c) for t in targets for b in batch_sizes for c in t.concurrency]


def measure_cell(target: Target, batch: int, concurrency: int, bcfg: Mapping[str, Any],
                 factory: CallerFactory) -> dict[str, Any]:
    """Run the stability loop for one cell and summarise it as a row."""
    stab = bcfg["stability"]
    res = run_until_stable(
        factory, concurrency, int(bcfg["requests"]), int(bcfg["warmup"]),
        float(stab["rel_tol"]), int(stab["min_windows"]), int(stab["max_windows"]),
        target.mode, float(bcfg["timeout_s"]),
    )
    w = res.window
    row: dict[str, Any] = {
        "backend": target.backend, "device": target.device, "status": "ok", "batch": batch,
        "concurrency": concurrency, "requests": w.requests, "errors": w.errors,
        **w.percentiles_ms(), "mean_ms": float(w.latencies_s.mean() * 1e3) if w.requests else None,
        "throughput_req_s": w.requests / w.wall_s if w.wall_s else None,
        "throughput_samples_s": w.requests * batch / w.wall_s if w.wall_s else None,
        "windows": len(res.p50_history_ms), "stable": res.stable,
        "p50_history_ms": [round(x, 4) for x in res.p50_history_ms],
    }
    if w.errors:
        row.update(status="error", reason=w.first_error)
    return row


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run every configured backend over batches x concurrency; write JSON, markdown and PNGs."""
    from tqdm import tqdm

    bcfg = cfg.bench
    check_bench_config(bcfg)
    batch_sizes = list(bcfg.batch_sizes)
    ctx = BenchContext(
        cfg, tuple(int(s) for s in bcfg.sample_shape), str(cfg.export.onnx.input_name),
        str(cfg.export.onnx.output_name), np.random.default_rng(int(bcfg.seed)),
    )
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    notes: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        for name in bcfg.backends:
            try:
                targets.append(BACKENDS[name](ctx))
            except Unavailable as err:
                log.info("%s unavailable: %s", name, err)
                rows.append({"backend": name, "status": "unavailable", "reason": str(err)})
        cost = model_cost(ctx)
        devices = sorted({t.device for t in targets})
        peaks = {d: _device_peaks(cfg, d) for d in devices}
        dead: set[str] = set()
        for target, batch, conc in tqdm(_cells(targets, batch_sizes), desc="bench", unit="cell"):
            if target.backend in dead:
                continue
            if target.max_batch is not None and batch > target.max_batch:
                rows.append({"backend": target.backend, "status": "skipped", "batch": batch,
                             "concurrency": conc,
                             "reason": f"batch {batch} > max_batch_size {target.max_batch}"})
                continue
            try:
                factory = target.prepare(batch)
            except Unavailable as err:
                dead.add(target.backend)
                rows.append({"backend": target.backend, "status": "unavailable", "reason": str(err)})
                continue
            try:
                row = measure_cell(target, batch, conc, bcfg, factory)
            except (TimeoutError, RuntimeError, OSError) as err:  # hung or broken cell: go on
                log.warning("%s batch %d conc %d failed: %s", target.backend, batch, conc, err)
                rows.append({"backend": target.backend, "status": "error", "batch": batch,
                             "concurrency": conc, "reason": f"{type(err).__name__}: {err}"})
                continue
            rows.append(row)
        # Peaks measured at run time are best-of-N: measure again after the load and keep the
        # better figures, so one busy moment of a shared machine does not inflate the MFU.
        peaks = {d: _better(peaks[d], _device_peaks(cfg, d))
                 if peaks[d] and peaks[d].kind == "runtime" else peaks[d] for d in devices}
        for row in rows:
            if row["status"] == "ok":
                row.update(analytic_columns(cost, peaks.get(row["device"]), row["batch"],
                                            row["p50_ms"] / 1e3, row["throughput_samples_s"]))
        over = [r for r in rows if (r.get("mfu") or 0) > 1]
        if over:
            log.warning("%d rows exceed 100%% MFU: the measured peak is too low (busy machine "
                        "while measuring?); treat MFU as an upper bound", len(over))
        notes = {t.backend: t.notes for t in targets if t.notes}
    finally:
        for t in targets:
            t.close()
        ctx.close()
    add_ratios(rows, str(bcfg.baseline))
    result = {
        "meta": {
            "machine": machine_info(),
            "wall_s": round(time.perf_counter() - started, 2),
            "config": OmegaConf.to_container(bcfg, resolve=True),
            "model_cost": cost.__dict__ if cost else None,
            "peaks": {d: p.as_dict() for d, p in peaks.items() if p},
            "notes": notes,
        },
        "rows": rows,
    }
    write_outputs(result, Path(bcfg.out_dir))
    return result


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> None:
    """`speedup_vs_baseline`: baseline p50 / this p50 at the same batch and concurrency."""
    base = {(r["batch"], r["concurrency"]): r["p50_ms"]
            for r in rows if r["backend"] == baseline and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and (r["batch"], r["concurrency"]) in base:
            r["speedup_vs_baseline"] = base[(r["batch"], r["concurrency"])] / r["p50_ms"]


def machine_info() -> dict[str, Any]:
    """CPU model, core count, GPU (if torch sees one), library versions."""
    import os

    import onnxruntime
    import torch

    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def markdown_table(rows: Sequence[Mapping[str, Any]], baseline: str) -> str:
    """Measured rows first, then one line per unavailable/skipped backend or cell."""
    from tabulate import tabulate

    def fmt(v: Any, spec: str) -> str:
        return "" if v is None else format(v, spec)

    ok = [r for r in rows if r["status"] == "ok"]
    table = tabulate(
        [[r["backend"], r["batch"], r["concurrency"], fmt(r["p50_ms"], ".3f"),
          fmt(r["p90_ms"], ".3f"), fmt(r["p99_ms"], ".3f"), fmt(r["throughput_samples_s"], ".0f"),
          fmt(r.get("speedup_vs_baseline"), ".2f"), fmt(r.get("mfu") and 100 * r["mfu"], ".3f"),
          fmt(r.get("p50_over_roofline"), ".0f"), "yes" if r["stable"] else "no"]
         for r in ok],
        headers=["backend", "batch", "conc", "p50 ms", "p90 ms", "p99 ms", "samples/s",
                 f"x vs {baseline}", "MFU %", "p50/roofline", "stable"],
        tablefmt="github", disable_numparse=True,
    )
    other = [f"- **{r['backend']}**"
             + (f" (batch {r['batch']}, conc {r['concurrency']})" if "batch" in r else "")
             + f": {r['status']}: {r['reason']}" for r in rows if r["status"] != "ok"]
    return table + ("\n\n" + "\n".join(other) if other else "") + "\n"


def _int_ticks(ax: Any, values: Sequence[int]) -> None:
    """Tick a log x axis at exactly the measured values, labelled as plain integers."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    if values:
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())


def _save_plot(fig: Any, ax: Any, path: Path) -> Path:
    """Legend (if any), grid, tight layout, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """latency_vs_batch.png (p50 with p90/p99 marks, concurrency 1) and throughput_vs_concurrency.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    backends = sorted({r["backend"] for r in ok})
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for b in backends:
        pts = sorted((r["batch"], r["p50_ms"], r["p99_ms"]) for r in ok
                     if r["backend"] == b and r["concurrency"] == 1)
        if pts:
            xs, p50, p99 = zip(*pts)
            line, = ax.plot(xs, p50, marker="o", label=f"{b} p50")
            ax.plot(xs, p99, ls=":", color=line.get_color(), lw=1)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency [ms] (p50; dotted p99)",
           title="latency vs batch (concurrency 1)")
    _int_ticks(ax, sorted({r["batch"] for r in ok}))
    paths.append(_save_plot(fig, ax, out_dir / "latency_vs_batch.png"))

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for b in backends:
        for batch in sorted({r["batch"] for r in ok if r["backend"] == b}):
            pts = sorted((r["concurrency"], r["throughput_samples_s"]) for r in ok
                         if r["backend"] == b and r["batch"] == batch)
            if len(pts) > 1:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=f"{b} batch {batch}")
    ax.set(xscale="log", yscale="log", xlabel="client concurrency", ylabel="throughput [samples/s]",
           title="throughput vs concurrency")
    _int_ticks(ax, sorted({r["concurrency"] for r in ok}))
    paths.append(_save_plot(fig, ax, out_dir / "throughput_vs_concurrency.png"))
    return paths


def write_outputs(result: Mapping[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = result["meta"]["config"]["baseline"]
    table = markdown_table(result["rows"], baseline)
    m = result["meta"]["machine"]
    header = (f"Measured on {m['cpu']} ({m['cores']} cores), GPU: {m['gpu'] or 'none'}; torch "
              f"{m['torch']}, onnxruntime {m['onnxruntime']}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n")
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(header + table)
    plot(result["rows"], out_dir)
    print(table)
    log.info("wrote %s/results.json, results.md and PNGs in %.1f s", out_dir,
             result["meta"]["wall_s"])


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="bench")
def main(cfg: DictConfig) -> None:
    try:
        bench(cfg)
    except ProfileConfigError as err:
        raise SystemExit(f"mlpipe-bench: {err}") from None


if __name__ == "__main__":
    main()
