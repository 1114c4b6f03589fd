"""Generate Triton model repositories from the exported ONNX signature plus config.

Nothing in a repository is hand-written: ``config.pbtxt`` is built as a
``tritonclient.grpc.model_config_pb2.ModelConfig`` message (so it is schema-valid by
construction, and tests parse it back), tensor names/dtypes/dims come from the ONNX graph, and
batching and instance counts come from ``conf/export/*.yaml`` (``export.triton``).

Two flavours:

* **python** (``${paths.model_repository}``): ``backend: "python"`` running ONNX Runtime in
  ``model.py`` (a copy of :mod:`mlpipe.export.triton_python_model`), for the tritonserver binary in
  the nvidia-pytriton wheel, which has only the python backend.
* **native** (``export.triton.native_repository``): ``platform: "onnxruntime_onnx"`` with
  ``model.onnx`` and, when a TensorRT engine was built, ``platform: "tensorrt_plan"`` with
  ``model.plan``, for NVIDIA's tritonserver containers.

Each flavour holds one model per entry of ``export.triton.models`` (name -> dynamic batching
on/off), so one server can compare batching on and off side by side.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from mlpipe.common.errors import ArtifactError, ArtifactMissingError, ConfigError
from mlpipe.common.provenance import sha256_file

log = logging.getLogger(__name__)

PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("triton_python_model.py")
#: config.pbtxt parameter holding the sha256 of the model file at export; model.py and
#: mlpipe-serve both refuse to serve a file that does not match it.
SHA256_PARAMETER = "onnx_sha256"

# ONNX TensorProto element type -> Triton data type name.
_ONNX_TO_TRITON: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: name, Triton dtype and dims with the batch axis first (-1 =
    dynamic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    """The ONNX graph's single input and single output."""

    input: TensorSpec
    output: TensorSpec


def _tensor_spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    if tensor_type.elem_type not in _ONNX_TO_TRITON:
        raise ArtifactError(
            f"ONNX tensor {value_info.name!r} has element type "
            f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, which has no Triton "
            "mapping here"
        )
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, _ONNX_TO_TRITON[tensor_type.elem_type], dims)


def onnx_signature(onnx_path: Path | str) -> Signature:
    """Read the input/output signature of an exported model (one input, one output expected)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ArtifactMissingError(
            f"ONNX model not found at {onnx_path}; create it with `mlpipe-export` (or `make "
            "export`)"
        )
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ArtifactError(
            f"{onnx_path}: expected one input and one output, found inputs "
            f"{[i.name for i in inputs]} "
            f"and outputs {[o.name for o in graph.output]}"
        )
    return Signature(_tensor_spec(inputs[0]), _tensor_spec(graph.output[0]))


def _check_model_args(
    signature: Signature, max_batch_size: int, instance_count: int, instance_kind: str
) -> None:
    """Config values Triton would reject (or silently reinterpret), named by their keys."""
    if max_batch_size < 1:
        raise ConfigError(
            f"export.triton.max_batch_size must be >= 1 (got {max_batch_size}): the ONNX has a "
            "batch axis"
        )
    if instance_count < 1:
        raise ConfigError(f"export.triton.instance_group.count must be >= 1 (got {instance_count})")
    if instance_kind not in mc.ModelInstanceGroup.Kind.keys():
        raise ConfigError(
            f"instance kind {instance_kind!r} is not one of "
            f"{sorted(mc.ModelInstanceGroup.Kind.keys())}"
        )
    for spec in (signature.input, signature.output):
        if spec.dims and spec.dims[0] != -1:
            log.warning(
                "tensor %s has a fixed first axis %s; Triton treats it as the batch axis",
                spec.name,
                spec.dims[0],
            )


def _add_tensors(config: mc.ModelConfig, signature: Signature) -> None:
    """Input and output without the batch axis (``max_batch_size > 0`` makes Triton add it)."""
    for field, spec in ((config.input, signature.input), (config.output, signature.output)):
        field.add(
            name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=list(spec.dims[1:])
        )


def _add_batching(config: mc.ModelConfig, dynamic_batching: Mapping[str, Any]) -> None:
    preferred = [int(b) for b in dynamic_batching["preferred_batch_size"]]
    bad = [b for b in preferred if not 1 <= b <= config.max_batch_size]
    if bad:
        raise ConfigError(
            f"export.triton.dynamic_batching.preferred_batch_size {bad} must lie in [1, "
            f"max_batch_size={config.max_batch_size}]"
        )
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = int(
        dynamic_batching["max_queue_delay_microseconds"]
    )


def build_model_config(
    name: str,
    signature: Signature,
    *,
    max_batch_size: int,
    instance_count: int,
    instance_kind: str,
    dynamic_batching: Mapping[str, Any] | None,
    backend: str | None = None,
    platform: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> mc.ModelConfig:
    """A Triton ``ModelConfig`` message for a model whose first axis is the batch axis.

    ``dynamic_batching=None`` leaves the batcher off (each request is executed alone).
    """
    _check_model_args(signature, max_batch_size, instance_count, instance_kind)
    if (backend is None) == (platform is None):
        raise ValueError("give exactly one of backend= or platform=")  # a caller's bug
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend is not None:
        config.backend = backend
    if platform is not None:
        config.platform = platform
    _add_tensors(config, signature)
    config.instance_group.add(
        count=instance_count, kind=mc.ModelInstanceGroup.Kind.Value(instance_kind)
    )
    if dynamic_batching is not None:
        _add_batching(config, dynamic_batching)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def config_to_pbtxt(config: mc.ModelConfig) -> str:
    """Protobuf text format, exactly what Triton reads from ``config.pbtxt``."""
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text against Triton's schema (raises ParseError on any bad field)."""
    return text_format.Parse(text, mc.ModelConfig())


