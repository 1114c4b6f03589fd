"""The python-backend model of checks.<system>.pytriton-stub (pkgs/pytriton-stub-check.nix).

It runs inside Triton's python-backend stub process, so what it records is the stub's view:
the interpreter, where numpy and onnxruntime were imported from, and every libpython mapped into
the process (two would mean two CPython runtimes in one address space). It then serves ReLU
through an ONNX Runtime session, so the extension modules are exercised, not only imported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# ONNX IR 8 / opset 17: old enough for any onnxruntime that nixpkgs or pip pairs with this onnx.
IR_VERSION = 8
OPSET = 17


def mapped_libpythons() -> list[str]:
    """Resolved paths of every libpython file mapped into this process."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "libpython" in Path(fields[5].strip()).name:
                paths.add(os.path.realpath(fields[5].strip()))
    return sorted(paths)


def relu_session(size: int) -> ort.InferenceSession:
    """An in-memory ONNX model Y = Relu(X) for a float vector of ``size``, on the CPU provider."""
    x = onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [size])
    y = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [size])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["X"], ["Y"])], "relu", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.session = relu_session(int(config["input"][0]["dims"][0]))
        report = {
            "pid": os.getpid(),
            "version": list(sys.version_info[:3]),
            "executable": sys.executable,
            "prefix": sys.prefix,
            "numpy": os.path.realpath(np.__file__),
            "onnxruntime": os.path.realpath(ort.__file__),
            "libpython": mapped_libpythons(),
        }
        Path(args["model_repository"], "stub-report.json").write_text(json.dumps(report))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            (y,) = self.session.run(None, {"X": x})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return responses
