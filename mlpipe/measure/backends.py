"""Bench backends: each one a `Target` whose `prepare(batch)` gives the load generator a caller.

torch eager / torch.compile / CUDA graphs / torch.compile on CUDA, ONNX Runtime CPU / CUDA EP,
TensorRT, and Triton over HTTP and gRPC (the real tritonserver, started lazily through
`mlpipe.serving.server.TritonServer`). One that cannot run here raises :class:`Unavailable`
with the reason shown in its row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlpipe.common.config import plain
from mlpipe.common.errors import ArtifactError, ArtifactMissingError
from mlpipe.measure.loadgen import CallerFactory
from mlpipe.serving.client import TritonCaller
from mlpipe.serving.server import TritonServer


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
    server: Any = None  # the TritonServer of a served backend (measured as a served point)


@dataclass
class BenchContext:
    """What backends share: config, model files, the sample shape, lazily started server."""

    cfg: DictConfig
    sample_shape: tuple[int, ...]
    rng: np.random.Generator
    _server: Any = None
    _net: Any = None

    def images(self, batch: int) -> np.ndarray:
        return self.rng.random((batch, *self.sample_shape), dtype=np.float32)  # (B, C, H, W)

    def network(self):
        """The trained torch net, loaded once, shared by the torch backends (CUDA ones copy it)."""
        if self._net is None:
            from mlpipe.train.module import load_network

            try:
                self._net = load_network(self.cfg.bench.checkpoint_path)
            except ArtifactError as err:
                raise Unavailable(str(err)) from err
        return self._net

    def server(self):
        """The Triton server, started on first use and stopped by `bench()`."""
        if self._server is None:
            server = TritonServer.from_config(self.serve_config())
            try:
                server.start()
            except Exception as err:  # missing repository, binary, port...: reason in the row
                raise Unavailable(f"tritonserver did not start: {err}") from err
            self._server = server
        return self._server

    def serve_config(self) -> dict[str, Any]:
        """The serve config, on mlpipe-tune's repository (the export's models plus the tuned
        one) when it has written one: the bench measures what is served, the tuned config
        beside the hand-written ones."""
        serve = plain(self.cfg.serve)
        repository, model = Path(self.cfg.bench.tuned_repository), str(self.cfg.bench.tuned_model)
        if (repository / model / "config.pbtxt").is_file():
            serve["model_repository"] = str(repository)
            serve["models"] = {**serve["models"], model: True}
        return serve

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


# -- in-process backends -----------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _graph_caller(net: Any, x: Any, warmup: int) -> Callable[[], Any]:
    """Capture one forward pass; each call replays it (CUDA graphs row)."""
    import torch

    graph, static_y = _capture_cuda_graph(net, x, warmup)

    def replay() -> Any:
        graph.replay()
        torch.cuda.synchronize()
        return static_y

    return replay


def _module_caller(model: Any, x: Any, device: str) -> Callable[[], Any]:
    """Run the first call now (torch.compile compiles here, timed as setup); each call runs it."""
    import torch

    def call() -> Any:
        with torch.inference_mode():
            y = model(x)
        _sync(device)
        return y

    call()
    return call


def _torch_target(
    ctx: BenchContext,
    name: str,
    device: str,
    wrap: Callable[[Any], Any] | None,
    cuda_graphs: bool = False,
) -> Target:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device (torch.cuda.is_available() is False)")
    net = ctx.network()
    if device == "cuda":
        import copy

        net = copy.deepcopy(net).to("cuda")
    model = wrap(net) if wrap else net
    notes: dict[str, Any] = {}

    def prepare(batch: int) -> CallerFactory:
        x = torch.from_numpy(ctx.images(batch)).to(device)  # (B, C, H, W), already on the device
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                if cuda_graphs:
                    call = _graph_caller(net, x, int(ctx.cfg.bench.cuda_graph_warmup))
                else:
                    call = _module_caller(model, x, device)
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise Unavailable(
                f"{name} failed on batch {batch}: {type(err).__name__}: {first}"
            ) from err
        key = "capture_s" if cuda_graphs else "first_call_s"
        notes[f"{key}_batch{batch}"] = round(time.perf_counter() - t0, 3)
        return lambda: call

    return Target(name, device, list(ctx.cfg.bench.inprocess_concurrency), prepare, notes=notes)


def _capture_cuda_graph(net: Any, x: Any, warmup: int) -> tuple[Any, Any]:
    """Record one forward pass into a CUDA graph (warm-up on a side stream first, as documented)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
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


