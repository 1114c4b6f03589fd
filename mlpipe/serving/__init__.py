"""Serving stage: `server` (tritonserver lifecycle, `mlpipe-serve`), `client` (the one Triton
client), `accuracy` (served == ONNX Runtime, `mlpipe-client`),
`targets` (`mlpipe-serve-targets`)."""
