"""What mlpipe-serve reads from the model repository before it starts anything.

Every configured model must have a ``config.pbtxt`` that parses (an error names its path), its
model file, and, for the python flavour, a model file whose sha256 equals the one recorded at
export (``parameters.onnx_sha256``, written by :mod:`mlpipe.export.triton_repo`). The parsed
signature (:class:`ModelSpec`) sizes the gateway's body limits and the watchdog's probe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from mlpipe.common.errors import ArtifactError, ArtifactMissingError
from mlpipe.common.provenance import sha256_file

_FIX = "generate the repository with `mlpipe-export` (or `make export`)"


@dataclass(frozen=True)
class ModelSpec:
    """One served model's signature: input name, numpy dtype, per-sample dims, batch limit."""

    name: str
    input_name: str
    dtype: np.dtype
    sample_dims: tuple[int, ...]
    max_batch_size: int

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


def _spec(config) -> ModelSpec:
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.utils import triton_to_np_dtype

    (inp,) = config.input
    datatype = mc.DataType.Name(inp.data_type).removeprefix("TYPE_")
    return ModelSpec(
        config.name,
        inp.name,
        np.dtype(triton_to_np_dtype(datatype)),
        tuple(int(d) for d in inp.dims),
        int(config.max_batch_size),
    )


def _check_files(model_dir: Path, config) -> None:
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


def check_sha256(path: Path, recorded: str) -> None:
    """Refuse a model file that is not the one exported (names both hashes)."""
    actual = sha256_file(path)
    if actual != recorded:
        raise ArtifactError(
            f"{path} has sha256 {actual}, but the export recorded {recorded} in config.pbtxt; "
            f"refusing to serve a model that is not the exported one. {_FIX}"
        )


def check_repository(repository: Path, models: Iterable[str]) -> dict[str, ModelSpec]:
    """Check every configured model (config, files, sha256); return their signatures."""
    specs = {}
    for name in models:
        model_dir = repository / name
        config = read_config(model_dir / "config.pbtxt")
        _check_files(model_dir, config)
        specs[name] = _spec(config)
    return specs
