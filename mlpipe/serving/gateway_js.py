"""The gateway's request check, in nginx's own JavaScript module (njs, Debian's
``libnginx-mod-http-js``): what nginx's core cannot see because it is inside the body.

Triton 2.51 keeps the batch dimension in 32 bits: a request declaring ``2**32 + 1`` samples with
the bytes of one is accepted and answered for one sample (case 10), and the model only ever sees
the truncated shape. The check reads each inference request before it is forwarded:

* HTTP, JSON or binary tensors: the JSON part's nesting depth is counted *before* it is parsed
  (no parser recursion at all on a hostile body), then every input's shape must be
  non-negative integers below 2**31 with a batch of at most ``max_batch_size``, and a binary
  tensor's ``binary_data_size`` must equal shape x dtype size, all of them the body's length;
* gRPC ``ModelInfer``: the protobuf is walked without a parser library (field 5 ``inputs``,
  its field 3 ``shape``), with the same shape rules.

A refused request gets HTTP 400 with ``{"error": ...}`` (gRPC: INVALID_ARGUMENT with the reason);
a good one is handed to tritonserver unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mlpipe.serving.repository import ModelSpec

_SCRIPT = r"""
var MODELS = __MODELS__;
var MAX_DEPTH = __MAX_DEPTH__;
var DIM_LIMIT = 2147483648;
var DTYPE_BYTES = {BOOL: 1, UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, FP16: 2, BF16: 2,
                   UINT32: 4, INT32: 4, FP32: 4, UINT64: 8, INT64: 8, FP64: 8};

function depthOk(buf, end) {
    var depth = 0, inString = false;
    for (var i = 0; i < end; i++) {
        var c = buf[i];
        if (inString) {
            if (c === 92) { i++; } else if (c === 34) { inString = false; }
        } else if (c === 34) { inString = true; }
        else if (c === 91 || c === 123) { if (++depth > MAX_DEPTH) { return false; } }
        else if (c === 93 || c === 125) { depth--; }
    }
    return true;
}

function shapeError(model, shape) {
    if (!Array.isArray(shape) || shape.length === 0) { return "shape must be a list"; }
    for (var i = 0; i < shape.length; i++) {
        var d = shape[i];
        if (typeof d !== "number" || d < 0 || d >= DIM_LIMIT || Math.floor(d) !== d) {
            return "shape " + JSON.stringify(shape) + ": dimensions must be integers in [0, 2^31)";
        }
    }
    if (model.max_batch > 0 && shape[0] > model.max_batch) {
        return "batch dimension " + shape[0] + " exceeds max_batch_size " + model.max_batch;
    }
    return null;
}

function product(shape) {
    var n = 1;
    for (var i = 0; i < shape.length; i++) { n *= shape[i]; }
    return n;
}

function httpError(r, model) {
    var body = r.requestBuffer;
    if (body === undefined) { return "request body missing or not buffered"; }
    var hlen = r.headersIn["Inference-Header-Content-Length"];
    var end = hlen === undefined ? body.length : Number(hlen);
    if (!(end <= body.length)) { return "Inference-Header-Content-Length exceeds the body"; }
    if (!depthOk(body, end)) { return "JSON nested deeper than " + MAX_DEPTH + " levels"; }
    var request;
    try { request = JSON.parse(body.slice(0, end).toString()); }
    catch (e) { return "request JSON does not parse"; }
    var inputs = request.inputs, binary = 0;
    if (!Array.isArray(inputs)) { return "request has no inputs list"; }
    for (var i = 0; i < inputs.length; i++) {
        var err = shapeError(model, inputs[i].shape);
        if (err) { return "input " + JSON.stringify(inputs[i].name) + ": " + err; }
        var size = inputs[i].parameters && inputs[i].parameters.binary_data_size;
        if (size !== undefined) {
            var want = product(inputs[i].shape) * (DTYPE_BYTES[inputs[i].datatype] || 0);
            if (size !== want) {
                return "input " + JSON.stringify(inputs[i].name) + ": binary_data_size " + size
                    + " but shape " + JSON.stringify(inputs[i].shape) + " needs " + want + " bytes";
            }
            binary += size;
        }
    }
    if (hlen !== undefined && end + binary !== body.length) {
        return "body holds " + (body.length - end) + " tensor bytes, the inputs declare " + binary;
    }
    return null;
}

