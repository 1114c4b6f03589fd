"""Bad inference requests generated from a model's signature (what the request-fuzz test sends).

Every case is derived from :class:`~mlpipe.serving.repository.ModelSpec`, never written for the
digits model: each dim off by one, zero, negative, huge or not an integer; every other datatype;
wrong names and types at every level; unknown fields; a key sent twice at every level of the JSON
(the bad value first, then the good one, and the other way round); every kind of broken binary
header; output parameters out of range. gRPC gets the same through raw protobuf bytes, including
singular fields sent twice (protobuf keeps the last one) and unknown fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipe.serving.repository import ModelSpec

DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")
HUGE = (2**31 - 1, 2**31, 2**32 + 1, 2**63 - 1)
NOT_INTEGERS = (1.5, "1", None, True)


@dataclass(frozen=True)
class HttpCase:
    id: str
    body: bytes
    headers: dict[str, str]


class Pairs(list):
    """A JSON object as (key, value) pairs: the one way to write a key twice."""


def dump(value: Any) -> str:
    """JSON text; a :class:`Pairs` keeps every pair, duplicates included."""
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return dump(Pairs(value.items()))
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def good_shape(spec: ModelSpec) -> list[int]:
    return [1, *spec.inputs[0].dims] if spec.max_batch_size > 0 else list(spec.inputs[0].dims)


def good_request(spec: ModelSpec, binary: bool) -> dict[str, Any]:
    """A valid request for one sample of zeros (binary: the tensor after the JSON header)."""
    tensor, shape = spec.inputs[0], good_shape(spec)
    entry: dict[str, Any] = {"name": tensor.name, "shape": shape, "datatype": tensor.datatype}
    if binary:
        entry["parameters"] = {"binary_data_size": sample_bytes(spec, shape)}
    else:
        entry["data"] = [0] * int(np.prod(shape))
    output = {"name": spec.outputs[0].name, "parameters": {"binary_data": False}}
    return {"id": "1", "inputs": [entry], "outputs": [output]}


def sample_bytes(spec: ModelSpec, shape: list[int]) -> int:
    return int(np.prod(shape)) * spec.dtype.itemsize


def http_case(
    case_id: str, request: Any, binary_bytes: int | None, header: str | None = None
) -> HttpCase:
    """The body (JSON text, then ``binary_bytes`` zero bytes when binary) and its headers."""
    text = (request if isinstance(request, str) else dump(request)).encode()
    if binary_bytes is None:
        return HttpCase(case_id, text, {"Content-Type": "application/json"})
    length = str(len(text)) if header is None else header
    return HttpCase(
        case_id, text + bytes(binary_bytes), {"Inference-Header-Content-Length": length}
    )


def bad_dims(spec: ModelSpec) -> Iterator[tuple[str, list[Any]]]:
    """Every dim off by one, zero, negative, huge, not an integer; and every wrong rank."""
    shape = good_shape(spec)
    for i, dim in enumerate(shape):
        batch = spec.max_batch_size > 0 and i == 0
        values = [0, -1, spec.max_batch_size + 1] if batch else [dim - 1, dim + 1, 0, -1]
        for value in [*values, *HUGE, *NOT_INTEGERS]:
            if value is True or value != dim:
                yield f"dim{i}={value!r}", [*shape[:i], value, *shape[i + 1 :]]
    yield "rank-1", shape[:-1]
    yield "rank+1", [*shape, 1]
    yield "rank0", []
    yield "not-a-list", 1  # type: ignore[misc]


def shape_cases(spec: ModelSpec) -> Iterator[HttpCase]:
    good_bytes = sample_bytes(spec, good_shape(spec))
    for label, shape in bad_dims(spec):
        for binary in (False, True):
            request = good_request(spec, binary)
            request["inputs"][0]["shape"] = shape
            kind = "binary" if binary else "json"
            yield http_case(f"{kind}-{label}", request, good_bytes if binary else None)
            ints = isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**20 for d in shape)
            if binary and ints and shape:  # bytes that agree with the bad shape
                request["inputs"][0]["parameters"]["binary_data_size"] = sample_bytes(spec, shape)
                yield http_case(f"binary-consistent-{label}", request, sample_bytes(spec, shape))


def value_cases(spec: ModelSpec) -> Iterator[HttpCase]:
    """Wrong datatypes, names and types of every field, unknown fields."""
    tensor, output = spec.inputs[0], spec.outputs[0]
    width = int(np.prod(output.dims))
    replace: list[tuple[str, tuple[str, ...], Any]] = [
        *(
            (f"datatype={d}", ("inputs", 0, "datatype"), d)
            for d in DATATYPES
            if d != tensor.datatype
        ),
        *(
            (f"datatype={d!r}", ("inputs", 0, "datatype"), d)
            for d in (tensor.datatype.lower(), "", None, 1)
        ),
        *(
            (f"name={n!r}", ("inputs", 0, "name"), n)
            for n in (tensor.name + "x", "", None, 1, output.name)
        ),
        *((f"inputs={v!r}", ("inputs",), v) for v in (None, [], [None], [1], ["x"], {}, [[]])),
        ("two-inputs", ("inputs",), [good_request(spec, False)["inputs"][0]] * 2),
        *(
            (f"data={v!r}", ("inputs", 0, "data"), v)
            for v in (None, 0, "x", [None] * 64, {}, [[0] * 63])
        ),
        ("id=1", ("id",), 1),
        ("parameters=[]", ("parameters",), []),
        ("request-parameter", ("parameters",), {"sequence_id": 1}),
        *((f"priority={v!r}", ("parameters",), {"priority": v}) for v in (-1, 2**31, "1", 1.5)),
        *((f"timeout={v!r}", ("parameters",), {"timeout": v}) for v in (-1, 2**63, None)),
        ("shared-memory", ("inputs", 0, "parameters"), {"shared_memory_region": "x"}),
        ("unknown-top", ("x",), 1),
        ("unknown-input", ("inputs", 0, "x"), 1),
        ("unknown-output", ("outputs", 0, "x"), 1),
        ("output-name", ("outputs", 0, "name"), output.name + "x"),
        ("two-outputs", ("outputs",), [{"name": output.name}] * 2),
        ("outputs=null", ("outputs",), None),
        *(
            (f"classification={k!r}", ("outputs", 0, "parameters", "classification"), k)
            for k in (0, -1, width + 1, 2**32 + 1, "3", True, 1.5)
        ),
        ("binary_data='yes'", ("outputs", 0, "parameters", "binary_data"), "yes"),
        ("unknown-output-parameter", ("outputs", 0, "parameters", "x"), 1),
    ]
    for label, path, value in replace:
        request = good_request(spec, False)
        _set(request, path, value)
        yield http_case(f"json-{label}", request, None)
    for top in ("[]", '"x"', "null", "1", "{}", "", "{", '{"inputs":[null]}', '{"inputs":[1]}'):
        yield http_case(f"json-top={top!r}", top, None)


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


POISON = {
    "id": 1,
    "inputs": [],
    "outputs": [{"name": "x"}],
    "name": "x",
    "datatype": "FP64",
    "data": [],
    "parameters": {},
    "binary_data": "x",
    "binary_data_size": 4,
    "classification": 2**32 + 1,
}


def _objects(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _objects(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, (*path, i))


def duplicate_cases(spec: ModelSpec) -> Iterator[HttpCase]:
    """Each key of every object written twice: poison first, good second, and reversed."""
    good_bytes = sample_bytes(spec, good_shape(spec))
    for binary in (False, True):
        kind = "binary" if binary else "json"
        for path, obj in list(_objects(good_request(spec, binary))):
            for key in list(obj):
                poison = POISON.get(key, [])
                if key == "shape":
                    poison = [2**32 + 1, *good_shape(spec)[1:]]
                for first in (True, False):
                    request = good_request(spec, binary)
                    target = request
                    for step in path:
                        target = target[step]
                    pairs = Pairs(target.items())
                    extra = (key, poison)
                    pairs.insert(0 if first else len(pairs), extra)
                    if path:
                        _set(request, path, pairs)
                    else:
                        request = pairs
                    where = "/".join(map(str, (*path, key)))
                    order = "poison-first" if first else "poison-last"
                    yield http_case(
                        f"{kind}-duplicate-{where}-{order}", request, good_bytes if binary else None
                    )


def binary_cases(spec: ModelSpec) -> Iterator[HttpCase]:
    """Broken Inference-Header-Content-Length values and binary_data_size values."""
    good_bytes = sample_bytes(spec, good_shape(spec))
    header = len(dump(good_request(spec, True)))
    for value in ("-1", "abc", "", "99999", " 10", str(header + 1), "0", str(header - 1), "1e3"):
        yield http_case(f"binary-header={value!r}", good_request(spec, True), good_bytes, value)
    sizes = (good_bytes - 1, good_bytes + 1, 0, -good_bytes, 2**32 + good_bytes, good_bytes + 0.5)
    for size in (*sizes, str(good_bytes), None):
        request = good_request(spec, True)
        request["inputs"][0]["parameters"]["binary_data_size"] = size
        yield http_case(f"binary_data_size={size!r}", request, good_bytes)
    both = good_request(spec, True)
    both["inputs"][0]["data"] = [0] * int(np.prod(good_shape(spec)))
    yield http_case("binary-and-data", both, good_bytes)
    yield http_case("binary-size-without-header", good_request(spec, True), None)
    yield http_case("binary-missing-bytes", good_request(spec, True), good_bytes - 4)
    yield http_case("binary-extra-bytes", good_request(spec, True), good_bytes + 4)


def depth_cases(spec: ModelSpec, max_depth: int) -> Iterator[HttpCase]:
    """Nesting inside ``data``: within the limit (then wrong for the shape), and past it."""
    for depth in (33, max_depth - 3, max_depth + 1):
        request = good_request(spec, False)
        request["inputs"][0]["data"] = "@"
        text = dump(request).replace('"@"', "[" * depth + "0" + "]" * depth)
        yield http_case(f"json-depth={depth}", text, None)


def http_cases(spec: ModelSpec, max_depth: int) -> list[HttpCase]:
    return [
        *shape_cases(spec),
        *value_cases(spec),
        *duplicate_cases(spec),
        *binary_cases(spec),
        *depth_cases(spec, max_depth),
    ]


# -- gRPC ------------------------------------------------------------------------------------
def good_grpc(spec: ModelSpec, shape: list[int] | None = None) -> Any:
    from tritonclient.grpc import service_pb2

    shape = good_shape(spec) if shape is None else shape
    request = service_pb2.ModelInferRequest(model_name=spec.name, id="1")
    tensor = request.inputs.add(name=spec.inputs[0].name, datatype=spec.inputs[0].datatype)
    tensor.shape.extend(shape)
    request.outputs.add(name=spec.outputs[0].name)
    request.raw_input_contents.append(bytes(sample_bytes(spec, good_shape(spec))))
    return request


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (number < 16, payload < 128 bytes)."""
    assert number < 16 and len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def grpc_cases(spec: ModelSpec) -> list[tuple[str, bytes]]:
    """(id, serialized ModelInferRequest) for every bad gRPC request."""
    cases: list[tuple[str, bytes]] = []
    for label, shape in bad_dims(spec):
        if isinstance(shape, list) and all(type(d) is int and -(2**63) <= d < 2**63 for d in shape):
            cases.append((f"grpc-{label}", good_grpc(spec, shape).SerializeToString()))
    for datatype in [d for d in DATATYPES if d != spec.inputs[0].datatype] + ["", "fp32"]:
        request = good_grpc(spec)
        request.inputs[0].datatype = datatype
        cases.append((f"grpc-datatype={datatype!r}", request.SerializeToString()))
    cases += _grpc_structure_cases(spec)
    good = good_grpc(spec).SerializeToString()
    for label, extra in (
        ("model_name", _field(1, spec.name.encode())),
        ("model_version", _field(2, b"1") + _field(2, b"2")),
        ("id", _field(3, b"2")),
        ("unknown-field", bytes([15 << 3 | 0, 1])),
        ("wrong-wire-type", bytes([1 << 3 | 0, 1])),
    ):
        cases.append((f"grpc-twice-{label}", good + extra))
    tensor = good_grpc(spec).inputs[0].SerializeToString()
    for label, extra in (
        ("name", _field(1, spec.inputs[0].name.encode())),
        ("datatype", _field(2, b"FP64")),
        ("unknown", bytes([9 << 3 | 0, 1])),
    ):
        body = good_grpc(spec)
        del body.inputs[:]
        raw = body.SerializeToString() + _field(5, tensor + extra)
        cases.append((f"grpc-input-twice-{label}", raw))
    return cases


