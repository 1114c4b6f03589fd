"""What mlpipe-serve reads from the model repository before it starts anything.

Every configured model must have a ``config.pbtxt`` that parses (an error names its path), its
model file, and, for the python flavour, a model file whose sha256 equals the one recorded at
export (``parameters.onnx_sha256``, written by :mod:`mlpipe.export.triton_repo`). A sha256 only
proves the model file is the exported one: ``config.pbtxt`` could still lie about it (a server
that loads, then fails every request, or answers ``[N, 10]`` while its metadata says ``[-1, 5]``),
so its input and output names, dtypes and dims are compared with the ONNX graph's own signature
before anything starts. The parsed signature (:class:`ModelSpec`) is the one source of what a
request may be: it sizes the gateway's body limits, generates its request check and the
watchdog's probe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from mlpipe.common.errors import ArtifactError, ArtifactMissingError
from mlpipe.common.provenance import sha256_file

_FIX = "generate the repository with `mlpipe-export` (or `make export`)"


@dataclass(frozen=True)
class TensorSignature:
    """One tensor of a model as Triton sees it: name, Triton datatype (``FP32``), per-sample
    dims (without the batch axis when the model batches; -1: any size)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One served model's signature: input name, numpy dtype, per-sample dims, batch limit,
    and every input and output tensor (what the gateway's check is generated from)."""

    name: str
    input_name: str
    dtype: np.dtype
    sample_dims: tuple[int, ...]
    max_batch_size: int
    inputs: tuple[TensorSignature, ...] = field(default=())
    outputs: tuple[TensorSignature, ...] = field(default=())

    @property
    def sample_bytes(self) -> int:
        return int(np.prod(self.sample_dims)) * self.dtype.itemsize

    @property
    def sample_values(self) -> int:
        return int(np.prod(self.sample_dims))

    def probe_batch(self) -> np.ndarray:
        """A valid batch of one (zeros) for the watchdog's real inference."""
        return np.zeros((1, *self.sample_dims), dtype=self.dtype)


def read_config(config_path: Path):  # -> model_config_pb2.ModelConfig
    """Parse one config.pbtxt; a missing or invalid file names its path and the fix."""
    from tritonclient.grpc import model_config_pb2 as mc

    if not config_path.is_file():
        raise ArtifactMissingError(
            f"model {config_path.parent.name!r} not found in the Triton repository "
            f"({config_path} is missing); {_FIX}"
        )
    try:
        return text_format.Parse(config_path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ArtifactError(
            f"{config_path} is not a valid Triton config.pbtxt ({first}); {_FIX}"
        ) from None


def _tensors(entries) -> tuple[TensorSignature, ...]:
    from tritonclient.grpc import model_config_pb2 as mc

    return tuple(
        TensorSignature(
            t.name, mc.DataType.Name(t.data_type).removeprefix("TYPE_"), tuple(map(int, t.dims))
        )
        for t in entries
    )


def _spec(config, config_path: Path) -> ModelSpec:
    from tritonclient.utils import triton_to_np_dtype

    inputs, outputs = _tensors(config.input), _tensors(config.output)
    if len(inputs) != 1 or not outputs:
        raise ArtifactError(
            f"{config_path} declares {len(inputs)} inputs and {len(outputs)} outputs; mlpipe "
            f"serves models with one input and at least one output. {_FIX}"
        )
    (inp,) = inputs
    return ModelSpec(
        config.name,
        inp.name,
        np.dtype(triton_to_np_dtype(inp.datatype)),
        inp.dims,
        int(config.max_batch_size),
        inputs,
        outputs,
    )


def _as_served(spec: TensorSignature, batched: bool) -> TensorSignature:
    """An ONNX tensor as Triton serves it: the batch axis dropped when the model batches."""
    return TensorSignature(spec.name, spec.data_type.removeprefix("TYPE_"), spec.dims[batched:])


def check_signature(model_file: Path, config_path: Path, spec: ModelSpec) -> None:
    """Refuse a ``config.pbtxt`` whose tensors are not the ONNX graph's (one line, both sides)."""
    from google.protobuf.message import DecodeError

    from mlpipe.export.triton_repo import onnx_signature

    try:
        onnx_sig = onnx_signature(model_file)
    except (DecodeError, ArtifactError):
        return  # not a readable one-in-one-out graph: ONNX Runtime names the problem at load
    batched = spec.max_batch_size > 0
    expected = (_as_served(onnx_sig.input, batched), _as_served(onnx_sig.output, batched))
    declared = (spec.inputs[0], spec.outputs[0]) if len(spec.outputs) == 1 else None
    if declared != expected:
        show = "; ".join(f"{t.name} {t.datatype} {list(t.dims)}" for t in expected)
        tensors = spec.inputs + spec.outputs
        said = "; ".join(f"{t.name} {t.datatype} {list(t.dims)}" for t in tensors)
        raise ArtifactError(
            f"{config_path} declares {said}, but {model_file} has {show}; refusing to serve a "
            f"config that does not describe its model. {_FIX}"
        )


def _check_files(model_dir: Path, config, spec: ModelSpec) -> None:
    onnx = config.backend == "python" or config.platform == "onnxruntime_onnx"
    if config.backend == "python":
        needed = config.parameters["onnx_file"].string_value
    else:
        needed = "model.plan" if config.platform == "tensorrt_plan" else "model.onnx"
    versions = sorted(d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()) or [
        model_dir / "1"
    ]
    for version in versions:
        path = version / needed
        if not path.is_file():
            raise ArtifactMissingError(f"model file {path} is missing; {_FIX}")
        if "onnx_sha256" in config.parameters:
            check_sha256(path, config.parameters["onnx_sha256"].string_value)
        if onnx:  # a TensorRT plan needs TensorRT to read its bindings
            check_signature(path, model_dir / "config.pbtxt", spec)


def check_sha256(path: Path, recorded: str) -> None:
    """Refuse a model file that is not the one exported (names both hashes)."""
    actual = sha256_file(path)
    if actual != recorded:
        raise ArtifactError(
            f"{path} has sha256 {actual}, but the export recorded {recorded} in config.pbtxt; "
            f"refusing to serve a model that is not the exported one. {_FIX}"
        )


def check_repository(repository: Path, models: Iterable[str]) -> dict[str, ModelSpec]:
    """Check every configured model (config, files, sha256, config vs ONNX signature); return
    their signatures."""
    specs = {}
    for name in models:
        model_dir = repository / name
        config = read_config(model_dir / "config.pbtxt")
        specs[name] = _spec(config, model_dir / "config.pbtxt")
        _check_files(model_dir, config, specs[name])
    return specs