def write_model(
    repository: Path, config: mc.ModelConfig, version: int, files: Mapping[str, Path]
) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` and copy ``files`` (dest name -> source) into
    ``<version>/``.

    The model folder is replaced as a whole so no stale file from an older export survives.
    """
    model_dir = repository / config.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    for dest, source in files.items():
        shutil.copyfile(source, version_dir / dest)
    (model_dir / "config.pbtxt").write_text(config_to_pbtxt(config))
    return model_dir


def _common(triton_cfg: Mapping[str, Any], batching: bool) -> dict[str, Any]:
    return {
        "max_batch_size": int(triton_cfg["max_batch_size"]),
        "instance_count": int(triton_cfg["instance_group"]["count"]),
        "dynamic_batching": triton_cfg["dynamic_batching"] if batching else None,
    }


def build_python_repository(onnx_path: Path, triton_cfg: Mapping[str, Any]) -> list[Path]:
    """The python-backend flavour: ``model.py`` (ORT) + ``model.onnx`` per configured model."""
    repository = Path(triton_cfg["python_repository"])
    count = int(triton_cfg["instance_group"]["count"])
    return [
        write_python_model(
            repository,
            onnx_path,
            triton_cfg,
            name,
            instance_count=count,
            dynamic_batching=triton_cfg["dynamic_batching"] if batching else None,
        )
        for name, batching in triton_cfg["models"].items()
    ]


def build_native_repository(
    onnx_path: Path, triton_cfg: Mapping[str, Any], plan_path: Path | None = None
) -> list[Path]:
    """The native flavour for NVIDIA's containers: ``onnxruntime_onnx`` (and ``tensorrt_plan`` if
    built)."""
    signature = onnx_signature(onnx_path)
    repository = Path(triton_cfg["native_repository"])
    native = triton_cfg["native"]
    written = []
    for name, batching in triton_cfg["models"].items():
        config = build_model_config(
            name,
            signature,
            platform="onnxruntime_onnx",
            instance_kind=str(triton_cfg["instance_group"]["kind"]),
            parameters=native["onnxruntime_parameters"],
            **_common(triton_cfg, bool(batching)),
        )
        written.append(
            write_model(repository, config, int(triton_cfg["version"]), {"model.onnx": onnx_path})
        )
        if plan_path is not None:
            trt_config = build_model_config(
                f"{name}{native['tensorrt_suffix']}",
                signature,
                platform="tensorrt_plan",
                instance_kind=str(native["tensorrt_instance_kind"]),
                **_common(triton_cfg, bool(batching)),
            )
            written.append(
                write_model(
                    repository, trt_config, int(triton_cfg["version"]), {"model.plan": plan_path}
                )
            )
    return written


def build_repositories(
    onnx_path: Path | str, triton_cfg: Mapping[str, Any], plan_path: Path | str | None = None
) -> dict[str, list[str]]:
    """Both flavours; returns ``{"python": [model dirs], "native": [model dirs]}``."""
    onnx_path = Path(onnx_path)
    plan = Path(plan_path) if plan_path is not None else None
    python_dirs = build_python_repository(onnx_path, triton_cfg)
    native_dirs = build_native_repository(onnx_path, triton_cfg, plan)
    log.info(
        "Triton repositories: python %s, native %s",
        triton_cfg["python_repository"],
        triton_cfg["native_repository"],
    )
    return {"python": [str(p) for p in python_dirs], "native": [str(p) for p in native_dirs]}


def write_python_model(
    repository: Path,
    onnx_path: Path,
    triton_cfg: Mapping[str, Any],
    name: str,
    *,
    instance_count: int,
    dynamic_batching: Mapping[str, Any] | None,
) -> Path:
    """The one writer of a python-backend model (the export's, the tuner's sweep candidates and
    its chosen config): instance count and batcher as given, everything else as in
    ``export.triton``.

    The ONNX file's sha256 is recorded in ``config.pbtxt`` (``parameters.onnx_sha256``), so a
    different model.onnx dropped into any repository is refused (by mlpipe-serve before launch,
    by model.py at load) instead of served."""
    py_cfg = triton_cfg["python_backend"]
    config = build_model_config(
        name,
        onnx_signature(onnx_path),
        backend="python",
        max_batch_size=int(triton_cfg["max_batch_size"]),
        instance_count=instance_count,
        instance_kind=str(triton_cfg["instance_group"]["kind"]),
        dynamic_batching=dynamic_batching,
        parameters={
            "onnx_file": py_cfg["onnx_file"],
            "intra_op_num_threads": py_cfg["intra_op_num_threads"],
            "inter_op_num_threads": py_cfg["inter_op_num_threads"],
            SHA256_PARAMETER: sha256_file(onnx_path),
        },
    )
    files = {"model.py": PYTHON_MODEL_TEMPLATE, str(py_cfg["onnx_file"]): onnx_path}
    return write_model(Path(repository), config, int(triton_cfg["version"]), files)