def _grpc_structure_cases(spec: ModelSpec) -> list[tuple[str, bytes]]:
    """Names, counts, byte sizes, parameters: one field wrong at a time."""
    width = int(np.prod(spec.outputs[0].dims))
    edits = {
        "input-name": lambda r: setattr(r.inputs[0], "name", spec.inputs[0].name + "x"),
        "no-inputs": lambda r: r.ClearField("inputs"),
        "two-inputs": lambda r: r.inputs.add().CopyFrom(r.inputs[0]),
        "no-raw": lambda r: r.ClearField("raw_input_contents"),
        "two-raw": lambda r: r.raw_input_contents.append(r.raw_input_contents[0]),
        "raw-short": lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-1]),
        "raw-long": lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0] + b"\0"),
        "model-unknown": lambda r: setattr(r, "model_name", spec.name + "x"),
        "version-x": lambda r: setattr(r, "model_version", "x"),
        "output-name": lambda r: setattr(r.outputs[0], "name", spec.outputs[0].name + "x"),
        "two-outputs": lambda r: r.outputs.add().CopyFrom(r.outputs[0]),
        "request-parameter": lambda r: r.parameters["sequence_id"].MergeFrom(
            type(r.parameters["sequence_id"])(int64_param=1)
        ),
        "priority-huge": lambda r: r.parameters["priority"].MergeFrom(
            type(r.parameters["priority"])(int64_param=2**32 + 1)
        ),
        "timeout-string": lambda r: r.parameters["timeout"].MergeFrom(
            type(r.parameters["timeout"])(string_param="1")
        ),
        "contents": lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 4),
    }
    cases = []
    for label, edit in edits.items():
        request = good_grpc(spec)
        edit(request)
        cases.append((f"grpc-{label}", request.SerializeToString()))
    for k in (0, -1, width + 1, 2**32 + 1):
        request = good_grpc(spec)
        request.outputs[0].parameters["classification"].int64_param = k
        cases.append((f"grpc-classification={k}", request.SerializeToString()))
    request = good_grpc(spec)
    request.outputs[0].parameters["classification"].bool_param = True
    cases.append(("grpc-classification=True", request.SerializeToString()))
    return cases