def _ort_target(ctx: BenchContext, name: str, device: str) -> Target:
    import onnxruntime as ort

    from mlpipe.export.reference import ort_session

    provider = str(ctx.cfg.bench.ort.providers[name])
    if provider not in ort.get_available_providers():
        raise Unavailable(
            f"onnxruntime {ort.__version__} has no {provider} (available: "
            f"{ort.get_available_providers()}); install onnxruntime-gpu on a CUDA machine"
        )
    options = OmegaConf.to_container(ctx.cfg.bench.ort.session_options, resolve=True)
    try:
        session = ort_session(ctx.cfg.bench.onnx_path, [provider], options)
    except ArtifactMissingError as err:
        raise Unavailable(str(err)) from err
    if session.get_providers()[0] != provider:
        raise Unavailable(f"{provider} did not load (session uses {session.get_providers()})")

    input_name = session.get_inputs()[0].name  # the exported signature

    def prepare(batch: int) -> CallerFactory:
        feed = {input_name: ctx.images(batch)}

        def call() -> Any:
            return session.run(None, feed)

        return lambda: call

    return Target(name, device, list(ctx.cfg.bench.inprocess_concurrency), prepare)


def ort_cpu(ctx: BenchContext) -> Target:
    return _ort_target(ctx, "ort_cpu", "cpu")


def ort_cuda(ctx: BenchContext) -> Target:
    return _ort_target(ctx, "ort_cuda", "cuda")


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
    from mlpipe.export.tensorrt import open_engine, tensor_torch_dtype

    try:
        engine, context, in_name, out_name = open_engine(plan)
    except RuntimeError as err:
        raise Unavailable(str(err)) from err
    stream = torch.cuda.Stream()

    def prepare(batch: int) -> CallerFactory:
        x = torch.from_numpy(ctx.images(batch)).cuda()  # (B, C, H, W)
        context.set_input_shape(in_name, tuple(x.shape))
        y = torch.empty(
            tuple(context.get_tensor_shape(out_name)),
            device="cuda",
            dtype=tensor_torch_dtype(engine, out_name),
        )
        context.set_tensor_address(in_name, x.data_ptr())
        context.set_tensor_address(out_name, y.data_ptr())

        def call() -> Any:
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            return y

        return lambda: call

    return Target("tensorrt", "cuda", list(ctx.cfg.bench.inprocess_concurrency), prepare)


# -- Triton ------------------------------------------------------------------------------------
def model_config(repository: str | Path, model: str) -> dict[str, Any]:
    """What a served model's config.pbtxt sets that changes its timing: the dynamic batcher, its
    queue delay, the instance count; `label` says it in words for the bench rows."""
    from mlpipe.serving.repository import read_config

    config = read_config(Path(repository) / model / "config.pbtxt")
    batcher = config.HasField("dynamic_batching")
    delay = int(config.dynamic_batching.max_queue_delay_microseconds) if batcher else 0
    instances = sum(int(g.count) for g in config.instance_group) or 1
    words = f"batcher on, queue delay {delay} µs" if batcher else "batcher off"
    return {
        "model": model,
        "dynamic_batching": batcher,
        "max_queue_delay_us": delay,
        "instances": instances,
        "label": f"{model}: {words}, {instances} instance(s)",
    }


def _triton_targets(ctx: BenchContext, protocol: str) -> list[Target]:
    """One target per model of `bench.triton_models` the server serves (the tuned one only
    once mlpipe-tune has written it: else one unavailable target naming the command)."""
    server = ctx.server()
    address = server.http_address if protocol == "http" else server.grpc_address
    targets = []
    for model in [str(m) for m in ctx.cfg.bench.triton_models]:
        backend = f"triton_{protocol}:{model}"
        if model not in server.models:
            targets.append(_unserved(backend, model, server.models, ctx))
            continue

        def prepare(batch: int, model: str = model) -> CallerFactory:
            return TritonCaller(
                protocol, address, model, ctx.images(batch), float(ctx.cfg.bench.load.timeout_s)
            )

        config = model_config(server.model_repository, model)
        targets.append(
            Target(
                backend,
                "cpu",
                list(ctx.cfg.bench.concurrency),
                prepare,
                mode=str(ctx.cfg.bench.load.mode),
                max_batch=int(ctx.cfg.export.triton.max_batch_size),
                notes={"model_config": config, "server_ready_s": server.ready_seconds},
                server=server,
            )
        )
    return targets


def _unserved(backend: str, model: str, served: Sequence[str], ctx: BenchContext) -> Target:
    """A target whose every cell says why its model is not served."""
    why = f"model {model!r} is not served (served: {list(served)})"
    if model == str(ctx.cfg.bench.tuned_model):
        why += f"; {ctx.cfg.bench.tuned_repository} has no tuned config: run `mlpipe-tune`"

    def prepare(_batch: int) -> CallerFactory:
        raise Unavailable(why)

    return Target(backend, "cpu", [1], prepare)


def triton_http(ctx: BenchContext) -> list[Target]:
    return _triton_targets(ctx, "http")


def triton_grpc(ctx: BenchContext) -> list[Target]:
    return _triton_targets(ctx, "grpc")


#: backend name -> its target(s): one per served model for Triton
BACKENDS: dict[str, Callable[[BenchContext], Target | list[Target]]] = {
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
