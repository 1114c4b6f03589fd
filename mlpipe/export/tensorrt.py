"""TensorRT 10.x engine builder and runner for the exported ONNX
(``mlpipe-export export=tensorrt``).

Written against the TensorRT 10 Python API (``Builder``, ``create_network(0)`` — explicit batch
is the only mode in TRT 10, the old ``EXPLICIT_BATCH`` flag is deprecated —, ``OnnxParser``,
one optimization profile with min/opt/max batch, ``build_serialized_network``; execution via
``set_input_shape``/``set_tensor_address``/``execute_async_v3`` with torch CUDA tensors as
buffers). **Unverified on the development machine** (no GPU, TensorRT not installable); the
tests that need it are marked ``tensorrt`` and skip with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mlpipe.common.errors import ArtifactError, ConfigError, UnavailableError

log = logging.getLogger(__name__)


#: TensorRT or a CUDA GPU is missing (the shared UnavailableError; the message says which).
TensorRTUnavailable = UnavailableError


def require_tensorrt() -> ModuleType:
    """Import ``tensorrt`` and check for a CUDA device, or stop with a clear message."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise TensorRTUnavailable(
            "export=tensorrt needs the TensorRT 10.x Python package (`pip install tensorrt`) and "
            "an NVIDIA GPU; "
            f"import failed: {err}. Use the default `export=onnx` on this machine."
        ) from err
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "export=tensorrt needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is "
            "False). "
            "Run it on a GPU machine, or use the default `export=onnx`."
        )
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} found; this builder targets the 10.x API"
        )
    return trt


def _batch_range(trt_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    min_b, opt_b, max_b = (int(trt_cfg[k]) for k in ("min_batch", "opt_batch", "max_batch"))
    if not 1 <= min_b <= opt_b <= max_b:
        raise ConfigError(
            f"export.tensorrt needs 1 <= min_batch <= opt_batch <= max_batch, got {min_b}, "
            f"{opt_b}, {max_b}"
        )
    return min_b, opt_b, max_b


def _parse(trt: ModuleType, onnx_path: Path, logger: Any) -> tuple[Any, Any, Any]:
    """(builder, network, parser) holding the parsed ONNX graph."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)  # must outlive the network's build
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {onnx_path}: {errors}; re-export it")
    return builder, network, parser


def _builder_config(
    trt: ModuleType, builder: Any, network: Any, trt_cfg: Mapping[str, Any], input_name: str
) -> Any:
    """Workspace, fp16 and one optimization profile over the configured batch range."""
    min_b, opt_b, max_b = _batch_range(trt_cfg)
    tensor = next(
        network.get_input(i)
        for i in range(network.num_inputs)
        if network.get_input(i).name == input_name
    )
    dims = tuple(tensor.shape)[1:]  # (C, H, W); axis 0 is the dynamic batch (-1)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(trt_cfg["workspace_bytes"]))
    if trt_cfg["fp16"]:
        if not builder.platform_has_fast_fp16:
            log.warning(
                "export.tensorrt.fp16 is set but this GPU has no fast fp16; building anyway"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (min_b, *dims), (opt_b, *dims), (max_b, *dims))
    config.add_optimization_profile(profile)
    return config


def build_engine(
    onnx_path: Path, plan_path: Path, trt_cfg: Mapping[str, Any], input_name: str
) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path``.

    The optimization profile covers batch ``trt_cfg.min_batch``..``max_batch`` tuned for
    ``opt_batch``; the other input dims come from the ONNX graph. ``trt_cfg.fp16`` enables
    half precision where the GPU has fast fp16.
    """
    trt = require_tensorrt()
    logger = trt.Logger(getattr(trt.Logger, str(trt_cfg["log_severity"])))
    builder, network, _parser = _parse(trt, onnx_path, logger)
    config = _builder_config(trt, builder, network, trt_cfg, input_name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT failed to build an engine from {onnx_path}; rerun with "
            "export.tensorrt.log_severity=VERBOSE"
        )
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    log.info(
        "TensorRT engine %s (batch range %s, fp16=%s)",
        plan_path,
        _batch_range(trt_cfg),
        bool(trt_cfg["fp16"]),
    )
    return plan_path


_TRT_TO_TORCH = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "INT32": torch.int32,
    "INT64": torch.int64,
}


def tensor_torch_dtype(engine: Any, name: str) -> torch.dtype:
    """The torch dtype of an engine I/O tensor (one map, for parity here and the bench)."""
    return _TRT_TO_TORCH[engine.get_tensor_dtype(name).name]


def open_engine(plan_path: Path) -> tuple[Any, Any, str, str]:
    """Deserialize a plan: ``(engine, execution context, input name, output name)``.

    Shared by the parity check here and the bench's TensorRT backend, so both read an engine
    the same way (one input, one output, as mlpipe exports).
    """
    trt = require_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        Path(plan_path).read_bytes()
    )
    if engine is None:
        raise RuntimeError(
            f"TensorRT could not deserialize {plan_path} (built for another GPU or TensorRT "
            "version?)"
        )
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    (in_name,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    (out_name,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    return engine, engine.create_execution_context(), in_name, out_name


def run_engine(plan_path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits from the engine for ``images`` (N, C, H, W), in batches; returns (N, classes) float32.

    ``batch_size`` must lie inside the engine's optimization profile.
    """
    engine, context, in_name, out_name = open_engine(plan_path)
    out_dtype = tensor_torch_dtype(engine, out_name)

    stream = torch.cuda.Stream()
    outs = []
    with torch.cuda.stream(stream):
        for start in range(0, len(images), batch_size):
            x = (
                torch.from_numpy(images[start : start + batch_size]).cuda().contiguous()
            )  # (B, C, H, W)
            context.set_input_shape(in_name, tuple(x.shape))
            y = torch.empty(
                tuple(context.get_tensor_shape(out_name)), dtype=out_dtype, device="cuda"
            )  # (B, classes)
            context.set_tensor_address(in_name, x.data_ptr())
            context.set_tensor_address(out_name, y.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for batch starting at {start}")
            outs.append(y)
    stream.synchronize()
    return torch.cat(outs).float().cpu().numpy()
