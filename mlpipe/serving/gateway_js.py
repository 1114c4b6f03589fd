"""The gateway's request check, in nginx's own JavaScript module (njs, Debian's
``libnginx-mod-http-js``): what nginx's core cannot see because it is inside the body.

What a request may be has one source, the model signature (:class:`ModelSpec`, read from
``config.pbtxt`` and checked against the ONNX graph at start): every input and output name, the
datatype, every dim (the batch in ``[1, max_batch_size]``, the others equal to the model's), the
byte size of each tensor and each output parameter (``classification`` at most the output's
width) are baked into the script as a literal. Triton 2.51 trusts what it is sent: a batch of
``2**32 + 1`` is truncated to 32 bits and answered for one sample, a dim of ``2**31 - 1`` makes it
allocate until ``std::bad_alloc`` aborts it, and duplicate ``data`` or ``inputs`` keys abort it.

* HTTP, JSON or binary tensors: the JSON part is read by a strict parser written here, not by
  njs's ``JSON.parse``: it refuses a key that appears twice in one object at any level (njs's
  parser keeps the last duplicate, Triton's RapidJSON the first: the two would check and run
  different requests), and it counts nesting itself, so ``max_json_depth`` is the real limit
  (njs's own parser stops at 32). Unknown fields are refused, not ignored.
* gRPC ``ModelInfer``: the protobuf is walked without a parser library; a singular field sent
  twice (protobuf keeps the last), an unknown field or a wrong wire type is refused, then the
  same signature rules apply to ``inputs``, ``outputs`` and ``raw_input_contents``.

A refused request gets HTTP 400 with Triton's ``{"error": ...}`` body (gRPC: INVALID_ARGUMENT
with the reason); a good one is handed to tritonserver unchanged. A bug in the check itself is a
400 too, never nginx's HTML 500.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.serving.repository import ModelSpec, TensorSignature

# The njs source is a real .js file (package data), so it reads and diffs as JavaScript.
SCRIPT_PATH = Path(__file__).with_name("gateway_check.js")


def _tensor(tensor: TensorSignature) -> dict[str, Any]:
    """Dims, datatype and the width a ``classification`` may ask for (a dynamic dim: any k that
    Triton's 32-bit count still holds)."""
    width = 2**31 - 1 if any(d < 0 for d in tensor.dims) else int(np.prod(tensor.dims))
    return {"datatype": tensor.datatype, "dims": list(tensor.dims), "width": width}


def model_rules(spec: ModelSpec) -> dict[str, Any]:
    """What the check enforces for one model, all of it from its signature."""
    return {
        "max_batch": spec.max_batch_size,
        "n_inputs": len(spec.inputs),
        "inputs": {t.name: _tensor(t) for t in spec.inputs},
        "outputs": {t.name: _tensor(t) for t in spec.outputs},
    }


def check_script(specs: Mapping[str, ModelSpec], max_depth: int) -> str:
    """The njs module for these models (limits baked in as a literal)."""
    models = {name: model_rules(spec) for name, spec in specs.items()}
    return (
        SCRIPT_PATH.read_text(encoding="utf-8")
        .replace("__MODELS__", json.dumps(models, sort_keys=True))
        .replace("__MAX_DEPTH__", str(int(max_depth)))
    )
