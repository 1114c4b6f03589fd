// The gateway's request check (njs). mlpipe/serving/gateway_js.py reads this file and replaces
// the two placeholders below with the limits derived from the model signature.
var MODELS = __MODELS__;
var MAX_DEPTH = __MAX_DEPTH__;
var DIM_LIMIT = 2147483648;
var DTYPE_BYTES = {BOOL: 1, UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, FP16: 2, BF16: 2,
                   UINT32: 4, INT32: 4, FP32: 4, UINT64: 8, INT64: 8, FP64: 8};
var PARSE = "request JSON does not parse: ";
var NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;

function Refusal(message) { this.message = message; }
function bad(message) { throw new Refusal(message); }

// -- a strict JSON parser: duplicate keys and depth beyond MAX_DEPTH are refused ------------
function ws(p) {
    var s = p.s, i = p.i, c;
    while (i < s.length && ((c = s.charCodeAt(i)) === 32 || c === 10 || c === 13 || c === 9)) {
        i++;
    }
    p.i = i;
}

function expect(p, code, what) {
    ws(p);
    if (p.s.charCodeAt(p.i) !== code) { bad(PARSE + what + " expected at byte " + p.i); }
    p.i++;
}

function jsonString(p) {
    var s = p.s, i = p.i + 1, escaped = false, c;
    for (;;) {
        if (i >= s.length) { bad("request JSON does not parse: unterminated string"); }
        c = s.charCodeAt(i);
        if (c === 34) { break; }
        if (c < 32) { bad("request JSON does not parse: control character in a string"); }
        if (c === 92) { escaped = true; i += 2; } else { i++; }
    }
    var raw = s.slice(p.i, i + 1);
    p.i = i + 1;
    if (!escaped) { return raw.slice(1, -1); }
    try { return JSON.parse(raw); }
    catch (e) { return bad("request JSON does not parse: bad escape in a string"); }
}

function jsonNumber(p) {
    var s = p.s, i = p.i, c;
    while (i < s.length && ((c = s.charCodeAt(i)) === 45 || c === 43 || c === 46 || c === 101
                            || c === 69 || (c >= 48 && c <= 57))) { i++; }
    var text = s.slice(p.i, i);
    if (!NUMBER.test(text)) { bad("request JSON does not parse at byte " + p.i); }
    p.i = i;
    return Number(text);
}

function readKey(p, top) {
    ws(p);
    if (p.s.charCodeAt(p.i) !== 34) { bad(PARSE + "a key expected at byte " + p.i); }
    var key = jsonString(p);
    if (top.seen["k" + key]) {
        bad("key " + JSON.stringify(key) + " appears twice in one object (Triton would read "
            + "the first, this check the last): send it once");
    }
    if (key === "__proto__") { bad("unknown field \"__proto__\""); }
    top.seen["k" + key] = true;
    top.key = key;
    expect(p, 58, "':'");
}

function scalar(p, c) {
    if (c === 34) { return jsonString(p); }
    if (c === 116) { return literal(p, "true", true); }
    if (c === 102) { return literal(p, "false", false); }
    if (c === 110) { return literal(p, "null", null); }
    return jsonNumber(p);
}

function literal(p, word, value) {
    if (p.s.substr(p.i, word.length) !== word) { bad(PARSE + "unknown word at byte " + p.i); }
    p.i += word.length;
    return value;
}

// Iterative, with its own stack of open containers: njs's call stack ends near 60 levels.
function parseStrict(text) {
    var p = {s: text, i: 0}, stack = [], value, top, c;
    for (;;) {
        ws(p);
        c = p.s.charCodeAt(p.i);
        if (c === 123 || c === 91) {
            if (stack.length >= MAX_DEPTH) {
                bad("JSON nested deeper than " + MAX_DEPTH + " levels");
            }
            p.i++;
            top = c === 123 ? {obj: {}, seen: {}, key: null} : {arr: []};
            stack.push(top);
            ws(p);
            if (p.s.charCodeAt(p.i) !== (c === 123 ? 125 : 93)) {
                if (top.obj) { readKey(p, top); }
                continue;
            }
            p.i++;
            stack.pop();
            value = top.obj || top.arr;
        } else { value = scalar(p, c); }
        for (;;) {  // hand the value to its container; close the containers it completes
            if (stack.length === 0) {
                ws(p);
                if (p.i !== text.length) { bad(PARSE + "trailing bytes at " + p.i); }
                return value;
            }
            top = stack[stack.length - 1];
            if (top.arr) { top.arr.push(value); } else { top.obj[top.key] = value; }
            ws(p);
            c = p.s.charCodeAt(p.i++);
            if (c === 44) {
                if (top.obj) { readKey(p, top); }
                break;
            }
            if (c !== (top.arr ? 93 : 125)) {
                bad(PARSE + "',' or a closing bracket expected at byte " + (p.i - 1));
            }
            stack.pop();
            value = top.obj || top.arr;
        }
    }
}

