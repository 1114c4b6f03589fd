"""Triton python-backend model: ONNX Runtime behind Triton's dynamic batcher.

This file is copied verbatim as ``model.py`` into the generated model repository
(``mlpipe.export.triton_repo``); it is never imported by mlpipe itself. It exists because the
``tritonserver`` shipped in the nvidia-pytriton wheel has only the python backend, so the
ONNX model runs in ONNX Runtime inside the python stub process.

Everything it needs comes from ``config.pbtxt``: tensor names, dtypes and dims from
``input``/``output``, the ONNX file name and ORT thread counts from ``parameters``.
``execute`` receives every request the dynamic batcher gathered, validates each one,
concatenates the valid ones along the batch axis and runs **one** ORT call for all of them,
so batching on the server really batches the compute. A bad request gets its own error
response (``INVALID_ARG``: HTTP 400, gRPC INVALID_ARGUMENT); the other requests in the same
batch are still answered and the server keeps serving. Non-finite logits are an error, never a
200. At load, the ONNX file must have the sha256 recorded at export
(``parameters.onnx_sha256``), and an ONNX Runtime load failure is quoted in one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _param(model_config: dict[str, Any], key: str) -> str:
    """A string parameter from config.pbtxt's ``parameters`` map (KeyError names the key)."""
    try:
        return model_config["parameters"][key]["string_value"]
    except KeyError as err:
        raise KeyError(
            f"config.pbtxt lacks parameters {{ key: {key!r} }}; regenerate with mlpipe-export"
        ) from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(err: BaseException) -> str:
    """Triton quotes the first line of a load error; keep all of ORT's message on it."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def _error(message: str) -> Any:
    """A per-request error the caller caused: HTTP 400 / gRPC INVALID_ARGUMENT."""
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def _open_session(onnx_path: Path, config: dict[str, Any]) -> Any:
    """Check the file is the exported one, then open it; failures name the file and the cause."""
    recorded = config.get("parameters", {}).get("onnx_sha256", {}).get("string_value")
    if recorded:
        actual = _sha256(onnx_path)
        if actual != recorded:
            raise RuntimeError(
                f"{onnx_path} has sha256 {actual}, but the export recorded {recorded}; "
                "refusing to serve a model that is not the exported one (re-run mlpipe-export)"
            )
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(_param(config, "intra_op_num_threads"))
    options.inter_op_num_threads = int(_param(config, "inter_op_num_threads"))
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:
        raise RuntimeError(f"ONNX Runtime cannot load {onnx_path}: {_one_line(err)}") from None


class TritonPythonModel:
    """Triton's python-backend entry point (the class name is fixed by Triton)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the ORT session once per model instance; read the signature from the config."""
        config = json.loads(args["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        (inp,) = config["input"]
        (out,) = config["output"]
        self.input_name: str = inp["name"]
        self.output_name: str = out["name"]
        self.sample_dims = tuple(int(d) for d in inp["dims"])  # per-sample dims, batch excluded
        self.input_dtype = pb_utils.triton_string_to_numpy(inp["data_type"])
        self.output_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.session = _open_session(version_dir / _param(config, "onnx_file"), config)
        self.ort_input = self.session.get_inputs()[0].name
        self.ort_output = self.session.get_outputs()[0].name

    def _validate(self, request: Any) -> np.ndarray | str:
        """The request's input array, or a message saying what is wrong and what is expected."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return f"missing input tensor {self.input_name!r}"
        declared = tuple(int(d) for d in tensor.shape())
        try:
            array = tensor.as_numpy()
        except ValueError as err:
            return f"input {self.input_name!r} of shape {declared} does not match its data: {err}"
        if tuple(array.shape) != declared:  # a batch dimension Triton truncated (e.g. 2**32+1)
            return (
                f"input {self.input_name!r} declares shape {declared} but {array.nbytes} bytes "
                f"were received (shape {tuple(array.shape)})"
            )
        dims = ", ".join(map(str, self.sample_dims))
        expected = f"expected {self.input_dtype.__name__} of shape (batch, {dims})"
        if array.dtype != self.input_dtype:
            return f"input {self.input_name!r} has dtype {array.dtype}; {expected}"
        if array.ndim != len(self.sample_dims) + 1 or tuple(array.shape[1:]) != self.sample_dims:
            return f"input {self.input_name!r} has shape {tuple(array.shape)}; {expected}"
        if self.max_batch_size and array.shape[0] > self.max_batch_size:
            return f"batch size {array.shape[0]} exceeds max_batch_size {self.max_batch_size}"
        if not np.all(np.isfinite(array)):
            return f"input {self.input_name!r} contains NaN or Inf values"
        return array

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer every request; all valid ones share a single ORT run."""
        responses: list[Any] = [None] * len(requests)
        arrays: list[np.ndarray] = []
        owners: list[int] = []
        for i, request in enumerate(requests):
            checked = self._validate(request)
            if isinstance(checked, str):
                responses[i] = _error(checked)
            else:
                arrays.append(checked)
                owners.append(i)
        if arrays:
            self._run(arrays, owners, responses)
        return responses

    def _run(self, arrays: list[np.ndarray], owners: list[int], responses: list[Any]) -> None:
        """One ORT call for every valid request; split the logits back per request."""
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)  # (sum B, *dims)
        try:
            logits = self.session.run([self.ort_output], {self.ort_input: batch})[0]  # (sum B, K)
        except Exception as err:  # ORT failure: answer each request instead of killing the stub
            for i in owners:
                responses[i] = _error(f"ONNX Runtime failed: {_one_line(err)}")
            return
        logits = logits.astype(self.output_dtype, copy=False)
        start = 0
        for i, array in zip(owners, arrays, strict=True):
            stop = start + array.shape[0]
            part = logits[start:stop]  # (B, K)
            start = stop
            if not np.all(np.isfinite(part)):  # e.g. finite inputs of +-3e38 overflow to NaN
                responses[i] = _error(
                    f"the model produced non-finite logits for this input (values in "
                    f"[{float(array.min()):g}, {float(array.max()):g}]); send inputs in the "
                    "range the model was trained on"
                )
                continue
            out = pb_utils.Tensor(self.output_name, part)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[out])

    def finalize(self) -> None:
        """Drop the session so the stub exits promptly."""
        self.session = None