function refuse(r, message) {
    r.headersOut["Content-Type"] = "application/json";
    r.return(400, JSON.stringify({error: "refused by the mlpipe gateway: " + message}));
}

function checkHttp(r) {
    var model = MODELS[r.variables.mlpipe_model];
    var err = model ? httpError(r, model) : "unknown model";
    if (err) { refuse(r, err); return; }
    r.internalRedirect("@triton_http");
}

function varint(buf, pos) {
    var value = 0, scale = 1, b;
    do {
        if (pos.i >= buf.length) { throw new Error("truncated varint"); }
        b = buf[pos.i++];
        value += (b & 127) * scale;
        scale *= 128;
    } while (b & 128);
    return value;
}

function skip(buf, pos, wire) {
    if (wire === 0) { varint(buf, pos); }
    else if (wire === 1) { pos.i += 8; }
    else if (wire === 2) { var n = varint(buf, pos); pos.i += n; }
    else if (wire === 5) { pos.i += 4; }
    else { throw new Error("unsupported wire type " + wire); }
}

function tensorShape(buf, start, end) {
    var pos = {i: start}, shape = [];
    while (pos.i < end) {
        var key = varint(buf, pos), field = Math.floor(key / 8), wire = key & 7;
        if (field === 3 && wire === 2) {
            var stop = varint(buf, pos) + pos.i;
            while (pos.i < stop) { shape.push(varint(buf, pos)); }
        } else if (field === 3 && wire === 0) {
            shape.push(varint(buf, pos));
        } else { skip(buf, pos, wire); }
    }
    return shape;
}

function grpcError(body) {
    if (body === undefined || body.length < 5) { return "gRPC message missing"; }
    if (body[0] !== 0) { return "compressed gRPC messages are refused"; }
    var end = 5 + body.readUInt32BE(1), pos = {i: 5}, name = null, shapes = [];
    if (end !== body.length) { return "one gRPC message per request"; }
    while (pos.i < end) {
        var key = varint(body, pos), field = Math.floor(key / 8), wire = key & 7;
        if ((field === 1 || field === 5) && wire === 2) {
            var n = varint(body, pos);
            if (field === 1) { name = body.slice(pos.i, pos.i + n).toString(); }
            else { shapes.push(tensorShape(body, pos.i, pos.i + n)); }
            pos.i += n;
        } else { skip(body, pos, wire); }
    }
    var model = MODELS[name];
    if (!model) { return "unknown model " + JSON.stringify(name); }
    for (var i = 0; i < shapes.length; i++) {
        var err = shapeError(model, shapes[i]);
        if (err) { return err; }
    }
    return null;
}

function refuseGrpc(r, message) {
    // A trailers-only gRPC answer: status 3 (INVALID_ARGUMENT) with the reason.
    r.headersOut["Content-Type"] = "application/grpc";
    r.headersOut["grpc-status"] = "3";
    r.headersOut["grpc-message"] = encodeURIComponent("refused by the mlpipe gateway: " + message);
    r.return(200);
}

function checkGrpc(r) {
    var err;
    try { err = grpcError(r.requestBuffer); } catch (e) { err = "malformed protobuf"; }
    if (err) { refuseGrpc(r, err); return; }
    r.internalRedirect("@triton_grpc");
}

export default {checkHttp, checkGrpc};
"""


def check_script(specs: Mapping[str, ModelSpec], max_depth: int) -> str:
    """The njs module for these models (limits baked in as a literal)."""
    models = {name: {"max_batch": spec.max_batch_size} for name, spec in specs.items()}
    return _SCRIPT.replace("__MODELS__", json.dumps(models)).replace(
        "__MAX_DEPTH__", str(int(max_depth))
    )
