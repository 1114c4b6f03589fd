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
response; the other requests in the same batch are still answered and the server keeps
serving.
"""

from __future__ import annotations

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
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_param(config, "intra_op_num_threads"))
        options.inter_op_num_threads = int(_param(config, "inter_op_num_threads"))
        self.session = ort.InferenceSession(
            str(version_dir / _param(config, "onnx_file")),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self.ort_input = self.session.get_inputs()[0].name
        self.ort_output = self.session.get_outputs()[0].name

    def _validate(self, request: Any) -> np.ndarray | str:
        """The request's input array, or a message saying what is wrong and what is expected."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return f"missing input tensor {self.input_name!r}"
        array = tensor.as_numpy()
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
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(checked)
                )
            else:
                arrays.append(checked)
                owners.append(i)
        if arrays:
            batch = (
                arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            )  # (sum B, *dims)
            try:
                logits = self.session.run([self.ort_output], {self.ort_input: batch})[
                    0
                ]  # (sum B, classes)
            except Exception as err:  # ORT failure: answer each request instead of killing the stub
                for i in owners:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"ONNX Runtime failed: {err}")
                    )
                return responses
            logits = logits.astype(self.output_dtype, copy=False)
            start = 0
            for i, array in zip(owners, arrays, strict=True):
                stop = start + array.shape[0]
                out = pb_utils.Tensor(self.output_name, logits[start:stop])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                start = stop
        return responses

    def finalize(self) -> None:
        """Drop the session so the stub exits promptly."""
        self.session = None