// -- the model signature's rules, shared by HTTP and gRPC -----------------------------------
function show(v) { return typeof v === "string" ? JSON.stringify(v) : String(v); }

function isObject(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }

function isCount(v) { return typeof v === "number" && Math.floor(v) === v && v >= 0; }

function onlyFields(what, obj, allowed) {
    if (!isObject(obj)) { bad(what + " must be a JSON object, got " + JSON.stringify(obj)); }
    for (var k in obj) {
        if (!allowed.hasOwnProperty(k)) {
            bad(what + " has an unknown field " + JSON.stringify(k) + " (allowed: "
                + Object.keys(allowed).join(", ") + ")");
        }
    }
}

function expectedShape(model, tensor) {
    var dims = tensor.dims.map(function (d) { return d < 0 ? "any" : String(d); });
    if (model.max_batch > 0) { dims.unshift("1.." + model.max_batch); }
    return "[" + dims.join(", ") + "]";
}

function shapeOk(model, tensor, shape) {
    var batched = model.max_batch > 0, rank = tensor.dims.length + (batched ? 1 : 0);
    if (!Array.isArray(shape) || shape.length !== rank) { return false; }
    for (var i = 0; i < rank; i++) {
        var d = shape[i];
        if (!isCount(d) || d >= DIM_LIMIT) { return false; }
        var model_dim = batched ? (i === 0 ? -2 : tensor.dims[i - 1]) : tensor.dims[i];
        if (model_dim === -2 && (d < 1 || d > model.max_batch)) { return false; }
        if (model_dim === -1 && d < 1) { return false; }
        if (model_dim >= 0 && d !== model_dim) { return false; }
    }
    return true;
}

function checkShape(model, tensor, shape, what) {
    if (!shapeOk(model, tensor, shape)) {
        bad(what + ": shape must be " + expectedShape(model, tensor) + ", got "
            + JSON.stringify(shape));
    }
}

function values(shape) {
    var n = 1;
    for (var i = 0; i < shape.length; i++) { n *= shape[i]; }
    return n;
}

function modelTensor(table, name, what, seen) {
    if (typeof name !== "string" || !table.hasOwnProperty(name)) {
        bad(what + " name " + JSON.stringify(name) + " is not one of the model's: "
            + Object.keys(table).join(", "));
    }
    if (seen["k" + name]) { bad(what + " " + JSON.stringify(name) + " appears twice"); }
    seen["k" + name] = true;
    return table[name];
}

function checkClassification(tensor, k, what) {
    if (!isCount(k) || k < 1 || k > tensor.width) {
        bad(what + ": classification must be an integer in [1, " + tensor.width + "] (the "
            + "output's width), got " + show(k));
    }
}

// -- HTTP -----------------------------------------------------------------------------------
var REQUEST_FIELDS = {id: 1, parameters: 1, inputs: 1, outputs: 1};
var REQUEST_PARAMETERS = {binary_data_output: 1, priority: 1, timeout: 1};
var INPUT_FIELDS = {name: 1, shape: 1, datatype: 1, parameters: 1, data: 1};
var INPUT_PARAMETERS = {binary_data_size: 1};
var OUTPUT_FIELDS = {name: 1, parameters: 1};
var OUTPUT_PARAMETERS = {binary_data: 1, classification: 1};

function countData(data, datatype, what) {
    if (!Array.isArray(data)) { bad(what + ": data must be a list of values"); }
    var n = 0, todo = [data];
    while (todo.length) {
        var list = todo.pop();
        for (var i = 0; i < list.length; i++) {
            var v = list[i];
            if (Array.isArray(v)) { todo.push(v); }
            else if (datatype === "BOOL" ? typeof v === "boolean" : typeof v === "number") { n++; }
            else { bad(what + ": data holds " + JSON.stringify(v) + ", not " + datatype); }
        }
    }
    return n;
}

