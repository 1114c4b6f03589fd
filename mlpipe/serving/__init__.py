"""Serving stage: `server` (tritonserver lifecycle, `mlpipe-serve`), `client` (the one Triton
client), `accuracy` (served == ONNX Runtime, `mlpipe-client`), `targets` (`mlpipe-serve-targets`),
and the hardening around the server: `admin` (restricted APIs behind a key), `gateway` +
`gateway_js` (nginx in front), `supervisor` (watchdog, restarts, draining stop), `lifecycle` +
`reaper` (children and /dev/shm never outlive mlpipe-serve), `repository` (checks before launch),
`network`, `soak` (load through the gateway with bad requests)."""
