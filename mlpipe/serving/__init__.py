"""Serving stage, the runtime only: `supervisor` (`mlpipe-serve`: server + gateway under the
watchdog, draining stop), `server` (tritonserver), `gateway` + `nginx_conf` + `gateway_js` (nginx
in front, its generated config, its njs request check `gateway_check.js`), `process` (the one
child-process lifecycle under both), `lifecycle` + `reaper` (children and /dev/shm never outlive
mlpipe-serve), `admin` (restricted APIs behind a key), `repository` (checks before launch),
`network`, `client` (the one Triton client) and `accuracy` (`mlpipe-client`: served == ONNX
Runtime). Everything that times it lives in `mlpipe.measure`."""