function httpInput(model, input, index, seen, binary) {
    onlyFields("input " + index, input, INPUT_FIELDS);
    var tensor = modelTensor(model.inputs, input.name, "input", seen);
    var what = "input " + JSON.stringify(input.name);
    if (input.datatype !== tensor.datatype) {
        bad(what + ": datatype must be " + tensor.datatype + ", got " + show(input.datatype));
    }
    checkShape(model, tensor, input.shape, what);
    var want = values(input.shape) * DTYPE_BYTES[tensor.datatype], params = input.parameters;
    if (params !== undefined) { onlyFields(what + " parameters", params, INPUT_PARAMETERS); }
    var size = params === undefined ? undefined : params.binary_data_size;
    if (size === undefined) {
        if (input.data === undefined) { bad(what + " has neither data nor binary_data_size"); }
        var n = countData(input.data, tensor.datatype, what);
        if (n !== values(input.shape)) {
            bad(what + ": data holds " + n + " values, shape " + JSON.stringify(input.shape)
                + " needs " + values(input.shape));
        }
        return 0;
    }
    if (input.data !== undefined) { bad(what + " has both data and binary_data_size"); }
    if (!binary) {
        bad(what + ": binary_data_size needs the Inference-Header-Content-Length header");
    }
    if (!isCount(size)) {
        bad(what + ": binary_data_size must be an integer number of bytes, got "
            + JSON.stringify(size) + (typeof size === "string" ? " (a string)" : ""));
    }
    if (size !== want) {
        bad(what + ": binary_data_size " + size + " but shape " + JSON.stringify(input.shape)
            + " needs " + want + " bytes");
    }
    return size;
}

function httpOutputs(model, outputs) {
    if (outputs === undefined) { return; }
    if (!Array.isArray(outputs)) { bad("outputs must be a list"); }
    var seen = {};
    for (var i = 0; i < outputs.length; i++) {
        onlyFields("output " + i, outputs[i], OUTPUT_FIELDS);
        var tensor = modelTensor(model.outputs, outputs[i].name, "output", seen);
        var what = "output " + JSON.stringify(outputs[i].name), params = outputs[i].parameters;
        if (params === undefined) { continue; }
        onlyFields(what + " parameters", params, OUTPUT_PARAMETERS);
        if (params.binary_data !== undefined && typeof params.binary_data !== "boolean") {
            bad(what + ": binary_data must be true or false, got " + show(params.binary_data));
        }
        if (params.classification !== undefined) {
            checkClassification(tensor, params.classification, what);
        }
    }
}

// priority and timeout (microseconds): what tritonclient sends when they are set
function checkScheduling(key, value) {
    if (value !== undefined && !(isCount(value) && value < DIM_LIMIT)) {
        bad(key + " must be an integer in [0, 2^31), got " + show(value));
    }
}

function checkRequest(model, request, binary) {
    onlyFields("the request", request, REQUEST_FIELDS);
    if (request.id !== undefined && typeof request.id !== "string") { bad("id must be a string"); }
    var params = request.parameters;
    if (params !== undefined) {
        onlyFields("request parameters", params, REQUEST_PARAMETERS);
        var flag = params.binary_data_output;
        if (flag !== undefined && typeof flag !== "boolean") {
            bad("binary_data_output must be true or false, got " + show(flag));
        }
        checkScheduling("priority", params.priority);
        checkScheduling("timeout", params.timeout);
    }
    var inputs = request.inputs, seen = {}, bytes = 0;
    if (!Array.isArray(inputs)) { bad("inputs must be a list of the model's inputs"); }
    if (inputs.length !== model.n_inputs) {
        bad("the model takes " + model.n_inputs + " input(s) ("
            + Object.keys(model.inputs).join(", ") + "), the request has " + inputs.length);
    }
    for (var i = 0; i < inputs.length; i++) {
        bytes += httpInput(model, inputs[i], i, seen, binary);
    }
    httpOutputs(model, request.outputs);
    return bytes;
}

// A header sent twice could be read as its first copy by one side and its last by the other.
function headerTwice(r, name) {
    var raw = r.rawHeadersIn, n = 0;
    for (var i = 0; i < raw.length; i++) {
        if (raw[i][0].toLowerCase() === name) { n++; }
    }
    return n > 1;
}

function httpError(r, model) {
    var body = r.requestBuffer;
    if (body === undefined) { return "request body missing or not buffered"; }
    if (headerTwice(r, "inference-header-content-length")) {
        return "Inference-Header-Content-Length sent twice: send it once";
    }
    var hlen = r.headersIn["Inference-Header-Content-Length"];
    var end = hlen === undefined ? body.length : Number(hlen);
    if (!(end <= body.length)) { return "Inference-Header-Content-Length exceeds the body"; }
    if (end === 0) { return "the request's JSON is empty"; }
    try {
        var request = parseStrict(body.slice(0, end).toString());
        var binary = checkRequest(model, request, hlen !== undefined);
        if (hlen !== undefined && end + binary !== body.length) {
            return "body holds " + (body.length - end) + " tensor bytes, the inputs declare "
                + binary;
        }
        return null;
    } catch (e) {
        if (e instanceof Refusal) { return e.message; }
        return "the request could not be checked (" + e + ")";
    }
}

function refuse(r, status, message) {
    r.headersOut["Content-Type"] = "application/json";
    r.return(status, JSON.stringify({error: "refused by the mlpipe gateway: " + message}));
}

function checkHttp(r) {
    var model = MODELS[r.variables.mlpipe_model];
    var err = model ? httpError(r, model) : "unknown model";
    if (err) { refuse(r, 400, err); return; }
    r.internalRedirect("@triton_http");
}

// -- gRPC: ModelInferRequest walked field by field -------------------------------------------
// field number -> [name, kind, repeated]; kind: varint | fixed64 | bytes | packed (repeated
// varint, packed or not)
var INFER_REQUEST = {1: ["model_name", "bytes"], 2: ["model_version", "bytes"],
                     3: ["id", "bytes"], 4: ["parameters", "bytes", true],
                     5: ["inputs", "bytes", true], 6: ["outputs", "bytes", true],
                     7: ["raw_input_contents", "bytes", true]};
var INPUT_TENSOR = {1: ["name", "bytes"], 2: ["datatype", "bytes"], 3: ["shape", "packed"],
                    4: ["parameters", "bytes", true], 5: ["contents", "bytes"]};
var OUTPUT_TENSOR = {1: ["name", "bytes"], 2: ["parameters", "bytes", true]};
var MAP_ENTRY = {1: ["key", "bytes"], 2: ["value", "bytes"]};
var PARAMETER = {1: ["bool_param", "varint"], 2: ["int64_param", "varint"],
                 3: ["string_param", "bytes"], 4: ["double_param", "fixed64"],
                 5: ["uint64_param", "varint"]};
var WIRE = {varint: 0, fixed64: 1, bytes: 2};

function varint(buf, pos, end) {
    var value = 0, scale = 1, b, n = 0;
    do {
        if (pos.i >= end || ++n > 10) { bad("malformed protobuf (varint)"); }
        b = buf[pos.i++];
        value += (b & 127) * scale;
        scale *= 128;
    } while (b & 128);
    return value;
}

function packed(buf, pos, end, wire, list) {
    if (wire === 0) { list.push(varint(buf, pos, end)); return; }
    if (wire !== 2) { bad("malformed protobuf (shape)"); }
    var stop = varint(buf, pos, end) + pos.i;
    if (stop > end) { bad("malformed protobuf (truncated shape)"); }
    while (pos.i < stop) { list.push(varint(buf, pos, stop)); }
}

function walk(buf, start, end, schema, what) {
    var pos = {i: start}, out = {};
    while (pos.i < end) {
        var key = varint(buf, pos, end), field = schema[Math.floor(key / 8)], wire = key % 8;
        if (!field) { bad(what + " has an unknown field " + Math.floor(key / 8)); }
        var name = field[0], value;
        if (field[1] === "packed") {
            packed(buf, pos, end, wire, out[name] = out[name] || []);
            continue;
        }
        if (wire !== WIRE[field[1]]) { bad(what + " field " + name + " has the wrong wire type"); }
        if (wire === 0) { value = varint(buf, pos, end); }
        else {
            var n = wire === 1 ? 8 : varint(buf, pos, end);
            value = [pos.i, pos.i + n];
            pos.i += n;
            if (pos.i > end) { bad("malformed protobuf (" + what + " " + name + " truncated)"); }
        }
        if (field[2]) { (out[name] = out[name] || []).push(value); }
        else if (out.hasOwnProperty(name)) {
            bad(what + " sets " + name + " twice (protobuf keeps the last): send it once");
        } else { out[name] = value; }
    }
    return out;
}

function text(buf, span) {
    return span === undefined ? undefined : buf.slice(span[0], span[1]).toString();
}

function grpcParameters(buf, entries, what) {
    var out = {}, seen = {};
    for (var i = 0; i < (entries || []).length; i++) {
        var entry = walk(buf, entries[i][0], entries[i][1], MAP_ENTRY, what + " parameter");
        var key = text(buf, entry.key) || "";
        if (seen["k" + key]) { bad(what + " parameter " + JSON.stringify(key) + " appears twice"); }
        seen["k" + key] = true;
        var value = entry.value ? walk(buf, entry.value[0], entry.value[1], PARAMETER, what) : {};
        var set = Object.keys(value);
        if (set.length !== 1) {
            bad(what + " parameter " + JSON.stringify(key) + " must hold one value");
        }
        out[key] = {kind: set[0], value: value[set[0]]};
    }
    return out;
}

function grpcInputs(buf, model, request) {
    var inputs = request.inputs || [], raw = request.raw_input_contents || [], seen = {};
    if (inputs.length !== model.n_inputs) {
        bad("the model takes " + model.n_inputs + " input(s), the request has " + inputs.length);
    }
    if (raw.length !== inputs.length) {
        bad("send each input's tensor in raw_input_contents (one per input, as tritonclient does)");
    }
    for (var i = 0; i < inputs.length; i++) {
        var input = walk(buf, inputs[i][0], inputs[i][1], INPUT_TENSOR, "input " + i);
        var name = text(buf, input.name), what = "input " + JSON.stringify(name);
        var tensor = modelTensor(model.inputs, name, "input", seen);
        if (text(buf, input.datatype) !== tensor.datatype) {
            bad(what + ": datatype must be " + tensor.datatype + ", got "
                + show(text(buf, input.datatype)));
        }
        checkShape(model, tensor, input.shape || [], what);
        if (input.parameters || input.contents) {
            bad(what + ": only the tensor in raw_input_contents is accepted");
        }
        var want = values(input.shape) * DTYPE_BYTES[tensor.datatype], got = raw[i][1] - raw[i][0];
        if (got !== want) {
            bad(what + ": " + got + " bytes but shape " + JSON.stringify(input.shape) + " needs "
                + want);
        }
    }
}

function grpcOutputs(buf, model, outputs) {
    var seen = {};
    for (var i = 0; i < (outputs || []).length; i++) {
        var output = walk(buf, outputs[i][0], outputs[i][1], OUTPUT_TENSOR, "output " + i);
        var name = text(buf, output.name), what = "output " + JSON.stringify(name);
        var tensor = modelTensor(model.outputs, name, "output", seen);
        var params = grpcParameters(buf, output.parameters, what);
        for (var key in params) {
            if (key !== "classification" && key !== "binary_data") {
                bad(what + " has an unknown parameter " + JSON.stringify(key));
            }
        }
        if (params.classification) {
            var c = params.classification;
            checkClassification(tensor, c.kind === "int64_param" ? c.value : NaN, what);
        }
    }
}

function grpcRequestParameters(buf, entries) {
    var params = grpcParameters(buf, entries, "request");
    for (var key in params) {
        var p = params[key];
        if (key !== "priority" && key !== "timeout") {
            bad("request has an unknown parameter " + JSON.stringify(key)
                + " (allowed: priority, timeout)");
        }
        checkScheduling(key, p.kind === "int64_param" || p.kind === "uint64_param" ? p.value : NaN);
    }
}

function grpcError(body) {
    if (body === undefined || body.length < 5) { return "gRPC message missing"; }
    if (body[0] !== 0) { return "compressed gRPC messages are refused"; }
    var end = 5 + body.readUInt32BE(1);
    if (end !== body.length) { return "one gRPC message per request"; }
    try {
        var request = walk(body, 5, end, INFER_REQUEST, "ModelInferRequest");
        var name = text(body, request.model_name), model = MODELS[name];
        if (!MODELS.hasOwnProperty(name)) { return "unknown model " + JSON.stringify(name); }
        if (!/^[0-9]*$/.test(text(body, request.model_version) || "")) {
            return "model_version must be a number";
        }
        grpcRequestParameters(body, request.parameters);
        grpcInputs(body, model, request);
        grpcOutputs(body, model, request.outputs);
        return null;
    } catch (e) {
        if (e instanceof Refusal) { return e.message; }
        return "the request could not be checked (" + e + ")";
    }
}

function refuseGrpc(r, message) {
    // A trailers-only gRPC answer: status 3 (INVALID_ARGUMENT) with the reason.
    r.headersOut["Content-Type"] = "application/grpc";
    r.headersOut["grpc-status"] = "3";
    r.headersOut["grpc-message"] = encodeURIComponent("refused by the mlpipe gateway: " + message);
    r.return(200);
}

function checkGrpc(r) {
    var err = grpcError(r.requestBuffer);
    if (err) { refuseGrpc(r, err); return; }
    r.internalRedirect("@triton_grpc");
}

export default {checkHttp, checkGrpc};
